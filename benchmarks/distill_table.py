"""Distillation table (issue 13): teacher, distilled student, and the same student alone.

Trains, one after another, with ``mmctx fit``: the teacher (``--teacher-config``, default the
demo model; skipped with ``--teacher-ckpt``), the student of ``--student-config`` (a
``DistillationClassifier``) on that teacher, and the same student as a plain
``MultimodalClassifier`` (the config with the distillation arguments removed). Reports
parameters, best val/acc and fit wall time of each, whether the target is met (student
params <= 1/4 of the teacher's, student acc >= 98% of the teacher's and above the plain
student's), prints a Markdown table and writes JSON.

    python benchmarks/distill_table.py --work /tmp/m --out benchmarks/results/distill_demo.json
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

DISTILL_ARGS = ("teacher_ckpt", "temperature", "alpha", "feature_weight", "teacher_dim")


def plain_config(student: str, path: Path) -> Path:
    """``student`` as a plain ``MultimodalClassifier`` (distillation arguments removed)."""
    cfg = yaml.safe_load(Path(student).read_text())
    cfg["model"]["class_path"] = "MultimodalClassifier"
    for key in DISTILL_ARGS:
        cfg["model"]["init_args"].pop(key, None)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def fit(config: str, root: Path, extra: list[str]) -> dict:
    mmctx = str(Path(sys.executable).with_name("mmctx"))
    cmd = [mmctx, "fit", "--config", config, "--trainer.enable_progress_bar", "false",
           "--trainer.default_root_dir", str(root),
           "--trainer.logger.init_args.save_dir", str(root), *extra]  # fmt: skip
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    with open(root.with_suffix(".log"), "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    return {"fit_s": round(time.perf_counter() - start, 1), **read_run(root)}


def read_run(root: Path) -> dict:
    """Best val/acc (and its epoch) from the run's CSV log, params from its best checkpoint."""
    from mmctx.checkpoints import load_module

    metrics = sorted(glob.glob(str(root / "logs" / "version_*" / "metrics.csv")))[-1]
    with open(metrics) as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/acc")]
    best = max(rows, key=lambda r: float(r["val/acc"]))
    ckpt = sorted(glob.glob(str(root / "checkpoints" / "best-*.ckpt")))[-1]
    model = load_module(ckpt)  # parameters as built; a feature projection is training-only
    params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("feature_proj"))
    return {"best_val_acc": float(best["val/acc"]), "best_epoch": int(best["epoch"]),
            "params": params, "ckpt": ckpt}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-config", default="configs/demo.yaml")
    parser.add_argument("--teacher-ckpt", help="a trained teacher's run dir (skip training it)")
    parser.add_argument("--student-config", default="configs/distill_demo.yaml")
    parser.add_argument("--work", default="runs/distill_table")
    parser.add_argument("--out", default="benchmarks/results/distill_demo.json")
    args, extra = parser.parse_known_args()  # extra: passed to every mmctx fit
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.teacher_ckpt:
        teacher = {"fit_s": None, **read_run(Path(args.teacher_ckpt))}
    else:
        teacher = fit(args.teacher_config, work / "teacher", extra)
    distilled = fit(args.student_config, work / "distilled",
                    [*extra, "--model.init_args.teacher_ckpt", teacher["ckpt"]])  # fmt: skip
    plain_cfg = plain_config(args.student_config, work / "student_plain.yaml")
    plain = fit(str(plain_cfg), work / "plain", extra)
    ratio = distilled["params"] / teacher["params"]
    kept = distilled["best_val_acc"] / teacher["best_val_acc"]
    target = {"params_ratio": round(ratio, 4), "acc_kept": round(kept, 4),
              "params_le_quarter": ratio <= 0.25, "acc_kept_ge_98pct": kept >= 0.98,
              "beats_plain": distilled["best_val_acc"] > plain["best_val_acc"]}  # fmt: skip
    target["met"] = all(v for k, v in target.items() if isinstance(v, bool))
    print("| model | params | best val acc | epoch | fit s |\n|---|---|---|---|---|")
    for name, r in (("teacher", teacher), ("student, distilled", distilled),
                    ("student, no teacher", plain)):  # fmt: skip
        print(
            f"| {name} | {r['params']:,} | {100 * r['best_val_acc']:.2f} | "
            f"{r['best_epoch']} | {r['fit_s']} |"
        )
    print(json.dumps(target))
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "args": vars(args), "extra": extra}  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"meta": meta, "teacher": teacher, "distilled": distilled, "plain": plain,
              "target": target}  # fmt: skip
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
