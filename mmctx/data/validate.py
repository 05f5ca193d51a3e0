"""Check a dataset before training on it: ``mmctx validate-data MANIFEST``.

Every row is parsed and every file decoded with the same readers training uses; the report
gives per-modality sizes (min / median / max), how many samples carry each modality, label
counts, duplicate ids, and every problem with its line and file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import textwrap
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soundfile as sf

from mmctx.data.manifest import LabelSpace, count_rows, iter_rows, parse_row, row_error
from mmctx.errors import EXIT_STATUS_HELP, at_least, one_line, printable
from mmctx.io import DEFAULT_LIMITS, Limits, check_text, read_audio, read_image, read_text

# What is measured per modality, and in which unit.
UNITS = {
    "text": "characters",
    "image": "pixels (w·h)",
    "audio": "seconds",
    "video": "frames read (4 per second, at most 16)",
}


@dataclass
class DataReport:
    """What :func:`validate_manifest` found."""

    manifest: str
    rows: int = 0
    problems: list[str] = field(default_factory=list)
    sizes: dict[str, list[float]] = field(default_factory=dict)
    presence: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)
    duplicate_ids: dict[str, list[int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.duplicate_ids

    def summary(self) -> dict[str, Any]:
        """The report as plain JSON types."""
        return {
            "manifest": self.manifest,
            "rows": self.rows,
            "ok": self.ok,
            "problems": self.problems,
            "modalities": {
                m: {"samples": self.presence[m], "unit": UNITS.get(m, ""), **_spread(v)}
                for m, v in sorted(self.sizes.items())
            },
            "labels": dict(sorted(self.labels.items(), key=lambda kv: str(kv[0]))),
            "duplicate_ids": self.duplicate_ids,
        }

    def text(self) -> str:
        """A readable report."""
        s = self.summary()
        bad = len(self.problems)
        lines = [
            f"{self.manifest}: {self.rows} rows, {self.rows - bad} usable, {bad} with problems"
        ]
        lines.append("modality  samples  min / median / max")
        for m, info in s["modalities"].items():
            spread = " / ".join(_fmt(info[k]) for k in ("min", "median", "max"))
            lines.append(f"  {m:<7} {info['samples']:>7}  {spread} {info['unit']}")
        if self.labels:
            counts = ", ".join(f"{k}: {v}" for k, v in s["labels"].items())
            lines.append(f"labels ({len(self.labels)} classes): {counts}")
        else:
            lines.append("labels: none")
        for sample_id, at in self.duplicate_ids.items():
            lines.append(f"duplicate id {sample_id!r} on lines {', '.join(map(str, at))}")
        if self.problems:
            lines.append(f"problems ({bad}):")
            lines.extend(f"  {p}" for p in self.problems)
        lines.append("OK" if self.ok else "NOT OK: fix the problems above before training")
        return "\n".join(lines)


def _spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"min": None, "median": None, "max": None}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value % 1 else f"{int(value)}"


def _measure(sample: Any, limits: Limits) -> dict[str, list[float]]:
    """Decode every item of a sample; return its sizes per modality (DecodeError if any fails)."""
    sizes: dict[str, list[float]] = {}
    if sample.text is not None:  # checked as training checks it (lone surrogates, length)
        sizes["text"] = [len(check_text(sample.text, source="inline text", limits=limits))]
    elif sample.text_path is not None:
        sizes["text"] = [len(read_text(sample.text_path, limits=limits))]
    for path in sample.media.get("image", []):
        h, w = read_image(path, limits=limits).shape[:2]
        sizes.setdefault("image", []).append(w * h)
    for path in sample.media.get("audio", []):
        samples = read_audio(path, limits=limits)
        rate = sf.info(os.fsencode(path)).samplerate  # bytes: names that are not UTF-8
        sizes.setdefault("audio", []).append(len(samples) / rate)
    for path in sample.media.get("video", []):
        from mmctx.io import read_video

        sizes.setdefault("video", []).append(len(read_video(path, limits=limits)))
    return sizes


def validate_manifest(
    path: str | Path,
    *,
    limits: Limits = DEFAULT_LIMITS,
    progress: bool = False,
    root: str | Path | None = None,
    classes: Sequence[str] | None = None,
    multilabel: bool | None = None,
) -> DataReport:
    """Parse every row and decode every file of a manifest, in one pass; never raises for
    bad data. Each problem training would hit (a bad line, a path outside the root, a
    file that does not decode, a label that does not fit the label space) is reported
    once per row as ``"<path>: line <n>: <cause>"``, in line order.

    Args:
        path: The manifest.
        limits: Decode limits, as in training.
        progress: Show a progress bar.
        root: Folder the paths must stay inside (default: the manifest's folder).
        classes: Class names in index order, as ``data.classes`` (default: inferred).
        multilabel: As ``data.multilabel`` (None: multi-label only if every labelled row
            is a list); see :meth:`~mmctx.data.manifest.LabelSpace.infer`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    data_root = Path(root).expanduser() if root is not None else path.parent
    report = DataReport(str(path))
    good, problems = _decode_rows(path, data_root, limits, progress, report)
    space, bad_labels = _label_space(good, classes, multilabel)
    first_line: dict[str, int] = {}
    for sample, sizes in good:
        if sample.line in bad_labels:
            message = f"{path}: line {sample.line}: {bad_labels[sample.line]}"
            problems.append((sample.line, message))
            continue
        if sample.id in first_line:
            report.duplicate_ids.setdefault(sample.id, [first_line[sample.id]]).append(sample.line)
        first_line.setdefault(sample.id, sample.line)
        for modality, values in sizes.items():
            report.presence[modality] += 1
            report.sizes.setdefault(modality, []).extend(values)
        if sample.label is not None and space is not None:
            encoded = space.encode(sample.label)
            report.labels.update(
                space.classes[i] for i in (encoded if isinstance(encoded, list) else [encoded])
            )
    report.problems = [message for _, message in sorted(problems, key=lambda p: p[0])]
    return report


def _decode_rows(
    path: Path, data_root: Path, limits: Limits, progress: bool, report: DataReport
) -> tuple[list[tuple[Any, dict[str, list[float]]]], list[tuple[int, str]]]:
    """Parse and decode every row: ``(samples with their sizes, (line, problem) pairs)``."""
    from tqdm import tqdm

    problems: list[tuple[int, str]] = []
    good: list[tuple[Any, dict[str, list[float]]]] = []
    total = count_rows(path) if progress else None
    for line, row in tqdm(
        iter_rows(path), total=total, desc="validate", unit="row", disable=not progress
    ):
        report.rows += 1
        try:
            if isinstance(row, Exception):
                raise row
            sample = parse_row(row, line, path.parent, data_root=data_root)
            good.append((sample, _measure(sample, limits)))
        except Exception as err:  # noqa: BLE001 - one row never ends the run
            problems.append((line, _message(path, line, err)))
    return good, problems


def _label_space(
    good: list[tuple[Any, dict[str, list[float]]]],
    classes: Sequence[str] | None,
    multilabel: bool | None,
) -> tuple[LabelSpace | None, dict[int, str]]:
    """The label space training would build, and ``{line: problem}`` for labels that don't fit."""
    label_problems: dict[int, str] = {}
    labelled = [s for s, _ in good if s.label is not None]
    space = None
    if labelled or classes:
        try:
            space = LabelSpace.infer(
                [s.label for s in labelled],
                classes,
                multilabel=multilabel,
                on_error=label_problems.setdefault,
            )
        except ValueError:
            space = None  # no usable label: each row's own problem says why
    return space, {labelled[i].line: message for i, message in label_problems.items()}


def _message(path: Path, line: int, err: BaseException) -> str:
    """``"<path>: line <n>: <cause>"`` for the problem of one row."""
    message, prefix = str(row_error(path, line, err)), f"{path}:{line}: "
    cause = message[len(prefix) :] if message.startswith(prefix) else message
    return f"{path}: line {line}: {cause}"


def main(argv: Sequence[str]) -> int:
    """``mmctx validate-data``; exit status 1 when anything is wrong, 2 when it cannot start."""
    parser = argparse.ArgumentParser(
        prog="mmctx validate-data",
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Check a JSON Lines manifest before training: every row parses, every file "
            "exists and decodes (with the same readers and limits as training), and report "
            "sizes per modality (min/median/max), how many samples carry each modality, label "
            "counts and duplicate ids. Audio holding NaN/inf and text that is not valid "
            "Unicode are reported like any file that does not decode.",
            88,
        ),
    )
    parser.add_argument("manifest", nargs="+", help="manifest file(s) to check")
    parser.add_argument("--json", help="also write the reports to this JSON file")
    parser.add_argument(
        "--max-image-pixels", type=at_least(1), default=DEFAULT_LIMITS.max_image_pixels,
        help="default: %(default)s",
    )  # fmt: skip
    parser.add_argument(
        "--max-audio-seconds", type=float, default=DEFAULT_LIMITS.max_audio_seconds,
        help="default: %(default)s",
    )  # fmt: skip
    parser.add_argument(
        "--root",
        help="folder the manifest's paths must stay inside (default: each manifest's folder)",
    )
    parser.add_argument(
        "--classes", nargs="+", help="class names in index order (default: inferred)"
    )
    label_kind = parser.add_mutually_exclusive_group()
    label_kind.add_argument(
        "--multilabel", action="store_const", const=True, dest="multilabel",
        help="multi-label data (default: multi-label only if every labelled row is a list)",
    )  # fmt: skip
    label_kind.add_argument(
        "--single-label", action="store_const", const=False, dest="multilabel",
        help="single-label data: a list label is that row's problem",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    limits = Limits(
        max_image_pixels=args.max_image_pixels, max_audio_seconds=args.max_audio_seconds
    )
    reports = []
    for manifest in args.manifest:
        try:
            report = validate_manifest(
                manifest,
                limits=limits,
                progress=not args.no_progress,
                root=args.root,
                classes=args.classes,
                multilabel=args.multilabel,
            )
        except (OSError, ValueError) as err:  # missing, unreadable, a folder: cannot start
            print(f"mmctx validate-data: error: {one_line(str(err))}", file=sys.stderr)
            return 2
        print(printable(report.text()))  # file names that are not UTF-8 are escaped
        reports.append(report)
    if args.json:
        Path(args.json).write_text(json.dumps([r.summary() for r in reports], indent=1))
    return 0 if all(r.ok for r in reports) else 1
