"""Where a training step's time goes: data loading, each encoder, fusion, backbone + pooling
+ head, optimizer, and whatever remains (Lightning's loop is not included: plain PyTorch).

Builds the model and data module from a config exactly as ``mmctx fit`` would, then for a
number of training batches times, one after another on the same batch:

- ``data``: fetching the batch from the training DataLoader (decode, log-mel, collate),
- each stage alone, forward + backward: every encoder on its input, the fusion on detached
  encoder outputs, the backbone + pooling + head on the detached fused sequence,
- the whole step (forward + backward of the full model) and the optimizer step.

"other" is the whole step minus the sum of the stages. Reports per-step medians, samples/s
and fused positions/s, writes JSON and a stacked-bar PNG.

    python benchmarks/train_step_profile.py --config configs/longctx_demo.yaml \\
        --out benchmarks/results/train_step_longctx.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from mmctx.allocator import reuse_freed_memory
from mmctx.cli import lightning_cli
from mmctx.features import FeatureSequence


def _seconds(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _detached(seq: FeatureSequence) -> FeatureSequence:
    return FeatureSequence(seq.features.detach().requires_grad_(), seq.mask, seq.globals)


def profile_batch(model, optimizer, batch) -> dict[str, float]:
    """Seconds of each stage (forward + backward) and of the whole step on one batch."""
    fused, inputs, target = model.fused, batch["inputs"], batch["label"]
    times, features = {}, {}
    for name, encoder in fused.encoders.items():

        def encode(encoder=encoder, name=name):
            out = encoder(inputs[name])
            out.features.sum().backward()
            return out

        times[f"encoder:{name}"], out = _seconds(encode)
        features[name] = _detached(out)

    def fuse():
        out = fused.fusion(features)
        out.features.sum().backward()
        return out

    times["fusion"], seq = _seconds(fuse)
    seq = _detached(seq)

    def read():
        loss = model._loss(model.head(fused.pool(fused.backbone(seq))), target)
        loss.backward()

    times["backbone+pool+head"], _ = _seconds(read)
    optimizer.zero_grad(set_to_none=True)

    def whole():
        model._loss(model(inputs), target).backward()

    times["whole fwd+bwd"], _ = _seconds(whole)
    times["optimizer"], _ = _seconds(optimizer.step)
    optimizer.zero_grad(set_to_none=True)
    times["positions"] = float(seq.mask.sum())
    times["samples"] = float(len(batch["ids"]))
    return times


def run(args) -> dict:
    tuned = reuse_freed_memory()  # as the mmctx command does (MMCTX_MALLOC=default: not)
    argv = [arg for cfg in args.config for arg in ("--config", cfg)] + args.overrides
    cli = lightning_cli(argv, run=False, save_config_callback=None)
    model, dm = cli.model, cli.datamodule
    dm.prepare_data()
    dm.setup("fit")
    optimizer = model.optimizer_factory(model.parameters())  # the config's optimizer
    model.train()
    rows = []
    loader = iter(dm.train_dataloader())
    for step in range(args.warmup + args.steps):
        data_s, batch = _seconds(lambda: next(loader))
        row = {"data": data_s, **profile_batch(model, optimizer, batch)}
        if step >= args.warmup:
            rows.append(row)
        print(f"step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), file=sys.stderr)
    return {
        "config": args.config,
        "overrides": args.overrides,
        "threads": torch.get_num_threads(),
        "malloc_reuses_freed_memory": tuned,
        "steps": rows,
    }


def summarise(result: dict) -> dict[str, float]:
    rows = result["steps"]
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    stages = [k for k in med if k.startswith("encoder:")] + ["fusion", "backbone+pool+head"]
    parts = {k: med[k] for k in ["data", *stages]}
    parts["other (whole minus stages)"] = max(
        0.0, med["whole fwd+bwd"] - sum(med[k] for k in stages)
    )
    parts["optimizer"] = med["optimizer"]
    step = med["data"] + med["whole fwd+bwd"] + med["optimizer"]
    return {
        "parts_s": parts,
        "step_s": step,
        "samples_per_s": med["samples"] / step,
        "positions_per_s": med["positions"] / step,
    }


def print_table(summary: dict) -> None:
    step = summary["step_s"]
    print("| stage (median per step) | seconds | share |")
    print("|---|---:|---:|")
    for name, s in summary["parts_s"].items():
        print(f"| {name} | {s:.3f} | {100 * s / step:.0f}% |")
    print(f"| **step** | **{step:.3f}** | 100% |")
    print(
        f"\n{summary['samples_per_s']:.1f} samples/s, {summary['positions_per_s']:,.0f} fused positions/s"
    )


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 1.8))
    left = 0.0
    for name, s in summary["parts_s"].items():
        ax.barh([0], [s], left=left, label=f"{name} ({s:.2f} s)")
        left += s
    ax.set_yticks([])
    ax.set_xlabel("seconds per training step (median)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.6), ncol=3, fontsize=8)
    fig.savefig(path, bbox_inches="tight", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", action="append", required=True, help="YAML config (repeatable)")
    p.add_argument("--steps", type=int, default=8, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/train_step.json"))
    args, args.overrides = p.parse_known_args(argv)
    result = run(args)
    result["summary"] = summarise(result)
    print_table(result["summary"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result["summary"], args.out.with_suffix(".png"))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}", file=sys.stderr)


if __name__ == "__main__":
    main()
