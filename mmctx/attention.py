"""Sliding-window attention with global tokens in O(n * window) memory.

Query ``i`` sees key ``j`` iff ``|i - j| <= window`` or either token is global, and never a
padded key. Queries are cut into blocks of ``c`` rows; block ``i`` sees the ``c + 2r`` key
rows around it, taken as an overlapping ``as_strided`` view of the (flattened) keys, so
each step is one batched matmul over blocks. Global keys are appended to every block as
extra columns (and dropped from the band so they count once); global queries are computed
densely over all keys and written over the band result. Blocks are processed in chunks of
bounded size; a custom autograd function keeps only ``q, k, v``, the output and the row
logsumexp and recomputes the scores chunk by chunk in backward (flash-attention style),
overlap-adding each window's key/value gradients back into place. On CUDA the same mask
goes to ``flex_attention``.

Shape legend: b = batch, h = heads, n = positions, e = head width, w = window,
c = query rows per block, r = w rounded up to a multiple of c, L = c + 2r keys per block,
g = global slots (max global count over the batch), G = blocks in one chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

_CHUNK_ELEMS = 1 << 20  # score elements per chunk (4 MiB in fp32): bounds memory, stays in cache
_LOG2E = 1.0 / math.log(2.0)  # scores are kept in base 2: exp2 is fast and denormal-safe
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def sliding_window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int,
    key_padding_mask: Tensor | None = None,
    global_mask: Tensor | None = None,
) -> Tensor:
    """Banded multi-head attention with optional global tokens and key padding.

    Args:
        q: Queries ``(b, h, n, e)``, float32, bfloat16 or float16 (float64 also works).
        k: Keys, same shape, dtype and device as ``q``.
        v: Values, same shape, dtype and device as ``q``.
        window: Query ``i`` sees keys ``j`` with ``|i - j| <= window`` (int, >= 0).
        key_padding_mask: ``(b, n)`` bool, True = padding: such keys are never seen.
        global_mask: ``(b, n)`` bool, True = global token: it sees and is seen by all.

    Returns:
        ``(b, h, n, e)`` in the dtype of ``q``; rows with no visible key are zeros. Scale is
        ``1 / sqrt(e)``; low-precision inputs are computed in float32.
    """
    _check_inputs(q, k, v, window, key_padding_mask, global_mask)
    b, _, n, _ = q.shape
    pad = _mask_or_none(key_padding_mask, b, n, q.device)
    glob = _mask_or_none(global_mask, b, n, q.device)
    if q.is_cuda:
        return _flex_attention(q, k, v, window, pad, glob)
    return _blocked_attention(q, k, v, window, pad, glob)


def dense_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int,
    key_padding_mask: Tensor | None = None,
    global_mask: Tensor | None = None,
) -> Tensor:
    """The same attention through a dense ``(n, n)`` mask and SDPA, for tests and benchmarks.

    Memory and time are O(n^2): small ``n`` only. Rows with no visible key are zeros, with
    zero gradients (their mask is opened before SDPA and their output multiplied by 0).
    """
    _check_inputs(q, k, v, window, key_padding_mask, global_mask)
    b, _, n, _ = q.shape
    pad = _mask_or_none(key_padding_mask, b, n, q.device)
    glob = _mask_or_none(global_mask, b, n, q.device)
    mask = _dense_mask(n, window, pad, glob)
    seen = mask.any(-1)
    mask = mask | ~seen[..., None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
    return out * seen[:, None, :, None].to(out.dtype)


def _dense_mask(n: int, window: int, pad: Tensor, glob: Tensor) -> Tensor:
    """``(b, n, n)`` bool: query row may see key column."""
    pos = torch.arange(n, device=pad.device)
    near = (pos[:, None] - pos[None, :]).abs() <= window
    return (near | glob[:, :, None] | glob[:, None, :]) & ~pad[:, None, :]


# ---------------------------------------------------------------------------- validation


def _check_inputs(q, k, v, window, key_padding_mask, global_mask) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a Tensor, got {type(t).__name__}")
    if q.dim() != 4 or min(q.shape) == 0:
        raise ValueError(f"q must be a non-empty (b, h, n, e) tensor, got shape {tuple(q.shape)}")
    if q.dtype not in _DTYPES:
        raise ValueError(f"q must be float32, bfloat16 or float16, got dtype {q.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape or t.dtype != q.dtype or t.device != q.device:
            raise ValueError(
                f"{name} must match q's shape {tuple(q.shape)}, dtype {q.dtype} and device "
                f"{q.device}, got {tuple(t.shape)}, {t.dtype}, {t.device}"
            )
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ValueError(f"window must be an int >= 0, got {window!r}")
    b, _, n, _ = q.shape
    for name, m in (("key_padding_mask", key_padding_mask), ("global_mask", global_mask)):
        if m is None:
            continue
        if not isinstance(m, Tensor) or m.shape != (b, n) or m.dtype != torch.bool:
            got = (tuple(m.shape), m.dtype) if isinstance(m, Tensor) else type(m).__name__
            raise ValueError(f"{name} must be a ({b}, {n}) bool tensor, got {got}")


def _mask_or_none(mask: Tensor | None, b: int, n: int, device: torch.device) -> Tensor:
    if mask is None:
        return torch.zeros(b, n, dtype=torch.bool, device=device)
    return mask.to(device)


# ----------------------------------------------------------------------- blocked CPU path


@dataclass(frozen=True)
class _Plan:
    """Geometry of one call: block size, band reach, chunking."""

    b: int
    h: int
    n: int
    e: int
    w: int  # window clipped to n - 1
    c: int  # query rows per block
    g: int  # global slots
    cdtype: torch.dtype  # compute dtype

    @property
    def r(self) -> int:
        return -(-self.w // self.c) * self.c

    @property
    def nb(self) -> int:
        return -(-self.n // self.c)

    @property
    def L(self) -> int:  # noqa: N802 - the shape letter
        return self.c + 2 * self.r

    @property
    def rows(self) -> int:  # padded rows per (b, h)
        return self.nb * self.c

    @property
    def blocks(self) -> int:
        return self.b * self.h * self.nb

    @property
    def chunk(self) -> int:
        """Blocks per chunk: within the element budget, a multiple of the thread count."""
        fit = _CHUNK_ELEMS // (self.c * (self.L + self.g))
        threads = torch.get_num_threads()
        return max(1, min(self.blocks, fit // threads * threads or fit))

    def spans(self):
        """Block ranges ``(g0, g1)`` of the chunks."""
        return ((g0, min(g0 + self.chunk, self.blocks)) for g0 in range(0, self.blocks, self.chunk))


def _block_rows(w: int, n: int) -> int:
    """Query rows per block: small enough to waste little of the band, big enough for BLAS."""
    c = 64 if w >= 48 else 32 if w >= 16 else 16
    return min(c, max(8, 1 << (n - 1).bit_length()))


def _blocked_attention(q, k, v, window, pad, glob) -> Tensor:
    b, h, n, e = q.shape
    gidx, gvalid = _global_slots(glob)
    cdtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    w = min(window, n - 1)
    plan = _Plan(b, h, n, e, w, _block_rows(w, n), gidx.shape[1], cdtype)
    key_bias, glob_bias = _biases(plan, pad, glob, gidx, gvalid)
    if plan.g:
        take = gidx[:, None, :, None].expand(b, h, plan.g, e)
        gk, gv = k.gather(2, take), v.gather(2, take)
    else:  # not gathered: an empty gather would still cost a full-size zero grad
        gk = gv = q.new_empty(b, h, 0, e)
    out = _BandAttention.apply(q, k, v, gk, gv, key_bias, glob_bias, plan)
    if plan.g:
        out = _global_rows(out, q, k, v, pad, gidx, gvalid)
    return out


def _global_slots(glob: Tensor) -> tuple[Tensor, Tensor]:
    """Positions ``(b, g)`` of each row's global tokens (padded slots point at 0) and validity."""
    counts = glob.sum(1)
    g = int(counts.max()) if glob.numel() else 0
    bi, pos = glob.nonzero(as_tuple=True)
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(bi.numel(), device=glob.device) - start[bi]
    gidx = torch.zeros(glob.shape[0], g, dtype=torch.long, device=glob.device)
    gidx[bi, slot] = pos
    gvalid = torch.arange(g, device=glob.device) < counts[:, None]
    return gidx, gvalid


