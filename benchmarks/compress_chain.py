"""Model folders written by ``mmctx compress`` (of different runs, e.g. a structurally
pruned model quantised by a second run) timed side by side in one process.

    mmctx compress --ckpt BEST.ckpt --out runs/c1 --methods structured int8 onnx-int8 ...
    mmctx compress --ckpt runs/c1/structured --out runs/c2 --methods int8 onnx-int8
    python benchmarks/compress_chain.py original=runs/c1/original int8=runs/c1/int8 \\
        structured+int8=runs/c2/int8 structured+onnx-int8=runs/c2/onnx-int8 --threads 1 \\
        --out benchmarks/results/compress_chain.json

Model-forward latency at batch 1 and 32 (medians, models timed in turn), parameters and
size on disk, with speed-ups and sizes relative to the first folder. Prints a Markdown
table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from allocator import ALLOCATORS, allocator_state, run_under  # benchmarks/allocator.py
from allocator import HELP as MALLOC_HELP

from mmctx.pipelines.compress import _size_mb, load_variant, time_forward


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folders", nargs="+", help="NAME=FOLDER; the first is the baseline")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, help="torch and ONNX Runtime threads")
    parser.add_argument("--out", default="benchmarks/results/compress_chain.json")
    parser.add_argument("--malloc", choices=list(ALLOCATORS), default="default", help=MALLOC_HELP)
    args = parser.parse_args()
    run_under(args.malloc)  # PyTorch and ONNX Runtime share this process and its malloc
    if args.threads:
        torch.set_num_threads(args.threads)
    folders = dict(item.split("=", 1) for item in args.folders)
    variants = {
        name: {"folder": Path(f), "kind": "onnx" if (Path(f) / "model.onnx").is_file() else "torch"}
        for name, f in folders.items()
    }
    predictors = {name: load_variant(v) for name, v in variants.items()}
    first = next(iter(predictors.values()))
    modalities = tuple(m.name for m in first.modalities)
    timed = {
        bs: time_forward(predictors, modalities, first.preprocess, bs, reps)
        for bs, reps in ((1, args.repeats), (32, max(3, args.repeats // 5)))
    }
    base = next(iter(folders))
    rows = []
    for name, v in variants.items():
        size = _size_mb(v["folder"])
        rows.append(
            {
                "model": name,
                "folder": str(v["folder"]),
                "size_mb": round(size, 3),
                "size_vs_first": round(size / _size_mb(variants[base]["folder"]), 3),
                "latency_ms_b1": round(timed[1][name], 3),
                "latency_ms_b32": round(timed[32][name], 3),
                "speedup_b1": round(timed[1][base] / timed[1][name], 3),
                "speedup_b32": round(timed[32][base] / timed[32][name], 3),
            }
        )
    lines = ["| model | size MB | ms @1 | ms @32 |", "|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['size_mb']:.2f} ({r['size_vs_first']:.2f}) | "
            f"{r['latency_ms_b1']:.2f} ({r['speedup_b1']:.2f}x) | "
            f"{r['latency_ms_b32']:.1f} ({r['speedup_b32']:.2f}x) |"
        )
    print("\n".join(lines))
    report = {"threads": torch.get_num_threads(), "repeats": args.repeats, "models": rows}
    report["allocator"] = {"mode": args.malloc, **allocator_state()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
