"""Training-step speed of two versions of mmctx side by side: an older commit and this tree.

The older commit is built into a temporary folder (``git worktree`` + ``pip install
--target``); each version then runs in its own child process, alternating old, new, old,
new, ... so that both see the same machine. A child builds the model and data module from
the config exactly as ``mmctx fit`` does (including the malloc settings the ``mmctx`` command
of that version applies at start-up), and times whole training steps on real batches: data
loading, forward + backward, optimizer step. Reports median seconds per step, samples/s and
fused positions/s of each version and the ratio; writes JSON.

    python benchmarks/train_speed.py --config configs/longctx_demo.yaml --old ba64e74 \\
        --out benchmarks/results/train_speed_longctx.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = "@@train_speed@@ "

# Runs in a child with `python -P` (no current folder on sys.path), so `mmctx` is whichever
# version PYTHONPATH or the environment provides.
CHILD = r"""
import json, os, sys, time
if os.environ.get("PYTHONPATH"):  # the old version alone: no module of this tree's install
    sys.meta_path = [f for f in sys.meta_path if "Editable" not in getattr(f, "__name__", "")]
import mmctx, torch
try:
    from mmctx.allocator import reuse_freed_memory
    tuned = reuse_freed_memory()  # what the mmctx command of this version does at start-up
except ImportError:
    tuned = False
from mmctx.cli import lightning_cli
args = json.loads(sys.argv[1])
argv = [a for cfg in args["config"] for a in ("--config", cfg)] + args["overrides"]
cli = lightning_cli(argv, run=False, save_config_callback=None)
model, dm = cli.model, cli.datamodule
dm.prepare_data()
dm.setup("fit")
optimizer = model.optimizer_factory(model.parameters())
model.train()
loader, rows = iter(dm.train_dataloader()), []
for step in range(args["warmup"] + args["steps"]):
    t0 = time.perf_counter()
    batch = next(loader)
    t1 = time.perf_counter()
    model._loss(model(batch["inputs"]), batch["label"]).backward()
    t2 = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    t3 = time.perf_counter()
    if step >= args["warmup"]:
        rows.append({"data": t1 - t0, "fwd+bwd": t2 - t1, "optimizer": t3 - t2,
                     "samples": len(batch["ids"])})
with torch.no_grad():
    model.eval()
    positions = int(model.fused.fuse(batch["inputs"]).mask.sum())
print("@@train_speed@@ " + json.dumps({"mmctx": mmctx.__file__, "malloc_tuned": tuned,
      "threads": torch.get_num_threads(), "positions_per_batch": positions, "steps": rows}))
"""


def build_old(ref: str, where: Path) -> Path:
    """Install commit ``ref`` of this repository into ``where/site``; returns that folder."""
    tree, site = where / "tree", where / "site"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), ref], check=True
    )
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--no-build-isolation",
                "--target",
                str(site),
                str(tree),
            ],
            check=True,
        )
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=True
        )
    return site


def run_child(site: Path | None, args) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MMCTX_MALLOC")}
    if site is not None:
        env["PYTHONPATH"] = str(site)
    spec = {
        "config": args.config,
        "overrides": args.overrides,
        "steps": args.steps,
        "warmup": args.warmup,
    }
    out = subprocess.run(
        [sys.executable, "-P", "-c", CHILD, json.dumps(spec)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith(MARK)), None)
    if out.returncode or line is None:
        sys.exit(f"child failed ({'old' if site else 'new'}):\n{out.stderr[-3000:]}")
    return json.loads(line[len(MARK) :])


def summarise(runs: list[dict]) -> dict:
    steps = [row for run in runs for row in run["steps"]]
    step = statistics.median(r["data"] + r["fwd+bwd"] + r["optimizer"] for r in steps)
    parts = {k: statistics.median(r[k] for r in steps) for k in ("data", "fwd+bwd", "optimizer")}
    samples, positions = steps[0]["samples"], runs[0]["positions_per_batch"]
    return {
        "step_s": step,
        "parts_s": parts,
        "samples_per_s": samples / step,
        "positions_per_s": positions / step,
        "samples_per_batch": samples,
        "positions_per_batch": positions,
        "malloc_tuned": runs[0]["malloc_tuned"],
        "threads": runs[0]["threads"],
        "mmctx": runs[0]["mmctx"],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", action="append", required=True, help="YAML config (repeatable)")
    p.add_argument("--old", default="ba64e74", help="git ref of the older version")
    p.add_argument("--steps", type=int, default=6, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first, per run")
    p.add_argument("--rounds", type=int, default=3, help="old, new pairs of runs")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/train_speed.json"))
    args, args.overrides = p.parse_known_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        site = build_old(args.old, Path(tmp))
        runs = {"old": [], "new": []}
        for r in range(args.rounds):
            for name, where in (("old", site), ("new", None)):
                runs[name].append(run_child(where, args))
                last = runs[name][-1]["steps"]
                med = statistics.median(s["data"] + s["fwd+bwd"] + s["optimizer"] for s in last)
                print(f"round {r + 1} {name}: {med:.3f} s/step", file=sys.stderr)
    result = {
        "config": args.config,
        "overrides": args.overrides,
        "old": args.old,
        "summary": {name: summarise(rs) for name, rs in runs.items()},
        "runs": runs,
    }
    old, new = result["summary"]["old"], result["summary"]["new"]
    result["speedup"] = old["step_s"] / new["step_s"]
    print("| version | s / step | data | fwd+bwd | optimizer | samples/s | fused positions/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, s in (("old " + args.old, old), ("new", new)):
        d = s["parts_s"]
        print(
            f"| {name} | {s['step_s']:.3f} | {d['data']:.3f} | {d['fwd+bwd']:.3f} | "
            f"{d['optimizer']:.3f} | {s['samples_per_s']:.1f} | {s['positions_per_s']:,.0f} |"
        )
    print(f"\nspeed-up {result['speedup']:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
