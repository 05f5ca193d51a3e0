"""Inference throughput of ``Predictor.predict_rows`` (what ``mmctx infer`` runs) by batch size.

Everything counts: reading the manifest, decoding the files (in ``--workers`` threads, one
batch ahead), collating, the forward pass and building the records. Each setting runs once
to warm up on a few samples, then over the whole manifest (repeated up to ``--samples``).
Prints a Markdown table and writes JSON.

    python benchmarks/infer_throughput.py --ckpt runs/demo/logs/version_0/checkpoints/best-*.ckpt \
        --manifest ~/.cache/mmctx/demo-n5000-s0/test.jsonl --out benchmarks/results/infer_cpu.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from pathlib import Path

import torch

from mmctx.pipelines.inference import InputRows, Predictor, rows_from_manifest


def measure(predictor: Predictor, rows: list, base: Path, batch_size: int, workers: int) -> dict:
    warm = InputRows(rows[: 2 * batch_size], base)
    list(predictor.predict_rows(warm, batch_size=batch_size, workers=workers))
    start = time.perf_counter()
    records = list(
        predictor.predict_rows(InputRows(rows, base), batch_size=batch_size, workers=workers)
    )
    seconds = time.perf_counter() - start
    ok = sum(r["status"] == "ok" for r in records)
    return {
        "batch_size": batch_size,
        "workers": workers,
        "samples": len(records),
        "ok": ok,
        "seconds": round(seconds, 3),
        "samples_per_second": round(len(records) / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `mmctx fit`")
    parser.add_argument("--manifest", required=True, help="manifest to predict on")
    parser.add_argument("--samples", type=int, default=512, help="samples per run (default: 512)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    predictor = Predictor.from_checkpoint(args.ckpt, device=args.device)
    inputs = rows_from_manifest(args.manifest)
    base_rows = list(inputs.rows)
    rows = list(itertools.islice(itertools.cycle(base_rows), args.samples))
    results = [
        measure(predictor, rows, inputs.base, b, w) for w in args.workers for b in args.batch_sizes
    ]
    print("| decode threads | batch size | samples/s | seconds |")
    print("|---|---|---|---|")
    for r in results:
        print(
            f"| {r['workers']} | {r['batch_size']} | {r['samples_per_second']} | {r['seconds']} |"
        )
    meta = {
        "ckpt": str(args.ckpt),
        "manifest": str(args.manifest),
        "device": args.device if args.device != "cuda" else torch.cuda.get_device_name(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(meta, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
