"""VectorIndex: build, search, add, remove, save/load and the mismatch errors, on vectors
whose nearest neighbours are known by construction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmctx.index import IndexMismatchError, VectorIndex, fingerprint, normalise


def _axes(n: int = 6, d: int = 8) -> np.ndarray:
    """Item i points along axis i (unit vectors): the nearest item to e_i is item i."""
    return np.eye(n, d, dtype=np.float32)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_search_add_remove_round_trip(kind, tmp_path):
    index = VectorIndex(dim=8, kind=kind)
    ids = [f"item{i}" for i in range(6)]
    index.add(_axes() * 3.0, ids, [{"id": k, "text": k} for k in ids])  # scaled: normalised
    query = np.zeros((1, 8), dtype=np.float32)
    query[0, 2], query[0, 4] = 1.0, 0.5  # nearest item2 (cos 0.894), then item4 (0.447)
    hits = index.search(query, k=3)[0]
    assert [h.id for h in hits[:2]] == ["item2", "item4"]
    assert hits[0].score == pytest.approx(1 / np.sqrt(1.25), abs=1e-5)
    assert hits[0].row == {"id": "item2", "text": "item2"}

    index.add(np.eye(1, 8, 6, dtype=np.float32), ["new"], [{"id": "new"}])
    assert index.search(np.eye(1, 8, 6), k=1)[0][0].id == "new"

    assert index.remove(["item2"]) == 1
    hits = index.search(query, k=2)[0]
    assert hits[0].id == "item4" and "item2" not in [h.id for h in hits]

    index.save(tmp_path / "idx")
    again = VectorIndex.load(tmp_path / "idx")
    assert again.kind == kind and len(again) == 6
    assert [h.id for h in again.search(query, k=2)[0]] == [h.id for h in hits]
    again.add(np.eye(1, 8, 7), ["later"])  # numbering goes on after a reload
    assert again.search(np.eye(1, 8, 7), k=1)[0][0].id == "later"


def test_exclude_never_returns_the_excluded_id():
    index = VectorIndex(dim=8, kind="flat")
    index.add(_axes(), [f"item{i}" for i in range(6)])
    hits = index.search(_axes()[:2], k=2, exclude=[{"item0"}, set()])
    assert "item0" not in [h.id for h in hits[0]] and len(hits[0]) == 2
    assert hits[1][0].id == "item1"


def test_auto_kind_by_size(monkeypatch):
    import mmctx.index

    monkeypatch.setattr(mmctx.index, "FLAT_MAX", 4)
    small, large = VectorIndex(dim=8), VectorIndex(dim=8)
    small.add(_axes(3), ["a", "b", "c"])
    large.add(np.random.default_rng(0).standard_normal((300, 8)), [str(i) for i in range(300)])
    assert (small.kind, large.kind) == ("flat", "pq")


def test_refused_inputs():
    index = VectorIndex(dim=8, kind="flat")
    index.add(_axes(2), ["a", "b"])
    with pytest.raises(ValueError, match="already in the index"):
        index.add(_axes(1), ["a"])
    with pytest.raises(ValueError, match="width 4, the index holds dim=8"):
        index.add(np.ones((1, 4)), ["c"])
    with pytest.raises(KeyError, match="not in the index"):
        index.remove(["zzz"])
    with pytest.raises(ValueError, match="kind must be one of"):
        VectorIndex(dim=8, kind="ivf")


def test_load_and_model_check_errors_name_the_file(tmp_path):
    with pytest.raises(IndexMismatchError, match=r"nothere.meta\.json: missing"):
        VectorIndex.load(tmp_path / "nothere")
    index = VectorIndex(dim=8, kind="flat", model={"fingerprint": "abc", "ckpt": "m.ckpt"})
    index.add(_axes(2), ["a", "b"])
    folder = index.save(tmp_path / "idx")
    loaded = VectorIndex.load(folder)
    loaded.check_model("abc", 8, folder)  # the same model: fine
    with pytest.raises(IndexMismatchError, match=r"idx: the index holds 8-d vectors.*16-d"):
        loaded.check_model("abc", 16, folder)
    with pytest.raises(IndexMismatchError, match=r"idx: the index was built by another model"):
        loaded.check_model("def", 8, folder)
    good = (folder / "meta.json").read_text()
    for bad in ("{not json", good.replace('"dim": 8', '"dim": NaN'), "[]"):
        (folder / "meta.json").write_text(bad)  # NaN / a list: used after parsing, still named
        with pytest.raises(IndexMismatchError, match="idx: not a readable mmctx index"):
            VectorIndex.load(folder)


def test_fingerprint_follows_the_weights():
    import torch

    a = {"w": torch.ones(2, 2)}
    assert fingerprint(a) == fingerprint({"w": torch.ones(2, 2)})
    assert fingerprint(a) != fingerprint({"w": torch.ones(2, 2) * 2})
    assert np.allclose(np.linalg.norm(normalise(np.ones((3, 5))), axis=1), 1.0)


def test_pq_index_re_ranks_to_the_exact_neighbours(tmp_path):
    """With a shortlist of rerank_factor * k codes re-ranked exactly, PQ finds what exact
    search finds; removing rebuilds it; too few vectors to learn codes from are refused."""
    rng = np.random.default_rng(1)
    data = rng.standard_normal((400, 16)).astype(np.float32)
    queries = data[:20] + 0.1 * rng.standard_normal((20, 16)).astype(np.float32)
    ids = [f"v{i}" for i in range(400)]
    flat, pq = VectorIndex(dim=16, kind="flat"), VectorIndex(dim=16, kind="pq", rerank_factor=20)
    flat.add(data, ids)
    pq.add(data, ids)
    assert pq.pq_m == 8

    def top(index: VectorIndex) -> list[list[str]]:
        return [[h.id for h in hits] for hits in index.search(queries, k=3)]

    assert top(pq) == top(flat) and all(t[0] == f"v{i}" for i, t in enumerate(top(pq)))
    assert pq.search(queries[:1], k=1)[0][0].score == pytest.approx(
        flat.search(queries[:1], k=1)[0][0].score, abs=1e-5
    )  # re-ranked with the full vectors: exact scores
    pq.remove(["v0"])
    flat.remove(["v0"])
    assert top(pq) == top(flat) and "v0" not in sum(top(pq), [])
    pq.save(tmp_path / "pq")
    again = VectorIndex.load(tmp_path / "pq")
    assert (again.kind, again.pq_m, again.rerank_factor) == ("pq", 8, 20)
    assert top(again) == top(flat)
    with pytest.raises(ValueError, match=">= 256 vectors"):
        VectorIndex(dim=16, kind="pq").add(data[:10], ids[:10])


@pytest.mark.parametrize("kind", ["flat", "hnsw", "pq"])
def test_a_memory_mapped_index_answers_the_same_and_stays_read_only(kind, tmp_path):
    vectors = np.random.default_rng(1).standard_normal((300, 8)).astype(np.float32)
    ids = [f"v{i}" for i in range(300)]
    index = VectorIndex(dim=8, kind=kind)
    index.add(vectors, ids)
    index.save(tmp_path / "idx")
    queries = vectors[:20] + 0.1
    read = VectorIndex.load(tmp_path / "idx")
    mapped = VectorIndex.load(tmp_path / "idx", mmap=True)
    expected = [[(h.id, round(h.score, 5)) for h in row] for row in read.search(queries, k=5)]
    got = [[(h.id, round(h.score, 5)) for h in row] for row in mapped.search(queries, k=5)]
    assert got == expected and expected[0][0][0] == "v0"
    maps = Path("/proc/self/maps")
    if maps.exists():  # Linux: the file is mapped, not read into memory
        assert str((tmp_path / "idx" / "index.faiss").resolve()) in maps.read_text()
    with pytest.raises(ValueError, match="memory-mapped and is read-only"):
        mapped.add(vectors[:1], ["more"])
    with pytest.raises(ValueError, match="memory-mapped and is read-only"):
        mapped.remove(["v0"])

    read.remove(["v0"])  # a writer replaces the file; the mapped reader keeps the old one
    read.save(tmp_path / "idx")
    assert [[(h.id, round(h.score, 5)) for h in r] for r in mapped.search(queries, k=5)] == expected
    assert "v0" not in [h.id for h in VectorIndex.load(tmp_path / "idx", mmap=True)
                        .search(queries[:1], k=5)[0]]  # fmt: skip