def _biases(plan: _Plan, pad, glob, gidx, gvalid) -> tuple[Tensor, Tensor]:
    """Additive key masks: band ``(b * nb, L)`` per block window, globals ``(b, g)``."""
    p = plan
    ok = torch.zeros(p.b, p.rows + 2 * p.r, dtype=torch.bool, device=pad.device)
    ok[:, p.r : p.r + p.n] = ~pad & ~glob  # globals are columns of their own
    windows = ok.unfold(1, p.L, p.c)  # (b, nb, L) view
    zeros = torch.zeros(p.b * p.nb, p.L, dtype=p.cdtype, device=pad.device)
    key_bias = zeros.masked_fill_(~windows.reshape(-1, p.L), -math.inf)
    seen = gvalid & ~pad.gather(1, gidx)
    glob_bias = torch.zeros(seen.shape, dtype=p.cdtype, device=pad.device)
    return key_bias, glob_bias.masked_fill_(~seen, -math.inf)


@lru_cache(maxsize=32)
def _edge_bias(w: int, c: int, r: int, dtype: torch.dtype, device: str) -> tuple[Tensor, Tensor]:
    """Band mask of a block's first and last ``c + r - w - 1`` window columns (the rest is 0).

    Row ``s`` of a block sees window column ``t`` iff ``|t - r - s| <= w``; only the two
    corner triangles fail, so the mask is added to those column strips alone.
    """
    edge = c + r - w - 1
    s = torch.arange(c, device=device)[:, None]
    j = torch.arange(edge, device=device)[None, :]
    zeros = torch.zeros(c, edge, dtype=dtype, device=device)
    return zeros.masked_fill(j < s + r - w, -math.inf), zeros.masked_fill(j >= s, -math.inf)


