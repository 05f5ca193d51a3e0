"""Run a trained classifier on mixed media: the ``Predictor`` API and ``mmctx infer``.

Load once, predict many::

    predictor = Predictor.from_checkpoint("best.ckpt")
    predictor.predict(text="a seven", image="seven.png", audio="seven.wav")
    for record in predictor.predict_rows(rows_from_manifest("new.jsonl")):
        ...

Every input sample gives exactly one record, in input order::

    {"line": 3, "id": "x", "status": "ok" | "error", "label": "7", "top_k": [["7", 0.93], ...],
     "modalities": ["audio", "image"], "error": null | "<file or line>: <reason>"}

``line`` is the 1-based line of a manifest (a malformed line has no id), or the sample's
position for folder and command-line inputs. Decoding runs in a thread pool, one batch ahead
of the model; memory holds a couple of batches whatever the number of samples.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, Any

import torch
from lightning.fabric.utilities import move_data_to_device
from tqdm import tqdm

from mmctx.checkpoints import CheckpointError, data_settings, load_export, load_module
from mmctx.data import Collate, ManifestDataset, Preprocess, SampleError
from mmctx.data.manifest import (
    ManifestError,
    count_rows,
    iter_rows,
    known_modalities,
    parse_row,
    row_cause,
    row_id,
)
from mmctx.data.modalities import resolve_modalities
from mmctx.data.paths import UNCONFINED
from mmctx.errors import at_least, device_name, one_line, printable
from mmctx.features import FeatureSequence
from mmctx.index import ITEMS_FILE, VectorIndex, fingerprint
from mmctx.io import Limits

log = logging.getLogger(__name__)

# Folder inputs: files are grouped into samples by stem, and a file's modality is chosen by
# its extension (its content is still what decides how it is decoded).
NEIGHBOUR_CACHE = 4096  # decoded retrieved items a Predictor keeps (least recently used go)
FOLDER_EXTENSIONS = {
    "image": (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"),
    "audio": (".wav", ".flac", ".ogg"),
    "video": (".mp4", ".avi", ".mov", ".mkv", ".webm"),
    "text_path": (".txt",),
}

Row = tuple[int, dict[str, Any] | Exception]  # (line or position, a manifest row or why not)


@dataclass(frozen=True)
class InputRows:
    """Rows to predict on and the folder their relative paths start from."""

    rows: Iterable[Row]
    base: Path
    total: int | None = None  # for the progress bar, when known
    ignored: tuple[str, ...] = ()  # files a folder held that are not inputs (hidden, folders)
    root: Path | None = None  # paths must stay inside it (None: ``base``; UNCONFINED: any)


def rows_from_manifest(path: str | os.PathLike[str]) -> InputRows:
    """Stream the rows of a JSON Lines manifest (blank lines give no row); its paths are
    confined to the manifest's folder unless ``predict_rows`` is given a ``root``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")

    return InputRows(iter_rows(path), path.parent, count_rows(path))


