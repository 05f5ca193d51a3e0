from pathlib import Path

import pytest
import torch

from mmctx.encoders import AudioRNNEncoder, TextTransformerEncoder
from mmctx.features import FeatureSequence
from mmctx.nn.backbones import TransformerBackbone
from mmctx.pipelines import MultimodalClassifier


def _model(multilabel=False):
    encoders = {
        "text": TextTransformerEncoder(dim=16, depth=1, heads=2, vocab_size=128),
        "audio": AudioRNNEncoder(sample_rate=8000, n_mels=16, hidden_dim=8, num_layers=1),
    }
    return MultimodalClassifier(
        encoders, TransformerBackbone(dim=16, depth=1, heads=2), ["a", "b", "c"], multilabel
    )


def _batch(multilabel=False):
    texts = ["alpha word", "beta word", "gamma word", "alpha again"]
    wave = torch.randn(4, 1600) * 0.1
    label = (
        torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 1], [1, 0, 0]], dtype=torch.float)
        if multilabel
        else torch.tensor([0, 1, 2, 0])
    )
    return {
        "ids": list("wxyz"),
        "lines": [1, 2, 3, 4],
        "errors": [],
        "inputs": {
            "text": {"text": texts, "present": torch.ones(4, dtype=torch.bool)},
            "audio": {
                "waveform": wave,
                "lengths": torch.tensor([1600, 1600, 0, 800]),
                "sample_rate": 8000,
            },
        },
        "present": {
            "text": torch.ones(4, dtype=torch.bool),
            "audio": torch.tensor([True, True, False, True]),
        },
        "label": label,
    }


