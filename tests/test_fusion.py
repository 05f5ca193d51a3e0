import pytest
import torch

from mmctx.features import FeatureSequence
from mmctx.nn.backbones import TransformerBackbone
from mmctx.nn.fusion import MultimodalFusion, masked_max, masked_mean


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


def test_backbone_rejects_bad_heads():
    with pytest.raises(ValueError, match="dim \\(10\\) must be divisible by heads \\(3\\)"):
        TransformerBackbone(dim=10, heads=3)


def test_modality_tokens_are_global_and_present_only_with_their_modality():
    fusion = MultimodalFusion({"text": 5, "audio": 7}, dim=8, modality_tokens=True)
    seq = fusion(_feats())
    assert seq.features.shape == (2, 1 + 1 + 4 + 1 + 3, 8)
    assert seq.globals[0].tolist() == [
        True,
        True,
        False,
        False,
        False,
        False,
        True,
        False,
        False,
        False,
    ]
    assert seq.mask[1, 6].item() is False  # sample 1 has no text: its text token is masked
    assert seq.mask[1, 1].item() is True


def test_masked_max_ignores_padding_and_empty_rows():
    feats = torch.tensor([[[1.0, -5.0], [9.0, 9.0]], [[-3.0, 2.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, False], [False, False]])
    pooled = masked_max(FeatureSequence(feats, mask))
    assert pooled.tolist() == [[1.0, -5.0], [0.0, 0.0]]
