"""Sliding-window attention with global tokens in O(n * window) memory.

Query ``i`` sees key ``j`` iff ``|i - j| <= window`` or either token is global, never a
padded key. Queries are cut into blocks of ``c`` rows; block ``i`` sees the ``L = c + 2r``
key rows around it, an overlapping ``as_strided`` view of the flattened keys, so each step
is one batched matmul over blocks; a fixed corner mask trims the window to the band.
Global keys are extra score columns of every block (masked where the band already holds
them); global queries are computed densely per head and written over the band rows.
Blocks go in chunks of bounded size. A custom autograd function saves only ``q, k, v``,
the output and the row logsumexp, and recomputes scores chunk by chunk in backward
(flash-attention style), overlap-adding each window's key/value gradients into place.
Scores are kept in base 2 (``exp2`` is fast and never slows down on denormals). On CUDA
the same mask goes to ``flex_attention``.

Shape legend: b = batch, h = heads, n = positions, e = head width, w = window,
c = query rows per block, r = w rounded up to a multiple of c, L = c + 2r keys per block,
g = global slots (max global count over the batch), G = blocks in one chunk.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

_CHUNK_ELEMS = 1 << 20  # score elements per chunk (4 MiB in fp32): bounds memory, stays in cache
_LOG2E = 1.0 / math.log(2.0)
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
    pad = _as_mask(key_padding_mask, b, n, q.device)
    glob = _as_mask(global_mask, b, n, q.device)
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
    pad = _as_mask(key_padding_mask, b, n, q.device)
    glob = _as_mask(global_mask, b, n, q.device)
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
        raise ValueError(f"q must be float32, bfloat16, float16 or float64, got dtype {q.dtype}")
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


def _as_mask(mask: Tensor | None, b: int, n: int, device: torch.device) -> Tensor:
    if mask is None:
        return torch.zeros(b, n, dtype=torch.bool, device=device)
    return mask.to(device)


# ----------------------------------------------------------------------- blocked CPU path


class _Plan(NamedTuple):
    """Geometry of one call (letters as in the module docstring)."""

    b: int
    h: int
    n: int
    e: int
    w: int  # window clipped to n - 1
    c: int
    r: int
    L: int
    nb: int  # query blocks per (b, h)
    rows: int  # nb * c: padded rows per (b, h)
    g: int
    cdtype: torch.dtype  # compute dtype: float64 for float64 input, else float32

    def spans(self) -> list[tuple[int, int]]:
        """Block ranges ``(g0, g1)`` of the chunks: each within the score budget, with a
        multiple of the thread count of blocks (bmm splits the batch over threads)."""
        blocks, fit = self.b * self.h * self.nb, _CHUNK_ELEMS // (self.c * (self.L + self.g))
        threads = torch.get_num_threads()
        step = max(1, min(blocks, fit // threads * threads or fit))
        return [(g0, min(g0 + step, blocks)) for g0 in range(0, blocks, step)]


def _plan(q: Tensor, window: int, g: int) -> _Plan:
    b, h, n, e = q.shape
    w = min(window, n - 1)
    c = 64 if w >= 48 else 32 if w >= 16 else 16  # wastes little band, still fine for BLAS
    c = min(c, max(8, 1 << (n - 1).bit_length()))
    r, nb = -(-w // c) * c, -(-n // c)
    cdtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return _Plan(b, h, n, e, w, c, r, c + 2 * r, nb, nb * c, g, cdtype)


def _blocked_attention(q, k, v, window, pad, glob) -> Tensor:
    b, h, _, e = q.shape
    plan = _plan(q, window, int(glob.sum(1).max()))
    masks = _masks(plan, pad, glob)
    if plan.g:
        take = masks.glob_idx[:, None, :, None].expand(b, h, plan.g, e)
        gk, gv = k.gather(2, take), v.gather(2, take)
    else:  # nothing gathered: even an empty gather costs a full-size zero gradient
        gk = gv = q.new_empty(b, h, 0, e)
    return _BandAttention.apply(q, k, v, gk, gv, masks, plan)


class _Masks(NamedTuple):
    """What padding and global tokens mean for one call (no gradients flow through these)."""

    key_bias: Tensor  # (b * nb, L) additive mask of each block's window keys (padding)
    glob_bias: Tensor  # (b, g) additive mask of the global key slots
    row_bias: Tensor  # (b, nb * c) additive mask of all keys, for global queries
    glob_idx: Tensor  # (b, g) positions of the global tokens (spare slots point at 0)
    glob_count: list[int]  # global tokens per batch row


def _masks(p: _Plan, pad: Tensor, glob: Tensor) -> _Masks:
    """Additive 0 / -inf key masks and the global token slots."""
    counts = glob.sum(1)
    bi, pos = glob.nonzero(as_tuple=True)
    slot = torch.arange(bi.numel(), device=pad.device) - (torch.cumsum(counts, 0) - counts)[bi]
    glob_idx = torch.zeros(p.b, p.g, dtype=torch.long, device=pad.device)
    glob_idx[bi, slot] = pos
    slots = torch.arange(p.g, device=pad.device) < counts[:, None]
    ok = torch.zeros(p.b, p.rows + 2 * p.r, dtype=torch.bool, device=pad.device)
    ok[:, p.r : p.r + p.n] = ~pad
    windows = ok.unfold(1, p.L, p.c).reshape(p.b * p.nb, p.L)
    oks = (windows, slots & ~pad.gather(1, glob_idx), ok[:, p.r : p.r + p.rows])
    return _Masks(*(_bias(x, p.cdtype) for x in oks), glob_idx, counts.tolist())


def _bias(ok: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.zeros(ok.shape, dtype=dtype, device=ok.device).masked_fill_(~ok, -math.inf)


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
    """Inverse of ``_flat``, contiguous, in ``dtype``."""
    return x.view(p.b, p.h, p.rows, -1)[:, :, : p.n].to(dtype).contiguous()


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

    def __init__(self, p: _Plan, q, k, v, gk, gv, masks: _Masks) -> None:
        self.plan = p
        self.q, self.k, self.v = (_flat(x, p) for x in (q, k, v))
        self.gk, self.gv = (x.reshape(p.b * p.h, p.g, p.e).to(p.cdtype) for x in (gk, gv))
        self.masks = masks
        dirty = (masks.key_bias != 0).any(1).view(p.b, 1, p.nb).expand(p.b, p.h, p.nb).reshape(-1)
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
    """Blocks ``g0:g1``: scaled queries, key/value windows, base-2 scores of the band
    ``s`` ``(G, c, L)`` and of the global keys ``sg`` ``(G * c, g)``.

    Both score tensors are contiguous (bmm into strided views falls back to a slow loop);
    global columns are multiplied per head segment of the chunk, one plain matmul each.
    """

    def __init__(self, ops: _Operands, g0: int, g1: int) -> None:
        p, self.ops = ops.plan, ops
        self.n, c, e = g1 - g0, p.c, p.e
        self.rows = slice(g0 * c, g1 * c)
        queries = ops.q[self.rows].view(self.n, c, e)
        self.q = torch.mul(queries, e**-0.5 * _LOG2E, out=ops.buffer("q", self.n, c, e))
        self.k, self.v = (
            _rows(x, g0 * c - p.r, g1 * c + p.r)
            .to(p.cdtype)
            .as_strided((self.n, p.L, e), (c * e, e, 1))
            for x in (ops.k, ops.v)
        )
        heads = range(g0 // p.nb, (g1 - 1) // p.nb + 1) if p.g else ()
        self.segments = [
            (hd, (max(g0, hd * p.nb) - g0) * c, (min(g1, hd * p.nb + p.nb) - g0) * c)
            for hd in heads
        ]
        self.s, self.sg = s, sg = self.times_keys(self.q, self.k, ops.gk, "s")
        left, right = _edge_bias(p.w, c, p.r, p.cdtype, str(s.device))
        s[:, :, : left.shape[1]].add_(left)
        s[:, :, p.L - right.shape[1] :].add_(right)
        if ops.dirty(g0, g1):
            ids = torch.arange(g0, g1, device=s.device)
            rows = ids // (p.h * p.nb) * p.nb + ids % p.nb
            s.add_(ops.masks.key_bias.index_select(0, rows)[:, None])
        for hd, lo, hi in self.segments:  # a global key inside the band is counted there
            pos = torch.arange(lo + g0 * c - hd * p.rows, hi + g0 * c - hd * p.rows)
            near = (pos[:, None].to(s.device) - ops.masks.glob_idx[hd // p.h]).abs() <= p.w
            sg[lo:hi].add_(ops.masks.glob_bias[hd // p.h].masked_fill(near, -math.inf))

    def rows_of(self, x: Tensor) -> Tensor:
        """This chunk's ``(G, c, *)`` rows of a flat ``(rows, *)`` tensor."""
        return x[self.rows].view(self.n, self.q.shape[1], *x.shape[1:])

    def times_keys(self, a: Tensor, band: Tensor, glob: Tensor, name: str):
        """``a @ band^T`` ``(G, c, L)`` and ``a @ glob^T`` ``(G * c, g)`` (glob: per head)."""
        p = self.ops.plan
        s = torch.bmm(a, band.transpose(1, 2), out=self.ops.buffer(name, self.n, p.c, p.L))
        sg, a2 = self.ops.buffer(name + "g", self.n * p.c, p.g), a.view(-1, p.e)
        for hd, lo, hi in self.segments:
            torch.mm(a2[lo:hi], glob[hd].T, out=sg[lo:hi])
        return s, sg

    def times_values(self, s: Tensor, sg: Tensor, band: Tensor, glob: Tensor, out: Tensor):
        """``s @ band + sg @ glob`` into ``out`` ``(G, c, e)``."""
        torch.bmm(s, band, out=out)
        for hd, lo, hi in self.segments:
            out.view(-1, out.shape[-1])[lo:hi].addmm_(sg[lo:hi], glob[hd])
        return out


