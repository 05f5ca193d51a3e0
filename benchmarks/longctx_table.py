"""Long context against truncation on the built-in long-input data.

Trains ``configs/longctx_demo.yaml`` as it is (the whole ~3,500-position input), then
again with ``configs/longctx_truncated.yaml`` stacked on it (cut to 512 positions: the
first 256 of each modality), and evaluates each best checkpoint on validation and test.
Prints a Markdown table and writes JSON.

    python benchmarks/longctx_table.py --out benchmarks/results/longctx.json [--trainer.max_epochs=4 ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from mmctx.cli import fit_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "long context (all positions)": [],
    "truncated to 512 positions (256 per modality)": [
        "--config",
        str(ROOT / "configs" / "longctx_truncated.yaml"),
    ],
}


def run(extra: list[str], overrides: list[str]) -> dict:
    args = [
        "--config",
        str(ROOT / "configs" / "longctx_demo.yaml"),
        *extra,
        "--trainer.enable_progress_bar=false",
    ]
    return fit_and_evaluate([*args, *overrides])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="JSON file for the results")
    args, overrides = parser.parse_known_args()
    sys.argv = [sys.argv[0]]  # Lightning's CLI reads only what we pass it
    rows = {name: run(extra, overrides) for name, extra in VARIANTS.items()}
    print("\n| input | val acc | test acc | fit time |\n|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['val_acc']:.3f} | {r['test_acc']:.3f} | {r['fit_seconds']:.0f} s |")
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU, {torch.get_num_threads()} threads"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"overrides": overrides, "device": device, "rows": rows}, indent=2)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
