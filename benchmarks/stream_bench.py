"""Reading throughput: LitData shards streamed vs the manifest path (decode + collate, no model).

Writes the demo data, shards its training split with ``mmctx shard``'s writer (timed), then
reads every training batch through ``ShardedDataModule`` and through
``MultimodalDataModule`` at each worker count, alternating the two so both see the same
machine load. Reports samples/s, the ratio, and the sharding time. Also times the part of a
manifest sample's loading that shards skip (decoding the files) against reading a stored
sample, which is why shards hold decoded arrays rather than the files' bytes.

    python benchmarks/stream_bench.py --out benchmarks/results/stream_demo
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from mmctx.data.datamodule import MultimodalDataModule
from mmctx.data.shard_writer import settings_from_config, write_shards
from mmctx.data.stream_datamodule import ShardedDataModule
from mmctx.datasets.demo import DemoSpec, make_demo_dataset

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"image_size": 32, "image_channels": 1, "sample_rate": 8000}  # configs/demo.yaml


def samples_per_second(loader) -> tuple[float, int]:
    start = time.perf_counter()
    count = sum(len(batch["ids"]) for batch in loader)
    return count / (time.perf_counter() - start), count


def read_both(manifest: Path, shards: Path, workers: int, batch_size: int) -> dict:
    common = {**SETTINGS, "batch_size": batch_size, "num_workers": workers}
    manifest_data = MultimodalDataModule(train_manifest=str(manifest), val_fraction=0.0, **common)
    sources = {
        "manifest": manifest_data,
        "shards": ShardedDataModule(train_shards=str(shards), **common),
        # what each process of a DDP run uses: batches formed in the main process
        "shards_even": ShardedDataModule(train_shards=str(shards), even_batches=True, **common),
    }
    rates: dict[str, list[float]] = {name: [] for name in sources}
    counts = set()
    for _ in range(3):  # alternate, keep the best of three passes each
        for name, data in sources.items():
            rate, count = samples_per_second(data.loader("train", shuffle=True))
            rates[name].append(rate)
            counts.add(count)
    assert len(counts) == 1, counts  # every path read every sample
    best = {name: max(values) for name, values in rates.items()}
    return {
        "workers": workers,
        "samples": counts.pop(),
        **{f"{name}_samples_per_s": round(rate, 1) for name, rate in best.items()},
        "speedup": round(best["shards"] / best["manifest"], 2),
        "speedup_even": round(best["shards_even"] / best["manifest"], 2),
    }


def per_sample_costs(manifest: Path, shards: Path, n: int = 200) -> dict:
    """Mean ms to load one sample from its files vs from a shard record (no collate)."""
    from litdata import StreamingDataset

    manifest_data = MultimodalDataModule(train_manifest=str(manifest), val_fraction=0.0, **SETTINGS)
    files = manifest_data.dataset("train")
    stream = ShardedDataModule(train_shards=str(shards), **SETTINGS)
    stream.setup("fit")
    records = StreamingDataset(str(shards))
    reader = stream.dataset("train").transform[0]  # LitData keeps transforms in a list
    n = min(n, len(files), len(records))
    start = time.perf_counter()
    for i in range(n):
        files[i]
    from_files = (time.perf_counter() - start) / n
    start = time.perf_counter()
    for i in range(n):
        reader(records[i])
    from_records = (time.perf_counter() - start) / n
    return {
        "ms_from_files": round(1e3 * from_files, 3),
        "ms_from_shards": round(1e3 * from_records, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "stream_demo"))
    parser.add_argument("--num-samples", type=int, default=3000, help="demo samples, all splits")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--chunk-bytes",
        default="8MB",
        help="shard chunk size: several chunks let workers split files",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stream-bench-"))
    try:
        paths = make_demo_dataset(work / "demo", DemoSpec(num_samples=args.num_samples))
        settings = settings_from_config(str(ROOT / "configs" / "demo.yaml"))
        report = write_shards(
            paths["train"], work / "shards", chunk_bytes=args.chunk_bytes, **settings
        )
        rows = [
            read_both(paths["train"], work / "shards", w, args.batch_size) for w in args.workers
        ]
        costs = per_sample_costs(paths["train"], work / "shards")
        shard_bytes = sum(p.stat().st_size for p in (work / "shards").glob("chunk-*"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "num_samples_train": report.written,
        "shard_seconds": round(report.seconds, 2),
        "shard_megabytes": round(shard_bytes / 2**20, 1),
        "batch_size": args.batch_size,
        "chunk_bytes": args.chunk_bytes,
        "per_sample": costs,
        "rows": rows,
    }
    table = [
        "| workers | manifest samples/s | shards samples/s | speedup "
        "| shards, DDP batching, samples/s | speedup |",
        "|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['workers']} | {r['manifest_samples_per_s']} | {r['shards_samples_per_s']} "
            f"| {r['speedup']}x | {r['shards_even_samples_per_s']} | {r['speedup_even']}x |"
            for r in rows
        ),
    ]
    notes = (
        f"\nSharding {report.written} samples: {report.seconds:.1f} s "
        f"({result['shard_megabytes']} MB of chunks). One sample loaded from its files: "
        f"{costs['ms_from_files']} ms; from a shard record: {costs['ms_from_shards']} ms."
    )
    text = "\n".join(table) + "\n" + notes + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