def _band_forward(ops: _Operands) -> tuple[Tensor, Tensor]:
    """Flat output ``(b * h * rows, e)`` and base-2 row logsumexp (+inf: row sees nothing)."""
    p = ops.plan
    out = ops.q.new_empty(ops.q.shape, dtype=p.cdtype)
    lse = ops.q.new_empty(ops.q.shape[0], 1, dtype=p.cdtype)
    for g0, g1 in p.spans():
        ch = _Chunk(ops, g0, g1)
        s, sg = ch.s, ch.sg
        top = s.amax(-1, keepdim=True)
        if p.g:
            torch.maximum(top, sg.amax(-1).view_as(top), out=top)
        top.masked_fill_(top == -math.inf, 0.0)
        s.sub_(top).exp2_()
        sg.sub_(top.view(-1, 1)).exp2_()
        total = s.sum(-1, keepdim=True).add_(sg.sum(-1).view_as(top))  # >= 1 iff a key is seen
        ch.times_values(s, sg, ch.v, ops.gv, ch.rows_of(out)).div_(total.clamp(min=1.0))
        ch.rows_of(lse).copy_((top + total.log2()).masked_fill_(total == 0, math.inf))
    return out, lse


def _band_backward(ops: _Operands, out: Tensor, grad: Tensor, lse: Tensor):
    """Unscaled gradient accumulators: flat dq, padded flat dk and dv, dgk, dgv."""
    p = ops.plan
    dq = torch.empty_like(ops.q, dtype=p.cdtype)
    dk, dv = (ops.q.new_zeros(dq.shape[0] + 2 * p.r, p.e, dtype=p.cdtype) for _ in "kv")
    dgk, dgv = (torch.zeros_like(ops.gk) for _ in "kv")
    for g0, g1 in p.spans():
        ch = _Chunk(ops, g0, g1)
        row_lse = ch.rows_of(lse)
        prob, prob_g = ch.s.sub_(row_lse).exp2_(), ch.sg.sub_(row_lse.view(-1, 1)).exp2_()
        do = ch.rows_of(grad).to(p.cdtype)
        delta = (do * ch.rows_of(out)).sum(-1, keepdim=True)
        ds, ds_g = ch.times_keys(do, ch.v, ops.gv, "ds")
        ds.sub_(delta).mul_(prob)
        ds_g.sub_(delta.view(-1, 1)).mul_(prob_g)
        ch.times_values(ds, ds_g, ch.k, ops.gk, ch.rows_of(dq))
        for acc, gacc, w, wg, x in ((dk, dgk, ds, ds_g, ch.q), (dv, dgv, prob, prob_g, do)):
            win = torch.bmm(w.transpose(1, 2), x, out=ops.buffer("win", ch.n, p.L, p.e))
            _overlap_add(acc.view(-1, p.c, p.e), win, g0, p)
            for hd, lo, hi in ch.segments:
                gacc[hd].addmm_(wg[lo:hi].T, x.view(-1, p.e)[lo:hi])
    return dq, dk, dv, dgk, dgv


