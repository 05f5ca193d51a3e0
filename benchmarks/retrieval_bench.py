"""Retrieval index speed and recall: flat (exact), PQ + re-rank and HNSW on random 256-d vectors.

For each corpus size: build throughput (vectors/s, all threads given by ``--build-threads``),
single-query latency (median and p99 over ``--queries`` queries, one at a time, ONE thread)
and recall@10 against the exact answer, for a few ``efSearch`` (HNSW) or ``rerank_factor``
(PQ: how many times 10 code-scan hits are re-ranked exactly) values. Queries are
corpus vectors plus noise (a query near some items, as in retrieval), not the items
themselves. Uses :class:`mmctx.index.VectorIndex` exactly as ``mmctx index`` does. Prints a
Markdown table and writes JSON.

    python benchmarks/retrieval_bench.py --sizes 10000 100000 1000000 --kinds flat pq \
        --out benchmarks/results/retrieval.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from mmctx.index import VectorIndex, normalise


def _latency(index: VectorIndex, queries: np.ndarray, k: int) -> tuple[list[list[int]], dict]:
    import faiss

    faiss.omp_set_num_threads(1)
    index.search(queries[:5], k)  # warm up
    found, times = [], []
    for q in queries:
        start = time.perf_counter()
        hits = index.search(q[None], k)[0]
        times.append(time.perf_counter() - start)
        found.append([int(h.id) for h in hits])
    ms = np.array(times) * 1e3
    return found, {"median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99))}


def bench_size(n: int, args: argparse.Namespace) -> list[dict]:
    import faiss

    rng = np.random.default_rng(n)
    data = normalise(rng.standard_normal((n, args.dim), dtype=np.float32))
    picks = rng.integers(0, n, args.queries)
    noise = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    queries = normalise(data[picks] + args.noise * noise / np.sqrt(args.dim))
    ids = [str(i) for i in range(n)]
    rows: list[dict] = [{} for _ in range(n)]
    results = []
    exact = None
    for kind in ["flat", *(k for k in args.kinds if k != "flat")]:  # exact first: the truth
        if kind == "hnsw" and n > args.max_hnsw:
            continue
        faiss.omp_set_num_threads(args.build_threads)
        index = VectorIndex(dim=args.dim, kind=kind, hnsw_m=args.m, ef_construction=args.efc)
        start = time.perf_counter()
        index.add(data, ids, rows)
        build = time.perf_counter() - start
        settings = {"flat": [0], "hnsw": args.ef_search, "pq": args.rerank}[kind]
        for setting in settings:
            if kind == "hnsw":
                index.ef_search = setting
            elif kind == "pq":
                index.rerank_factor = setting
            found, lat = _latency(index, queries, 10)
            if kind == "flat":
                exact = found
            recall = float(
                np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact, strict=True)])
            )
            row = {"n": n, "kind": kind, "setting": setting or None, "build_s": round(build, 2),
                   "build_vec_per_s": round(n / build), **lat, "recall@10": recall}  # fmt: skip
            print(
                f"| {n:>9,} | {kind:4} | {setting or '-':>4} | {build:8.1f} | "
                f"{n / build:>10,.0f} | {lat['median_ms']:7.3f} | {lat['p99_ms']:7.3f} | "
                f"{recall:.3f} |",
                flush=True,
            )
            results.append(row)
        del index
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--noise", type=float, default=0.5, help="query noise, per unit norm")
    parser.add_argument("--m", type=int, default=32, help="HNSW M")
    parser.add_argument("--efc", type=int, default=64, help="HNSW efConstruction")
    parser.add_argument("--kinds", nargs="+", choices=["flat", "pq", "hnsw"],
                        default=["flat", "pq", "hnsw"], help="index kinds (flat always runs)")  # fmt: skip
    parser.add_argument("--ef-search", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--rerank", type=int, nargs="+", default=[10, 20, 50],
                        help="PQ rerank_factor values")  # fmt: skip
    parser.add_argument("--build-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-hnsw", type=int, default=10**7, help="skip HNSW above this n")
    parser.add_argument("--out", default="benchmarks/results/retrieval.json")
    args = parser.parse_args()
    print("|         n | kind | ef/rerank | build s  |  vectors/s | med ms  | p99 ms  | R@10  |")
    print("|----------:|------|-----:|---------:|-----------:|--------:|--------:|------:|")
    results = [r for n in args.sizes for r in bench_size(n, args)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "args": vars(args)}  # fmt: skip
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
