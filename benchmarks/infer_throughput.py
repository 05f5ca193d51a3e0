"""Inference throughput of ``Predictor.predict_rows`` (what ``mmctx infer`` runs) by batch size.

Everything counts: reading the manifest, decoding the files (in ``--workers`` threads, one
batch ahead), collating, the forward pass and building the records. Each setting runs once
to warm up on a few samples, then over the whole manifest (repeated up to ``--samples``).
Prints a Markdown table and writes JSON.

    python benchmarks/infer_throughput.py --ckpt runs/demo/logs/version_0/checkpoints/best-*.ckpt \
        --manifest ~/.cache/mmctx/demo-n5000-s0/test.jsonl --out benchmarks/results/infer_cpu.json

With retrieval: ``--index INDEX`` (``mmctx index build``) makes ``--ckpt`` retrieve and read
its neighbours, and ``--baseline-ckpt`` names a model without retrieval measured in the same
process, each setting alternating between the two (so both see the same machine load);
the table then shows both rates and their ratio.
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
    """One timed pass over ``rows`` after a short warm-up."""
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
    parser.add_argument("--index", help="retrieval index for --ckpt (mmctx index build)")
    parser.add_argument("--retrieve-k", type=int, default=4, help="neighbours (default: 4)")
    parser.add_argument("--baseline-ckpt", help="a model without retrieval, measured alongside")
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    predictor = Predictor.from_checkpoint(args.ckpt, device=args.device)
    if args.index:
        predictor.use_index(args.index, args.retrieve_k)
    baseline = args.baseline_ckpt and Predictor.from_checkpoint(args.baseline_ckpt, args.device)
    inputs = rows_from_manifest(args.manifest)
    base_rows = list(inputs.rows)
    rows = list(itertools.islice(itertools.cycle(base_rows), args.samples))
    results = []
    for w in args.workers:
        for b in args.batch_sizes:
            results.append(measure(predictor, rows, inputs.base, b, w))
            if baseline:
                plain = measure(baseline, rows, inputs.base, b, w)
                results[-1]["baseline_samples_per_second"] = plain["samples_per_second"]
                results[-1]["ratio"] = round(
                    results[-1]["samples_per_second"] / plain["samples_per_second"], 3
                )
    _print_table(results)
    meta = {
        "ckpt": str(args.ckpt),
        "index": args.index,
        "retrieve_k": args.retrieve_k if args.index else None,
        "baseline_ckpt": args.baseline_ckpt,
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


def _print_table(results: list[dict]) -> None:
    compared = "ratio" in results[0]
    extra = " without retrieval | ratio |" if compared else ""
    print(f"| decode threads | batch size | samples/s | seconds |{extra}")
    print("|---|---|---|---|" + ("---|---|" if compared else ""))
    for r in results:
        line = (
            f"| {r['workers']} | {r['batch_size']} | {r['samples_per_second']} | {r['seconds']} |"
        )
        if compared:
            line += f" {r['baseline_samples_per_second']} | {r['ratio']} |"
        print(line)


if __name__ == "__main__":
    main()
