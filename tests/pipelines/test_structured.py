"""Structured pruning: the weakest units, heads, channels and RNN units removed, layers
rebuilt smaller; the result loads through Predictor, `mmctx infer` and the ONNX export."""

from __future__ import annotations

import json

import pytest
import torch

from mmctx.checkpoints import build_module, write_export
from mmctx.cli import main
from mmctx.nn.compress import compression_record
from mmctx.nn.structured import apply_structured, prune_structured
from mmctx.pipelines.export import example_inputs
from mmctx.pipelines.inference import Predictor, preprocess_from
from mmctx.pipelines.onnx_export import export_onnx, load_onnx, write_onnx_config

from .test_compress import DATA, MODALITIES, batch, tiny_config


def two_layer_config() -> dict:
    config = tiny_config()
    config["encoders"]["audio"]["init_args"]["num_layers"] = 2
    return config


def silence_odd_units(model: torch.nn.Module) -> None:
    """Zero every weight that reads the odd-numbered unit of each group (MLP hidden units,
    heads, conv channels, RNN units of each layer and direction): those units feed nothing."""
    f = model.fused
    with torch.no_grad():
        for mlp in (f.encoders.text.transformer.layers[0].linear2, f.backbone.blocks[0].mlp[3]):
            mlp.weight[:, 1::2] = 0
        f.backbone.blocks[0].attn.out.weight[:, 8:] = 0  # head 1 of 2 (width 8)
        convs = [m for m in f.encoders.image.trunk.modules() if isinstance(m, torch.nn.Conv2d)]
        for reader in [*convs[1:], f.encoders.image.proj]:
            reader.weight[:, 1::2] = 0
        rnn = f.encoders.audio.rnn  # hidden 8, bidirectional: outputs [forward 8 | backward 8]
        for name, weight in rnn.named_parameters():
            if name.startswith("weight_hh") or name.startswith("weight_ih_l1"):
                weight[:, 1::2] = 0
        f.fusion.proj["audio"][0].weight[:, 1::2] = 0


def test_structured_pruning_removes_exactly_the_units_that_feed_nothing():
    torch.manual_seed(0)
    model = build_module(two_layer_config()).eval()
    silence_odd_units(model)
    b = batch()
    with torch.no_grad():
        before = model(b)
    params = sum(p.numel() for p in model.parameters())
    record = prune_structured(model, 0.5)
    with torch.no_grad():
        after = model(b)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)  # only silent units went
    f = model.fused
    assert f.backbone.blocks[0].attn.heads == 1
    assert f.backbone.blocks[0].attn.qkv.weight.shape == (24, 16)  # 3 x 1 head x 8
    assert f.backbone.blocks[0].mlp[0].out_features == 32  # of 64
    assert f.encoders.text.transformer.layers[0].linear1.out_features == 32  # of 64
    assert f.encoders.image.proj.in_features == 8  # 4 x width 4 channels, halved
    assert f.encoders.audio.rnn.hidden_size == 4 and f.encoders.audio.out_dim == 8
    assert f.fusion.proj["audio"][0].in_features == 8
    assert sum(p.numel() for p in model.parameters()) < 0.6 * params
    assert record["fused.encoders.audio.rnn"] == {"hidden_size": 4}
    # a freshly built model given the record takes the pruned weights as they are
    fresh = apply_structured(build_module(two_layer_config()).eval(), record)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(b), after, atol=0, rtol=0)


def test_structured_amount_is_checked():
    model = build_module(tiny_config())
    with pytest.raises(ValueError, match=r"amount must be in \[0, 1\)"):
        prune_structured(model, 1.0)
    with pytest.raises(ValueError, match="unknown structured pruning kinds"):
        prune_structured(model, 0.5, kinds=["filters"])


@pytest.fixture(scope="module")
def pruned(tmp_path_factory) -> tuple[torch.nn.Module, dict, object]:
    torch.manual_seed(1)
    config = two_layer_config()
    model = build_module(config).eval()
    record = prune_structured(model, 0.5)
    folder = tmp_path_factory.mktemp("structured")
    write_export(model, config, DATA, folder, compression_record(structured=record))
    return model, config, folder


def test_a_structurally_pruned_export_loads_in_predictor_and_mmctx_infer(pruned, capsys):
    model, _, folder = pruned
    loaded = Predictor.from_export(folder, device="cpu")
    assert loaded.model.fused.encoders.audio.rnn.hidden_size == 4
    pre = preprocess_from(DATA)
    batches = [batch()] + [
        example_inputs(MODALITIES, pre, [6, 10], seed=4, missing=m) for m in MODALITIES
    ]
    for b in batches:  # missing modalities included
        with torch.no_grad():
            want = model(b)
            torch.testing.assert_close(loaded.model(b), want, atol=1e-6, rtol=0)
        assert torch.isfinite(want).all()
    assert main(["infer", "--export", str(folder), "--text", "w1 w2", "--no-progress"]) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[0])
    assert record["status"] == "ok" and record["modalities"] == ["text"]


@pytest.mark.slow
def test_a_structurally_pruned_model_exports_to_onnx(pruned, tmp_path):
    model, config, _ = pruned
    names = export_onnx(model, MODALITIES, preprocess_from(DATA), tmp_path / "model.onnx")
    write_onnx_config(tmp_path, config, DATA, names)  # parity was checked before writing
    onnx_model, _ = load_onnx(tmp_path)
    b = batch(seed=9, sizes=(14, 1, 7))
    with torch.no_grad():
        torch.testing.assert_close(onnx_model(b), model(b), atol=1e-4, rtol=0)


def test_a_structurally_pruned_export_is_quantised_further(pruned, tmp_path):
    from mmctx.pipelines.compress import build_variants, load_variant

    model, _, folder = pruned
    variants = build_variants(folder, tmp_path, ["int8"])
    meta = json.loads((tmp_path / "int8" / "config.json").read_text())
    assert meta["compression"]["structured"]["fused.encoders.audio.rnn"] == {"hidden_size": 4}
    quantised = load_variant(variants["int8"]).model
    assert type(quantised.fused.encoders.audio.rnn).__module__.startswith("torch.ao.nn.quantized")
    b = batch()
    with torch.no_grad():
        got, want = quantised(b).softmax(-1), model(b).softmax(-1)
    assert (got - want).abs().max() < 0.05 and not torch.equal(got, want)


def test_a_cnn_shared_by_image_and_video_encoders_keeps_its_channels():
    from mmctx.encoders import ImageCNNEncoder, VideoCNNEncoder

    image, video = ImageCNNEncoder(16, 1, width=4), VideoCNNEncoder(16, 1, width=4)
    alone = torch.nn.ModuleDict({"image": ImageCNNEncoder(16, 1, width=4)})
    assert "image.trunk.0.0" in prune_structured(alone, 0.5, kinds=["channels"])
    video.share_frame_cnn(image)
    shared = torch.nn.ModuleDict({"image": image, "video": video})
    assert prune_structured(shared, 0.5, kinds=["channels"]) == {}
