"""``mmctx index`` and ``mmctx infer --index`` with the tiny trained demo classifier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmctx.cli import main
from mmctx.index import VectorIndex
from mmctx.pipelines.retrieval import build_index, search_index


def _corpus(trained, tmp_path: Path, n: int = 6) -> Path:
    """The first ``n`` demo test rows plus one row whose image is missing, as a manifest
    beside the demo data (its paths stay inside the manifest's folder)."""
    data = trained["data"]
    rows = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()][:n]
    rows.append({"id": "broken", "image": "images/no_such.png"})
    path = data / f"corpus-{tmp_path.name}-{n}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_build_search_add_remove(trained, tmp_path, capsys):
    corpus = _corpus(trained, tmp_path)
    out = tmp_path / "idx"
    code = main(["index", "build", "--ckpt", str(trained["ckpt"]), "--manifest", str(corpus),
                 "--out", str(out), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "no_such.png" in err and "1 rows skipped" in err  # the bad row only
    index = VectorIndex.load(out)
    assert len(index) == 6 and index.kind == "flat" and "broken" not in index
    first = json.loads(corpus.read_text().splitlines()[0])

    # A corpus item's own content finds itself first, at cosine ~1.
    query = {k: v for k, v in first.items() if k in ("text", "image", "audio")}
    query.update({k: str(corpus.parent / query[k]) for k in ("image", "audio") if k in query})
    hits = search_index(out, trained["ckpt"], query, k=3, device="cpu")
    assert hits[0].id == first["id"] and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert len(hits) == 3 and hits[0].score >= hits[1].score >= hits[2].score

    assert main(["index", "remove", str(out), first["id"]]) == 0
    hits = search_index(out, trained["ckpt"], query, k=3, device="cpu")
    assert first["id"] not in [h.id for h in hits]
    assert main(["index", "remove", str(out), "nope"]) == 2
    assert "not in the index" in capsys.readouterr().err

    again = corpus.parent / f"again-{tmp_path.name}.jsonl"
    again.write_text(json.dumps(first) + "\n")
    assert main(["index", "add", str(out), "--ckpt", str(trained["ckpt"]), "--manifest",
                 str(again), "--no-progress"]) == 0  # fmt: skip
    assert search_index(out, trained["ckpt"], query, k=1, device="cpu")[0].id == first["id"]
    assert main(["index", "search", str(out), "--ckpt", str(trained["ckpt"]), "-k", "2",
                 "--text", first.get("text", "seven")]) == 0  # fmt: skip
    assert len(capsys.readouterr().out.strip().splitlines()) >= 2


def _infer(argv, capsys) -> tuple[int, list[dict], str]:
    code = main(["infer", "--no-progress", *argv])
    captured = capsys.readouterr()
    return code, [json.loads(x) for x in captured.out.splitlines()], captured.err


def test_infer_with_and_without_index(trained, tmp_path, capsys):
    corpus = _corpus(trained, tmp_path)
    build_index(trained["ckpt"], corpus, tmp_path / "idx", device="cpu")
    manifest = str(trained["data"] / "val.jsonl")
    ckpt = ["--ckpt", str(trained["ckpt"]), "--manifest", manifest, "--device", "cpu"]
    code, plain, _ = _infer(ckpt, capsys)
    assert code == 0 and plain and all("retrieved" not in r for r in plain)
    code, records, _ = _infer([*ckpt, "--index", str(tmp_path / "idx"), "--retrieve-k", "2"],
                              capsys)  # fmt: skip
    assert code == 0 and len(records) == len(plain)
    corpus_ids = set(VectorIndex.load(tmp_path / "idx").ids())
    for record in records:
        assert len(record["retrieved"]) == 2 and {i for i, _ in record["retrieved"]} <= corpus_ids
        assert record["retrieved"][0][1] >= record["retrieved"][1][1]


def test_mismatched_or_missing_index_is_a_clear_error(trained, tmp_path, capsys):
    base = ["--ckpt", str(trained["ckpt"]), "--text", "seven", "--device", "cpu"]
    code, _, err = _infer([*base, "--index", str(tmp_path / "none")], capsys)
    assert code == 2 and f"{tmp_path / 'none' / 'meta.json'}: missing" in err

    other = VectorIndex(dim=16, kind="flat")
    other.add(np.eye(2, 16), ["a", "b"])
    other.save(tmp_path / "wide")
    code, _, err = _infer([*base, "--index", str(tmp_path / "wide")], capsys)
    assert code == 2 and f"{tmp_path / 'wide'}: the index holds 16-d vectors" in err

    build_index(trained["ckpt"], _corpus(trained, tmp_path, 2), tmp_path / "idx", device="cpu")
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    meta["model"]["fingerprint"] = "0123456789abcdef"  # as if another model had built it
    (tmp_path / "idx" / "meta.json").write_text(json.dumps(meta))
    code, _, err = _infer([*base, "--index", str(tmp_path / "idx")], capsys)
    assert code == 2 and "idx: the index was built by another model" in err


# -- RetrievalClassifier -------------------------------------------------------------------


def _tiny(mode: str, corpus_rows: list[dict], tmp_path: Path, k: int = 2, tokens="pooled"):
    import torch

    from mmctx.data import Preprocess
    from mmctx.data.modalities import resolve_modalities
    from mmctx.encoders import TextTransformerEncoder
    from mmctx.nn.backbones import TransformerBackbone
    from mmctx.pipelines import RetrievalClassifier

    torch.manual_seed(0)
    model = RetrievalClassifier(
        {"text": TextTransformerEncoder(dim=16, depth=1, heads=2, max_tokens=16, dropout=0.0)},
        TransformerBackbone(dim=16, depth=1, heads=2),
        class_names=["a", "b"],
        k=k,
        mode=mode,
        neighbour_tokens=tokens,
    )
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in corpus_rows))
    model.load_corpus(path, resolve_modalities(["text"]), Preprocess())
    return model