@pytest.mark.parametrize("multilabel", [False, True])
def test_training_fits_a_small_batch(multilabel):
    model, batch = _model(multilabel), _batch(multilabel)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model._loss(model(batch["inputs"]), batch["label"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_predict_step_records():
    model = _model().eval()
    with torch.no_grad():
        records = model.predict_step(_batch(), 0)
    assert [r["id"] for r in records] == list("wxyz")
    for r in records:
        assert r["label"] in ("a", "b", "c")
        assert set(r["probs"]) == {"a", "b", "c"} and abs(sum(r["probs"].values()) - 1) < 1e-5
        assert r["label"] == max(r["probs"], key=r["probs"].get)
    assert records[2]["modalities"] == ["text"] and records[0]["modalities"] == ["text", "audio"]


def test_batch_of_only_failed_samples_is_counted_and_skipped():
    model = _model()
    empty = {"ids": [], "errors": ["sample 'x' (line 1): broken"], "inputs": {}, "present": {}}
    assert model.training_step(empty, 0) is None
    assert model.skipped_samples == 1


def test_under_ddp_a_batch_of_only_failed_samples_still_joins_the_gradient_all_reduce():
    from types import SimpleNamespace

    model = _model()
    model._trainer = SimpleNamespace(world_size=2)  # what a DDP process's trainer reports
    empty = {"ids": [], "errors": ["sample 'x' (line 1): broken"], "inputs": {}, "present": {}}
    loss = model.training_step(empty, 0)
    assert loss.item() == 0.0
    loss.backward()  # every trained parameter gets a gradient, all of them zero
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and not g.any() for g in grads) and len(grads) > 10
    assert model.validation_step(empty, 0) is None  # no gradients in validation


def test_constructor_errors():
    with pytest.raises(
        ValueError, match="encoders\\['image'\\] is a TextTransformerEncoder for 'text'"
    ):
        MultimodalClassifier(
            {"image": TextTransformerEncoder(dim=16, heads=2)},
            TransformerBackbone(dim=16, heads=2),
            ["a", "b"],
        )
    with pytest.raises(
        ValueError,
        match=r"pool must be one of \['attention', 'max', 'mean', 'summary'\], got 'min'",
    ):
        MultimodalClassifier(
            {"text": TextTransformerEncoder(dim=16, heads=2)},
            TransformerBackbone(dim=16, heads=2),
            ["a", "b"],
            pool="min",
        )
    with pytest.raises(ValueError, match="at least 2 classes"):
        MultimodalClassifier(
            {"text": TextTransformerEncoder(dim=16, heads=2)},
            TransformerBackbone(dim=16, heads=2),
            ["a"],
        )


def test_plain_python_hparams_hold_no_objects():
    model = _model()
    assert set(model.hparams) == {"class_names", "multilabel", "pool", "dropout", "share_frame_cnn"}


def test_attention_pool_follows_the_scores_and_skips_padding():
    model = MultimodalClassifier(
        {"text": TextTransformerEncoder(dim=4, heads=2)},
        TransformerBackbone(dim=4, heads=2),
        ["a", "b"],
        pool="attention",
    )
    with torch.no_grad():
        model.fused.pool.score.weight.copy_(torch.tensor([[50.0, 0.0, 0.0, 0.0]]))
        model.fused.pool.score.bias.zero_()
    feats = torch.zeros(1, 4, 4)
    feats[0, 1] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    feats[0, 3] = torch.tensor([9.0, 9.0, 9.0, 9.0])  # padding: higher score, never used
    seq = FeatureSequence(feats, torch.tensor([[True, True, True, False]]))
    torch.testing.assert_close(model.fused.pool(seq), feats[:, 1], atol=1e-6, rtol=0)


def test_share_frame_cnn_ties_video_frames_to_the_image_cnn():
    from mmctx.encoders import ImageCNNEncoder, VideoCNNEncoder

    def build(share: bool) -> MultimodalClassifier:
        encoders = {
            "image": ImageCNNEncoder(8, in_channels=1, width=4),
            "video": VideoCNNEncoder(8, in_channels=1, width=4, max_frames=3),
        }
        backbone = TransformerBackbone(dim=8, depth=1, heads=2)
        return MultimodalClassifier(encoders, backbone, ["a", "b"], share_frame_cnn=share)

    shared, separate = build(True), build(False)
    image_trunk = list(shared.encoders["image"].trunk.parameters())
    assert all(
        a is b
        for a, b in zip(shared.encoders["video"].trunk.parameters(), image_trunk, strict=True)
    )
    n = sum(p.numel() for p in shared.parameters())  # a shared tensor counts once
    assert n == sum(p.numel() for p in separate.parameters()) - sum(p.numel() for p in image_trunk)
    with pytest.raises(ValueError, match="needs both an image and a video encoder"):
        MultimodalClassifier(
            {"image": ImageCNNEncoder(8, in_channels=1, width=4)},
            TransformerBackbone(dim=8, depth=1, heads=2),
            ["a", "b"],
            share_frame_cnn=True,
        )


def test_data_settings_that_do_not_fit_the_encoders_are_refused_before_training():
    from mmctx.encoders import AudioRNNEncoder, ImageCNNEncoder

    model = MultimodalClassifier(
        {
            "audio": AudioRNNEncoder(sample_rate=8000, n_mels=16, hidden_dim=8, num_layers=1),
            "image": ImageCNNEncoder(8, in_channels=1, width=4),
        },
        TransformerBackbone(dim=8, heads=2, depth=1),
        ["a", "b"],
    )
    model.fused.check_data(8000, 1)  # fits: nothing raised, and the next line is the check
    with pytest.raises(
        ValueError,
        match=r"encoders.audio expects sample_rate=8000, .* data.sample_rate=16000.*encoders.image expects in_channels=1, .*data.image_channels=3",
    ):
        model.fused.check_data(16000, 3)
    model.fused.check_data(8000, 1, image_size=8)  # the smallest the 3-pool CNN can read
    with pytest.raises(ValueError, match=r"encoders.image needs images of at least 8 x 8 pixels"):
        model.fused.check_data(8000, 1, image_size=7)
    model.fused.check_data(8000, 1, modalities=("text", "image", "audio"))
    with pytest.raises(ValueError, match=r"encoders \['audio'\] read what the data does not load"):
        model.fused.check_data(8000, 1, modalities=("text", "image"))


def test_a_data_module_that_does_not_load_an_encoders_modality_stops_fit_with_exit_2(
    tmp_path, capsys, monkeypatch
):
    from mmctx.cli import main

    monkeypatch.setattr("sys.argv", ["mmctx"])
    demo = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
    code = main(
        ["fit", "--config", str(demo), "--data.init_args.cache_dir", str(tmp_path / "c"),
         "--data.init_args.num_samples", "20", "--trainer.fast_dev_run", "1",
         "--trainer.default_root_dir", str(tmp_path / "r"), "--data.init_args.modalities", "[text]"]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        "mmctx fit: encoders ['image', 'audio'] read what the data does not load "
        "(data.modalities: ['text']): make each pair fit"
    )