def _overlap_add(dst: Tensor, win: Tensor, g0: int, p: _Plan) -> None:
    """Add window grads ``(G, L, e)`` of blocks ``g0:`` into padded key blocks ``dst``.

    Sub-block ``s`` (rows ``s*c:(s+1)*c``) of block ``i``'s window lands on block ``i + s``.
    """
    n_blk, parts = win.shape[0], p.L // p.c
    ids = torch.arange(n_blk, device=win.device)[:, None] + torch.arange(parts, device=win.device)
    dst.index_add_(0, ids.view(-1) + g0, win.reshape(n_blk * parts, p.c, p.e))


class _BandAttention(torch.autograd.Function):
    """Band + global attention over flat blocks, recomputing scores in backward.

    Global queries' rows are computed densely (per head) and written over the band result;
    their band logsumexp is set to +inf so the band backward gives them zero probabilities.
    Both passes pick their own compute dtype (float32 for low precision): an enclosing
    autocast (``precision: bf16-mixed``) is switched off inside, or it would recast matmuls.
    """

    @staticmethod
    def forward(ctx, q, k, v, gk, gv, masks: _Masks, plan: _Plan):
        with torch.autocast(q.device.type, enabled=False):
            return _BandAttention._forward(ctx, q, k, v, gk, gv, masks, plan)

    @staticmethod
    def backward(ctx, grad_out):
        with torch.autocast(grad_out.device.type, enabled=False):
            return _BandAttention._backward(ctx, grad_out)

    @staticmethod
    def _forward(ctx, q, k, v, gk, gv, masks: _Masks, plan: _Plan):
        ops = _Operands(plan, q, k, v, gk, gv, masks)
        out, lse = _band_forward(ops)
        glob_lse = _global_forward(ops, out, lse)
        out = _unflat(out, plan, q.dtype)
        ctx.save_for_backward(q, k, v, gk, gv, out, lse, glob_lse)
        ctx.masks, ctx.plan = masks, plan
        return out

    @staticmethod
    def _backward(ctx, grad_out):
        p = ctx.plan
        q, k, v, gk, gv, out, lse, glob_lse = ctx.saved_tensors
        ops = _Operands(p, q, k, v, gk, gv, ctx.masks)
        out, grad = _flat(out, p), _flat(grad_out, p)
        dq, dk, dv, dgk, dgv = _band_backward(ops, out, grad, lse)
        _global_backward(ops, out, grad, glob_lse, dq, dk, dv)
        # the scaled queries carried scale * log2(e): undo log2(e) for dk, apply scale to dq
        dk, dv = (x[p.r : p.r + dq.shape[0]] for x in (dk, dv))
        dq, dk, dgk = dq.mul_(p.e**-0.5), dk.mul_(math.log(2.0)), dgk.mul_(math.log(2.0))
        grads = [_unflat(x, p, q.dtype) for x in (dq, dk, dv)]
        grads += [x.view(gk.shape).to(q.dtype) for x in (dgk, dgv)]
        return (*grads, None, None)