def _batch(texts: list[str]) -> dict:
    from mmctx.data import Collate, Preprocess

    loaded = [{"id": f"s{i}", "line": i, "inputs": {"text": t}} for i, t in enumerate(texts)]
    return Collate(["text"], Preprocess(), None)(loaded)


CORPUS = [{"id": f"s{i}", "text": t} for i, t in enumerate(["red apple", "blue sky", "green leaf"])]


def test_a_sample_never_retrieves_itself(tmp_path):
    model = _tiny("frozen", CORPUS, tmp_path, k=2).eval()
    batch = _batch([r["text"] for r in CORPUS])  # the corpus items themselves, same ids
    query = model._query(batch["inputs"])
    idx, scores = model.retrieve(query)  # without exclusion each finds itself first
    assert idx[:, 0].tolist() == [0, 1, 2] and scores[:, 0].tolist() == pytest.approx([1] * 3)
    idx, _ = model.retrieve(query, exclude=batch["ids"])
    for row, own in enumerate(range(3)):
        assert own not in idx[row].tolist() and len(idx[row]) == 2
    logits = model._logits({**batch, "label": None})  # the training path excludes by id
    assert logits.shape == (3, 2)


@pytest.mark.parametrize("tokens", ["pooled", "sequence"])
@pytest.mark.parametrize("mode", ["realm", "frozen"])
def test_gradient_reaches_the_query_encoder_only_in_realm(mode, tokens, tmp_path):
    model = _tiny(mode, CORPUS, tmp_path, tokens=tokens)
    batch = _batch(["red sky", "green apple"])
    seen = {}
    query_fn = model._query

    def spy(inputs, **kwargs):
        q = query_fn(inputs, **kwargs)
        if q.requires_grad:
            q.retain_grad()
        seen["q"] = q
        return q

    model._query = spy
    model(batch["inputs"]).logsumexp(-1).sum().backward()
    q = seen["q"]
    if mode == "realm":
        assert q.grad is not None and q.grad.abs().sum() > 0  # through the retrieval scores
        assert all(p.grad is not None for p in model.retriever.encoders.parameters())
        assert model.retriever is not model.fused  # REALM's own retriever, not the reader
    else:
        assert not q.requires_grad
        assert all(p.grad is None for p in model.retriever.parameters())


