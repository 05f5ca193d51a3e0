"""GPU check of mmctx.nn.attention: exactness of the CUDA path and its speed against the others.

On a CUDA machine, compares (b=1, h=8, e=64, window=256) forward and forward+backward time
and peak GPU memory of: flex_attention (what ``sliding_window_attention`` uses on CUDA),
the blocked CPU kernel run on the GPU, and dense SDPA with a band mask (n <= 16k), in fp32
and bf16; and checks the CUDA path against the dense reference with padding and globals.

    python benchmarks/attention_gpu.py --out benchmarks/results/gpu_attention.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mmctx.nn import attention as A

DEV = "cuda"


def exactness() -> list[dict]:
    rows = []
    for n, w in [(300, 7), (1000, 64), (2048, 256)]:
        q, k, v = (torch.randn(2, 4, n, 64, device=DEV, requires_grad=True) for _ in range(3))
        pad = torch.zeros(2, n, dtype=torch.bool, device=DEV)
        pad[1, n - 50 :] = True
        glob = torch.zeros(2, n, dtype=torch.bool, device=DEV)
        glob[:, 0] = True
        glob[0, n // 2] = True
        out = A.sliding_window_attention(q, k, v, w, key_padding_mask=pad, global_mask=glob)
        ref = A.dense_reference(q, k, v, w, key_padding_mask=pad, global_mask=glob)
        g = torch.randn_like(out)
        ga, gr = torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)
        grad_err = max((a - b).abs().max().item() for a, b in zip(ga, gr, strict=True))
        rows.append(
            {"n": n, "w": w, "fwd_err": (out - ref).abs().max().item(), "grad_err": grad_err}
        )
    return rows


def seconds(fn: Callable[[], object], reps: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps


def candidates(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> dict[str, Callable[[], torch.Tensor]]:
    n = q.shape[2]
    none = torch.zeros(1, n, dtype=torch.bool, device=DEV)
    impls = {
        "flex (default on CUDA)": lambda: A._flex_attention(q, k, v, 256, none, none),
        "blocked (CPU kernel on GPU)": lambda: A._blocked_attention(q, k, v, 256, none, none),
    }
    if n <= 16384:
        idx = torch.arange(n, device=DEV)
        band = (idx[:, None] - idx[None]).abs() <= 256
        impls["dense SDPA + band mask"] = lambda: F.scaled_dot_product_attention(
            q, k, v, attn_mask=band
        )
    return impls


def timings(sizes: list[int]) -> list[dict]:
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for n in sizes:
            q, k, v = (
                torch.randn(1, 8, n, 64, device=DEV, dtype=dtype, requires_grad=True)
                for _ in range(3)
            )
            impls = candidates(q, k, v)
            for name, fn in impls.items():
                torch.cuda.reset_peak_memory_stats()
                with torch.no_grad():
                    fwd = seconds(fn)
                both = seconds(lambda fn=fn: fn().sum().backward())
                peak = torch.cuda.max_memory_allocated() / 2**20
                row = {
                    "impl": name,
                    "n": n,
                    "dtype": str(dtype),
                    "fwd_s": fwd,
                    "fwd_bwd_s": both,
                    "peak_mib": peak,
                }
                rows.append(row)
                print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 65536, 262144])
    args = parser.parse_args()
    torch.manual_seed(0)
    result = {
        "device": torch.cuda.get_device_name(),
        "exact": exactness(),
        "timing": timings(args.sizes),
    }
    print(json.dumps(result["exact"], indent=1))
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
