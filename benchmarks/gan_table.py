"""Train the image-only judge and the conditional GAN for one dataset, then score the GAN.

    python benchmarks/gan_table.py --dataset demo      # configs/gan_demo.yaml
    python benchmarks/gan_table.py --dataset digits    # configs/gan_digits.yaml (shared data)

Steps (each a ``mmctx`` command, printed before it runs):
  1. ``mmctx fit --config configs/image_only_<dataset>.yaml``  (the judge, real images only)
  2. ``mmctx fit --config configs/gan_<dataset>.yaml --trainer.max_time <--max-time>``
  3. ``mmctx gan-eval`` on the test split: conditional accuracy and diversity
Writes ``benchmarks/results/gan_<dataset>/{gan_eval.json, table.md, contact_sheet.png}``
and copies the contact sheet to ``docs/gan_<dataset>.png``. Anything after ``--`` is passed
to both fits (``--data.*`` arguments to the evaluation too), e.g.
``-- --data.init_args.root ../shared/data``. ``--reuse`` skips fits whose checkpoint exists.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"demo": 0.80, "digits": 0.60}


def _run(cmd: list[str]) -> float:
    """Run a command (printed first); return its wall time in seconds."""
    print("$ " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return round(time.perf_counter() - start, 1)


def _newest(folder: Path, pattern: str) -> Path | None:
    found = sorted(folder.rglob(pattern), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _fit(
    config: str, run_dir: Path, pattern: str, extra: list[str], reuse: bool
) -> tuple[Path, float | None]:
    """Fit ``config`` into ``run_dir`` (unless reusing a checkpoint); return it and the time."""
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(TARGETS), required=True)
    parser.add_argument("--max-time", default="00:00:15:00", help="GAN training time DD:HH:MM:SS")
    parser.add_argument("--runs", default="runs/gan_table", help="folder for the runs")
    parser.add_argument("--n", type=int, default=8, help="images per condition")
    parser.add_argument("--reuse", action="store_true", help="reuse existing checkpoints")
    parser.add_argument("--device", default="cpu", help="device of the evaluation")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    ds = args.dataset
    runs = ROOT / args.runs / ds
    out = ROOT / "benchmarks" / "results" / f"gan_{ds}"
    clf, clf_s = _fit(
        f"configs/image_only_{ds}.yaml", runs / "judge", "best-*.ckpt", extra, args.reuse
    )
    gan_extra = [*extra, "--trainer.max_time", args.max_time]
    gan, gan_s = _fit(f"configs/gan_{ds}.yaml", runs / "gan", "last.ckpt", gan_extra, args.reuse)
    data_args = [
        a
        for i, a in enumerate(extra)
        if a.startswith("--data")
        or (i and extra[i - 1].startswith("--data") and not a.startswith("--"))
    ]
    eval_cmd = [
        sys.executable, "-m", "mmctx.cli", "gan-eval", "--ckpt", str(gan), "--classifier", str(clf),
        "--config", f"configs/gan_{ds}.yaml", "--n", str(args.n), "--out", str(out),
        "--device", args.device, *data_args,
    ]  # fmt: skip
    eval_s = _run(eval_cmd)
    result = json.loads((out / "gan_eval.json").read_text())
    import torch  # only for reading the step count of the checkpoint

    steps = torch.load(gan, map_location="cpu", weights_only=True)["global_step"]
    result.update(
        dataset=ds,
        gan_training_batches=steps // 2,  # two optimizer steps a batch
        judge_fit_seconds=clf_s,
        gan_fit_seconds=gan_s,
        eval_seconds=eval_s,
        max_time=args.max_time,
        extra_args=extra,
        target_conditional_accuracy=TARGETS[ds],
        gan=os.path.relpath(gan, ROOT),
        classifier=os.path.relpath(clf, ROOT),
    )
    (out / "gan_eval.json").write_text(json.dumps(result, indent=1))
    ok_acc = result["conditional_accuracy"] >= TARGETS[ds]
    ok_div = result["diversity_ratio"] >= 0.5
    table = "\n".join(
        [
            "| dataset | conditional acc. (target) | diversity / real (target) | judge acc. on real | context acc. | GAN fit s |",
            "|---|---|---|---|---|---|",
            f"| {ds} | {result['conditional_accuracy']:.3f} (>= {TARGETS[ds]:.2f}, {'met' if ok_acc else 'MISSED'}) "
            f"| {result['diversity_per_condition']:.4f} / {result['diversity_per_class_real']:.4f} = "
            f"{result['diversity_ratio']:.2f} (>= 0.50, {'met' if ok_div else 'MISSED'}) "
            f"| {result['classifier_accuracy_real']:.3f} | {result['context_accuracy'] or float('nan'):.3f} "
            f"| {gan_s if gan_s is not None else 'reused'} |",
        ]
    )
    (out / "table.md").write_text(table + "\n")
    docs = ROOT / "docs"
    docs.mkdir(exist_ok=True)
    shutil.copy(out / "contact_sheet.png", docs / f"gan_{ds}.png")
    print(table)
    print(f"wrote {out}/ and docs/gan_{ds}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
