"""sliding_window_attention against the dense SDPA reference, edge cases, memory, errors."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.profiler import ProfilerActivity, profile

import mmctx.nn.attention as attention
from mmctx.nn.attention import dense_reference, sliding_window_attention


@pytest.fixture(autouse=True)
def _one_thread():
    """These problems are tiny: threads gain nothing, and on a busy machine every parallel op
    would wait for a free core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _qkv(b, h, n, e, dtype=torch.float64, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(b, h, n, e, generator=gen, dtype=torch.float64)
        .to(device=device, dtype=dtype)
        .requires_grad_()
        for _ in range(3)
    ]


def _mask(mode: str, b: int, n: int, gen: torch.Generator) -> torch.Tensor | None:
    if mode == "none":
        return None
    if mode == "all":
        return torch.ones(b, n, dtype=torch.bool)
    mask = torch.rand(b, n, generator=gen) < torch.rand(b, 1, generator=gen) * 0.6
    if mode == "row":  # the first batch row entirely True
        mask[0] = True
    return mask


def _visible(n, window, pad, glob, b):
    """(b, n) bool: query rows that see at least one key (mirrors the documented rule)."""
    pad = torch.zeros(b, n, dtype=torch.bool) if pad is None else pad
    glob = torch.zeros(b, n, dtype=torch.bool) if glob is None else glob
    pos = torch.arange(n)
    near = (pos[:, None] - pos[None, :]).abs() <= window
    mask = (near | glob[:, :, None] | glob[:, None, :]) & ~pad[:, None, :]
    return mask.any(-1)


def _compare(q, k, v, window, pad, glob, atol):
    """Outputs (visible rows) and q/k/v gradients of both implementations agree to ``atol``."""
    out = sliding_window_attention(q, k, v, window, pad, glob)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    ref_in = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ref = dense_reference(*ref_in, window, pad, glob)
    ref_grads = torch.autograd.grad(ref, ref_in, grad_out.double())
    seen = _visible(q.shape[2], window, pad, glob, q.shape[0])[:, None, :, None]
    assert out.dtype == q.dtype and out.shape == q.shape
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    torch.testing.assert_close(out.double() * seen, ref * seen, atol=atol, rtol=0)
    assert (out.masked_fill(seen, 0) == 0).all(), "rows with no visible key must be zeros"
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got.double(), want, atol=atol, rtol=0)


@st.composite
def _problems(draw):
    n = draw(st.integers(1, 80))
    return {
        "b": draw(st.integers(1, 2)),
        "h": draw(st.integers(1, 2)),
        "n": n,
        "e": draw(st.sampled_from([4, 8])),
        "window": draw(st.integers(0, n + 5)),
        "pad": draw(st.sampled_from(["none", "random", "all", "row"])),
        "glob": draw(st.sampled_from(["none", "random", "all", "row"])),
        "chunk": draw(st.sampled_from([1, 500, 1 << 20])),  # 1 = one block per chunk
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


@settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(_problems())
def test_matches_dense_reference_forward_and_backward(prob):
    gen = torch.Generator().manual_seed(prob["seed"])
    b, n = prob["b"], prob["n"]
    pad, glob = _mask(prob["pad"], b, n, gen), _mask(prob["glob"], b, n, gen)
    if glob is not None and prob["glob"] == "random":
        glob &= torch.rand(b, n, generator=gen) < 0.3  # typically few globals
    q, k, v = _qkv(b, prob["h"], n, prob["e"], seed=prob["seed"])
    with mock.patch.object(attention, "_CHUNK_ELEMS", prob["chunk"]):
        _compare(q, k, v, prob["window"], pad, glob, atol=1e-9)


@pytest.mark.parametrize("n, window, e", [(300, 40, 64), (513, 600, 16), (257, 64, 32)])
def test_float32_within_1e_4_of_reference(n, window, e):
    gen = torch.Generator().manual_seed(n)
    pad = torch.rand(2, n, generator=gen) < 0.2
    pad[1, n // 3 :] = True  # a long padded tail
    glob = torch.rand(2, n, generator=gen) < 0.02
    q, k, v = _qkv(2, 2, n, e, dtype=torch.float32, seed=n)
    with mock.patch.object(attention, "_CHUNK_ELEMS", 20_000):  # several chunks
        _compare(q, k, v, window, pad, glob, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_keeps_dtype_and_stays_close(dtype):
    q, k, v = _qkv(1, 2, 200, 32, dtype=dtype, seed=3)
    glob = torch.zeros(1, 200, dtype=torch.bool)
    glob[0, 7] = True
    out = sliding_window_attention(q, k, v, 16, global_mask=glob)
    out.float().square().sum().backward()
    ref = dense_reference(*(x.detach().double() for x in (q, k, v)), 16, global_mask=glob)
    assert out.dtype == dtype and q.grad.dtype == dtype
    assert (out.double() - ref).abs().max() < 2e-2
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_autocast_does_not_change_the_result(dtype):
    """Under ``precision: bf16-mixed`` the kernel still computes in float32 (global rows included)."""
    q, k, v = _qkv(2, 2, 90, 16, dtype=dtype, seed=5)
    glob = torch.zeros(2, 90, dtype=torch.bool)
    glob[0, 4] = glob[1, 60] = True
    want = sliding_window_attention(q, k, v, 8, global_mask=glob)
    want_grads = torch.autograd.grad(want.float().square().sum(), (q, k, v))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = sliding_window_attention(q, k, v, 8, global_mask=glob)
        grads = torch.autograd.grad(got.float().square().sum(), (q, k, v))
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, atol=0, rtol=0)


def test_rows_without_visible_keys_are_zero_with_finite_grads():
    q, k, v = _qkv(2, 2, 40, 8, dtype=torch.float32)
    pad = torch.zeros(2, 40, dtype=torch.bool)
    pad[0] = True  # batch row 0: nothing to see at all
    pad[1, 10:30] = True  # batch row 1: queries 15..24 see only padding at window 4
    glob = torch.zeros(2, 40, dtype=torch.bool)
    glob[0, 3] = True  # a global token that is itself padding sees and gives nothing
    out = sliding_window_attention(q, k, v, 4, pad, glob)
    out.sum().backward()
    assert (out[0] == 0).all() and (out[1, :, 15:25] == 0).all()
    assert (out[1, :, :14] != 0).any(dim=-1).all()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))
    assert (q.grad[0] == 0).all() and (k.grad[:, :, 10:30][1] == 0).all()