def test_refresh_re_embeds_the_corpus_with_the_current_encoder(tmp_path):
    import torch

    model = _tiny("realm", CORPUS, tmp_path)
    before = model._corpus["vectors"].clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    model(_batch(["red sky"])["inputs"]).logsumexp(-1).sum().backward()
    optimizer.step()
    assert torch.equal(model._corpus["vectors"], before)  # stale until refreshed
    model.refresh_corpus()
    assert not torch.allclose(model._corpus["vectors"], before)


def test_retrieval_classifier_settings_are_checked():
    from mmctx.encoders import TextTransformerEncoder
    from mmctx.nn.backbones import TransformerBackbone
    from mmctx.pipelines import RetrievalClassifier

    enc = {"text": TextTransformerEncoder(dim=16, depth=1, heads=2)}
    with pytest.raises(ValueError, match="mode must be one of"):
        RetrievalClassifier(enc, TransformerBackbone(dim=16, depth=1, heads=2), ["a", "b"],
                            mode="dense")  # fmt: skip


def test_codeword_data_moves_every_code_to_a_new_class(tmp_path):
    from mmctx.datasets.codewords import CodeWordSpec, make_codeword_dataset

    paths = make_codeword_dataset(tmp_path / "cw", CodeWordSpec(num_samples=40, num_codes=10))
    folder = paths["train"].parent
    train = [json.loads(x) for x in (folder / "corpus_train.jsonl").read_text().splitlines()]
    test = [json.loads(x) for x in (folder / "corpus_test.jsonl").read_text().splitlines()]
    assert len(train) == 10 * 10 and len(test) == 10
    test_world = test[0]["text"].split()[1]
    assert all(test_world not in e["text"] for e in train)  # a world never seen in training
    for row in (json.loads(x) for x in paths["test"].read_text().splitlines()):
        code = next(e for e in test if e["text"].split()[2] in row["text"].split())
        assert code["text"].endswith(
            ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"][
                row["label"]
            ]
        )


