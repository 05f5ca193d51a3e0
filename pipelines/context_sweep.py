"""Does a model use its context? Accuracy over input length x where the evidence sits.

The long-context demo hides its answer once in a long input; :func:`make_sweep_dataset`
writes test inputs with that clue at chosen relative positions and at lengths up to several
times the training length. :func:`sweep_accuracy` runs a trained classifier (a
:class:`~mmctx.pipelines.Predictor`) on them and scores every (length, position bin) cell;
:func:`write_sweep` saves JSON, CSV and a heatmap, :func:`plot_side_by_side` puts several
models' heatmaps in one figure. ``mmctx context-sweep`` is the command over them.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mmctx.checkpoints import CheckpointError
from mmctx.data.manifest import iter_rows
from mmctx.datasets.longctx import SweepSpec, make_sweep_dataset
from mmctx.errors import EXIT_STATUS_HELP, ConfigError, at_least, device_name, one_line

from .inference import InputRows, Predictor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cell:
    """Accuracy on the inputs of one length whose clue sits in one position bin.

    Attributes:
        scale: Input length as a multiple of the training length.
        bin: Position bin; the clue sits at relative positions ``[start, end)``.
        start: Where the bin starts (0 = the beginning of each modality's input).
        end: Where the bin ends (1 = the end).
        text_words: Words in each text of this length.
        audio_seconds: Seconds in each clip of this length.
        samples: Samples the model answered.
        correct: Of those, answered correctly.
        failed: Samples that could not be scored (each reported by the predictor).
        accuracy: ``correct / samples`` (None when no sample was answered).
    """

    scale: float
    bin: int
    start: float
    end: float
    text_words: int
    audio_seconds: float
    samples: int
    correct: int
    failed: int
    accuracy: float | None


def sweep_accuracy(
    predictor: Predictor,
    paths: dict[str, Path],
    spec: SweepSpec,
    *,
    batch_size: int = 8,
    workers: int = 2,
    progress: bool = True,
    desc: str = "sweep",
) -> list[Cell]:
    """Score ``predictor`` on every cell of the dataset at ``paths`` (written for ``spec``).

    Args:
        predictor: A trained classifier (anything with ``class_names`` and ``predict_rows``).
        paths: ``{"manifest", "truth"}`` from :func:`make_sweep_dataset`.
        spec: The grid the dataset was written for.
        batch_size: Samples per forward pass.
        workers: Decoding threads.
        progress: Show a progress bar.
        desc: The progress bar's label.

    Returns:
        One :class:`Cell` per (scale, bin), scales outermost.
    """
    truth = {t["id"]: t for _, t in iter_rows(paths["truth"])}
    tallies = {(scale, b): [0, 0, 0] for _, scale, b in spec.cells()}  # samples, correct, failed
    rows = InputRows(iter_rows(paths["manifest"]), paths["manifest"].parent, len(truth))
    records = predictor.predict_rows(rows, batch_size=batch_size, top_k=1, workers=workers)
    for record in tqdm(records, total=len(truth), desc=desc, unit="sample", disable=not progress):
        sample = truth[record["id"]]
        tally = tallies[(sample["scale"], sample["bin"])]
        if record["status"] != "ok":
            log.warning("%s: not scored: %s", record["id"], one_line(str(record["error"])))
            tally[2] += 1
            continue
        tally[0] += 1
        tally[1] += record["label"] == predictor.class_names[sample["label"]]
    return [_cell(spec, scale, b, *tallies[(scale, b)]) for _, scale, b in spec.cells()]


def _cell(spec: SweepSpec, scale: float, b: int, samples: int, correct: int, failed: int) -> Cell:
    data = spec.scaled(scale)
    return Cell(
        scale=scale,
        bin=b,
        start=b / spec.bins,
        end=(b + 1) / spec.bins,
        text_words=data.text_words,
        audio_seconds=data.audio_seconds,
        samples=samples,
        correct=correct,
        failed=failed,
        accuracy=correct / samples if samples else None,
    )


def accuracy_grid(cells: Sequence[Cell]) -> list[list[float | None]]:
    """Accuracies as rows of scales (ascending as given) by columns of position bins."""
    scales = list(dict.fromkeys(c.scale for c in cells))
    return [[c.accuracy for c in cells if c.scale == s] for s in scales]


def write_sweep(
    cells: Sequence[Cell], out_dir: str | Path, *, name: str, info: dict[str, Any]
) -> dict[str, Path]:
    """Write ``sweep.json`` (``info``, the accuracy grid and every cell), ``sweep.csv`` (one
    row per cell) and ``heatmap.png`` into ``out_dir``.

    Returns:
        The written paths, keyed ``"json"``, ``"csv"``, ``"png"``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "sweep.json", "csv": out / "sweep.csv", "png": out / "heatmap.png"}
    rows = [asdict(c) for c in cells]
    report = {"model": name, **info, "accuracy": accuracy_grid(cells), "cells": rows}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot_side_by_side({name: cells}, paths["png"])
    return paths