def test_window_zero_without_globals_returns_values():
    q, k, v = _qkv(2, 3, 50, 8, dtype=torch.float32)
    pad = torch.rand(2, 50, generator=torch.Generator().manual_seed(0)) < 0.3
    out = sliding_window_attention(q, k, v, 0, key_padding_mask=pad)
    expect = v.masked_fill(pad[:, None, :, None], 0)
    torch.testing.assert_close(out, expect, atol=1e-6, rtol=0)


def test_global_tokens_see_and_are_seen_by_everything():
    q, k, v = _qkv(1, 1, 64, 8, dtype=torch.float32)
    glob = torch.zeros(1, 64, dtype=torch.bool)
    glob[0, 50] = True
    out = sliding_window_attention(q, k, v, 2, global_mask=glob)
    full = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out[0, 0, 50], full[0, 0, 50], atol=1e-5, rtol=0)
    band = torch.zeros(64, 64, dtype=torch.bool)  # query 0 sees keys 0..2 and 50
    band[0, [0, 1, 2, 50]] = True
    expect = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=band)
    torch.testing.assert_close(out[0, 0, 0], expect[0, 0, 0], atol=1e-5, rtol=0)


def test_non_contiguous_inputs():
    q, k, v = (x.detach().transpose(1, 2).contiguous().transpose(1, 2) for x in _qkv(1, 4, 70, 8))
    assert not q.is_contiguous()
    out = sliding_window_attention(q, k, v, 5)
    torch.testing.assert_close(out, dense_reference(q, k, v, 5), atol=1e-9, rtol=0)


def _largest_allocation(n: int, grad: bool) -> int:
    """Bytes of the largest single allocation of one call (forward, or forward + backward)."""
    q, k, v = (torch.randn(1, 1, n, 8, requires_grad=grad) for _ in range(3))
    with (
        torch.set_grad_enabled(grad),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        out = sliding_window_attention(q, k, v, 256)
        if grad:
            out.sum().backward()
    return max(event.cpu_memory_usage for event in prof.events())


@pytest.mark.filterwarnings("ignore:.*Profiler clears events")
@pytest.mark.parametrize("grad", [False, True])
def test_memory_is_bounded_by_the_chunk_not_n_squared(grad):
    # A dense (n, n) float32 score matrix at n=8192 would be 256 MiB in one allocation;
    # here the largest is a chunk's scores (4 MiB), the same at n=2048 and n=8192.
    small, large = _largest_allocation(2048, grad), _largest_allocation(8192, grad)
    assert large <= 4 * attention._CHUNK_ELEMS * 1.25
    assert large <= small * 1.25


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"window": -1}, "window must be an int >= 0, got -1"),
        ({"window": 2.0}, "window must be an int >= 0, got 2.0"),
        ({"window": True}, "window must be an int >= 0, got True"),
        ({"k": torch.zeros(1, 2, 5, 4)}, r"k must match q's shape \(1, 2, 6, 4\)"),
        (
            {"v": torch.zeros(1, 2, 6, 4, dtype=torch.float64)},
            r"v must match q.s .*, got .*float64",
        ),
        ({"q": torch.zeros(2, 6, 4)}, r"q must be a non-empty \(b, h, n, e\) tensor"),
        ({"key_padding_mask": torch.zeros(1, 5, dtype=torch.bool)}, r"key_padding_mask .*\(1, 6\)"),
        ({"global_mask": torch.zeros(1, 6)}, "global_mask must be a .* bool tensor"),
    ],
)
def test_invalid_arguments_raise_value_error(kwargs, message):
    args = {
        "q": torch.zeros(1, 2, 6, 4),
        "k": torch.zeros(1, 2, 6, 4),
        "v": torch.zeros(1, 2, 6, 4),
    }
    args |= {"window": 2, **kwargs}
    if args["q"].dim() != 4:
        args["k"] = args["v"] = args["q"]
    with pytest.raises(ValueError, match=message):
        sliding_window_attention(**args)


def test_integer_dtype_is_rejected():
    x = torch.zeros(1, 1, 4, 4, dtype=torch.int64)
    with pytest.raises(
        ValueError, match="q must be float32, bfloat16, float16 or float64, got dtype torch.int64"
    ):
        sliding_window_attention(x, x, x, 1)


@pytest.mark.gpu
@pytest.mark.parametrize("e", [8, 64])
def test_cuda_matches_dense_reference(e):
    gen = torch.Generator().manual_seed(e)
    pad = (torch.rand(2, 300, generator=gen) < 0.2).cuda()
    pad[0] = True
    glob = (torch.rand(2, 300, generator=gen) < 0.02).cuda()
    q, k, v = _qkv(2, 2, 300, e, dtype=torch.float32, device="cuda")
    out = sliding_window_attention(q, k, v, 40, pad, glob)
    grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    ref_in = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ref = dense_reference(*ref_in, 40, pad, glob)
    ref_grads = torch.autograd.grad(ref, ref_in, torch.ones_like(ref))
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=0)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=0)
