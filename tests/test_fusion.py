import pytest
import torch

from mmctx.backbones import TransformerBackbone
from mmctx.features import FeatureSequence
from mmctx.fusion import MultimodalFusion, masked_mean


def _feats():
    text = FeatureSequence(
        torch.randn(2, 3, 5), torch.tensor([[True, True, False], [False, False, False]])
    )
    audio = FeatureSequence(
        torch.randn(2, 4, 7), torch.tensor([[True] * 4, [True, True, False, False]])
    )
    return {"text": text, "audio": audio}


def test_fusion_concatenates_behind_a_summary_token():
    fusion = MultimodalFusion({"text": 5, "audio": 7}, dim=8)
    seq = fusion(_feats())
    assert seq.features.shape == (2, 1 + 4 + 3, 8)  # summary, audio (sorted first), text
    assert seq.mask.tolist() == [
        [True, True, True, True, True, True, True, False],
        [True, True, True, False, False, False, False, False],
    ]


def test_fusion_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match="missing \\['text'\\]"):
        MultimodalFusion({"text": 5, "audio": 7}, dim=8)({"audio": _feats()["audio"]})
    with pytest.raises(ValueError, match="dim must be a positive even number, got 7"):
        MultimodalFusion({"text": 5}, dim=7)
    bad = {"text": FeatureSequence(torch.randn(2, 3, 5), torch.ones(2, 4, dtype=torch.bool))}
    with pytest.raises(ValueError, match="text: mask must be"):
        MultimodalFusion({"text": 5}, dim=8)(bad)


def test_masked_mean_ignores_padding():
    x = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert masked_mean(FeatureSequence(x, torch.tensor([[True, True, False]]))).item() == 2.0


@pytest.mark.parametrize("grad_checkpointing", [False, True])
def test_backbone_ignores_masked_positions(grad_checkpointing):
    backbone = TransformerBackbone(
        dim=8, depth=2, heads=2, dropout=0.0, grad_checkpointing=grad_checkpointing
    )
    x = torch.randn(1, 6, 8, requires_grad=True)
    mask = torch.tensor([[True, True, True, True, False, False]])
    out = backbone(FeatureSequence(x, mask))
    y = x.detach().clone()
    y[:, 4:] = 1e3  # garbage in the padding
    out2 = backbone(FeatureSequence(y, mask))
    torch.testing.assert_close(out.features[:, :4], out2.features[:, :4])
    out.features[:, :4].sum().backward()
    assert x.grad[:, 4:].abs().sum() == 0 and x.grad[:, :4].abs().sum() > 0


def test_backbone_rejects_bad_heads():
    with pytest.raises(ValueError, match="dim \\(10\\) must be divisible by heads \\(3\\)"):
        TransformerBackbone(dim=10, heads=3)