def plot_side_by_side(sweeps: dict[str, Sequence[Cell]], path: str | Path) -> Path:
    """One heatmap per model (rows: input length, columns: clue position), in one row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(
        1, len(sweeps), figsize=(0.5 + 4.6 * len(sweeps), 3.4), squeeze=False, sharey=True
    )
    image = None
    for ax, (name, cells) in zip(axes[0], sweeps.items(), strict=True):
        grid = np.array(accuracy_grid(cells), dtype=float)  # (scales, bins); None -> nan
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
        for (i, j), value in np.ndenumerate(grid):
            text = "-" if np.isnan(value) else f"{value * 100:.0f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="black" if value >= 0.6 else "white")  # fmt: skip
        bins = grid.shape[1]
        ax.set_xticks(np.arange(bins + 1) - 0.5, [f"{b / bins:.1f}".rstrip("0").rstrip(".")
                                                  for b in range(bins + 1)], fontsize=7)  # fmt: skip
        ax.set_xlabel("relative position of the evidence")
        ax.set_title(name, fontsize=10)
    lengths = {c.scale: c for c in next(iter(sweeps.values()))}  # one cell per length
    ticks = [f"{s:g}x\n{c.text_words} w, {c.audio_seconds:g} s" for s, c in lengths.items()]
    axes[0, 0].set_yticks(range(len(ticks)), ticks, fontsize=7)
    axes[0, 0].set_ylabel("input length (x training length)")
    fig.colorbar(image, ax=axes[0].tolist(), label="accuracy", fraction=0.03, pad=0.02)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def format_grid(cells: Sequence[Cell]) -> str:
    """The accuracy grid as a small text table (percent), one line per input length."""
    bins = max(c.bin for c in cells) + 1
    head = "length  " + " ".join(f"{b / bins:>5.2f}" for b in range(bins)) + "   (bin start)"
    lines = [head]
    for scale in dict.fromkeys(c.scale for c in cells):
        row = [c for c in cells if c.scale == scale]
        values = " ".join("    -" if c.accuracy is None else f"{c.accuracy:5.0%}" for c in row)
        lines.append(f"{scale:>5g}x  {values}")
    return "\n".join(lines)


SWEEP_HELP = """\
Does a trained long-context model use all of its input? This command writes test inputs of
the long-context demo (configs/longctx_demo.yaml) with the one clue (the digit's word in the
text, its DTMF burst in the audio) placed at chosen relative positions, at several lengths
given as multiples of the training length (the config's data.text_words and
data.audio_seconds; for a model trained on mixed lengths, data.length_range, these are the
nominal length), and scores each checkpoint on every length x position cell.

For each checkpoint it writes OUT/NAME/sweep.json, sweep.csv and heatmap.png (rows: input
length, columns: where the clue sits), and with several checkpoints OUT/context_sweep.png,
their heatmaps side by side. The inputs are generated once into a cache folder (or
--data-dir) and reused.