def _global_heads(ops: _Operands):
    """Per (b, h) head with global queries: their flat rows, scaled queries ``(m, e)``, base-2
    scores over all the head's keys ``(m, rows)``, and the head's key and value rows."""
    p = ops.plan
    for hd in range(p.b * p.h):
        count = ops.masks.glob_count[hd // p.h]
        if count:
            rows = ops.masks.glob_idx[hd // p.h, :count] + hd * p.rows
            qs = ops.q.index_select(0, rows).to(p.cdtype) * (p.e**-0.5 * _LOG2E)
            k, v = (x[hd * p.rows : (hd + 1) * p.rows].to(p.cdtype) for x in (ops.k, ops.v))
            yield rows, qs, (qs @ k.T).add_(ops.masks.row_bias[hd // p.h]), k, v


def _global_forward(ops: _Operands, out: Tensor, lse: Tensor) -> Tensor:
    """Write global queries' rows (attention over every unpadded key) into ``out``."""
    glob_lse = torch.full_like(lse, math.inf)  # only the global rows are used
    for rows, _, s, _, v in _global_heads(ops):
        top = s.amax(-1, keepdim=True)
        top.masked_fill_(top == -math.inf, 0.0)
        s.sub_(top).exp2_()
        total = s.sum(-1, keepdim=True)
        out.index_copy_(0, rows, (s @ v).div_(total.clamp(min=1.0)))
        glob_lse.index_copy_(0, rows, (top + total.log2()).masked_fill_(total == 0, math.inf))
        lse.index_fill_(0, rows, math.inf)  # the band backward must ignore these rows
    return glob_lse


def _global_backward(ops, out, grad, glob_lse, dq, dk, dv) -> None:
    """Add the global query rows' gradients into the (unscaled, padded) accumulators."""
    p = ops.plan
    for rows, qs, s, k, v in _global_heads(ops):
        prob = s.sub_(glob_lse.index_select(0, rows)).exp2_()
        do = grad.index_select(0, rows).to(p.cdtype)
        delta = (do * out.index_select(0, rows)).sum(-1, keepdim=True)
        ds = (do @ v.T).sub_(delta).mul_(prob)
        dq.index_add_(0, rows, ds @ k)
        head = rows[0].item() // p.rows * p.rows + p.r  # this head's first row in dk / dv
        dk[head : head + p.rows].addmm_(ds.T, qs)
        dv[head : head + p.rows].addmm_(prob.T, do)


# ------------------------------------------------------------------------------ CUDA path


@lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    # Uncompiled flex materialises (n, n) scores; so does dynamo's fallback once its
    # recompile limit is hit (each dtype, head width and grad mode compiles separately).
    return torch.compile(flex_attention)


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
