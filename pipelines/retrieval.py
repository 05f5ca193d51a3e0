"""Retrieval indexes of a corpus, embedded by a trained model: ``mmctx index``.

``build_index`` embeds every row of a manifest with the checkpoint's own fused model (its
pooled vector, L2-normalised; decoding, per-row errors and path confinement are those of
:class:`~mmctx.pipelines.inference.Predictor`) and stores the vectors in a
:class:`~mmctx.index.VectorIndex` with the ids and rows. ``add_to_index`` embeds more rows
into an existing index (refusing one built by another model), ``remove_from_index`` drops
ids, ``search_index`` prints the nearest items of one sample.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mmctx.checkpoints import CheckpointError
from mmctx.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, at_least, device_name, one_line
from mmctx.index import KINDS, Hit, IndexMismatchError, VectorIndex, fingerprint

from .inference import UNCONFINED as _UNCONFINED
from .inference import (
    InputRows,
    Predictor,
    retriever_state,
    row_from_arguments,
    rows_from_manifest,
)


def _embed_into(
    index: VectorIndex,
    predictor: Predictor,
    inputs: InputRows,
    *,
    batch_size: int,
    progress: bool,
) -> tuple[int, list[str]]:
    """Embed ``inputs`` into ``index``; returns (items added, one error line per bad row)."""
    from tqdm import tqdm

    rows: dict[int, dict[str, Any]] = {}
    rebase = Path(inputs.base).resolve() != Path(index.base).resolve()

    def keep_rows() -> Iterator[Any]:
        for line, row in inputs.rows:
            if isinstance(row, dict):
                rows[line] = _absolute_paths(row, Path(inputs.base)) if rebase else row
            yield line, row

    stream = InputRows(keep_rows(), inputs.base, inputs.total, inputs.ignored, inputs.root)
    records = predictor.embed_rows(stream, batch_size=batch_size, workers=2)
    bar = tqdm(records, total=inputs.total, unit="item", desc="index", disable=not progress)
    added, errors = 0, []
    batch: list[tuple[str, Any, dict[str, Any]]] = []
    for record in bar:
        row = rows.pop(record["line"], None)
        if record["status"] != "ok":
            errors.append(record["error"])
            continue
        if record["id"] in index or record["id"] in {b[0] for b in batch}:
            errors.append(f"line {record['line']}: id {record['id']!r} is already in the index")
            continue
        batch.append((record["id"], record["vector"], row))
        if len(batch) >= 1024:
            added += _flush(index, batch)
    return added + _flush(index, batch), errors


def _absolute_paths(row: dict[str, Any], base: Path) -> dict[str, Any]:
    """``row`` with its relative file paths made absolute against ``base``."""
    out = dict(row)
    for key in ("text_path", "image", "audio", "video"):
        value = out.get(key)
        if isinstance(value, str):
            out[key] = str((base / value).resolve())
        elif isinstance(value, list):
            out[key] = [str((base / v).resolve()) if isinstance(v, str) else v for v in value]
    return out


def _flush(index: VectorIndex, batch: list[tuple[str, Any, dict[str, Any]]]) -> int:
    import numpy as np

    if not batch:
        return 0
    ids, vectors, rows = zip(*batch, strict=True)
    index.add(np.stack(vectors), list(ids), list(rows))
    batch.clear()
    return len(ids)


def build_index(
    ckpt: str | os.PathLike[str],
    manifest: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    kind: str = "auto",
    batch_size: int = 32,
    progress: bool = False,
    device: str | None = None,
) -> tuple[VectorIndex, list[str]]:
    """Embed every row of ``manifest`` with ``ckpt``'s fused model into a new index in ``out``.

    Returns:
        The index (saved) and one error line per row that could not be embedded.
    """
    predictor = Predictor.from_checkpoint(ckpt, device)
    inputs = rows_from_manifest(manifest)
    index = VectorIndex(
        dim=predictor.model.fused.dim,
        kind=kind,
        model={"fingerprint": fingerprint(retriever_state(predictor.model)), "ckpt": str(ckpt)},
        base=str(Path(manifest).resolve().parent),
    )
    _, errors = _embed_into(index, predictor, inputs, batch_size=batch_size, progress=progress)
    index.save(out)
    return index, errors


def add_to_index(
    folder: str | os.PathLike[str],
    ckpt: str | os.PathLike[str],
    manifest: str | os.PathLike[str],
    *,
    batch_size: int = 32,
    progress: bool = False,
    device: str | None = None,
) -> tuple[int, list[str]]:
    """Embed the rows of ``manifest`` into the index in ``folder`` (built by the same model).

    Rows' relative paths start from ``manifest``'s folder; they are stored resolved against
    it when it differs from the index's ``base``.
    """
    index = VectorIndex.load(folder)
    predictor = Predictor.from_checkpoint(ckpt, device)
    index.check_model(
        fingerprint(retriever_state(predictor.model)), predictor.model.fused.dim, folder
    )
    inputs = rows_from_manifest(manifest)
    added, errors = _embed_into(index, predictor, inputs, batch_size=batch_size, progress=progress)
    index.save(folder)
    return added, errors


def remove_from_index(folder: str | os.PathLike[str], ids: Sequence[str]) -> int:
    """Drop the items ``ids`` from the index in ``folder``; returns how many went."""
    index = VectorIndex.load(folder)
    removed = index.remove(list(ids))
    index.save(folder)
    return removed


def search_index(
    folder: str | os.PathLike[str],
    ckpt: str | os.PathLike[str],
    row: dict[str, Any],
    k: int = 5,
    device: str | None = None,
) -> list[Hit]:
    """The ``k`` nearest items of one sample (a manifest-style row, paths from the cwd)."""
    predictor = Predictor.from_checkpoint(ckpt, device)
    predictor.use_index(folder, k)
    inputs = InputRows([(1, row)], Path.cwd(), 1, root=_UNCONFINED)
    record = next(predictor.embed_rows(inputs, batch_size=1, workers=0))
    if record["status"] != "ok":
        raise ValueError(record["error"])
    return predictor.index.search(record["vector"][None], k)[0]


INDEX_HELP = """\
Retrieval indexes: a corpus (any manifest) embedded by a trained model.

  mmctx index build  --ckpt MODEL.ckpt --manifest corpus.jsonl --out INDEX/ [--kind auto|flat|pq|hnsw]
  mmctx index add    INDEX/ --ckpt MODEL.ckpt --manifest more.jsonl
  mmctx index remove INDEX/ ID [ID ...]
  mmctx index search INDEX/ --ckpt MODEL.ckpt --text ... --image ... --audio ... -k 5

