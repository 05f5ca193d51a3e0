"""`mmctx export`: the TorchScript module gives the model's outputs; untraceable models are refused."""

from __future__ import annotations

import json

import pytest
import torch

from mmctx.cli import main
from mmctx.data import Preprocess
from mmctx.encoders import ImageCNNEncoder, TextTransformerEncoder
from mmctx.nn.backbones import TransformerBackbone
from mmctx.pipelines import MultimodalClassifier
from mmctx.pipelines.export import ExportError, example_inputs, export_torchscript, tensor_inputs
from mmctx.pipelines.inference import Predictor, preprocess_from


def test_torchscript_export_matches_the_model(trained, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", "--ckpt", str(trained["ckpt"]), "--out", str(out), "--torchscript"]) == 0
    assert "torchscript: " in capsys.readouterr().out
    names = json.loads((out / "config.json").read_text())["torchscript_inputs"]
    traced = torch.jit.load(str(out / "model.torchscript.pt"))
    predictor = Predictor.from_checkpoint(trained["ckpt"], device="cpu")
    used = tuple(m.name for m in predictor.modalities)
    batch = example_inputs(used, predictor.preprocess, [5, 20, 2, 8], seed=7)
    got_names, tensors = tensor_inputs(predictor.model, batch)
    assert got_names == names
    with torch.no_grad():
        expected = predictor.model(batch)
        torch.testing.assert_close(traced(*tensors), expected, atol=1e-5, rtol=1e-4)
    assert expected.shape == (4, len(predictor.class_names))
    # nothing to export from: the run could not start (exit 2), the message names the file
    assert main(["export", "--ckpt", str(tmp_path / "gone.ckpt"), "--out", str(out)]) == 2
    assert "gone.ckpt: no such checkpoint file" in capsys.readouterr().err


def test_a_model_tracing_cannot_follow_is_refused(tmp_path):
    """A text encoder reading in windows loops a shape-dependent number of times."""
    model = MultimodalClassifier(
        encoders={
            "text": TextTransformerEncoder(
                dim=16, depth=1, heads=2, vocab_size=64, window=4, stride=2
            ),
            "image": ImageCNNEncoder(out_dim=16, in_channels=1, width=4),
        },
        backbone=TransformerBackbone(dim=16, depth=1, heads=2),
        class_names=["a", "b"],
    )
    pre = preprocess_from({"preprocess": {"image_size": 16, "image_channels": 1}})
    assert isinstance(pre, Preprocess)
    with pytest.raises(ExportError, match="differs from the model"):
        export_torchscript(model, ("text", "image"), pre, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()
