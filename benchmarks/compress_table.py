"""Compression table: every method of ``mmctx compress`` on a trained classifier, side by side.

Parameters, size on disk, model-forward latency on the CPU at batch 1 and 32 (medians,
all models timed in turn in this one process), validation accuracy and accuracy with each
modality removed. Prints a Markdown table and writes JSON.

    mmctx fit --config configs/demo.yaml --data.num_samples 3000 --trainer.max_epochs 6 \
        --data.cache_dir /tmp/demo3k --trainer.default_root_dir /tmp/run3k
    python benchmarks/compress_table.py --ckpt /tmp/run3k/checkpoints/best-*.ckpt \
        --val-manifest /tmp/demo3k/val.jsonl --out benchmarks/results/compress_demo.json

``--config YAML`` instead of ``--ckpt`` times an untrained model of that config (random
weights; sizes and latency only, no accuracy), e.g. a serving-size one.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch
from allocator import ALLOCATORS, allocator_state, run_under  # benchmarks/allocator.py
from allocator import HELP as MALLOC_HELP

from mmctx.pipelines.compress import METHODS, compress, markdown_table


def untrained_checkpoint(config: str, path: Path) -> Path:
    """A checkpoint of ``config``'s model with random weights (and its data settings)."""
    import yaml

    from mmctx.checkpoints import DATA_SETTINGS_KEY, build_module

    cfg = yaml.safe_load(Path(config).read_text())
    model_cfg, data = cfg["model"], cfg["data"].get("init_args", {})
    classes = [str(i) for i in range(10)]
    name = model_cfg["class_path"]
    hparams = {
        "_class_path": name if "." in name else f"mmctx.pipelines.{name}",
        **{k: v for k, v in model_cfg["init_args"].items() if k != "optimizer"},
        "class_names": classes,
    }
    torch.manual_seed(0)
    model = build_module(hparams)
    keys = ("image_size", "image_channels", "sample_rate")
    settings = {"preprocess": {k: data[k] for k in keys if k in data}, "class_names": classes}
    state = {"state_dict": model.state_dict(), "hyper_parameters": hparams}
    torch.save({**state, DATA_SETTINGS_KEY: settings}, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt")
    source.add_argument("--config", help="a fit config: time its model untrained")
    parser.add_argument("--val-manifest")
    parser.add_argument("--train-manifest", help="fine-tune the pruned model on these rows")
    parser.add_argument("--finetune-epochs", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--prune-amount", type=float, default=0.5)
    parser.add_argument("--structured-amount", type=float, default=0.5)
    parser.add_argument("--energy", type=float, default=0.9)
    parser.add_argument("--rank", type=int)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, help="torch and ONNX Runtime threads")
    parser.add_argument("--out", default="benchmarks/results/compress_demo.json")
    parser.add_argument("--root", help="folder the manifests' media paths must stay inside")
    parser.add_argument("--keep", help="folder for the compressed models (default: temporary)")
    parser.add_argument("--malloc", choices=list(ALLOCATORS), default="default", help=MALLOC_HELP)
    args = parser.parse_args()
    run_under(args.malloc)  # PyTorch and ONNX Runtime share this process and its malloc
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.ckpt or untrained_checkpoint(args.config, Path(tmp) / "untrained.ckpt")
        report = compress(
            ckpt,
            args.keep or tmp,
            args.methods,
            val_manifest=args.val_manifest,
            train_manifest=args.train_manifest,
            finetune_epochs=args.finetune_epochs,
            prune_amount=args.prune_amount,
            structured_amount=args.structured_amount,
            rank=args.rank,
            energy=args.energy,
            repeats=args.repeats,
            root=args.root,
        )
    report["allocator"] = {"mode": args.malloc, **allocator_state()}
    report["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    for row in report["models"]:
        row.pop("folder", None)
    print(markdown_table(report))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
