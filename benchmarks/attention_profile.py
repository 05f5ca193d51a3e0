"""Where mmctx's CPU attention kernel spends its time, and how far a kernel of its design can go.

    python benchmarks/attention_profile.py      # N = 4k, 16k: 8 heads of width 64, window 256
    python benchmarks/attention_profile.py --sizes 3500 --batch 16 --heads 4 --head-dim 16 \\
        --window 64 --out benchmarks/results/attention_profile_demo.json   # the demo's backbone

1. Op breakdown: torch.profiler over forward and forward + backward; self CPU time grouped
   into block matmuls (bmm, mm, addmm), exp2, other arithmetic and reductions, copies and
   indexing, and what is left of the profiled wall time (Python, dispatch, the profiler).
2. The design's ceiling: the kernel's block matmuls -- a block of ``c`` queries times its
   ``L = c + 2r`` window keys, and the ``(c, L)`` probabilities times the window values --
   timed alone on contiguous buffers for block sizes ``c = 16..128``, against the 2048^2
   matmul rate measured in the same run. With everything else free, a kernel of this design
   reaches at best the useful FLOPs over that matmul work: forward does 2 block matmuls,
   forward + backward 7 (the backward recomputes the scores) or 6 (were the probabilities
   kept: O(N * w) memory, but ~L floats per query and head).

Useful FLOPs as in attention_bench.py: fwd 4*B*H*N*(2w+1)*D, fwd+bwd 2.5x that. Malloc keeps
freed memory (as the mmctx command does). Prints Markdown, writes JSON. Run it idle.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from attention_bench import matmul_gflops, others_busy  # benchmarks/attention_bench.py
from torch.profiler import ProfilerActivity, profile

import mmctx.nn.attention as attention
from mmctx.allocator import malloc_state, reuse_freed_memory

GROUPS = {
    "block matmuls": {"aten::bmm", "aten::mm", "aten::addmm", "aten::addmm_"},
    "exp2": {"aten::exp2_", "aten::exp2"},
    "arithmetic, reductions": {
        "aten::add_", "aten::add", "aten::sub_", "aten::sub", "aten::mul", "aten::mul_",
        "aten::div_", "aten::div", "aten::amax", "aten::sum", "aten::clamp", "aten::maximum",
        "aten::log2", "aten::masked_fill_", "aten::eq", "aten::abs", "aten::le",
    },
}  # fmt: skip
OTHER = "copies, indexing, allocation"
LEFT = "outside ops (Python, dispatch, profiler)"


def _inputs(args, n: int):
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, args.heads, n, args.head_dim)
    q, k, v = (torch.randn(shape, generator=gen).requires_grad_() for _ in range(3))
    return q, k, v, torch.randn(shape, generator=gen)


def _call(q, k, v, grad, window: int, pass_: str) -> None:
    if pass_ == "fwd":
        with torch.no_grad():
            attention.sliding_window_attention(q, k, v, window)
    else:
        attention.sliding_window_attention(q, k, v, window).backward(grad)


def breakdown(args, n: int, pass_: str) -> dict:
    """Median wall time of one call, and the shares of its profiled time by op group."""
    q, k, v, grad = _inputs(args, n)
    times = []
    for _ in range(args.repeats + 1):
        start = time.perf_counter()
        _call(q, k, v, grad, args.window, pass_)
        times.append(time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(args.repeats):
            _call(q, k, v, grad, args.window, pass_)
        profiled = time.perf_counter() - start
    spent = dict.fromkeys([*GROUPS, OTHER], 0.0)
    for event in prof.key_averages():
        if not event.key.startswith("aten::"):
            continue  # autograd / Function records: their self time is Python, counted below
        group = next((g for g, names in GROUPS.items() if event.key in names), OTHER)
        spent[group] += event.self_cpu_time_total / 1e6
    spent[LEFT] = max(0.0, profiled - sum(spent.values()))
    useful = 4 * args.batch * args.heads * n * (2 * args.window + 1) * args.head_dim
    useful *= 2.5 if pass_ == "fwd+bwd" else 1.0
    wall = statistics.median(times[1:])
    return {
        "n": n,
        "pass": pass_,
        "time_s": wall,
        "useful_gflop": useful / 1e9,
        "pct_matmul": 100 * useful / wall / 1e9 / args.peak,
        "shares": {g: s / profiled for g, s in spent.items()},
    }


def ceiling(args, n: int, c: int) -> dict:
    """Block matmuls of block size ``c`` alone: their rate and the best a kernel can reach."""
    e, w = args.head_dim, min(args.window, n - 1)
    r = -(-w // c) * c
    L = c + 2 * r
    blocks = args.batch * args.heads * -(-n // c)
    group = max(1, min(blocks, attention._CHUNK_ELEMS // (c * L)))
    gen = torch.Generator().manual_seed(0)
    q, kv = torch.randn(group, c, e, generator=gen), torch.randn(group, L, e, generator=gen)
    s, out = torch.empty(group, c, L), torch.empty(group, c, e)

    def pair() -> None:  # scores and weighted values for every block, in chunks of `group`
        for g0 in range(0, blocks, group):
            g = min(group, blocks - g0)
            torch.bmm(q[:g], kv[:g].transpose(1, 2), out=s[:g])
            torch.bmm(s[:g], kv[:g], out=out[:g])

    pair()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        pair()
        times.append(time.perf_counter() - start)
    t = statistics.median(times)
    useful = 4 * args.batch * args.heads * n * (2 * w + 1) * e / 1e9
    return {
        "n": n,
        "c": c,
        "L": L,
        "band_waste": 1 - (2 * w + 1) / L,
        "block_matmul_pct": 100 * 4 * blocks * c * L * e / 1e9 / t / args.peak,
        "ceiling_fwd_pct": 100 * useful / t / args.peak,
        "ceiling_fwd_bwd_pct": 100 * 2.5 * useful / (3.5 * t) / args.peak,
        "ceiling_fwd_bwd_kept_pct": 100 * 2.5 * useful / (3 * t) / args.peak,
        "kernel_uses": c == attention._plan(torch.empty(1, 1, n, e), w, 0).c,
    }


def print_report(result: dict) -> None:
    cols = [*GROUPS, OTHER, LEFT]
    print("| N | pass | ms | % of matmul rate | " + " | ".join(cols) + " |")
    print("|---:|---|---:|---:|" + "---:|" * len(cols))
    for row in result["breakdown"]:
        shares = " | ".join(f"{100 * row['shares'][g]:.0f}%" for g in cols)
        print(
            f"| {row['n']} | {row['pass']} | {1000 * row['time_s']:.1f} "
            f"| {row['pct_matmul']:.1f}% | {shares} |"
        )
    print(
        "\n| N | block c | keys L | band waste | block matmuls, % of matmul rate "
        "| ceiling fwd | ceiling fwd+bwd (recompute) | ceiling fwd+bwd (kept) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in result["ceiling"]:
        mark = " (kernel)" if row["kernel_uses"] else ""
        print(
            f"| {row['n']} | {row['c']}{mark} | {row['L']} | {100 * row['band_waste']:.1f}% "
            f"| {row['block_matmul_pct']:.0f}% | {row['ceiling_fwd_pct']:.0f}% "
            f"| {row['ceiling_fwd_bwd_pct']:.0f}% | {row['ceiling_fwd_bwd_kept_pct']:.0f}% |"
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384], help="lengths N")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--blocks", type=int, nargs="+", default=[16, 32, 64, 128], help="sizes c")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
    p.add_argument("--matmul-seconds", type=float, default=2.0, help="time of the rate check")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/attention_profile.json"))
    args = p.parse_args(argv)
    reuse_freed_memory()
    busy = others_busy()
    args.peak, size = matmul_gflops(torch.float32, args.matmul_seconds)
    result = {
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "peak")},
        "machine": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_busy_at_start": busy,
            "matmul_gflops_fp32": args.peak,
            "matmul_size": size,
            "malloc": malloc_state(),
        },
        "breakdown": [
            breakdown(args, n, pass_) for n in args.sizes for pass_ in ("fwd", "fwd+bwd")
        ],
        "ceiling": [ceiling(args, n, c) for n in args.sizes for c in args.blocks],
    }
    print(
        f"fp32 matmul ({size}^2): {args.peak:.0f} GFLOP/s, {result['machine']['threads']} threads"
        + (f"; WARNING: other processes used {100 * busy:.0f}% of the CPU" if busy > 0.1 else "")
    )
    print_report(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