def rows_from_folder(folder: str | os.PathLike[str]) -> InputRows:
    """One sample per file stem: ``x.png``, ``x.wav``, ``x.txt`` make sample ``x``.

    Files are matched to modalities by extension (:data:`FOLDER_EXTENSIONS`), several files of
    one modality join one sample, sub-folders and hidden files are ignored (and counted);
    a file with another extension gives an error record of its own.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    by_ext = {ext: key for key, exts in FOLDER_EXTENSIONS.items() for ext in exts}
    samples: dict[str, dict[str, Any]] = {}
    ignored = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.is_dir():
            ignored.append(entry.name)
            continue
        key = by_ext.get(entry.suffix.lower())
        row = samples.setdefault(entry.stem, {"id": entry.stem})
        if key is None:
            row.setdefault("_unknown", []).append(entry.name)
        elif key == "text_path" and key in row:
            row.setdefault("_unknown", []).append(entry.name)  # one text file per sample
        else:
            row.setdefault(key, []).append(entry.name)
    known = ", ".join(sorted(by_ext))

    def rows() -> Iterator[Row]:
        for position, row in enumerate(samples.values(), start=1):
            if "_unknown" in row:
                names = ", ".join(row["_unknown"])
                error = ValueError(
                    f"{folder / row['_unknown'][0]}: cannot tell which modality {names} is "
                    f"(folder inputs use one text file per stem and these extensions: {known})"
                )
                error.sample_id = row["id"]  # the record keeps the stem as its id
                yield position, error
            else:
                row["text_path"] = row["text_path"][0] if "text_path" in row else None
                yield position, {k: v for k, v in row.items() if v is not None}

    return InputRows(rows(), folder, len(samples), tuple(ignored), root=folder)


def row_from_arguments(
    text: str | None = None,
    image: str | list[str] | None = None,
    audio: str | list[str] | None = None,
    video: str | list[str] | None = None,
    sample_id: str = "sample",
) -> dict[str, Any]:
    """A manifest-style row from values and paths (paths relative to the working folder)."""
    row: dict[str, Any] = {"id": sample_id}
    if text is not None:
        row["text"] = text
    for key, value in (("image", image), ("audio", audio), ("video", video)):
        if value:
            row[key] = (
                [os.fspath(v) for v in value] if isinstance(value, list) else os.fspath(value)
            )
    return row


def require_classifier(model: torch.nn.Module, source: str) -> None:
    """Raise a :class:`CheckpointError` unless ``model`` is a classifier (encoders and class
    names): a GAN's checkpoint, say, given where a classifier is read."""
    if not (hasattr(model, "class_names") and hasattr(model, "encoders")):
        raise CheckpointError(
            f"{source}: holds a {type(model).__name__}, not a classifier (the checkpoint of a "
            "MultimodalClassifier fit, e.g. configs/demo.yaml)"
        )


