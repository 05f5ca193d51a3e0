"""Backbones: masking, exactness of the long-context variants against dense attention."""

import pytest
import torch

from mmctx.features import FeatureSequence
from mmctx.nn.backbones import SegmentMemoryBackbone, SlidingWindowBackbone, TransformerBackbone

KINDS = {
    "dense": lambda **kw: TransformerBackbone(dim=16, depth=2, heads=2, dropout=0.0, **kw),
    "sliding": lambda **kw: SlidingWindowBackbone(
        dim=16, depth=2, heads=2, window=3, dropout=0.0, **kw
    ),
    "memory": lambda **kw: SegmentMemoryBackbone(
        dim=16, depth=2, heads=2, segment=4, dropout=0.0, **kw
    ),
}


def _seq(n=10, pad=3):
    x = torch.randn(2, n, 16, requires_grad=True)
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, n - pad :] = False
    globals_ = torch.zeros(2, n, dtype=torch.bool)
    globals_[:, 0] = True
    return FeatureSequence(x, mask, globals_)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("grad_checkpointing", [False, True])
def test_padding_never_leaks_into_valid_positions(kind, grad_checkpointing):
    backbone = KINDS[kind](grad_checkpointing=grad_checkpointing).train()
    seq = _seq()
    out = backbone(seq)
    garbage = seq.features.detach().clone()
    garbage[1, 7:] = 1e3
    out2 = backbone(FeatureSequence(garbage, seq.mask, seq.globals))
    torch.testing.assert_close(out.features[1, :7], out2.features[1, :7])
    out.features[1, :7].sum().backward()
    assert seq.features.grad[1, 7:].abs().sum() == 0 and seq.features.grad[1, :7].abs().sum() > 0
    assert torch.isfinite(out.features).all()


def test_sliding_window_equals_dense_when_the_window_covers_everything():
    torch.manual_seed(0)
    dense = KINDS["dense"]().eval()
    sliding = SlidingWindowBackbone(dim=16, depth=2, heads=2, window=100, dropout=0.0).eval()
    sliding.load_state_dict(dense.state_dict())
    seq = _seq()
    torch.testing.assert_close(sliding(seq).features, dense(seq).features, atol=1e-5, rtol=1e-4)


def test_sliding_window_is_local_except_for_globals():
    backbone = SlidingWindowBackbone(dim=16, depth=1, heads=2, window=2, dropout=0.0).eval()
    seq = _seq(n=12, pad=0)
    base = backbone(seq).features
    moved = seq.features.detach().clone()
    moved[:, 11] += torch.randn(
        16
    )  # a change at the far end (not a constant: LayerNorm removes those)
    out = backbone(FeatureSequence(moved, seq.mask, seq.globals)).features
    torch.testing.assert_close(out[:, 1:9], base[:, 1:9])  # ...is invisible to positions 1..8
    assert (out[:, 0] - base[:, 0]).abs().max() > 1e-4  # but the global token sees it


def test_memory_backbone_is_dense_when_one_segment_covers_the_input():
    dense = KINDS["dense"]().eval()
    memory = SegmentMemoryBackbone(dim=16, depth=2, heads=2, segment=64, dropout=0.0).eval()
    memory.load_state_dict(dense.state_dict())
    seq = _seq()
    torch.testing.assert_close(memory(seq).features, dense(seq).features)


def test_memory_backbone_carries_information_forward_but_not_gradients():
    backbone = SegmentMemoryBackbone(dim=16, depth=1, heads=2, segment=4, dropout=0.0).eval()
    seq = _seq(n=8, pad=0)
    out = backbone(seq).features
    changed = seq.features.detach().clone()
    changed[:, 0] += torch.randn(16)
    out2 = backbone(FeatureSequence(changed, seq.mask)).features
    assert (out2[:, 4:] - out[:, 4:]).abs().max() > 1e-4  # segment 2 reads segment 1's memory
    out[:, 4:].sum().backward()
    assert seq.features.grad[:, :4].abs().sum() == 0  # the memory is detached


def test_rotary_positions_work_beyond_any_trained_length():
    backbone = SlidingWindowBackbone(dim=16, depth=1, heads=2, window=4, dropout=0.0).eval()
    x = torch.randn(1, 5000, 16)
    out = backbone(FeatureSequence(x, torch.ones(1, 5000, dtype=torch.bool)))
    assert torch.isfinite(out.features).all() and out.features.shape == (1, 5000, 16)


def _rotated_pairs(x, positions, base=10000.0):
    """Rotary by its definition: pair (x[2i], x[2i+1]) turned by position * base^(-2i/e)."""
    e = x.shape[-1]
    out = torch.empty_like(x)
    for i in range(e // 2):
        angle = positions.double()[:, None] * base ** (-2 * i / e)  # (n, 1)
        a, b = x[..., 2 * i].double(), x[..., 2 * i + 1].double()
        cos, sin = angle[:, 0].cos(), angle[:, 0].sin()
        out[..., 2 * i] = (a * cos - b * sin).to(x.dtype)
        out[..., 2 * i + 1] = (a * sin + b * cos).to(x.dtype)
    return out


def test_rotary_on_a_permuted_view_and_on_the_packed_projection_matches_its_definition():
    from mmctx.nn.positions import apply_rotary

    proj = torch.randn(2, 7, 3, 4, 8)  # (b, n, q/k/v, h, e), as the qkv layer lays it out
    pos = torch.arange(7)
    q = proj.permute(2, 0, 3, 1, 4)[0]  # (b, h, n, e) view
    want = _rotated_pairs(q, pos)
    torch.testing.assert_close(apply_rotary(q, pos), want, atol=1e-6, rtol=0)
    packed = apply_rotary(proj[:, :, :2], pos, dim=1).permute(2, 0, 3, 1, 4)
    torch.testing.assert_close(packed[0], want, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        packed[1], _rotated_pairs(proj.permute(2, 0, 3, 1, 4)[1], pos), atol=1e-6, rtol=0
    )
    shifted = apply_rotary(q[:, :, 2:], pos[2:] + 10)  # positions need not start at 0
    torch.testing.assert_close(
        shifted, _rotated_pairs(q[:, :, 2:], pos[2:] + 10), atol=1e-5, rtol=0
    )


def test_split_rotated_equals_split_then_rotate():
    attn = SlidingWindowBackbone(dim=16, depth=1, heads=2, window=3).blocks[0].attn
    x = torch.randn(2, 9, 16)
    want = attn.split(x)
    want[0], want[1] = attn.rotate(want[0], want[1])
    for got, ref in zip(attn.split_rotated(x), want, strict=True):
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)


def test_constructor_errors():
    with pytest.raises(ValueError, match="segment must be > 0, got 0"):
        SegmentMemoryBackbone(segment=0)
    with pytest.raises(ValueError, match="window must be >= 0, got -1"):
        SlidingWindowBackbone(window=-1)


@pytest.mark.parametrize("cls", [TransformerBackbone, SlidingWindowBackbone, SegmentMemoryBackbone])
def test_zero_init_residual_starts_as_layer_norm(cls):
    backbone = cls(dim=16, heads=2, depth=2, zero_init_residual=True).eval()
    seq = FeatureSequence(torch.randn(2, 9, 16), torch.ones(2, 9, dtype=torch.bool))
    out = backbone(seq).features
    torch.testing.assert_close(out, backbone.norm(seq.features))
    plain = cls(dim=16, heads=2, depth=2).eval()
    assert not torch.allclose(plain(seq).features, plain.norm(seq.features))