Each item is the model's pooled fused vector (L2-normalised) in a faiss index: exact
(flat) up to 20,000 items, above that pq (4-bit product-quantised codes scanned, the best
candidates re-ranked exactly; needs >= 256 items); hnsw (a graph) on request. --kind sets it. A row that cannot be
embedded is reported with its line and cause and skipped. The index records a fingerprint
of the model that built it; using it with another model is refused.
"""


def index_main(argv: list[str]) -> int:
    """``mmctx index``: see :data:`INDEX_HELP`."""
    parser = argparse.ArgumentParser(
        prog="mmctx index",
        description=INDEX_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="action", required=True)
    build = sub.add_parser("build", help="embed a manifest into a new index")
    build.add_argument("--ckpt", required=True)
    build.add_argument("--manifest", required=True)
    build.add_argument("--out", required=True, help="index folder (created)")
    build.add_argument("--kind", choices=KINDS, default="auto")
    add = sub.add_parser("add", help="embed more rows into an index")
    add.add_argument("index")
    add.add_argument("--ckpt", required=True)
    add.add_argument("--manifest", required=True)
    for p in (build, add):
        p.add_argument("--batch-size", type=at_least(1), default=32)
        p.add_argument("--no-progress", action="store_true")
    remove = sub.add_parser("remove", help="drop items by id")
    remove.add_argument("index")
    remove.add_argument("ids", nargs="+")
    search = sub.add_parser("search", help="nearest items of one sample")
    search.add_argument("index")
    search.add_argument("--ckpt", required=True)
    search.add_argument("--text")
    for key in ("image", "audio", "video"):
        search.add_argument(f"--{key}", action="append")
    search.add_argument("-k", type=at_least(1), default=5)
    for p in (build, add, search):
        p.add_argument(
            "--device", type=device_name, help="cpu, cuda, ... (default: cuda if available)"
        )
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except (OSError, CheckpointError, IndexMismatchError, KeyError, ValueError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"mmctx index {args.action}: error: {one_line(str(message))}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    if args.action == "build":
        index, errors = build_index(
            args.ckpt,
            args.manifest,
            args.out,
            kind=args.kind,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            device=args.device,
        )
        print(f"built {args.out}: {len(index)} items, {index.kind}, dim {index.dim}")
        return _report(errors)
    if args.action == "add":
        added, errors = add_to_index(
            args.index,
            args.ckpt,
            args.manifest,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            device=args.device,
        )
        print(f"added {added} items to {args.index}")
        return _report(errors)
    if args.action == "remove":
        removed = remove_from_index(args.index, args.ids)
        print(f"removed {removed} items from {args.index}")
        return EXIT_OK
    row = row_from_arguments(args.text, args.image, args.audio, args.video)
    if len(row) == 1:
        raise ValueError("nothing to search with: give --text, --image, --audio or --video")
    for rank, hit in enumerate(search_index(args.index, args.ckpt, row, args.k, args.device), 1):
        print(f"{rank}\t{hit.score:.4f}\t{one_line(hit.id)}")
    return EXIT_OK


def _report(errors: list[str]) -> int:
    for error in errors:
        print(f"skipped: {one_line(error)}", file=sys.stderr)
    if errors:
        print(f"{len(errors)} rows skipped", file=sys.stderr)
    return EXIT_FAILED if errors else EXIT_OK
