"""Accuracy with each modality missing, for a model trained with and without modality dropout.

Fits the base config as it is, then with the augmentation overlay stacked on it
(``configs/demo_augment.yaml``: modality dropout plus per-modality augmentation), and runs
the robustness report (:mod:`mmctx.pipelines.robustness`) on each best checkpoint. Prints a Markdown
table, writes JSON, and keeps each model's robustness.{json,csv,png} under ``--out``.

    python benchmarks/modality_dropout_table.py --out benchmarks/results/demo_dropout
    python benchmarks/modality_dropout_table.py --base configs/digits.yaml --out benchmarks/results/digits_dropout
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from mmctx.cli import lightning_cli
from mmctx.pipelines.robustness import robustness_report, write_report

ROOT = Path(__file__).resolve().parents[1]


def fit_and_report(configs: list[str], overrides: list[str], out: Path, split: str) -> dict:
    argv = [a for c in configs for a in ("--config", c)]
    argv += [
        f"--trainer.default_root_dir={out}",
        f"--trainer.logger.init_args.save_dir={out}",
        "--trainer.enable_progress_bar=false",
        *overrides,
    ]
    cli = lightning_cli(argv, run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = time.perf_counter() - start
    best = cli.trainer.checkpoint_callback.best_model_path
    cli.model.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
    cli.model.to(cli.trainer.strategy.root_device)
    results = robustness_report(cli.model, cli.datamodule, split=split, levels=[0.0, 0.5, 1.0])
    write_report(results, out, title=" + ".join(Path(c).name for c in configs))
    return {
        "configs": configs,
        "checkpoint": best,
        "fit_seconds": round(seconds, 1),
        "results": [r.__dict__ for r in results],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default=str(ROOT / "configs" / "demo.yaml"), help="base config")
    parser.add_argument(
        "--overlay",
        default=str(ROOT / "configs" / "demo_augment.yaml"),
        help="config adding modality dropout and augmentation",
    )
    parser.add_argument("--split", default="val", choices=["val", "test"])
    parser.add_argument("--out", required=True, help="folder for JSON and plots")
    args, overrides = parser.parse_known_args()
    sys.argv = [sys.argv[0]]  # Lightning's CLI reads only what we pass it
    out = Path(args.out)
    runs = {
        "without modality dropout": fit_and_report(
            [args.base], overrides, out / "plain", args.split
        ),
        "with modality dropout + augmentation": fit_and_report(
            [args.base, args.overlay], overrides, out / "dropout", args.split
        ),
    }
    conditions = [
        r["condition"]
        for r in next(iter(runs.values()))["results"]
        if r["setting"] in ("", "removed")
    ]
    print(f"\n{args.split} accuracy | " + " | ".join(conditions) + " | fit time")
    print("|---" * (len(conditions) + 2) + "|")
    for name, run in runs.items():
        acc = {
            r["condition"]: r["accuracy"] for r in run["results"] if r["setting"] in ("", "removed")
        }
        cells = " | ".join(f"{acc[c]:.3f}" for c in conditions)
        print(f"| {name} | {cells} | {run['fit_seconds']:.0f} s |")
    (out / "summary.json").write_text(json.dumps({"split": args.split, "runs": runs}, indent=2))
    print(f"wrote {out / 'summary.json'}")


if __name__ == "__main__":
    main()
