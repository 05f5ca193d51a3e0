"""A vector index of corpus items for retrieval: faiss + numpy, no model and no Lightning.

A :class:`VectorIndex` holds one L2-normalised vector per item (inner product = cosine),
each under the item's string id, with the item's manifest row beside it. Kinds:

- ``flat``: exact search (``IndexFlatIP``), a scan of every vector; for small corpora.
- ``pq``: a scan of 4-bit product-quantised codes (``IndexPQFastScan``, ``pq_m``
  sub-quantisers: d/4 bytes per item by default) whose best ``rerank_factor * k`` items are
  re-ranked exactly (``IndexRefineFlat``, which keeps the full vectors too). Trained (k-means
  per sub-space) on the vectors of the first :meth:`VectorIndex.add`. The fastest kind at
  recall@10 >= 0.95 on unstructured vectors (``benchmarks/retrieval_bench.py``).
- ``hnsw``: a graph (``IndexHNSWFlat``); fast on structured embeddings, slow to build (about
  1,000 items/s at 100k on 2 cores) and weak on unstructured ones.

``kind="auto"`` picks by size at the first add: ``flat`` up to :data:`FLAT_MAX` items,
``pq`` above. Items sit in a faiss ``IndexIDMap2``, so they are added and removed by id and
their vectors can be read back.

On disk (:meth:`VectorIndex.save`) an index is a folder of three files:

- ``index.faiss``: the faiss index (``faiss.write_index``);
- ``items.jsonl``: one line per item: ``{"n": faiss id, "id": item id, "row": manifest row}``;
- ``meta.json``: format, kind, dimension, HNSW settings, and ``model`` (what embedded the
  items: a fingerprint of its weights, and the checkpoint it came from), plus ``base``,
  the folder the rows' relative paths start from.

``VectorIndex.load(folder, mmap=True)`` maps ``index.faiss`` into memory instead of reading
it (faiss ``IO_FLAG_MMAP_IFC``, every kind offered here; a faiss without that flag reads
the file as before): pages are read when searched, shared between processes, and a large
index opens at once. Such an index is read-only (changing it is a ``ValueError``; faiss
would abort the process). :meth:`VectorIndex.save` writes a new
``index.faiss`` beside the old and renames it into place, so a process that has the old one
mapped keeps reading it intact.

faiss is imported inside the functions that use it.

Shape legend: n = items, q = queries, d = vector width, k = neighbours.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

FORMAT = "mmctx-index-1"
INDEX_FILE, ITEMS_FILE, META_FILE = "index.faiss", "items.jsonl", "meta.json"
FLAT_MAX = 20_000  # kind="auto": exact search up to this many items, "pq" above
KINDS = ("auto", "flat", "pq", "hnsw")
PQ_MIN_TRAIN = 256  # vectors a "pq" index needs in its first add (its training set)


class IndexMismatchError(ValueError):
    """An index that is missing, unreadable, or built by another model or at another width."""


class Hit(NamedTuple):
    """One retrieved item."""

    id: str
    score: float  # inner product of normalised vectors (cosine), higher is nearer
    row: dict[str, Any]


def normalise(vectors: Any) -> np.ndarray:
    """``(n, d)`` float32, each row scaled to unit length (zero rows stay zero)."""
    x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f"vectors must be 2-D (n, d), got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def fingerprint(state: dict[str, Any]) -> str:
    """A short hash of a ``state_dict`` (names, shapes and values): same weights, same hash."""
    digest = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        digest.update(name.encode())
        if hasattr(value, "detach"):
            array = value.detach().cpu().float().contiguous().numpy()
            digest.update(str(array.shape).encode())
            digest.update(array.tobytes())
    return digest.hexdigest()[:16]


@dataclass
class VectorIndex:
    """Vectors under string ids, searchable by inner product.

    Args:
        dim: Vector width.
        kind: ``"flat"`` (exact), ``"pq"`` or ``"hnsw"`` (approximate) or ``"auto"``
            (decided at the first :meth:`add` by its size: flat up to :data:`FLAT_MAX`
            items, pq above).
        hnsw_m: HNSW neighbours per node.
        ef_construction: HNSW build-time beam width.
        ef_search: HNSW search-time beam width (recall against speed).
        pq_m: PQ sub-quantisers (a divisor of ``dim``; default ``dim // 2`` when even).
        rerank_factor: PQ: how many times ``k`` items the code scan passes to the exact
            re-ranking (recall against speed).
        model: What embedded the items (``{"fingerprint": ..., "ckpt": ...}``), checked by
            :meth:`check_model`.
        base: Folder the rows' relative paths start from.
    """

    dim: int
    kind: str = "auto"
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    pq_m: int | None = None
    rerank_factor: int = 20
    model: dict[str, Any] = field(default_factory=dict)
    base: str = "."
    items: dict[int, tuple[str, dict[str, Any]]] = field(default_factory=dict, repr=False)
    next_n: int = 0
    _faiss: Any = field(default=None, repr=False)
    read_only: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise ValueError(f"dim must be > 0, got {self.dim}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.pq_m is None:
            self.pq_m = self.dim // 2 if self.dim % 2 == 0 else self.dim
        if self.dim % self.pq_m or self.rerank_factor < 1:
            raise ValueError(
                f"need pq_m dividing dim={self.dim} and rerank_factor >= 1, got "
                f"{self.pq_m} and {self.rerank_factor}"
            )
        self._by_id = {key: n for n, (key, _) in self.items.items()}

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, key: object) -> bool:
        return key in self._by_id

    def ids(self) -> list[str]:
        """Item ids, in the order they were added."""
        return [key for key, _ in self.items.values()]

    def _make(self, kind: str) -> Any:
        import faiss

        if kind == "flat":
            base = faiss.IndexFlatIP(self.dim)
        elif kind == "pq":
            codes = faiss.IndexPQFastScan(self.dim, self.pq_m, 4, faiss.METRIC_INNER_PRODUCT)
            base = faiss.IndexRefineFlat(codes)
            base.k_factor = self.rerank_factor
        else:
            base = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            base.hnsw.efConstruction = self.ef_construction
            base.hnsw.efSearch = self.ef_search
        return faiss.IndexIDMap2(base)

    def add(self, vectors: Any, ids: list[str], rows: list[dict[str, Any]] | None = None) -> None:
        """Add items: ``vectors`` ``(n, d)`` (normalised here), their ids and manifest rows.

        Raises:
            ValueError: A width other than ``dim``, lengths that differ, an id that is
                already in the index or repeated, or an index loaded memory-mapped.
        """
        self._check_writable()
        x = normalise(vectors)
        rows = rows if rows is not None else [{"id": key} for key in ids]
        if x.shape[1] != self.dim:
            raise ValueError(f"vectors have width {x.shape[1]}, the index holds dim={self.dim}")
        if not (len(x) == len(ids) == len(rows)):
            raise ValueError(f"got {len(x)} vectors, {len(ids)} ids and {len(rows)} rows")
        taken = [key for key in ids if key in self._by_id]
        if taken or len(set(ids)) != len(ids):
            raise ValueError(f"ids already in the index or repeated: {taken or ids}")
        if not ids:
            return
        if self._faiss is None:
            if self.kind == "auto":
                self.kind = "flat" if len(ids) <= FLAT_MAX else "pq"
            self._faiss = self._make(self.kind)
        if not self._faiss.is_trained:
            if len(x) < PQ_MIN_TRAIN:
                raise ValueError(
                    f"a {self.kind!r} index learns its codes from its first add, which needs "
                    f">= {PQ_MIN_TRAIN} vectors (got {len(x)}); use kind 'flat' for fewer"
                )
            self._faiss.train(x)
        numbers = np.arange(self.next_n, self.next_n + len(ids), dtype=np.int64)
        self._faiss.add_with_ids(x, numbers)
        for n, key, row in zip(numbers.tolist(), ids, rows, strict=True):
            self.items[n] = (key, row)
            self._by_id[key] = n
        self.next_n += len(ids)

    def remove(self, ids: list[str]) -> int:
        """Remove items by id; returns how many went. HNSW graphs and PQ code scans
        cannot drop items, so those are rebuilt from the vectors they keep (O(n) adds; PQ
        retrained on them).

        Raises:
            KeyError: An id that is not in the index (nothing is removed then).
            ValueError: The index was loaded memory-mapped (read-only).
        """
        self._check_writable()
        unknown = [key for key in ids if key not in self._by_id]
        if unknown:
            raise KeyError(f"not in the index: {unknown[:10]}")
        numbers = np.array([self._by_id.pop(key) for key in set(ids)], dtype=np.int64)
        for n in numbers.tolist():
            del self.items[n]
        if self._faiss is None or not len(numbers):
            return len(numbers)
        if self.kind == "flat":
            self._faiss.remove_ids(numbers)
        else:
            keep = np.array(sorted(self.items), dtype=np.int64)
            vectors = self._vectors_by_number(keep)
            if self.kind == "pq" and len(keep) < PQ_MIN_TRAIN:
                self.kind = "flat"  # too few left to learn codes from; exact is fast anyway
            self._faiss = self._make(self.kind)
            if len(keep):
                if not self._faiss.is_trained:
                    self._faiss.train(vectors)
                self._faiss.add_with_ids(vectors, keep)
        return len(numbers)

    def _vectors_by_number(self, numbers: np.ndarray) -> np.ndarray:
        out = np.empty((len(numbers), self.dim), dtype=np.float32)
        for i, n in enumerate(numbers.tolist()):
            out[i] = self._faiss.reconstruct(int(n))
        return out

    def vectors(self, ids: list[str]) -> np.ndarray:
        """The stored (normalised) vectors of ``ids``, ``(n, d)``."""
        return self._vectors_by_number(np.array([self._by_id[k] for k in ids], dtype=np.int64))

    def _check_writable(self) -> None:
        if self.read_only:
            raise ValueError(
                "this index was loaded memory-mapped and is read-only: load it with "
                "VectorIndex.load(folder, mmap=False) to change it"
            )

    def set_vectors(self, ids: list[str], vectors: Any) -> None:
        """Replace the vectors of items already in the index (e.g. re-embedded with a
        newer encoder), keeping their ids and rows."""
        rows = [self.items[self._by_id[key]][1] for key in ids]
        self.remove(ids)
        self.add(vectors, ids, rows)

    def search(
        self, queries: Any, k: int, exclude: list[set[str]] | None = None
    ) -> list[list[Hit]]:
        """The ``k`` nearest items of each query ``(q, d)`` (normalised here), best first.

        Args:
            queries: ``(q, d)`` query vectors.
            k: Neighbours per query (fewer when the index holds fewer items).
            exclude: Per query, ids never to return (e.g. the query's own id).
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        x = normalise(queries)
        if x.shape[1] != self.dim:
            raise ValueError(f"queries have width {x.shape[1]}, the index holds dim={self.dim}")
        if self._faiss is None or not self.items:
            return [[] for _ in range(len(x))]
        extra = max((len(e) for e in exclude), default=0) if exclude else 0
        fetch = min(k + extra, len(self.items))
        if self.kind == "hnsw":
            import faiss

            faiss.downcast_index(self._faiss.index).hnsw.efSearch = max(self.ef_search, fetch)
        elif self.kind == "pq":
            import faiss

            faiss.downcast_index(self._faiss.index).k_factor = float(self.rerank_factor)
        scores, numbers = self._faiss.search(x, fetch)  # (q, fetch)
        out = []
        for row in range(len(x)):
            skip = exclude[row] if exclude else set()
            hits = []
            for score, n in zip(scores[row].tolist(), numbers[row].tolist(), strict=True):
                if n < 0:
                    continue
                key, item = self.items[n]
                if key not in skip:
                    hits.append(Hit(key, float(score), item))
                if len(hits) == k:
                    break
            out.append(hits)
        return out

    def check_model(self, model_fingerprint: str, dim: int, where: str | os.PathLike[str]) -> None:
        """Refuse an index built by another model or at another width.

        Raises:
            IndexMismatchError: Naming ``where`` (the index's folder) and both values.
        """
        if dim != self.dim:
            raise IndexMismatchError(
                f"{where}: the index holds {self.dim}-d vectors, the model embeds {dim}-d "
                "ones; rebuild it with `mmctx index build` and this model"
            )
        built = self.model.get("fingerprint")
        if built and built != model_fingerprint:
            raise IndexMismatchError(
                f"{where}: the index was built by another model (fingerprint {built}, from "
                f"{self.model.get('ckpt')}), this model's is {model_fingerprint}; rebuild it "
                "with `mmctx index build` and this model"
            )

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the index into ``folder`` (created): index.faiss, items.jsonl, meta.json."""
        import faiss

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        if self._faiss is None:
            self._faiss = self._make("flat" if self.kind == "auto" else self.kind)
        partial = out / (INDEX_FILE + ".partial")
        faiss.write_index(self._faiss, str(partial))
        os.replace(partial, out / INDEX_FILE)  # a reader mapping the old file keeps it whole
        with open(out / ITEMS_FILE, "w", encoding="utf-8") as f:
            for n, (key, row) in self.items.items():
                f.write(json.dumps({"n": n, "id": key, "row": row}) + "\n")
        meta = {
            "format": FORMAT,
            "kind": self.kind,
            "dim": self.dim,
            "count": len(self.items),
            "next_n": self.next_n,
            "hnsw": {"m": self.hnsw_m, "ef_construction": self.ef_construction},
            "ef_search": self.ef_search,
            "pq": {"m": self.pq_m, "rerank_factor": self.rerank_factor},
            "model": self.model,
            "base": self.base,
        }
        (out / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        return out

    @classmethod
    def load(cls, folder: str | os.PathLike[str], mmap: bool = False) -> VectorIndex:
        """Read a folder written by :meth:`save`; with ``mmap``, map ``index.faiss`` into
        memory instead of reading it (the index is then read-only).

        Raises:
            IndexMismatchError: A missing or unreadable file, named.
        """
        import faiss

        folder = Path(folder)
        for name in (META_FILE, ITEMS_FILE, INDEX_FILE):
            if not (folder / name).is_file():
                raise IndexMismatchError(
                    f"{folder / name}: missing; an index folder (from `mmctx index build`) "
                    f"holds {META_FILE}, {ITEMS_FILE} and {INDEX_FILE}"
                )
        try:
            meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
            items = {}
            with open(folder / ITEMS_FILE, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        item = json.loads(line)
                        items[int(item["n"])] = (str(item["id"]), item["row"])
            mapped = getattr(faiss, "IO_FLAG_MMAP_IFC", 0)  # an older faiss reads the file
            flags = mapped | faiss.IO_FLAG_READ_ONLY if mmap else 0
            index = faiss.read_index(str(folder / INDEX_FILE), flags)
            out = cls(
                dim=int(meta["dim"]),
                kind=meta["kind"],
                hnsw_m=meta["hnsw"]["m"],
                ef_construction=meta["hnsw"]["ef_construction"],
                ef_search=meta["ef_search"],
                pq_m=meta.get("pq", {}).get("m"),
                rerank_factor=meta.get("pq", {}).get("rerank_factor", 20),
                model=meta.get("model", {}),
                base=meta.get("base", "."),
                items=items,
                next_n=int(meta["next_n"]),
            )
        except (
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            OverflowError,
            RuntimeError,
            UnicodeDecodeError,
        ) as err:
            raise IndexMismatchError(f"{folder}: not a readable mmctx index ({err})") from None
        if index.d != out.dim or index.ntotal != len(items):
            raise IndexMismatchError(
                f"{folder / INDEX_FILE}: holds {index.ntotal} vectors of width {index.d}, "
                f"{META_FILE} and {ITEMS_FILE} say {len(items)} of width {out.dim}"
            )
        out._faiss, out.read_only = index, mmap
        return out