def _flat(x: Tensor, p: _Plan) -> Tensor:
    """``(b, h, n, e)`` -> ``(b * h * nb * c, e)``, zero rows appended per head (view if n | c)."""
    if p.rows != p.n:
        x = F.pad(x, (0, 0, 0, p.rows - p.n))
    return x.reshape(-1, x.shape[-1])


def _unflat(x: Tensor, p: _Plan, dtype: torch.dtype) -> Tensor:
    return x.view(p.b, p.h, p.rows, -1)[:, :, : p.n].to(dtype)


def _rows(x: Tensor, lo: int, hi: int) -> Tensor:
    """Rows ``lo:hi`` of ``x`` with zeros where the range leaves it (a view when inside)."""
    if lo >= 0 and hi <= x.shape[0]:
        return x[lo:hi]
    out = x.new_zeros(hi - lo, x.shape[1])
    a, z = max(lo, 0), min(hi, x.shape[0])
    out[a - lo : z - lo] = x[a:z]
    return out


class _Operands:
    """Flat operands of one call, shared by forward and backward, and reusable chunk buffers."""

    def __init__(self, p: _Plan, q, k, v, gk, gv, key_bias: Tensor, glob_bias: Tensor) -> None:
        self.plan = p
        self.q, self.k, self.v = (_flat(x, p) for x in (q, k, v))
        self.gk, self.gv = (x.reshape(p.b * p.h, p.g, p.e) for x in (gk, gv))
        self.key_bias, self.glob_bias = key_bias, glob_bias
        dirty = (key_bias != 0).any(1).view(p.b, 1, p.nb).expand(p.b, p.h, p.nb).reshape(-1)
        self._dirty = [0, *torch.cumsum(dirty, 0).tolist()]
        self._buffers: dict[str, Tensor] = {}

    def dirty(self, g0: int, g1: int) -> bool:
        """Whether any block in ``g0:g1`` has a masked key besides the band corners."""
        return self._dirty[g1] > self._dirty[g0]

    def buffer(self, name: str, *shape: int) -> Tensor:
        """A scratch tensor reused across chunks (fresh memory would page-fault every time)."""
        size = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < size:
            buf = self._buffers[name] = self.q.new_empty(size, dtype=self.plan.cdtype)
        return buf[:size].view(shape)