class Predictor:
    """A trained classifier with its preprocessing, ready to predict on files and text.

    Safe to share between threads: decoding runs in the calling thread, the model's forward
    pass under a lock.

    Args:
        model: A classifier (``MultimodalClassifier`` or any module with ``class_names``
            whose ``forward(inputs)`` returns logits).
        data: The data settings saved with the model (see :func:`mmctx.checkpoints.data_settings`).
        device: Where the model runs (default: CUDA when available).
    """

    def __init__(
        self, model: torch.nn.Module, data: dict[str, Any], device: str | None = None
    ) -> None:
        require_classifier(model, "the model")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.class_names: list[str] = list(model.class_names)
        self.multilabel = bool(getattr(model, "multilabel", False))
        # Only what the model reads: a modality the data had but no encoder uses is not
        # decoded, and is not listed among a record's modalities.
        handlers = resolve_modalities(data.get("modalities") or list(model.encoders))
        self.modalities = tuple(m for m in handlers if m.name in model.encoders)
        self.preprocess = preprocess_from(data)
        self._lock = threading.Lock()
        self._manifest_keys = [k for m in known_modalities(self.modalities) for k in m.keys]
        self.index: VectorIndex | None = None
        self.retrieve_k = 0
        self.neighbours_skipped = 0  # retrieved items that could not be read, so not read
        self._neighbour_items: OrderedDict[str, Any] = OrderedDict()  # id -> item or error
        self._neighbour_tokens: OrderedDict[str, Any] = OrderedDict()  # id -> (m, d), (m,)
        self._index_lines: dict[str, int] = {}
        self._index_folder = Path()
        named = getattr(model, "retrieval_index", None)  # the index a model was trained with
        if named:
            self.use_index(named, int(getattr(model, "retrieval_k", 4)))

    def use_index(self, folder: str | os.PathLike[str], k: int = 5) -> None:
        """Retrieve the ``k`` nearest items of every sample from the index in ``folder``
        (records list them as ``retrieved: [[id, score], ...]``); a model that reads
        neighbours (``read_neighbours``) also predicts from them.

        Raises:
            IndexMismatchError: The index is missing, or built by another model or width.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        index = VectorIndex.load(folder, mmap=True)
        fused = self.model.fused
        index.check_model(fingerprint(retriever_state(self.model)), fused.dim, folder)
        self.index, self.retrieve_k, self._index_folder = index, k, Path(folder)
        self._neighbour_items.clear()
        self._neighbour_tokens.clear()
        self._index_lines = {key: line for line, key in enumerate(index.ids(), 1)}

    def set_limits(self, **limits: Any) -> None:
        """Change decode limits (``max_image_pixels``, ``max_audio_seconds``, ...; see
        :class:`~mmctx.io.Limits`) from the ones the model was trained with."""
        new = dataclasses.replace(self.preprocess.limits, **limits)
        self.preprocess = dataclasses.replace(self.preprocess, limits=new)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], device: str | None = None) -> Predictor:
        """Load a ``mmctx fit`` checkpoint (weights only, no pickled code run)."""
        model = load_module(path)
        require_classifier(model, str(path))
        return cls(model, data_settings(path), device)

    @classmethod
    def from_export(cls, folder: str | os.PathLike[str], device: str | None = None) -> Predictor:
        """Load a folder written by ``mmctx export`` (safetensors + config.json)."""
        model, data = load_export(folder)
        quantised = any(
            type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules()
        )
        if quantised and device is None:
            device = "cpu"  # PyTorch's INT8 dynamic quantisation runs on the CPU only
        return cls(model, data, device)

    @classmethod
    def from_onnx(cls, folder: str | os.PathLike[str]) -> Predictor:
        """Load a folder holding ``model.onnx`` + ``config.json`` (``mmctx compress``), run by
        ONNX Runtime on the CPU."""
        from .onnx_export import load_onnx

        model, data = load_onnx(folder)
        return cls(model, data, "cpu")

    def predict(
        self,
        *,
        text: str | None = None,
        image: str | list[str] | None = None,
        audio: str | list[str] | None = None,
        video: str | list[str] | None = None,
        top_k: int = 5,
    ) -> dict[str, Any]:
        """Predict one sample from inline text and file paths; returns its record."""
        row = row_from_arguments(text, image, audio, video)
        rows = InputRows([(1, row)], Path.cwd(), 1, root=UNCONFINED)  # the caller's own paths
        return next(self.predict_rows(rows, batch_size=1, top_k=top_k, workers=0))

    def predict_rows(
        self,
        inputs: InputRows,
        *,
        batch_size: int = 16,
        top_k: int = 5,
        workers: int = 2,
        root: str | os.PathLike[str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Records for ``inputs`` in order, one per row, decoded ``workers`` at a time.

        Args:
            inputs: From :func:`rows_from_manifest`, :func:`rows_from_folder` or built by hand.
            batch_size: Samples per forward pass.
            top_k: Classes listed per record.
            workers: Decoding threads (0: decode in this thread).
            root: Folder every path must stay inside (default: ``inputs.root``, else the
                folder of the manifest); a path that leaves it is that row's error, found
                before anything is stat'ed or opened.
        """
        if batch_size < 1 or top_k < 1 or workers < 0:
            raise ValueError(
                f"need batch_size >= 1, top_k >= 1, workers >= 0; got "
                f"{batch_size}, {top_k}, {workers}"
            )
        root_path = Path(root) if root is not None else (inputs.root or inputs.base)
        pool = ThreadPoolExecutor(workers) if workers else None
        try:
            pending: list[tuple[list[dict[str, Any]], list, list]] = []
            for chunk in _chunks(inputs.rows, batch_size):
                pending.append(self._start(chunk, inputs.base, root_path, pool))
                if len(pending) > 1:  # decode one batch ahead of the model
                    yield from self._finish(*pending.pop(0), top_k)
            while pending:
                yield from self._finish(*pending.pop(0), top_k)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)

    def embed_rows(
        self,
        inputs: InputRows,
        *,
        batch_size: int = 16,
        workers: int = 2,
        root: str | os.PathLike[str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Like :meth:`predict_rows`, but each ok record carries ``vector``: the fused
        model's pooled vector ``(d,)`` (numpy, L2-normalised) instead of a prediction."""
        root_path = Path(root) if root is not None else (inputs.root or inputs.base)
        pool = ThreadPoolExecutor(workers) if workers else None
        try:
            pending = []
            for chunk in _chunks(inputs.rows, batch_size):
                pending.append(self._start(chunk, inputs.base, root_path, pool))
                if len(pending) > 1:
                    yield from self._finish(*pending.pop(0), 1, self._embed)
            while pending:
                yield from self._finish(*pending.pop(0), 1, self._embed)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)

    def query_vectors(self, inputs: dict[str, Any]) -> torch.Tensor:
        """The fused model's pooled vectors ``(b, d)`` of collated ``inputs``, L2-normalised."""
        inputs = move_data_to_device(inputs, self.device)
        with self._lock, torch.inference_mode():
            pooled = retriever_of(self.model)(inputs).pooled.float()
        return torch.nn.functional.normalize(pooled, dim=-1).cpu()

    def _neighbour_item(self, hit: Any) -> dict[str, Any] | str:
        """A retrieved item decoded (kept for the next :data:`NEIGHBOUR_CACHE` look-ups of
        other items), or why it cannot be read: its line in the index's ``items.jsonl``,
        its file and the cause. Its relative paths start from the index's ``base``."""
        cached = self._neighbour_items.get(hit.id)
        if cached is not None:
            self._neighbour_items.move_to_end(hit.id)
            return cached
        line = self._index_lines.get(hit.id, 0)
        try:
            sample = parse_row(
                hit.row, line, Path(self.index.base), modalities=self.modalities,
                check_labels=False,
            )  # fmt: skip
            item: Any = ManifestDataset([sample], None, self.modalities, self.preprocess)[0]
            if not isinstance(item, SampleError) and not item["inputs"]:
                item = SampleError(f"sample {hit.id!r}: {self._unread(sample)}")
        except Exception as err:  # noqa: BLE001 - one retrieved item never ends the run
            item = SampleError(row_cause(err))
        if isinstance(item, SampleError):
            item = f"retrieved item ({self._index_folder / ITEMS_FILE}, line {line}): {item}"
        self._neighbour_items[hit.id] = item
        if len(self._neighbour_items) > NEIGHBOUR_CACHE:
            self._neighbour_items.popitem(last=False)
        return item

    def _read_hits(self, hits: list[list[Any]]) -> tuple[list[list[tuple[Any, dict]]], list]:
        """Per sample, its first ``retrieve_k`` readable hits with their decoded items, and
        the errors of the hits skipped before them (each one counted in
        ``neighbours_skipped``)."""
        read, skipped = [], []
        for row in hits:
            good, bad = [], []
            for hit in row:
                if len(good) == self.retrieve_k:
                    break
                item = self._neighbour_item(hit)
                if isinstance(item, str):
                    bad.append(item)
                else:
                    good.append((hit, item))
            self.neighbours_skipped += len(bad)
            read.append(good)
            skipped.append(bad)
        return read, skipped

    def _neighbours(
        self, read: list[list[tuple[Any, dict]]]
    ) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
        """Collated inputs of the neighbours the model reads, sample-major, all samples'
        scores ``(b, k)`` and which neighbours are read ``(b, k)``: not a sample's missing
        ones (fewer than ``k`` readable), nor those the model finds not worth reading
        (``worth_reading``). A sample with none readable reads another's first (its result
        is replaced by an error)."""
        k = max(len(row) for row in read)
        spare = next(row[:1] for row in read if row)
        rows = [row or spare for row in read]
        scores = torch.tensor([[h.score for h, _ in row] + [-1.0] * (k - len(row)) for row in rows])
        present = torch.tensor([[i < len(row) for i in range(k)] for row in rows])
        if hasattr(self.model, "worth_reading"):
            present &= self.model.worth_reading(scores.masked_fill(~present, float("-inf")))
        read_now = [
            pair
            for row, keep in zip(rows, present.tolist(), strict=True)
            for pair, kept in zip(row, keep, strict=False)
            if kept
        ]
        return self._encoded(read_now), scores.to(self.device), present.to(self.device)

    def _encoded(self, pairs: list[tuple[Any, dict[str, Any]]]) -> Any:
        """The model's tokens of retrieved items ``(p, m, d)`` (``encode_neighbours``),
        each encoded once and kept (like the decoded items) for the next batches."""
        cache = self._neighbour_tokens
        new = {hit.id: item for hit, item in pairs if hit.id not in cache}
        if new:
            batch = Collate(self.modalities, self.preprocess, None)(list(new.values()))
            inputs = move_data_to_device(batch["inputs"], self.device)
            with torch.inference_mode():
                seq = self.model.encode_neighbours(inputs)
            for row, key in enumerate(new):
                valid = seq.mask[row].nonzero()
                length = int(valid.max()) + 1 if len(valid) else 1  # without trailing padding
                cache[key] = (seq.features[row, :length], seq.mask[row, :length])
        tokens = []
        for hit, _ in pairs:
            cache.move_to_end(hit.id)
            tokens.append(cache[hit.id])
        while len(cache) > NEIGHBOUR_CACHE:
            cache.popitem(last=False)
        m = max(len(mask) for _, mask in tokens)
        features = torch.zeros(len(tokens), m, tokens[0][0].shape[-1], device=self.device)
        mask = torch.zeros(len(tokens), m, dtype=torch.bool, device=self.device)
        for row, (feats, valid) in enumerate(tokens):
            features[row, : len(valid)], mask[row, : len(valid)] = feats, valid
        return FeatureSequence(features, mask)

    def _embed(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        vectors = self.query_vectors(batch["inputs"])
        finite = torch.isfinite(vectors).all(dim=-1)
        results = []
        for row in range(len(vectors)):
            used = [m for m, flags in batch["present"].items() if bool(flags[row])]
            if not finite[row]:
                error = "model output is not finite (NaN or infinite embedding)"
                results.append({"status": "error", "error": error})
            else:
                results.append({"status": "ok", "vector": vectors[row].numpy(), "modalities": used})
        return results

    def _start(
        self, chunk: list[Row], base: Path, root: Path, pool: ThreadPoolExecutor | None
    ) -> tuple[list[dict[str, Any]], list, list]:
        """Parse the rows of a batch (paths confined to ``root``) and start decoding the
        good ones; any exception while parsing a row becomes that row's error record."""
        records, samples = [], []
        for line, row in chunk:
            record = {"line": line, "id": None, "status": "error", "error": None}
            records.append(record)
            try:
                if isinstance(row, Exception):
                    record["id"] = getattr(row, "sample_id", None)
                    raise row
                if isinstance(row, dict):
                    with contextlib.suppress(ValueError):  # a bad id is the parse's error
                        record["id"] = None if "id" not in row else row_id(row, line)
                sample = parse_row(
                    row, line, base, modalities=self.modalities, data_root=root, check_labels=False
                )
            except Exception as err:  # noqa: BLE001 - one row never ends the run
                cause = row_cause(err)
                named = isinstance(err, ManifestError) or cause.startswith(str(base))
                record["error"] = cause if named else f"line {line}: {cause}"  # file:line: ...
                continue
            record["id"] = sample.id
            samples.append((record, sample))
        dataset = ManifestDataset([s for _, s in samples], None, self.modalities, self.preprocess)
        load = dataset.__getitem__
        if pool is None:
            return records, samples, [load(i) for i in range(len(dataset))]
        return records, samples, [pool.submit(load, i) for i in range(len(dataset))]

    def _finish(
        self,
        records: list[dict[str, Any]],
        samples: list,
        loaded: list,
        top_k: int,
        run: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None,
    ) -> list[dict[str, Any]]:
        """Records of a started batch; ``run`` turns the collated good samples into their
        results (default: classify them)."""
        run = run or (lambda batch: self._classify(batch, top_k))
        items = [it.result() if isinstance(it, Future) else it for it in loaded]
        good = []
        for (record, sample), item in zip(samples, items, strict=True):
            if isinstance(item, SampleError):
                record["error"] = str(item)
            elif not item["inputs"]:
                record["error"] = f"{_where(record)}: {self._unread(sample)}"
            else:
                good.append((record, item))
        if good:
            batch = Collate(self.modalities, self.preprocess, None)([it for _, it in good])
            for (record, _), result in zip(good, run(batch), strict=True):
                if result["status"] == "error":
                    result["error"] = f"{_where(record)}: {result['error']}"
                record.update(result)
        return [_ordered(r) for r in records]

    def _unread(self, sample: Any) -> str:
        """Why a sample gives the model nothing: the files of modalities it has no encoder for."""
        uses = ", ".join(m.name for m in self.modalities)
        reason = f"nothing this model reads (it uses {uses})"
        lacking = []
        for name in sample.modalities:
            if name in {m.name for m in self.modalities}:
                continue
            value = sample.get(name)
            items = value if isinstance(value, list | tuple) else [value]
            files = ", ".join(os.fspath(v) if isinstance(v, os.PathLike) else str(v) for v in items)
            what = "inline text" if name == "text" and sample.text is not None else files
            lacking.append(f"{what} ({name}: this model has no {name} encoder)")
        return f"{reason}; not read: {'; '.join(lacking)}" if lacking else reason

    def _classify(self, batch: dict[str, Any], top_k: int) -> list[dict[str, Any]]:
        """Records' results for a collated batch; a row whose logits are not all finite
        gets ``status: "error"`` instead of NaN probabilities."""
        hits, skipped, unread = None, None, None
        reads = hasattr(self.model, "read_neighbours")
        if self.index is not None:  # twice k: spares for retrieved items that cannot be read
            k = self.retrieve_k
            found = self.index.search(self.query_vectors(batch["inputs"]), 2 * k if reads else k)
            if reads:
                hits, skipped = self._read_hits(found)
            else:  # only listed, not read
                hits, skipped = [[(h, None) for h in row] for row in found], [[]] * len(found)
            unread = [reads and not row for row in hits]
        inputs = move_data_to_device(batch["inputs"], self.device)
        with self._lock, torch.inference_mode():
            if hits is not None and reads:
                if all(unread):  # no sample has a neighbour the model can read
                    return [_unread_neighbours(errors) for errors in skipped]
                logits = self.model.read_neighbours(inputs, *self._neighbours(hits)).float()
            else:
                logits = self.model(inputs).float()
        finite = torch.isfinite(logits).all(dim=-1).cpu()  # (b,)
        logits = torch.where(torch.isfinite(logits), logits, torch.zeros_like(logits))
        probs = (logits.sigmoid() if self.multilabel else logits.softmax(-1)).cpu()
        k = min(top_k, len(self.class_names))
        values, indices = probs.topk(k, dim=-1)
        results = []
        for row in range(len(probs)):
            if unread is not None and unread[row]:
                results.append(_unread_neighbours(skipped[row]))
                continue
            if not finite[row]:
                error = "model output is not finite (NaN or infinite logits)"
                results.append({"status": "error", "error": error})
                continue
            if self.multilabel:
                label: Any = [
                    c for c, p in zip(self.class_names, probs[row], strict=True) if p >= 0.5
                ]
            else:
                label = self.class_names[int(indices[row, 0])]
            ranked = [
                [self.class_names[int(i)], round(float(v), 6)]
                for v, i in zip(values[row], indices[row], strict=True)
            ]
            used = [m for m, flags in batch["present"].items() if bool(flags[row])]
            results.append({"status": "ok", "label": label, "top_k": ranked, "modalities": used})
            if hits is not None:
                results[-1]["retrieved"] = [[h.id, round(h.score, 6)] for h, _ in hits[row]]
                if skipped[row]:
                    results[-1]["retrieval_skipped"] = skipped[row]
        return results


def _unread_neighbours(errors: list[str]) -> dict[str, Any]:
    """The result of a sample none of whose retrieved items could be read."""
    first = errors[0] if errors else "the index returned no items"
    return {"status": "error", "error": f"no retrieved item could be read; first: {first}"}


def retriever_state(model: torch.nn.Module) -> dict[str, Any]:
    """The weights that embed queries and corpus items: a model's ``retriever`` (a
    retrieval classifier's frozen copy) or else its fused model; an index records their
    fingerprint."""
    return retriever_of(model).state_dict()


def retriever_of(model: torch.nn.Module) -> torch.nn.Module:
    """The fused model that embeds queries and corpus items for ``model``."""
    retriever = getattr(model, "retriever", None)
    return retriever if retriever is not None else model.fused


def _where(record: dict[str, Any]) -> str:
    return f"sample {record['id']!r} (line {record['line']})"


def _ordered(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("line", "id", "status", "label", "top_k", "modalities", "error")
    out = {k: record.get(k) for k in keys}
    for extra in ("retrieved", "retrieval_skipped", "vector"):  # with an index; embedding
        if extra in record:
            out[extra] = record[extra]
    return out


def _printable(value: Any) -> Any:
    """``value`` with every string made UTF-8-safe (:func:`mmctx.errors.printable`)."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {k: _printable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_printable(v) for v in value]
    return value


# Valid inside JSON strings but line breaks to str.splitlines() and many editors.
_LINE_SEPARATORS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def record_json(record: dict[str, Any], *, ascii_only: bool = False) -> tuple[str, dict[str, Any]]:
    """One record as one line of strict JSON (no NaN/Infinity), valid UTF-8.

    File names that were not UTF-8 are escaped (``\\xff``), line and paragraph separators
    are written as ``\\u2028`` escapes, and a record that holds a non-finite number becomes
    an error record.

    Returns:
        ``(line without its newline, the record as written)``.
    """
    record = _printable(record)
    try:
        text = json.dumps(record, ensure_ascii=ascii_only, allow_nan=False)
    except ValueError:  # a non-finite number slipped into the record
        error = f"{_where(record)}: model output is not finite (NaN or infinite probabilities)"
        record = {**record, "status": "error", "label": None, "top_k": None, "error": error}
        record["modalities"] = None
        text = json.dumps(record, ensure_ascii=ascii_only, allow_nan=False)
    return text.translate(_LINE_SEPARATORS), record


def _chunks(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    chunk: list[Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def preprocess_from(data: dict[str, Any]) -> Preprocess:
    """Rebuild :class:`Preprocess` from saved data settings, ignoring keys this version lacks."""
    settings = data.get("preprocess", {})
    known = {f.name for f in fields(Preprocess)}
    values = {k: v for k, v in settings.items() if k in known}
    if isinstance(values.get("limits"), dict):
        limit_keys = {f.name for f in fields(Limits)}
        values["limits"] = Limits(**{k: v for k, v in values["limits"].items() if k in limit_keys})
    return Preprocess(**values)


INFER_HELP = """\
Predict with a trained classifier on new data, one JSON line per sample, in input order.

Inputs (choose one):
  --manifest FILE   a JSON Lines manifest (paths relative to its folder; labels ignored)
  --folder DIR      files grouped into samples by stem: x.png + x.wav + x.txt -> sample "x"
                    (extensions: images .png .jpg .jpeg .bmp .webp .tif .tiff, audio .wav
                    .flac .ogg, video .mp4 .avi .mov .mkv .webm, text .txt; decoding goes
                    by content; sub-folders and hidden files are ignored)
  --text/--image/--audio/--video   one sample from the command line

Each record: {"line", "id", "status": "ok"|"error", "label", "top_k": [[label, prob], ...],
"modalities", "error"}, and with --index "retrieved": [[id, score], ...], one strict JSON line (UTF-8; no NaN; file names that are not UTF-8
are escaped as \\xNN). A bad sample gets status "error" and the reason (naming the file or
line): files that do not decode, audio holding NaN/inf, text that is not valid Unicode, a
model output that is not finite; the others go on.

Exit status: 0 when every sample succeeded, 1 when any failed, 2 when the command could not
start (bad arguments, unreadable manifest, checkpoint or --out), 3 on a bug in mmctx (the
traceback is written to a log file named on stderr).
"""


def _infer_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmctx infer",
        description=INFER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--ckpt", help="checkpoint written by `mmctx fit`")
    model.add_argument(
        "--export", help="folder written by `mmctx export` (or a torch model of `mmctx compress`)"
    )
    model.add_argument("--onnx", help="folder with model.onnx + config.json (`mmctx compress`)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--manifest", help="JSON Lines manifest to predict on")
    source.add_argument("--folder", help="folder of media files, grouped by stem")
    parser.add_argument("--text", help="inline text of a single sample")
    for key in ("image", "audio", "video"):
        parser.add_argument(f"--{key}", action="append", help=f"{key} file (repeatable)")
    parser.add_argument("--id", default="sample", help="id of a command-line sample")
    parser.add_argument("--out", default="-", help="output JSON Lines file (default: stdout)")
    parser.add_argument("--batch-size", type=at_least(1), default=16, help="default: %(default)s")
    parser.add_argument(
        "--top-k", type=at_least(1), default=3, help="classes per record (default: 3)"
    )
    parser.add_argument(
        "--workers", type=at_least(0), default=2, help="decoding threads (default: %(default)s)"
    )
    parser.add_argument("--root", help="refuse paths that resolve outside this folder")
    parser.add_argument(
        "--index",
        help="retrieval index folder (`mmctx index build`): each record lists the items it "
        "read as retrieved: [[id, score], ...] (default: the index a retrieval model names)",
    )
    parser.add_argument("--retrieve-k", type=at_least(1), default=4, help="neighbours (default: 4)")
    limits = parser.add_argument_group(
        "limits", "default: the values the model was trained with (saved in the checkpoint)"
    )
    limits.add_argument("--max-image-pixels", type=at_least(1), help="larger images are refused")
    limits.add_argument("--max-audio-seconds", type=float, help="longer audio is refused")
    limits.add_argument(
        "--crop-long-audio",
        action=argparse.BooleanOptionalAction,
        help="keep the first --max-audio-seconds of longer audio instead of refusing it",
    )
    parser.add_argument(
        "--device", type=device_name, help="cpu, cuda, cuda:1, ... (default: cuda if available)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _infer_inputs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> InputRows:
    """The rows the arguments name (a manifest, a folder, or one command-line sample)."""
    single = [args.text, args.image, args.audio, args.video]
    if (args.manifest or args.folder) and any(v is not None for v in single):
        parser.error("give --manifest, --folder, or --text/--image/--audio/--video, not several")
    if args.manifest:
        return rows_from_manifest(args.manifest)
    if args.folder:
        return rows_from_folder(args.folder)
    if any(v is not None for v in single):
        row = row_from_arguments(args.text, args.image, args.audio, args.video, args.id)
        return InputRows([(1, row)], Path.cwd(), 1, root=UNCONFINED)
    parser.error("nothing to predict on: give --manifest, --folder or --text/--image/...")


def _infer_predictor(args: argparse.Namespace) -> Predictor:
    """The model the arguments name, with the decode limits they override."""
    if args.ckpt is not None:
        predictor = Predictor.from_checkpoint(args.ckpt, args.device)
    elif args.onnx is not None:
        predictor = Predictor.from_onnx(args.onnx)
    else:
        predictor = Predictor.from_export(args.export, args.device)
    changed = {
        "max_image_pixels": args.max_image_pixels,
        "max_audio_seconds": args.max_audio_seconds,
        "crop_long_audio": args.crop_long_audio,
    }
    predictor.set_limits(**{k: v for k, v in changed.items() if v is not None})
    return predictor


def write_records(
    records: Iterable[dict[str, Any]], out: IO[str], *, total: int | None, progress: bool
) -> tuple[dict[str, int], str | None]:
    """Write one JSON line per record (valid JSON and UTF-8 whatever the record holds).

    Returns:
        ``({"ok": n, "error": n}, the first error message or None)``.
    """
    # JSON escapes everything else; a stream that cannot take UTF-8 gets ASCII-only JSON.
    ascii_only = "utf" not in (getattr(out, "encoding", None) or "utf-8").lower()
    counts, first_error = {"ok": 0, "error": 0}, None
    bar = tqdm(records, total=total, unit="sample", disable=not progress or None, file=sys.stderr)
    for record in bar:
        line, record = record_json(record, ascii_only=ascii_only)
        out.write(line + "\n")
        counts[record["status"]] += 1
        first_error = first_error or record["error"]
    return counts, first_error


def infer_main(argv: list[str]) -> int:
    """``mmctx infer``: see :data:`INFER_HELP`."""
    parser = _infer_parser()
    args = parser.parse_args(argv)
    try:
        inputs = _infer_inputs(args, parser)
        predictor = _infer_predictor(args)
        if args.index:
            predictor.use_index(args.index, args.retrieve_k)
        if hasattr(predictor.model, "read_neighbours") and predictor.index is None:
            raise ValueError(
                f"{args.ckpt or args.export}: this model reads retrieved items; give --index "
                "INDEX (built from this checkpoint with `mmctx index build`)"
            )
        out = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8")  # noqa: SIM115
    except (OSError, CheckpointError, ValueError) as err:
        print(f"mmctx infer: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    logging.getLogger("mmctx.data").setLevel(logging.ERROR)  # errors go into the records
    start = time.perf_counter()
    records = predictor.predict_rows(
        inputs, batch_size=args.batch_size, top_k=args.top_k, workers=args.workers, root=args.root
    )
    try:
        counts, first_error = write_records(
            records, out, total=inputs.total, progress=not args.no_progress
        )
    finally:
        if out is not sys.stdout:
            out.close()
    seconds = time.perf_counter() - start
    total = counts["ok"] + counts["error"]
    where = "" if args.out == "-" else f" -> {one_line(args.out)}"
    summary = (
        f"mmctx infer: {total} samples, {counts['ok']} ok, {counts['error']} failed "
        f"in {seconds:.1f} s ({total / max(seconds, 1e-9):.1f} samples/s){where}"
    )
    if inputs.ignored:  # each item one line, whatever the names hold
        summary += f"\n  ignored in the folder: {one_line(', '.join(inputs.ignored))}"
    if predictor.neighbours_skipped:
        summary += (
            f"\n  {predictor.neighbours_skipped} retrieved items could not be read and were "
            "skipped (listed per record under retrieval_skipped)"
        )
    if first_error:
        summary += f"\n  first error: {one_line(first_error)}"
    print(summary, file=sys.stderr)
    return 1 if counts["error"] else 0
