"""Train the judge and the conditional GAN for one dataset and target, then score the GAN.

    python benchmarks/gan_table.py --dataset demo      # configs/gan_demo.yaml
    python benchmarks/gan_table.py --dataset digits    # configs/gan_digits.yaml (shared data)
    python benchmarks/gan_table.py --dataset demo --target audio   # configs/gan_audio_demo.yaml

Steps (each a ``mmctx`` command, printed before it runs):
  1. ``mmctx fit --config configs/<target>_only_<dataset>.yaml``  (the judge, real data only)
  2. ``mmctx fit --config configs/gan[_audio]_<dataset>.yaml --trainer.max_time <--max-time>``
     (or ``--trainer.max_steps`` for ``--max-batches``)
  3. ``mmctx gan-eval`` on the test split: conditional accuracy and diversity
Writes ``benchmarks/results/gan[_audio]_<dataset>/{gan_eval.json, table.md,
contact_sheet.png}`` and copies the contact sheet to ``docs/gan[_audio]_<dataset>.png``
(folder and picture named ``..._trunc<T>`` when evaluated with ``--truncation T``).
Each fit's CPU time (user + system, all threads) is recorded beside its wall time: on a
shared machine the CPU time is the fairer measure of what the training cost. Anything after
``--`` is passed to both fits (``--data.*`` arguments to the evaluation too), e.g.
``-- --data.init_args.root ../shared/data``. ``--reuse`` skips fits whose checkpoint exists.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Conditional-accuracy targets: absolute, or (audio digits) a share of the judge's accuracy
# on the real held-out recordings.
TARGETS = {("image", "demo"): 0.80, ("image", "digits"): 0.60, ("audio", "demo"): 0.80}
RELATIVE_TARGETS = {("audio", "digits"): 0.80}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(cmd: list[str]) -> tuple[float, float]:
    """Run a command (printed first); return its wall and CPU time in seconds."""
    print("$ " + " ".join(cmd), flush=True)
    start, cpu = time.perf_counter(), _children_cpu()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return round(time.perf_counter() - start, 1), round(_children_cpu() - cpu, 1)


def _newest(folder: Path, pattern: str) -> Path | None:
    found = sorted(folder.rglob(pattern), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _fit(
    config: str, run_dir: Path, pattern: str, extra: list[str], reuse: bool
) -> tuple[Path, tuple[float, float] | None]:
    """Fit ``config`` into ``run_dir`` (unless reusing a checkpoint); return it and the
    wall and CPU seconds."""
    if reuse and (ckpt := _newest(run_dir, pattern)) is not None:
        print(f"reusing {ckpt}")
        return ckpt, None
    cmd = [sys.executable, "-m", "mmctx.cli", "fit", "--config", config]
    cmd += ["--trainer.default_root_dir", str(run_dir)]
    cmd += ["--trainer.logger.init_args.save_dir", str(run_dir), *extra]
    seconds = _run(cmd)
    ckpt = _newest(run_dir, pattern)
    if ckpt is None:
        raise SystemExit(f"no checkpoint {pattern} under {run_dir} after the fit")
    return ckpt, seconds


def _target_cell(result: dict, target: str, ds: str) -> tuple[str, bool]:
    """The conditional-accuracy target of a dataset, as a table cell, and whether it is met."""
    acc = result["conditional_accuracy"]
    if (target, ds) in RELATIVE_TARGETS:
        share = RELATIVE_TARGETS[target, ds]
        bar = share * result["classifier_accuracy_real"]
        ok = acc >= bar
        return (
            f"{acc:.3f} (>= {share:.2f} x judge on real = {bar:.3f}, {'met' if ok else 'MISSED'})",
            ok,
        )
    ok = acc >= TARGETS[target, ds]
    return f"{acc:.3f} (>= {TARGETS[target, ds]:.2f}, {'met' if ok else 'MISSED'})", ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=["demo", "digits"], required=True)
    parser.add_argument("--target", choices=["image", "audio"], default="image")
    parser.add_argument("--max-time", default="00:00:15:00", help="GAN training time DD:HH:MM:SS")
    parser.add_argument(
        "--max-batches",
        type=int,
        help="train the GAN for this many batches instead of --max-time (a budget that does "
        "not depend on how busy the machine is)",
    )
    parser.add_argument("--runs", default="runs/gan_table", help="folder for the runs")
    parser.add_argument("--n", type=int, default=8, help="samples per condition")
    parser.add_argument("--reuse", action="store_true", help="reuse existing checkpoints")
    parser.add_argument("--device", default="cpu", help="device of the evaluation")
    parser.add_argument(
        "--truncation",
        type=float,
        help="evaluate with the noise truncated to [-T, T] (gan-eval --truncation); results "
        "go to a folder of their own, <name>_trunc<T>",
    )
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    ds, target = args.dataset, args.target
    name = f"gan_{ds}" if target == "image" else f"gan_audio_{ds}"
    runs = ROOT / args.runs / (ds if target == "image" else f"{ds}_audio")
    out = ROOT / "benchmarks" / "results" / name
    if args.truncation:
        out = out.with_name(f"{name}_trunc{args.truncation:g}")
    clf, clf_s = _fit(
        f"configs/{target}_only_{ds}.yaml", runs / "judge", "best-*.ckpt", extra, args.reuse
    )
    budget = ["--trainer.max_time", args.max_time]
    if args.max_batches:  # two optimizer steps a batch
        budget = ["--trainer.max_time", "null", "--trainer.max_steps", str(2 * args.max_batches)]
    gan_extra = [*extra, *budget]
    gan, gan_s = _fit(f"configs/{name}.yaml", runs / "gan", "last.ckpt", gan_extra, args.reuse)
    data_args = [
        a
        for i, a in enumerate(extra)
        if a.startswith("--data")
        or (i and extra[i - 1].startswith("--data") and not a.startswith("--"))
    ]
    eval_cmd = [
        sys.executable, "-m", "mmctx.cli", "gan-eval", "--ckpt", str(gan), "--classifier", str(clf),
        "--config", f"configs/{name}.yaml", "--n", str(args.n), "--out", str(out),
        "--device", args.device, *data_args,
    ]  # fmt: skip
    if args.truncation:
        eval_cmd += ["--truncation", str(args.truncation)]
    eval_s = _run(eval_cmd)[0]
    result = json.loads((out / "gan_eval.json").read_text())
    import torch  # only for reading the step count of the checkpoint

    steps = torch.load(gan, map_location="cpu", weights_only=True)["global_step"]
    result.update(
        dataset=ds,
        target=target,
        gan_training_batches=steps // 2,  # two optimizer steps a batch
        judge_fit_seconds=clf_s and clf_s[0],
        gan_fit_seconds=gan_s and gan_s[0],
        gan_fit_cpu_seconds=gan_s and gan_s[1],
        eval_seconds=eval_s,
        max_time=None if args.max_batches else args.max_time,
        max_batches=args.max_batches,
        extra_args=extra,
        target_conditional_accuracy=TARGETS.get((target, ds)),
        target_share_of_judge_on_real=RELATIVE_TARGETS.get((target, ds)),
        gan=os.path.relpath(gan, ROOT),
        classifier=os.path.relpath(clf, ROOT),
    )
    (out / "gan_eval.json").write_text(json.dumps(result, indent=1))
    acc_cell, _ = _target_cell(result, target, ds)
    ok_div = result["diversity_ratio"] >= 0.5
    noise = (
        f"truncated to [-{args.truncation:g}, {args.truncation:g}]"
        if args.truncation
        else "N(0, 1)"
    )
    fit = "reused" if gan_s is None else f"{gan_s[0]:.0f} / {gan_s[1]:.0f}"
    table = "\n".join(
        [
            "| dataset | target | batches | noise | conditional acc. (target) | diversity / real (target) | judge acc. on real (rebuilt) | context acc. | conditional acc. where the context names the class | GAN fit wall s / CPU s |",
            "|---|---|---|---|---|---|---|---|---|---|",
            f"| {ds} | {target} | {steps // 2} | {noise} | {acc_cell} "
            f"| {result['diversity_per_condition']:.4f} / {result['diversity_per_class_real']:.4f} = "
            f"{result['diversity_ratio']:.2f} (>= 0.50, {'met' if ok_div else 'MISSED'}) "
            f"| {result['classifier_accuracy_real']:.3f} ({result['classifier_accuracy_real_resynthesised']:.3f}) "
            f"| {result['context_accuracy'] or float('nan'):.3f} "
            f"| {result['conditional_accuracy_context_right'] or float('nan'):.3f} | {fit} |",
        ]
    )
    (out / "table.md").write_text(table + "\n")
    docs = ROOT / "docs"
    docs.mkdir(exist_ok=True)
    sheet = docs / f"{out.name}.png"
    shutil.copy(out / "contact_sheet.png", sheet)
    print(table)
    print(f"wrote {out}/ and {sheet.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
