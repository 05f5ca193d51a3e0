"""Compression: each method on a tiny model, loaded back as users load it; exports checked
against the eager model; unfaithful exports refused; ``mmctx compress`` end to end (slow)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mmctx.checkpoints import build_module, load_export, write_export
from mmctx.cli import main
from mmctx.nn.compress import (
    LowRankLinear,
    called_modules,
    choose_rank,
    compression_record,
    factorise_linears,
    prunable_parameters,
    prune_global_magnitude,
    quantisable,
    quantise_dynamic,
    sparsity,
)
from mmctx.pipelines.compress import METHODS
from mmctx.pipelines.export import ExportError, example_inputs
from mmctx.pipelines.inference import Predictor, preprocess_from
from mmctx.pipelines.onnx_export import (
    RealMelSpectrogram,
    check_batches,
    export_onnx,
    load_onnx,
    quantise_onnx,
    write_onnx_config,
)

MODALITIES = ("text", "image", "audio")
DATA = {
    "modalities": list(MODALITIES),
    "preprocess": {"image_size": 16, "image_channels": 1, "sample_rate": 8000},
}


def tiny_config(window: int | None = None) -> dict:
    text = {"dim": 16, "depth": 1, "heads": 2, "vocab_size": 64, "max_tokens": 16}
    if window is not None:
        text.update(window=window, stride=2)
    return {
        "_class_path": "mmctx.pipelines.MultimodalClassifier",
        "encoders": {
            "text": {"class_path": "mmctx.encoders.TextTransformerEncoder", "init_args": text},
            "image": {
                "class_path": "mmctx.encoders.ImageCNNEncoder",
                "init_args": {"out_dim": 16, "in_channels": 1, "width": 4},
            },
            "audio": {
                "class_path": "mmctx.encoders.AudioRNNEncoder",
                "init_args": {"sample_rate": 8000, "n_mels": 8, "hidden_dim": 8, "num_layers": 1},
            },
        },
        "backbone": {
            "class_path": "mmctx.nn.backbones.TransformerBackbone",
            "init_args": {"dim": 16, "depth": 1, "heads": 2},
        },
        "class_names": ["a", "b", "c"],
    }


@pytest.fixture(scope="module")
def tiny() -> tuple[dict, nn.Module]:
    torch.manual_seed(0)
    config = tiny_config()
    return config, build_module(config).eval()


def batch(seed: int = 5, sizes: tuple[int, ...] = (6, 11, 2, 9)) -> dict:
    return example_inputs(MODALITIES, preprocess_from(DATA), list(sizes), seed=seed)


def test_truncated_svd_is_exact_at_full_rank_and_energy_picks_the_rank(tiny):
    _, model = tiny
    model = build_module(tiny_config()).eval()
    model.load_state_dict(tiny[1].state_dict())
    b = batch()
    with torch.no_grad():
        before = model(b)
        ranks = factorise_linears(model, rank=10_000, only_if_smaller=False)
        after = model(b)
    assert ranks and all(isinstance(model.get_submodule(n), LowRankLinear) for n in ranks)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    # singular values 3, 2, 1: squares 9, 4, 1 of 14; 0.9 needs two (13/14), 0.6 one (9/14)
    w = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
    assert choose_rank(w, energy=0.9) == 2
    assert choose_rank(w, energy=0.6) == 1
    assert choose_rank(w, energy=1.0) == 3
    with pytest.raises(ValueError, match="exactly one of rank and energy"):
        choose_rank(w)


def test_low_rank_is_the_best_approximation_and_saves_weights():
    torch.manual_seed(1)
    linear = nn.Linear(32, 24)
    low = LowRankLinear.from_linear(linear, 4)
    assert sum(p.numel() for p in low.parameters()) == 4 * (32 + 24) + 24
    s = torch.linalg.svdvals(linear.weight.detach())
    err = torch.linalg.matrix_norm(low.weight - linear.weight, ord=2)
    torch.testing.assert_close(err, s[4], atol=1e-4, rtol=1e-4)  # Eckart-Young


def test_global_pruning_is_permanent_and_zeroes_what_was_asked(tiny):
    model = build_module(tiny_config()).eval()
    model.load_state_dict(tiny[1].state_dict())
    total = sum(getattr(m, n).numel() for m, n in prunable_parameters(model))
    before = sum(int((getattr(m, n) == 0).sum()) for m, n in prunable_parameters(model))
    assert before == 0
    share = prune_global_magnitude(model, 0.5)
    zeros = sum(int((getattr(m, n) == 0).sum()) for m, n in prunable_parameters(model))
    assert zeros == round(0.5 * total)
    assert share == pytest.approx(zeros / total) and sparsity(model) == share
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    assert not [n for n in names if n.endswith(("_orig", "_mask"))]
    assert not any(m._forward_pre_hooks for m in model.modules() if hasattr(m, "weight_mask"))
    with torch.no_grad():
        assert torch.isfinite(model(batch())).all()


def test_pruned_and_factorised_models_load_back_through_predictor(tiny, tmp_path):
    config, model = tiny
    small = build_module(config).eval()
    small.load_state_dict(model.state_dict())
    prune_global_magnitude(small, 0.3)
    called = called_modules(small, lambda: small(batch()))
    ranks = factorise_linears(small, rank=4, only=called)
    assert "fused.backbone.blocks.0.attn.qkv" in ranks  # called as a layer
    assert "fused.encoders.text.transformer.layers.0.self_attn.out_proj" not in called
    write_export(small, config, DATA, tmp_path, compression_record(ranks, pruned=0.3))
    predictor = Predictor.from_export(tmp_path, device="cpu")
    assert isinstance(predictor.model.get_submodule(next(iter(ranks))), LowRankLinear)
    b = batch()
    with torch.no_grad():
        torch.testing.assert_close(predictor.model(b), small(b), atol=1e-6, rtol=0)
    assert predictor.predict(text="w1 w2 w3")["status"] == "ok"


def test_int8_dynamic_quantisation_loads_back_and_stays_close(tiny, tmp_path):
    config, model = tiny
    called = called_modules(model, lambda: model(batch()))
    names = quantisable(model, called)
    assert {"fused.encoders.audio.rnn", "fused.backbone.blocks.0.attn.qkv"} <= set(names)
    # nn.MultiheadAttention reads its out_proj by weight: never called, never quantised
    assert "fused.encoders.text.transformer.layers.0.self_attn.out_proj" not in names
    quantised = quantise_dynamic(model, names)
    write_export(quantised, config, DATA, tmp_path / "int8", compression_record(quantised=names))
    write_export(model, config, DATA, tmp_path / "fp32")
    sizes = {k: (tmp_path / k / "model.safetensors").stat().st_size for k in ("int8", "fp32")}
    assert sizes["int8"] < sizes["fp32"]  # int8 weights on disk, not float ones
    loaded, _ = load_export(tmp_path / "int8")
    kinds = {type(loaded.get_submodule(n)) for n in names}
    assert kinds == {torch.ao.nn.quantized.dynamic.Linear, torch.ao.nn.quantized.dynamic.GRU}
    b = batch()
    with torch.no_grad():
        want = quantised(b)
        got, exact = loaded(b), model(b)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)  # the same INT8 model
    assert (got.softmax(-1) - exact.softmax(-1)).abs().max() < 0.05  # and close to fp32
    assert not torch.equal(got, exact)


def test_real_valued_mel_spectrogram_matches_torchaudio():
    import torchaudio

    mel = torchaudio.transforms.MelSpectrogram(8000, n_fft=200, hop_length=128, n_mels=16)
    wave = 0.1 * torch.randn(3, 3000)
    want, got = mel(wave), RealMelSpectrogram(mel)(wave)
    torch.testing.assert_close(
        got.clamp_min(1e-10).log(), want.clamp_min(1e-10).log(), atol=1e-4, rtol=0
    )


@pytest.fixture(scope="module")
def onnx_dir(tiny, tmp_path_factory):
    config, model = tiny
    folder = tmp_path_factory.mktemp("onnx")
    names = export_onnx(model, MODALITIES, preprocess_from(DATA), folder / "model.onnx")
    write_onnx_config(folder, config, DATA, names)
    return folder


def test_onnx_export_agrees_with_the_model_on_other_shapes_and_missing_modalities(tiny, onnx_dir):
    _, model = tiny
    onnx_model, _ = load_onnx(onnx_dir)
    batches = [batch(seed=9, sizes=(14, 1, 7, 3, 25, 8))]
    batches += check_batches(MODALITIES, preprocess_from(DATA))
    assert any(not b["image"]["mask"].any() for b in batches)  # a batch with no image at all
    for b in batches:
        with torch.no_grad():
            want = model(b)
        got = onnx_model(b)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_onnx_model_runs_in_predictor_and_mmctx_infer(tiny, onnx_dir, capsys):
    predictor = Predictor.from_onnx(onnx_dir)
    eager = Predictor(tiny[1], DATA, device="cpu")
    got, want = predictor.predict(text="w1 w5 w2"), eager.predict(text="w1 w5 w2")
    assert got["status"] == "ok" and got["label"] == want["label"]
    assert got["top_k"][0][1] == pytest.approx(want["top_k"][0][1], abs=1e-4)
    assert main(["infer", "--onnx", str(onnx_dir), "--text", "w1 w5 w2", "--no-progress"]) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[0])
    assert record["label"] == want["label"] and record["modalities"] == ["text"]


def test_static_int8_onnx_is_calibrated_smaller_and_close(tiny, onnx_dir, tmp_path):
    import onnx

    _, model = tiny
    calibration = [batch(seed=s) for s in range(30, 34)]
    dst = tmp_path / "model.onnx"
    diff = quantise_onnx(
        onnx_dir / "model.onnx", dst, model, MODALITIES, preprocess_from(DATA), calibration
    )
    graph = onnx.load(str(dst)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "DynamicQuantizeLinear" not in ops

    def float_weights(g) -> int:
        arrays = [onnx.numpy_helper.to_array(t) for t in g.initializer]
        return sum(a.size for a in arrays if a.dtype.kind == "f")

    # the weights of MatMul, Conv and the embedding are stored as int8 (QDQ)
    assert float_weights(graph) < 0.3 * float_weights(onnx.load(onnx_dir / "model.onnx").graph)
    assert 0 < diff <= 0.05  # the largest probability difference on the check batches


def test_windowed_text_encoder_is_refused_by_name(tmp_path):
    model = build_module(tiny_config(window=4)).eval()
    with pytest.raises(ExportError, match=r"encoders\.text \(TextTransformerEncoder\).*window=4"):
        export_onnx(model, MODALITIES, preprocess_from(DATA), tmp_path / "model.onnx")
    assert not list(tmp_path.iterdir())


def test_an_export_that_differs_is_not_written(tiny, tmp_path, monkeypatch):
    """A graph that disagrees with the model (here: the model changes after tracing) is refused."""
    config, model = tiny
    model = build_module(config).eval()
    model.load_state_dict(tiny[1].state_dict())
    from mmctx.pipelines import onnx_export

    real = onnx_export.exportable_copy

    def drifted(m):
        copy = real(m)
        with torch.no_grad():
            copy.head[-1].bias += 1.0  # the exported graph no longer computes the model
        return copy

    monkeypatch.setattr(onnx_export, "exportable_copy", drifted)
    with pytest.raises(ExportError, match="differs from the model by 1"):
        export_onnx(model, MODALITIES, preprocess_from(DATA), tmp_path / "model.onnx")
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_mmctx_compress_end_to_end(trained, tmp_path, capsys):
    out = tmp_path / "small"
    val = trained["data"] / "val.jsonl"
    argv = ["compress", "--ckpt", str(trained["ckpt"]), "--out", str(out)]
    assert main([*argv, "--val-manifest", str(val), "--repeats", "3"]) == 0
    report = json.loads((out / "report.json").read_text())
    rows = {r["model"]: r for r in report["models"]}
    assert set(rows) == {"original", *METHODS}
    assert rows["prune"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert rows["structured"]["params"] < 0.9 * rows["original"]["params"]  # text embedding stays
    assert rows["onnx"]["val_acc"] == pytest.approx(rows["original"]["val_acc"], abs=0.02)
    assert rows["onnx-int8"]["size_mb"] < rows["onnx"]["size_mb"] / 2
    assert rows["onnx-int8-static"]["size_mb"] < rows["onnx"]["size_mb"] / 2
    assert rows["onnx-int8-static"]["val_acc"] == pytest.approx(rows["onnx"]["val_acc"], abs=0.05)
    assert set(rows["original"]["val_acc_without"]) == {"text", "image", "audio"}
    assert (out / "report.md").read_text().count("\n| ") >= 6
    assert (out / "accuracy_vs_latency.png").stat().st_size > 1000
    for name in ("prune", "structured", "lowrank", "int8"):
        assert main(["infer", "--export", str(out / name), "--text", "w1", "--no-progress"]) == 0
    assert main(["infer", "--onnx", str(out / "onnx-int8"), "--text", "w1", "--no-progress"]) == 0


def test_distillation_moves_the_student_toward_the_teacher(tiny):
    from mmctx.pipelines import DistillationClassifier

    _, teacher = tiny
    torch.manual_seed(3)
    cfg = tiny_config()
    student = build_module(
        {
            **cfg,
            "_class_path": "mmctx.pipelines.DistillationClassifier",
            "backbone": {**cfg["backbone"], "init_args": {"dim": 8, "depth": 1, "heads": 2}},
            "temperature": 2.0,
            "alpha": 0.9,
            "feature_weight": 0.5,
            "teacher_dim": 16,
        }
    )
    assert isinstance(student, DistillationClassifier) and student.fused.dim == 8
    student.set_teacher(teacher)
    b = batch(seed=21, sizes=(5, 9, 3, 12, 7, 4))
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        t_out = teacher.fused(b)
        t_logits = teacher.head(t_out.pooled)

    def kl() -> float:
        with torch.no_grad():
            s = student.eval()(b)
        return float(
            torch.nn.functional.kl_div(
                s.log_softmax(-1), t_logits.log_softmax(-1), reduction="batchmean", log_target=True
            )
        )

    before = kl()
    optimiser = torch.optim.Adam(student.parameters(), lr=3e-3)
    student.train()
    for _ in range(30):
        out = student.fused(b)
        terms = student.distillation_loss(
            student.head(out.pooled), t_logits, target, out.pooled, t_out.pooled
        )
        optimiser.zero_grad()
        terms["loss"].backward()
        optimiser.step()
    assert set(terms) == {"kd", "ce", "feature", "loss"}
    after = kl()
    assert after < 0.5 * before, (before, after)
    assert "teacher" not in " ".join(student.state_dict())  # the teacher is not saved with it
    with pytest.raises(ValueError, match="teacher classes"):
        student.set_teacher(build_module({**cfg, "class_names": ["x", "y"]}))


def test_fine_tuning_a_pruned_model_keeps_its_zeros(tiny):
    import numpy as np

    from mmctx.nn.compress import make_pruning_permanent
    from mmctx.pipelines.compress import finetuner

    model = build_module(tiny_config())
    model.load_state_dict(tiny[1].state_dict())
    prune_global_magnitude(model, 0.5, permanent=False)
    rng = np.random.default_rng(0)
    items = [
        {
            "id": str(i),
            "line": i + 1,
            "inputs": {
                "text": f"w{i} w{i + 1}",
                "image": rng.integers(0, 256, (1, 1, 16, 16), dtype=np.uint8),
                "audio": (0.1 * rng.standard_normal(800)).astype(np.float32),
            },
            "label": i % 3,
        }
        for i in range(8)
    ]
    # nn.MultiheadAttention reads out_proj by weight: its forward (and mask hook) never runs
    read = model.get_submodule("fused.encoders.text.transformer.layers.0.self_attn.out_proj")
    before = read.weight_orig.detach().clone()
    finetuner(items, MODALITIES, preprocess_from(DATA), epochs=2, batch_size=4)(model)
    assert not torch.equal(read.weight_orig, before)  # it trained
    make_pruning_permanent(model)
    assert sparsity(model) == pytest.approx(0.5, abs=1e-3)


@pytest.mark.slow
def test_distillation_through_the_cli_gives_a_student_predictor_loads(trained, tmp_path):
    import sys
    from pathlib import Path

    demo = str(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml")
    argv, sys.argv = sys.argv, ["mmctx"]
    try:
        main([
            "fit", "--config", demo,
            "--model.class_path", "DistillationClassifier",
            "--model.init_args.teacher_ckpt", str(trained["ckpt"]),
            "--model.init_args.backbone.init_args.dim", "32",
            "--data.num_samples", "80", "--data.batch_size", "16",
            "--data.cache_dir", str(trained["data"]),
            "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(tmp_path),
            "--trainer.logger.init_args.save_dir", str(tmp_path),
        ])  # fmt: skip
    finally:
        sys.argv = argv
    student = Predictor.from_checkpoint(next(tmp_path.rglob("best-*.ckpt")), device="cpu")
    assert student.model.fused.dim == 32
    assert student.predict(text="w1 w2")["status"] == "ok"


@pytest.mark.slow
def test_compress_rows_outside_the_manifest_folder_need_root_and_bad_rows_are_reported(
    trained, tmp_path, capsys
):
    data = trained["data"]
    rows = [json.loads(line) for line in (data / "val.jsonl").read_text().splitlines()[:6]]
    for row in rows:  # absolute paths into the data folder, from a manifest elsewhere
        for key in ("image", "audio"):
            if row.get(key):
                row[key] = str((data / row[key]).resolve())
    rows.append({"id": "broken", "text": "w1", "image": str(data / "missing.png"), "label": 1})
    manifest = tmp_path / "lists" / "val.jsonl"
    manifest.parent.mkdir()
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["compress", "--ckpt", str(trained["ckpt"]), "--methods", "int8", "--repeats", "1"]
    argv += ["--val-manifest", str(manifest)]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 2  # nothing usable: a run problem
    assert f"no row of {manifest} could be used (7 errors" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "b"), "--root", str(data)]) == 1
    err = capsys.readouterr().err
    assert f"skipped {manifest}: " in err and "line 7" in err and "missing.png" in err
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["val_samples"] == 6 and len(report["val_errors"]) == 1
