"""``mmctx shard``: decode and check a manifest once, write it as LitData shards.

Each row goes through the same path as training: :func:`read_manifest` (row parsing and
per-row errors), then :meth:`ManifestDataset.load_sample` (readers, limits, non-finite
checks, the label space). Good samples are written with LitData's ``BinaryWriter``; bad
ones are counted and listed (on stderr, in the returned report, and in
``mmctx_shards.json``). See :mod:`mmctx.data.shards` for the stored layout.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from mmctx.data.dataset import ManifestDataset, estimate_length
from mmctx.data.manifest import LabelSpace, read_manifest, row_cause
from mmctx.data.modalities import Modality
from mmctx.data.preprocess import Preprocess, SampleError
from mmctx.data.shards import (
    META_FILE,
    ShardReport,
    chunk_bytes_arg,
    empty_folder,
    metadata,
    to_record,
    write_metadata,
)
from mmctx.errors import (
    EXIT_FAILED,
    EXIT_STATUS_HELP,
    EXIT_USAGE,
    ConfigError,
    one_line,
    printable,
)

DEFAULT_CHUNK_BYTES = "64MB"
log = logging.getLogger(__name__)


def write_shards(
    manifest: Path,
    out: Path,
    *,
    modalities: Sequence[Modality],
    preprocess: Preprocess,
    classes: list[str] | None = None,
    multilabel: bool | None = None,
    root: Path | None = None,
    chunk_bytes: str = DEFAULT_CHUNK_BYTES,
) -> ShardReport:
    """Write every usable sample of ``manifest`` into ``out`` (an empty or new folder).

    Args:
        manifest: JSON Lines manifest.
        out: Output folder: LitData's ``index.json`` and chunks, plus ``mmctx_shards.json``.
        modalities: Modalities to decode (others in the rows are ignored).
        preprocess: Decode and resize settings; training on the shards must use the same.
        classes: Class names in index order (default: inferred from the labels).
        multilabel: As :class:`~mmctx.data.datamodule.MultimodalDataModule`'s.
        root: Folder the manifest's paths must stay inside (default: its own folder).
        chunk_bytes: Size of each chunk file (``64MB``, ``256kb``, bytes).

    Raises:
        ConfigError: ``out`` is not empty, ``chunk_bytes`` is not a size, or not one row of
            ``manifest`` could be used.
    """
    from litdata.streaming.writer import BinaryWriter

    start = time.perf_counter()
    try:
        size = chunk_bytes_arg(str(chunk_bytes))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    empty_folder(out)
    samples, problems = read_manifest(manifest, modalities=modalities, root=root)
    labels = _label_space([s.label for s in samples], classes, multilabel)
    dataset = ManifestDataset(samples, labels, modalities, preprocess)
    report = ShardReport(str(out), problems=list(problems))
    names = [m.name for m in dataset.handlers]
    writer = BinaryWriter(str(out), chunk_bytes=int(size))
    for sample in samples:
        loaded = dataset.load_sample(sample)
        if isinstance(loaded, SampleError):
            report.problems.append(str(loaded))
            continue
        try:  # LitData serialises the record here: a value it cannot store is this sample's
            length = estimate_length(sample, modalities=dataset.handlers, preprocess=preprocess)
            writer[report.written] = to_record(sample, loaded["inputs"], names, length)
        except Exception as err:  # noqa: BLE001 - one sample's failure, whatever it is
            message = (
                f"sample {sample.id!r} (line {sample.line}): cannot be stored: {row_cause(err)}"
            )
            log.warning("skipped %s", one_line(message))
            report.problems.append(message)
            continue
        report.written += 1
    if not report.written:  # LitData's merge would wait forever for an index of no chunks
        first = "; ".join(report.problems[:2]) or "it has no rows"
        raise ConfigError(f"no row of {manifest} could be sharded ({first})")
    writer.done()
    writer.merge()
    report.seconds = time.perf_counter() - start
    write_metadata(out, metadata(dataset, labels, report))
    return report


def _label_space(
    labels: list[Any], classes: list[str] | None, multilabel: bool | None
) -> LabelSpace | None:
    """The label space of the rows (a label outside it becomes that sample's error), or None
    for unlabelled data."""
    if all(label is None for label in labels) and not classes:
        return None
    try:
        return LabelSpace.infer(
            [x for x in labels if x is not None],
            classes,
            multilabel=multilabel,
            on_error=lambda index, message: None,  # reported per sample when encoded
        )
    except ValueError as err:
        raise ConfigError(f"no usable label space: {err}") from None


def settings_from_config(config: str | None) -> dict[str, Any]:
    """The data settings of a training config (``data.init_args``) that shape decoding."""
    from mmctx.data.datamodule import MultimodalDataModule  # the settings' one definition

    if config is None:
        init_args: dict[str, Any] = {}
    else:
        try:
            loaded = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read --config {config}: {err}") from None
        init_args = (loaded.get("data") or {}).get("init_args") or {}
    known = set(inspect.signature(MultimodalDataModule.__init__).parameters)
    shaping = known - {"train_manifest", "val_manifest", "test_manifest", "predict_manifest"}
    kept = {k: v for k, v in init_args.items() if k in shaping}
    try:
        data = MultimodalDataModule(**kept)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"--config {config}: data settings: {err}") from None
    return {
        "modalities": data.modality_handlers,
        "preprocess": data.preprocess,
        "classes": data.classes,
        "multilabel": data.multilabel_setting,
        "root": None if data.root is None else Path(data.root),
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmctx shard",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Decode and check every row of a manifest once, with the same readers, limits "
            "and per-row error reporting as training, and write the good samples as LitData "
            "shards (index.json + chunk-*.bin) that `data: class_path: ShardedDataModule` "
            "streams from a folder or an object store (s3://, gs://, ...). Bad rows are "
            "counted and listed, never dropped silently. Samples are stored decoded and "
            "resized, so train with the same data settings: pass the training config."
        ),
        epilog="example:\n  mmctx shard --manifest data/train.jsonl --out shards/train "
        "--config configs/demo.yaml\n\n" + EXIT_STATUS_HELP,
    )
    parser.add_argument("--manifest", required=True, help="JSON Lines manifest to shard")
    parser.add_argument("--out", required=True, help="output folder (new or empty)")
    parser.add_argument(
        "--config",
        help="training config whose data settings (image_size, sample_rate, modalities, "
        "limits, classes, ...) decode the samples (default: the data module's defaults)",
    )
    parser.add_argument(
        "--chunk-bytes",
        default=DEFAULT_CHUNK_BYTES,
        help="size of each chunk file, e.g. 64MB or 256kb (default: %(default)s)",
    )
    parser.add_argument("--json", help="also write the report (counts, problems) to this file")
    return parser


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    try:
        report = _shard(args)
    except ConfigError as err:  # the run could not start: one line, exit status 2
        print(f"mmctx shard: {printable(str(err))}", file=sys.stderr)
        return EXIT_USAGE
    # each skipped row was logged (file, line, cause) as it was met, by the shared readers
    skipped = len(report.problems)
    print(
        f"wrote {report.written} samples to {printable(report.out)} in {report.seconds:.1f} s; "
        f"skipped {skipped} row{'s' * (skipped != 1)}"
        + (f" (listed above and in {META_FILE})" if skipped else "")
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report.summary(), indent=1) + "\n", encoding="utf-8")
    return EXIT_FAILED if report.problems else 0


def _shard(args: argparse.Namespace) -> ShardReport:
    manifest = Path(args.manifest)
    if not manifest.is_file():
        raise ConfigError(f"--manifest {manifest}: no such file")
    return write_shards(
        manifest, Path(args.out), chunk_bytes=args.chunk_bytes, **settings_from_config(args.config)
    )