class _Chunk:
    """Blocks ``g0:g1``: scaled queries, key/value windows (+ globals) and base-2 scores."""

    def __init__(self, ops: _Operands, g0: int, g1: int) -> None:
        p = ops.plan
        self.n, c, e, width = g1 - g0, p.c, p.e, p.L + p.g
        self.rows = slice(g0 * c, g1 * c)
        queries = ops.q[self.rows].view(self.n, c, e)
        self.q = torch.mul(queries, e**-0.5 * _LOG2E, out=ops.buffer("q", self.n, c, e))
        ids = torch.arange(g0, g1, device=queries.device)
        self.heads = ids // p.nb
        kv = []
        for x, gx, name in ((ops.k, ops.gk, "k"), (ops.v, ops.gv, "v")):
            keys = _rows(x, g0 * c - p.r, g1 * c + p.r).to(p.cdtype)
            win = keys.as_strided((self.n, p.L, e), (c * e, e, 1))
            if p.g:
                extra = gx.index_select(0, self.heads).to(p.cdtype)
                win = torch.cat([win, extra], 1, out=ops.buffer(name, self.n, width, e))
            kv.append(win)
        self.k, self.v = kv
        s = torch.bmm(self.q, self.k.transpose(1, 2), out=ops.buffer("s", self.n, c, width))
        left, right = _edge_bias(p.w, c, p.r, p.cdtype, str(s.device))
        s[:, :, : left.shape[1]].add_(left)
        s[:, :, p.L - right.shape[1] : p.L].add_(right)
        batch = self.heads // p.h
        if ops.dirty(g0, g1):
            s[:, :, : p.L].add_(ops.key_bias.index_select(0, batch * p.nb + ids % p.nb)[:, None])
        if p.g:
            s[:, :, p.L :].add_(ops.glob_bias.index_select(0, batch)[:, None])
        self.s = s

    def rows_of(self, x: Tensor) -> Tensor:
        """This chunk's ``(G, c, *)`` rows of a flat ``(rows, *)`` tensor."""
        return x[self.rows].view(self.n, self.s.shape[1], *x.shape[1:])


def _band_forward(ops: _Operands) -> tuple[Tensor, Tensor]:
    """Flat output ``(b * h * rows, e)`` and base-2 row logsumexp (+inf: row sees nothing)."""
    p = ops.plan
    out = ops.q.new_empty(ops.q.shape, dtype=p.cdtype)
    lse = ops.q.new_empty(ops.q.shape[0], 1, dtype=p.cdtype)
    for g0, g1 in p.spans():
        ch = _Chunk(ops, g0, g1)
        s = ch.s
        top = s.amax(-1, keepdim=True)
        top.masked_fill_(top == -math.inf, 0.0)
        s.sub_(top).exp2_()
        total = s.sum(-1, keepdim=True)  # >= 1 exactly when the row sees a key
        torch.bmm(s, ch.v, out=ch.rows_of(out)).div_(total.clamp(min=1.0))
        ch.rows_of(lse).copy_((top + total.log2()).masked_fill_(total == 0, math.inf))
    return out, lse


def _band_backward(ops: _Operands, out: Tensor, grad: Tensor, lse: Tensor):
    """Gradients (flat dq, flat dk, flat dv, dgk, dgv) from the flat output gradient."""
    p = ops.plan
    dq = torch.empty_like(ops.q, dtype=p.cdtype)
    dk, dv = (ops.q.new_zeros(dq.shape[0] + 2 * p.r, p.e, dtype=p.cdtype) for _ in "kv")
    dgk, dgv = (ops.gk.new_zeros(ops.gk.shape, dtype=p.cdtype) for _ in "kv")
    for g0, g1 in p.spans():
        ch = _Chunk(ops, g0, g1)
        prob = ch.s.sub_(ch.rows_of(lse)).exp2_()
        do = ch.rows_of(grad).to(p.cdtype)
        delta = (do * ch.rows_of(out)).sum(-1, keepdim=True)
        ds = torch.bmm(do, ch.v.transpose(1, 2), out=ops.buffer("ds", *prob.shape))
        ds.sub_(delta).mul_(prob)
        torch.bmm(ds, ch.k, out=ch.rows_of(dq))
        shape = (ch.n, p.L + p.g, p.e)
        for acc, gacc, win in (
            (dk, dgk, torch.bmm(ds.transpose(1, 2), ch.q, out=ops.buffer("dk", *shape))),
            (dv, dgv, torch.bmm(prob.transpose(1, 2), do, out=ops.buffer("dv", *shape))),
        ):
            _overlap_add(acc.view(-1, p.c, p.e), win[:, : p.L], g0, p)
            if p.g:
                gacc.index_add_(0, ch.heads, win[:, p.L :])
    # ch.q carried scale * log2(e): dk was accumulated against it, so undo the log2(e) only
    dk, dv = (x[p.r : p.r + dq.shape[0]] for x in (dk, dv))
    return dq.mul_(p.e**-0.5), dk.mul_(math.log(2.0)), dv, dgk.mul_(math.log(2.0)), dgv


