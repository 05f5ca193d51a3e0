"""Accuracy of each single modality and of all of them fused, trained the same way.

For every modality subset it copies the given config, keeps only those encoders (and
only those modalities in the data), trains, and evaluates the best checkpoint on the
validation and test splits. Prints a Markdown table and writes JSON.

    python benchmarks/modality_table.py --config configs/demo.yaml \
        --out benchmarks/results/demo_modalities.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from mmctx.cli import fit_and_evaluate


def run_subset(config: dict, modalities: list[str], workdir: Path, extra: list[str]) -> dict:
    cfg = json.loads(json.dumps(config))  # deep copy
    encoders = cfg["model"]["init_args"]["encoders"]
    cfg["model"]["init_args"]["encoders"] = {m: encoders[m] for m in modalities}
    cfg["data"].setdefault("init_args", {})["modalities"] = modalities
    cfg["trainer"]["default_root_dir"] = str(workdir)
    cfg["trainer"]["logger"] = False
    cfg["trainer"]["enable_progress_bar"] = False
    path = workdir / "subset.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return {"modalities": modalities, **fit_and_evaluate(["--config", str(path), *extra])}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", required=True, help="a classifier config with text, image and audio encoders"
    )
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.add_argument(
        "--subsets",
        nargs="+",
        default=["text", "image", "audio", "text,image,audio"],
        help="comma-separated modality sets (default: each alone, then all)",
    )
    parser.add_argument(
        "overrides", nargs="*", help="extra CLI overrides, e.g. --trainer.max_epochs=3"
    )
    args, unknown = parser.parse_known_args()
    config = yaml.safe_load(Path(args.config).read_text())
    sys.argv = [sys.argv[0]]  # Lightning's CLI reads only what we pass it
    rows = []
    for subset in args.subsets:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(
                run_subset(config, subset.split(","), Path(tmp), [*args.overrides, *unknown])
            )
    print("\n| modalities | val acc | test acc | fit time |\n|---|---|---|---|")
    for r in rows:
        print(
            f"| {' + '.join(r['modalities'])} | {r['val_acc']:.3f} | {r['test_acc']:.3f} | {r['fit_seconds']:.0f} s |"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU, {torch.get_num_threads()} threads"
    )
    result = {
        "config": args.config,
        "overrides": [*args.overrides, *unknown],
        "device": device,
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