example:
  mmctx context-sweep --config configs/longctx_demo.yaml --config configs/longctx_small.yaml \\
      --ckpt sliding=runs/sliding/checkpoints/last.ckpt \\
      --ckpt dense=runs/dense/checkpoints/last.ckpt \\
      --lengths 1 2 3 4 --positions 10 --out sweep/
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmctx context-sweep",
        description=SWEEP_HELP,
        epilog=EXIT_STATUS_HELP
        + "\nAny other --key value (e.g. --data.init_args.cache_dir DIR) overrides the config.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # --data.* overrides go to the config, never to --data-dir
    )
    parser.add_argument(
        "--config",
        action="append",
        required=True,
        help="YAML config the models were trained with (repeat to stack); only its data "
        "settings are used: the training length, sample rate and modalities",
    )
    parser.add_argument(
        "--ckpt",
        action="append",
        required=True,
        metavar="[NAME=]PATH",
        help="checkpoint written by `mmctx fit` (repeat for several models); NAME labels its "
        "heatmap and output folder (default: the checkpoint's run folder name)",
    )
    parser.add_argument("--out", required=True, help="folder for the reports (created)")
    parser.add_argument(
        "--lengths",
        type=float,
        nargs="+",
        default=[1.0, 2.0, 3.0, 4.0],
        help="input lengths as multiples of the training length (default: 1 2 3 4)",
    )
    parser.add_argument(
        "--positions", type=at_least(1), default=10, help="position bins (default: %(default)s)"
    )
    parser.add_argument(
        "--per-cell",
        type=at_least(1),
        default=20,
        help="samples per length x bin (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the inputs (default: 1)")
    parser.add_argument("--data-dir", help="folder for the inputs (default: in the data cache)")
    parser.add_argument("--batch-size", type=at_least(1), default=8, help="default: %(default)s")
    parser.add_argument(
        "--workers", type=at_least(0), default=2, help="decoding threads (default: 2)"
    )
    parser.add_argument(
        "--device", type=device_name, help="cpu, cuda, ... (default: cuda if available)"
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep OUT/NAME/sweep.json when it was made from the same checkpoint (same bytes) "
        "and grid, instead of evaluating again (e.g. to add a model to a comparison)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def named_checkpoints(values: Iterable[str]) -> dict[str, Path]:
    """``NAME=PATH`` or ``PATH`` arguments as ``{name: path}``; a path's default name is its run
    folder (the one above ``checkpoints/``) or its stem.

    Raises:
        ConfigError: Two checkpoints get the same name.
    """
    named: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or Path(value).exists():
            path = value
            parent = Path(path).parent
            name = parent.parent.name if parent.name == "checkpoints" else Path(path).stem
        if name in named:
            raise ConfigError(f"two checkpoints are named {name!r}: give each NAME=PATH")
        named[name] = Path(path)
    return named


def load_predictors(checkpoints: dict[str, Path], device: str | None) -> dict[str, Predictor]:
    """Every checkpoint as a :class:`Predictor`.

    Raises:
        ConfigError: A checkpoint is missing, unreadable or not a classifier (names the file).
    """
    predictors = {}
    for name, path in checkpoints.items():
        try:
            predictors[name] = Predictor.from_checkpoint(path, device)
        except (OSError, CheckpointError) as err:
            raise ConfigError(f"--ckpt {name}={path}: {err}") from err
    return predictors


def sweep_spec_from(datamodule: Any, args: argparse.Namespace) -> SweepSpec:
    """The grid the arguments ask for, at the training length of ``datamodule``.

    Raises:
        ConfigError: The config's data is not the long-context demo, or a value is out of range.
    """
    from mmctx.datasets.longctx import LongSpec

    base = getattr(datamodule, "spec", None)
    if not isinstance(base, LongSpec):
        raise ConfigError(
            f"the config's data is {type(datamodule).__name__}, not the long-context demo "
            "(LongContextDataModule): only there is it known where the evidence sits"
        )
    try:
        return SweepSpec(base, tuple(args.lengths), args.positions, args.per_cell, args.seed)
    except ValueError as err:
        raise ConfigError(f"{err} (from --lengths, --positions, --per-cell or --seed)") from err


def training_length(data: Any) -> dict[str, Any]:
    """The nominal training length of the long-context spec ``data`` (scale 1 of the grid),
    and the range of scales its training samples were drawn from when they vary."""
    nominal = {"text_words": data.text_words, "audio_seconds": data.audio_seconds}
    return {**nominal, "scales": list(data.length_range)} if data.length_range else nominal


def _data_folder(datamodule: Any, spec: SweepSpec, data_dir: str | None) -> Path:
    if data_dir:
        return Path(data_dir)
    scales = "_".join(f"{s:g}" for s in spec.scales)
    name = f"{datamodule.folder.name}-sweep-x{scales}-p{spec.bins}-k{spec.per_cell}-s{spec.seed}"
    return datamodule.folder.parent / name


def context_sweep_main(
    argv: list[str], build_datamodule: Callable[[list[str], list[str]], Any]
) -> int:
    """``mmctx context-sweep``: see :data:`SWEEP_HELP`.

    Args:
        argv: The command's arguments; unknown ``--key value`` ones override the config.
        build_datamodule: ``(configs, overrides) -> data module`` as ``mmctx fit`` builds it.
    """
    args, overrides = _parser().parse_known_args(argv)
    try:
        datamodule = build_datamodule(args.config, overrides)
        spec = sweep_spec_from(datamodule, args)
        checkpoints = named_checkpoints(args.ckpt)
        predictors = load_predictors(checkpoints, args.device)
        folder = _data_folder(datamodule, spec, args.data_dir)
        paths = make_sweep_dataset(folder, spec, progress=not args.no_progress)
    except (ConfigError, OSError) as err:
        print(f"mmctx context-sweep: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    info = {
        "training_length": training_length(datamodule.spec),
        "scales": list(spec.scales),
        "bins": spec.bins,
        "per_cell": spec.per_cell,
        "seed": spec.seed,
        "data": str(folder),
    }
    sweeps = {}
    for name, predictor in predictors.items():
        model_info = {**info, "checkpoint_sha256": _digest(checkpoints[name])}
        out = Path(args.out) / name
        cells = _earlier_cells(out / "sweep.json", model_info) if args.reuse else None
        if cells is None:
            cells = sweep_accuracy(
                predictor, paths, spec, batch_size=args.batch_size, workers=args.workers,
                progress=not args.no_progress, desc=name,
            )  # fmt: skip
            model_info["checkpoint"] = str(checkpoints[name])
            written = write_sweep(cells, out, name=name, info=model_info)
            done = f"wrote {written['json']}, {written['csv']}, {written['png']}"
        else:
            done = f"reused {out / 'sweep.json'} (same checkpoint and grid)"
        sweeps[name] = cells
        print(f"\n{name}: accuracy by input length (rows) and clue position (columns)")
        print(format_grid(cells))
        print(done)
    if len(sweeps) > 1:
        print(f"wrote {plot_side_by_side(sweeps, Path(args.out) / 'context_sweep.png')}")
    failed = sum(c.failed for cells in sweeps.values() for c in cells)
    if failed:
        print(f"mmctx context-sweep: {failed} samples could not be scored", file=sys.stderr)
    return 1 if failed else 0


def _digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _earlier_cells(report: Path, info: dict[str, Any]) -> list[Cell] | None:
    """The cells of an earlier report made from the same checkpoint and grid, else None."""
    try:
        found = json.loads(report.read_text())
    except (OSError, ValueError):
        return None
    if any(found.get(key) != value for key, value in info.items()):
        return None
    return [Cell(**cell) for cell in found["cells"]]