def _overlap_add(dst: Tensor, win: Tensor, g0: int, p: _Plan) -> None:
    """Add window grads ``(G, L, e)`` of blocks ``g0:`` into padded key blocks ``dst``.

    Sub-block ``s`` (rows ``s*c:(s+1)*c``) of block ``i``'s window lands on block ``i + s``.
    """
    n_blk, parts = win.shape[0], p.L // p.c
    ids = torch.arange(n_blk, device=win.device)[:, None] + torch.arange(parts, device=win.device)
    dst.index_add_(0, ids.view(-1) + g0, win.reshape(n_blk * parts, p.c, p.e))


class _BandAttention(torch.autograd.Function):
    """Band + global-key attention over flat blocks, recomputing scores in backward."""

    @staticmethod
    def forward(ctx, q, k, v, gk, gv, key_bias, glob_bias, plan):
        out, lse = _band_forward(_Operands(plan, q, k, v, gk, gv, key_bias, glob_bias))
        out = _unflat(out, plan, q.dtype)
        ctx.save_for_backward(q, k, v, gk, gv, key_bias, glob_bias, out, lse)
        ctx.plan = plan
        return out

    @staticmethod
    def backward(ctx, grad_out):
        p = ctx.plan
        q, k, v, gk, gv, key_bias, glob_bias, out, lse = ctx.saved_tensors
        ops = _Operands(p, q, k, v, gk, gv, key_bias, glob_bias)
        dq, dk, dv, dgk, dgv = _band_backward(ops, _flat(out, p), _flat(grad_out, p), lse)
        grads = [_unflat(x, p, q.dtype) for x in (dq, dk, dv)]
        grads += [x.view(gk.shape).to(q.dtype) for x in (dgk, dgv)]
        return (*grads, None, None, None)


def _global_rows(out: Tensor, q, k, v, pad: Tensor, gidx: Tensor, gvalid: Tensor) -> Tensor:
    """Replace the rows of global queries by attention over every unpadded key."""
    b, h, _, e = q.shape
    qg = q.gather(2, gidx[:, None, :, None].expand(b, h, gidx.shape[1], e))
    any_key = (~pad).any(1)
    allowed = ~pad | ~any_key[:, None]  # rows with no key at all: open, then zeroed
    og = F.scaled_dot_product_attention(qg, k, v, attn_mask=allowed[:, None, None, :])
    og = og * any_key[:, None, None, None].to(og.dtype)
    bi, slot = gvalid.nonzero(as_tuple=True)
    rows = og.transpose(1, 2)[bi, slot]  # (m, h, e)
    if torch.is_grad_enabled() and (out.requires_grad or rows.requires_grad):
        return out.transpose(1, 2).index_put((bi, gidx[bi, slot]), rows).transpose(1, 2)
    out.transpose(1, 2)[bi, gidx[bi, slot]] = rows
    return out


# ------------------------------------------------------------------------------ CUDA path


@lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    # Uncompiled flex materialises (n, n) scores. Dynamic shapes: a new n must not recompile
    # (dynamo's recompile limit would silently fall back to that eager path).
    return torch.compile(flex_attention, dynamic=True)


def _flex_attention(q, k, v, window, pad, glob) -> Tensor:
    """CUDA: ``flex_attention`` with a block-sparse mask built from the same rule.

    Head widths under 16 and float64, which flex does not support, take the blocked path
    (it runs on GPU too: about 5x slower than flex on an H100, same O(n * w) memory).
    """
    if q.shape[-1] < 16 or q.dtype == torch.float64:
        return _blocked_attention(q, k, v, window, pad, glob)
    from torch.nn.attention.flex_attention import create_block_mask

    b, _, n, _ = q.shape

    def mask_mod(bi, hi, qi, ki):
        near = (qi - ki).abs() <= window
        return (near | glob[bi, qi] | glob[bi, ki]) & ~pad[bi, ki]

    block_mask = create_block_mask(mask_mod, b, None, n, n, device=q.device, _compile=True)
    return _compiled_flex()(q, k, v, block_mask=block_mask)