@pytest.mark.slow
def test_retrieval_model_fits_indexes_and_infers_with_its_neighbours(tmp_path, capsys):
    """The whole loop through the CLI: fit a tiny RetrievalClassifier on the code-word data,
    build an index of the test corpus with it, infer with and without that index."""
    import sys

    config = str(Path(__file__).resolve().parents[2] / "configs" / "retrieval_demo.yaml")
    argv, sys.argv = sys.argv, ["mmctx"]
    try:
        code = main([
            "fit", "--config", config, "--data.num_samples", "60",
            "--data.init_args.num_codes", "10", "--data.init_args.train_worlds", "2",
            "--data.init_args.rounds", "2", "--model.init_args.warm_start_steps", "3",
            "--trainer.check_val_every_n_epoch", "1",
            "--data.cache_dir", str(tmp_path / "data"), "--trainer.max_epochs", "1",
            "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(tmp_path / "runs"),
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        ])  # fmt: skip
    finally:
        sys.argv = argv
    assert code == 0
    ckpt = str(tmp_path / "runs" / "checkpoints" / "last.ckpt")
    data = tmp_path / "data"
    assert main(["index", "build", "--ckpt", ckpt, "--manifest", str(data / "corpus_test.jsonl"),
                 "--out", str(tmp_path / "idx"), "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    base = ["--ckpt", ckpt, "--manifest", str(data / "test.jsonl"), "--device", "cpu"]
    code, records, _ = _infer([*base, "--index", str(tmp_path / "idx"), "--retrieve-k", "4"],
                              capsys)  # fmt: skip
    assert code == 0 and records
    corpus_ids = set(VectorIndex.load(tmp_path / "idx").ids())
    assert all(len(r["retrieved"]) == 4 and {i for i, _ in r["retrieved"]} <= corpus_ids
               for r in records)  # fmt: skip
    code, _, err = _infer(base, capsys)  # a retrieval model without an index says so
    assert code == 2 and "mmctx index build" in err


def test_codeword_rounds_keep_the_queries_and_redraw_the_mapping(tmp_path):
    from mmctx.datasets.codewords import CodeWordSpec, make_codeword_dataset

    spec = CodeWordSpec(num_samples=60, num_codes=10, train_worlds=2, rounds=3)
    folder = make_codeword_dataset(tmp_path / "cw", spec)["train"].parent
    rounds = [
        [json.loads(x) for x in (folder / name).read_text().splitlines()]
        for name in ("train.jsonl", "train_r1.jsonl", "train_r2.jsonl")
    ]
    assert [r["text"] for r in rounds[0]] == [r["text"] for r in rounds[2]]
    assert [r["label"] for r in rounds[0]] != [r["label"] for r in rounds[1]]
    corpus_r1 = (folder / "corpus_train_r1.jsonl").read_text().splitlines()
    means = {json.loads(x)["id"]: json.loads(x)["text"].split()[-1] for x in corpus_r1}
    digits = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    for row in rounds[1]:  # the round's corpus says each query's round label
        world, code = row["text"].split()[1], next(w for w in row["text"].split() if any(
            key == f"{row['text'].split()[1]}-{w}" for key in means))  # fmt: skip
        assert means[f"{world}-{code}"] == digits[row["label"]]


def _image_reader(tmp_path: Path):
    """A tiny text + image RetrievalClassifier in a Predictor, and a corpus of three items
    (text + PNG image) whose item "c-bad" has a corrupt image file."""
    import torch
    from PIL import Image

    from mmctx.encoders import ImageCNNEncoder, TextTransformerEncoder
    from mmctx.nn.backbones import TransformerBackbone
    from mmctx.pipelines import RetrievalClassifier
    from mmctx.pipelines.inference import Predictor

    torch.manual_seed(0)
    model = RetrievalClassifier(
        {"text": TextTransformerEncoder(dim=16, depth=1, heads=2, max_tokens=16),
         "image": ImageCNNEncoder(16, in_channels=3, width=4)},
        TransformerBackbone(dim=16, depth=1, heads=2), class_names=["a", "b"], mode="realm",
    )  # fmt: skip
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("good1", "good2"):
        Image.new("RGB", (8, 8), (200, 30, 30)).save(corpus / f"{name}.png")
    (corpus / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    rows = [{"id": f"c-{n}", "text": f"item {n}", "image": f"{n}.png"}
            for n in ("good1", "bad", "good2")]  # fmt: skip
    predictor = Predictor(model, {"modalities": ["text", "image"]}, device="cpu")
    return predictor, rows, corpus


def _index_of(predictor, rows: list[dict], corpus: Path, folder: Path) -> Path:
    from mmctx.index import fingerprint
    from mmctx.pipelines.inference import retriever_state

    model = predictor.model
    index = VectorIndex(dim=16, kind="flat", base=str(corpus),
                        model={"fingerprint": fingerprint(retriever_state(model))})  # fmt: skip
    index.add(np.random.default_rng(0).standard_normal((len(rows), 16)),
              [r["id"] for r in rows], rows)  # fmt: skip
    index.save(folder)
    return folder


def test_a_retrieved_item_that_fails_to_decode_is_a_counted_skip(tmp_path):
    from mmctx.pipelines.inference import InputRows

    predictor, rows, corpus = _image_reader(tmp_path)
    predictor.use_index(_index_of(predictor, rows, corpus, tmp_path / "idx"), k=2)
    queries = [(i + 1, {"id": f"q{i}", "text": t}) for i, t in enumerate(["item", "red", "x"])]
    records = list(predictor.predict_rows(InputRows(queries, tmp_path), batch_size=3))
    assert [r["status"] for r in records] == ["ok"] * 3
    for record in records:  # all three items are needed for two readable ones: bad is met
        assert sorted(i for i, _ in record["retrieved"]) == ["c-good1", "c-good2"]
        (skip,) = record["retrieval_skipped"]
        assert "bad.png" in skip and f"{tmp_path / 'idx' / 'items.jsonl'}, line 2" in skip
        assert all(np.isfinite(p) for _, p in record["top_k"])
    assert predictor.neighbours_skipped == 3  # once per sample that met it, decoded once
    assert set(predictor._neighbour_tokens) == {"c-good1", "c-good2"}  # encoded once, kept
    again = list(predictor.predict_rows(InputRows(queries, tmp_path), batch_size=3))
    assert [r["top_k"] for r in again] == [r["top_k"] for r in records]

    # With only unreadable items, each sample is an error naming the file, not a crash.
    predictor.use_index(_index_of(predictor, rows[1:2], corpus, tmp_path / "bad"), k=1)
    records = list(predictor.predict_rows(InputRows(queries[:2], tmp_path), batch_size=2))
    assert [r["status"] for r in records] == ["error"] * 2
    assert all("no retrieved item could be read" in r["error"] and "bad.png" in r["error"]
               for r in records)  # fmt: skip


@pytest.mark.parametrize("mode", ["realm", "frozen"])
def test_absent_neighbours_are_not_read(mode, tmp_path):
    import torch

    model = _tiny(mode, CORPUS, tmp_path, k=2).eval()
    batch = _batch(["red sky", "blue leaf"])
    scores = torch.tensor([[0.9, 0.5], [0.8, 0.7]])
    with torch.no_grad():
        alone = model.read_neighbours(batch["inputs"], model._collated([0, 2]), scores[:, :1])
        absent = model.read_neighbours(batch["inputs"], model._collated([0, 2, 1]), scores,
                                       torch.tensor([[True, False], [True, True]]))  # fmt: skip
        both = model.read_neighbours(batch["inputs"], model._collated([0, 1, 2, 1]), scores)
        tokens = model.encode_neighbours(model._collated([0, 1, 2, 1]))  # as infer caches them
        again = model.read_neighbours(batch["inputs"], tokens, scores)
    assert torch.allclose(both, again, atol=1e-6)
    assert torch.allclose(alone[0], absent[0], atol=1e-5)  # as if k were 1
    assert torch.allclose(absent[1], both[1], atol=1e-5) and not torch.allclose(alone, both)


def test_realm_inference_skips_neighbours_of_negligible_weight(tmp_path):
    import torch

    model = _tiny("realm", CORPUS, tmp_path, k=3)  # temperature 0.1, min_weight 1e-3
    scores = torch.tensor([[0.9, 0.85, 0.1], [0.2, 0.2, 0.2], [0.1, -5.0, -5.0]])
    assert model.worth_reading(scores).tolist() == [
        [True, True, False], [True, True, True], [True, False, False]
    ]  # fmt: skip
    assert _tiny("frozen", CORPUS, tmp_path, k=3).worth_reading(scores).all()


def test_warm_start_teaches_the_retriever_to_find_items_from_parts(tmp_path):
    """Inverse cloze: after a few steps, half-deleted corpus entries find their own entry."""
    import torch

    words = ["vorak", "telmi", "brizan", "qodu", "fenox", "kalek", "mitus", "zanbri"]
    rows = [{"id": f"e{i}", "text": f"in ka {w} means {d}"}
            for i, (w, d) in enumerate(zip(words, "01234567", strict=True))]  # fmt: skip
    model = _tiny("frozen", rows, tmp_path, k=1)
    queries = _batch([f"in ka {w}" for w in words])["inputs"]

    def hits() -> float:
        idx, _ = model.retrieve(model._query(queries))
        return float((idx[:, 0] == torch.arange(len(words))).float().mean())

    before = hits()
    found = model.warm_start_retriever(60, lr=3e-3)
    assert 0 < found <= 1 and hits() >= 0.9 > before
    assert all(not p.requires_grad for p in model.retriever.parameters())  # still frozen


def test_the_curriculum_puts_the_evidence_among_the_neighbours_and_holds_the_retriever(tmp_path):

    model = _tiny("realm", CORPUS, tmp_path, k=1)
    model.curriculum_steps = 5
    inputs = _batch(["red apple", "red apple"])["inputs"]
    query = model._query(inputs)
    idx, _ = model.retrieve(query)
    assert idx[:, 0].tolist() == [0, 0]
    rows = model._corpus_rows(["s0", "s2"], query.device)
    got, scores = model.include_evidence(query, idx, rows)
    assert got[:, 0].tolist() == [0, 2]  # found stays; missed replaces the last neighbour
    expected = query[1] @ model._corpus["vectors"][2]
    assert scores[1, 0].item() == pytest.approx(expected.item(), abs=1e-6)
    assert model._corpus_rows([None, "nope"], query.device).tolist() == [-1, -1]

    model(inputs, evidence=["s0", "s2"]).logsumexp(-1).sum().backward()  # within the curriculum
    assert all(p.grad is None for p in model.retriever.parameters())
    assert any(p.grad is not None for p in model.fused.parameters())
    model.curriculum_steps, model.retrieval_k = 0, 2  # afterwards the retriever learns
    model(inputs, evidence=["s0", "s2"]).logsumexp(-1).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in model.retriever.parameters())  # fmt: skip


def test_a_realm_checkpoint_without_its_own_retriever_retrieves_with_its_reader(tmp_path):
    import torch

    model = _tiny("realm", CORPUS, tmp_path)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("retriever.")}
    state = {k: v + 1 if k.startswith("fused.") and v.is_floating_point() else v
             for k, v in state.items()}  # fmt: skip
    model.load_state_dict(state)
    for (name, mine), (_, reader) in zip(model.retriever.state_dict().items(),
                                         model.fused.state_dict().items(), strict=True):  # fmt: skip
        assert torch.equal(mine, reader), name


def test_codeword_data_names_each_querys_evidence(tmp_path):
    from mmctx.datasets.modules import CodeWordDataModule

    dm = CodeWordDataModule(num_samples=40, num_codes=10, train_worlds=2, cache_dir=str(tmp_path))
    dm.prepare_data()
    rows = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    corpus = {json.loads(x)["id"]: json.loads(x)["text"]
              for x in (tmp_path / "corpus_train.jsonl").read_text().splitlines()}  # fmt: skip
    digits = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    found = dm.evidence([r["id"] for r in rows] + ["nope"])
    assert found[-1] is None
    for row, key in zip(rows, found, strict=False):
        world, code = key.split("-")
        assert row["text"].split()[1] == world and code in row["text"].split()
        assert corpus[key].endswith(digits[row["label"]])


def test_corpus_train_is_the_data_modules_training_set(tmp_path):
    from types import SimpleNamespace

    from mmctx.data import Preprocess
    from mmctx.data.modalities import resolve_modalities

    model = _tiny("frozen", CORPUS, tmp_path)
    model.corpus = "train"
    rows = [{"id": f"t{i}", "text": t, "label": 0} for i, t in enumerate(["one", "two"])]
    (tmp_path / "data").mkdir()
    train = tmp_path / "data" / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = SimpleNamespace(manifests={"train": str(train)}, root=str(tmp_path / "data"),
                         modality_handlers=resolve_modalities(["text"]))  # fmt: skip
    model._data_side = lambda: (dm, Preprocess())
    model._use_corpus("test")
    assert model._corpus["ids"] == ["t0", "t1"] and model._corpus["source"] == str(train)
