"""``mmctx compress``: prune, factorise, quantise and export a trained classifier, and one
report comparing every result with the original.

Each method writes a folder that loads like any other model::

    DIR/original/   model.safetensors + config.json     Predictor.from_export / infer --export
    DIR/prune/      the same, weights pruned (zeros)    Predictor.from_export / infer --export
    DIR/structured/ the same, units/heads/channels cut  Predictor.from_export / infer --export
    DIR/lowrank/    the same, Linear layers factorised  Predictor.from_export / infer --export
    DIR/int8/       PyTorch dynamic INT8, int8 weights  Predictor.from_export / infer --export
    DIR/onnx/       model.onnx + config.json            Predictor.from_onnx / infer --onnx
    DIR/onnx-int8/  ONNX Runtime dynamic INT8 graph     Predictor.from_onnx / infer --onnx
    DIR/onnx-int8-static/  ... static INT8 (calibrated)  Predictor.from_onnx / infer --onnx

The report (``report.json``, ``report.md``, ``accuracy_vs_latency.png``) gives for each
model, loaded back from its folder: parameters, size on disk, model-forward latency on the
CPU at batch 1 and 32 (tokenising and decoding excluded, median of repeated runs, every
model timed in turn in this one process), validation accuracy, and accuracy with each
modality removed from every sample.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmctx.checkpoints import (
    EXPORT_CONFIG,
    EXPORT_WEIGHTS,
    data_settings,
    export_model,
    load_export,
    load_module,
    read_export_config,
    write_export,
)
from mmctx.data import Collate, ManifestDataset, Preprocess, SampleError
from mmctx.data.manifest import LabelSpace, iter_rows, parse_row
from mmctx.data.modalities import resolve_modalities
from mmctx.errors import at_least
from mmctx.nn.compress import (
    called_modules,
    compression_record,
    factorise_linears,
    parameter_count,
    prune_global_magnitude,
    quantisable,
    quantise_dynamic,
    refresh_pruned_weights,
)
from mmctx.nn.structured import prune_structured

from .export import ExportError, example_inputs
from .inference import Predictor, preprocess_from, require_classifier
from .onnx_export import ONNX_FILE, export_onnx, quantise_onnx, write_onnx_config

METHODS = ("prune", "structured", "lowrank", "int8", "onnx", "onnx-int8", "onnx-int8-static")


def _size_mb(folder: Path) -> float:
    files = [p for p in folder.iterdir() if p.is_file() and p.name != EXPORT_CONFIG]
    return sum(p.stat().st_size for p in files) / 2**20


def _tokenised(model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` with text already tokenised, so that timing leaves tokenising out."""
    out = dict(inputs)
    for name, enc in model.encoders.items():
        if hasattr(enc, "tokenize") and "ids" not in out[name]:
            out[name] = enc.tokenize(out[name])
    return out


def _onnx_parameters(path: Path) -> int:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    return sum(numpy_helper.to_array(t).size for t in graph.initializer)


@dataclass
class _Source:
    """The trained model and what every compressed variant is written with."""

    model: nn.Module
    config: dict[str, Any]  # the model's recorded config
    data: dict[str, Any]  # the data settings
    pre: Preprocess
    modalities: tuple[str, ...]
    called: set[str]  # modules called as layers (others are read by weight and stay)
    structured: dict[str, dict[str, int]]  # sizes of a structurally pruned source

    def record(self, **parts: Any) -> dict[str, Any]:
        """The compression record of a variant: its own ``parts`` on top of the source's
        structured pruning (a variant pruned further records both)."""
        structured = copy.deepcopy(self.structured)
        for name, sizes in (parts.pop("structured", None) or {}).items():
            structured.setdefault(name, {}).update(sizes)
        return compression_record(**parts, **({"structured": structured} if structured else {}))


def _load_source(path: Path, original: Path) -> tuple[nn.Module, dict, dict, dict]:
    """``(model, config, data settings, structured record)`` of a checkpoint or of an export
    folder (a structurally pruned model compressed further), written to ``original``."""
    if not path.is_dir():
        model = load_module(path)
        require_classifier(model, str(path))
        paths = export_model(path, original)
        config = json.loads(paths["config"].read_text())["model"]
        return model, config, data_settings(path), {}
    meta = read_export_config(path, EXPORT_WEIGHTS, "an export folder")
    record = meta.get("compression") or {}
    if record.get("quantised") or record.get("factorised"):
        raise ValueError(
            f"{path}: holds a quantised or factorised model; compress its checkpoint, or a "
            "structurally pruned export, instead"
        )
    model, data = load_export(path)
    write_export(model, meta["model"], data, original, record or None)
    return model, meta["model"], data, record.get("structured") or {}


def _prune(src: _Source, folder: Path, amount: float, finetune: Any) -> dict[str, Any]:
    pruned = copy.deepcopy(src.model)
    if finetune is None:
        notes: dict[str, Any] = {"sparsity": prune_global_magnitude(pruned, amount)}
    else:
        from mmctx.nn.compress import make_pruning_permanent, sparsity

        prune_global_magnitude(pruned, amount, permanent=False)
        finetune(pruned)
        make_pruning_permanent(pruned)
        notes = {"sparsity": sparsity(pruned), "finetuned": True}
    write_export(pruned, src.config, src.data, folder, src.record(**notes))
    return notes


def _structured(src: _Source, folder: Path, amount: float, finetune: Any) -> dict[str, Any]:
    """Units, heads, channels and RNN units removed (layers rebuilt narrower), then
    optionally fine-tuned as they are."""
    small = copy.deepcopy(src.model)
    record = prune_structured(small, amount)
    notes: dict[str, Any] = {"structured_amount": amount, "resized_layers": len(record)}
    if finetune is not None:
        finetune(small)
        notes["finetuned"] = True
    write_export(small, src.config, src.data, folder, src.record(structured=record))
    return notes


def _lowrank(src: _Source, folder: Path, rank: int | None, energy: float | None) -> dict:
    small = copy.deepcopy(src.model)
    ranks = factorise_linears(small, rank=rank, energy=None if rank else energy, only=src.called)
    write_export(small, src.config, src.data, folder, src.record(factorised=ranks))
    return {"factorised_layers": len(ranks), "rank": rank, "energy": energy}


def _int8(src: _Source, folder: Path) -> dict[str, Any]:
    names = quantisable(src.model, src.called)
    quantised = quantise_dynamic(src.model, names)
    write_export(quantised, src.config, src.data, folder, src.record(quantised=names))
    return {"quantised_layers": len(names)}


def _onnx(src: _Source, folder: Path) -> dict[str, Any]:
    names = export_onnx(src.model, src.modalities, src.pre, folder / ONNX_FILE)
    write_onnx_config(folder, src.config, src.data, names)
    return {}


def _onnx_int8(
    src: _Source, folder: Path, fp32_folder: Path, calibration: list[dict] | None = None
) -> dict[str, Any]:
    """Quantise the fp32 ONNX graph of ``fp32_folder`` (exported here first if missing):
    dynamically, or statically with ``calibration`` batches."""
    graph = fp32_folder / ONNX_FILE
    if graph.is_file():
        names = json.loads((fp32_folder / EXPORT_CONFIG).read_text())["onnx_inputs"]
    else:
        graph = folder / "fp32.onnx"
        names = export_onnx(src.model, src.modalities, src.pre, graph)
    diff = quantise_onnx(graph, folder / ONNX_FILE, src.model, src.modalities, src.pre, calibration)
    (folder / "fp32.onnx").unlink(missing_ok=True)
    quantised = f"onnxruntime-{'dynamic' if calibration is None else 'static-qdq'}-int8"
    write_onnx_config(folder, src.config, src.data, names, quantised=quantised)
    return {"max_prob_diff_on_checks": diff}


def build_variants(
    ckpt: str | os.PathLike[str],
    out: str | os.PathLike[str],
    methods: Sequence[str] = METHODS,
    *,
    prune_amount: float = 0.5,
    structured_amount: float = 0.5,
    rank: int | None = None,
    energy: float | None = 0.9,
    finetune: Callable[[nn.Module], None] | None = None,
    calibration: list[dict] | None = None,
) -> dict[str, dict[str, Any]]:
    """Write the original and one folder per method under ``out``.

    Args:
        prune_amount: Share of weights global magnitude pruning zeroes.
        structured_amount: Share of each group's units (MLP units, heads, channels, RNN
            units) structured pruning removes.
        rank: Rank kept per factorised Linear layer (overrides ``energy``).
        energy: Share of squared singular values kept per factorised layer.
        finetune: Called on the pruned model (masks still on) before they are made permanent,
            and on the structurally pruned one.
        calibration: Collated batches' ``inputs`` whose activation ranges static INT8
            fixes (default: synthetic batches; real rows give a faithful model).

    Returns:
        ``{name: {"folder", "kind": "torch"|"onnx", "notes": {...}}}``; a method that could
        not be applied has ``"error"`` instead of a folder.
    """
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}")
    out = Path(out)
    model, config, data, structured = _load_source(Path(ckpt), out / "original")
    pre, modalities = preprocess_from(data), _modalities(model, data)
    probe = example_inputs(modalities, pre, [4, 9], seed=0)
    called = called_modules(model, lambda: model(probe))  # layers used by weight stay
    src = _Source(model, config, data, pre, modalities, called, structured)
    make = {
        "prune": lambda folder: _prune(src, folder, prune_amount, finetune),
        "structured": lambda folder: _structured(src, folder, structured_amount, finetune),
        "lowrank": lambda folder: _lowrank(src, folder, rank, energy),
        "int8": lambda folder: _int8(src, folder),
        "onnx": lambda folder: _onnx(src, folder),
        "onnx-int8": lambda folder: _onnx_int8(src, folder, out / "onnx"),
        "onnx-int8-static": lambda folder: _onnx_int8(
            src, folder, out / "onnx", calibration or _synthetic_calibration(src)
        ),
    }
    variants: dict[str, dict[str, Any]] = {
        "original": {"folder": out / "original", "kind": "torch", "notes": {}}
    }
    for method in methods:
        folder = out / method
        folder.mkdir(parents=True, exist_ok=True)
        kind = "onnx" if method.startswith("onnx") else "torch"
        try:
            variants[method] = {"folder": folder, "kind": kind, "notes": make[method](folder)}
        except ExportError as err:
            if not any(folder.iterdir()):
                folder.rmdir()
            variants[method] = {"error": str(err), "kind": kind, "notes": {}}
    return variants


def _synthetic_calibration(src: _Source) -> list[dict]:
    """Random batches in the shape of real ones, when no labelled rows were given."""
    return [
        example_inputs(src.modalities, src.pre, [6 + (5 * i + j) % 13 for j in range(8)], seed=i)
        for i in range(8)
    ]


def calibration_batches(
    items: list[dict[str, Any]], predictor: Predictor, count: int = 256, batch_size: int = 32
) -> list[dict]:
    """The ``inputs`` of collated batches of the first ``count`` decoded ``items``."""
    collate = Collate(predictor.modalities, predictor.preprocess, None)
    chosen = [{k: v for k, v in it.items() if k != "label"} for it in items[:count]]
    return [
        collate(chosen[i : i + batch_size])["inputs"] for i in range(0, len(chosen), batch_size)
    ]


def _modalities(model: nn.Module, data: dict[str, Any]) -> tuple[str, ...]:
    specs = resolve_modalities(data.get("modalities") or list(model.encoders))
    return tuple(m.name for m in specs if m.name in model.encoders)


def load_variant(variant: dict[str, Any]) -> Predictor:
    """A compressed model loaded back from its folder, as a user would."""
    if variant["kind"] == "onnx":
        return Predictor.from_onnx(variant["folder"])
    return Predictor.from_export(variant["folder"], device="cpu")


def validation_batches(
    manifest: str | os.PathLike[str],
    predictor: Predictor,
    batch_size: int = 32,
    root: str | os.PathLike[str] | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """The labelled samples of ``manifest`` decoded once: ``(items, errors)``. Media paths
    must stay inside ``root`` (default: the manifest's folder).

    Raises:
        ValueError: Not one row of ``manifest`` could be used (the first reasons named).
    """
    manifest = Path(manifest)
    labels = LabelSpace(predictor.class_names, predictor.multilabel)
    samples, errors = [], []
    for line, row in iter_rows(manifest):
        try:
            if isinstance(row, Exception):
                raise row
            sample = parse_row(
                row,
                line,
                manifest.parent,
                modalities=predictor.modalities,
                data_root=None if root is None else Path(root),
            )
            samples.append(sample)
        except ValueError as err:
            errors.append(f"line {line}: {err}")
    dataset = ManifestDataset(samples, labels, predictor.modalities, predictor.preprocess)
    items = []
    for i in range(len(dataset)):
        item = dataset[i]
        if isinstance(item, SampleError):
            errors.append(str(item))
        else:
            items.append(item)
    if not items:
        first = "; ".join(errors[:2]) or "it has no rows"
        raise ValueError(f"no row of {manifest} could be used ({len(errors)} errors: {first})")
    return items, errors


def accuracy(
    predictor: Predictor, items: list[dict[str, Any]], without: str | None = None, bs: int = 64
) -> float:
    """Top-1 accuracy (exact match for multi-label) of ``predictor.model`` on ``items``,
    optionally with modality ``without`` removed from every sample."""
    collate = Collate(predictor.modalities, predictor.preprocess, None)
    right = total = 0
    for start in range(0, len(items), bs):
        chunk = [
            {**it, "inputs": {m: v for m, v in it["inputs"].items() if m != without}}
            for it in items[start : start + bs]
        ]
        batch = collate([{k: v for k, v in it.items() if k != "label"} for it in chunk])
        target = torch.tensor([it["label"] for it in chunk])
        with torch.inference_mode():
            logits = predictor.model(batch["inputs"]).float()
        if predictor.multilabel:
            right += int(((logits > 0) == target.bool()).all(-1).sum())
        else:
            right += int((logits.argmax(-1) == target).sum())
        total += len(chunk)
    return right / max(total, 1)


def time_forward(
    predictors: dict[str, Predictor],
    modalities: tuple[str, ...],
    pre: Preprocess,
    batch_size: int,
    repeats: int,
) -> dict[str, float]:
    """Median milliseconds of one forward pass per model on one synthetic batch (text
    tokenised beforehand), the models timed in turn, ``repeats`` rounds."""
    sizes = [8 + (7 * i) % 13 for i in range(batch_size)]
    batch = example_inputs(modalities, pre, sizes, seed=11)
    inputs = {n: _tokenised(p.model, batch) for n, p in predictors.items()}
    times: dict[str, list[float]] = {n: [] for n in predictors}
    with torch.inference_mode():
        for name, p in predictors.items():  # warm-up
            p.model(inputs[name])
        for _ in range(repeats):
            for name, p in predictors.items():
                start = time.perf_counter()
                p.model(inputs[name])
                times[name].append((time.perf_counter() - start) * 1000)
    return {n: statistics.median(t) for n, t in times.items()}


def finetuner(
    items: list[dict[str, Any]],
    modalities: tuple[str, ...],
    pre: Preprocess,
    epochs: int = 1,
    lr: float = 5e-4,
    batch_size: int = 32,
) -> Callable[[nn.Module], None]:
    """A plain training loop over decoded labelled ``items`` (AdamW, cross-entropy), for a
    pruned model whose masks are still on (so pruned weights stay zero)."""

    def run(model: nn.Module) -> None:
        collate = Collate(modalities, pre, None)
        optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
        generator = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(items), generator=generator).tolist()
            for start in range(0, len(order), batch_size):
                chunk = [items[i] for i in order[start : start + batch_size]]
                batch = collate([{k: v for k, v in it.items() if k != "label"} for it in chunk])
                target = torch.tensor([it["label"] for it in chunk])
                refresh_pruned_weights(model)
                logits = model(batch["inputs"])
                if getattr(model, "multilabel", False):
                    loss = nn.functional.binary_cross_entropy_with_logits(logits, target.float())
                else:
                    loss = nn.functional.cross_entropy(logits, target)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        model.eval()

    return run


def compress(
    ckpt: str | os.PathLike[str],
    out: str | os.PathLike[str],
    methods: Sequence[str] = METHODS,
    *,
    val_manifest: str | os.PathLike[str] | None = None,
    train_manifest: str | os.PathLike[str] | None = None,
    finetune_epochs: int = 0,
    prune_amount: float = 0.5,
    structured_amount: float = 0.5,
    rank: int | None = None,
    energy: float | None = 0.9,
    repeats: int = 30,
    root: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Compress ``ckpt`` with ``methods`` into folders under ``out`` and write the report
    (``report.json``, ``report.md``, ``accuracy_vs_latency.png``); returns the report.
    Manifest media paths must stay inside ``root`` (default: each manifest's folder)."""
    original = (
        Predictor.from_export(ckpt, device="cpu")
        if Path(ckpt).is_dir()
        else Predictor.from_checkpoint(ckpt, device="cpu")
    )
    modalities = tuple(m.name for m in original.modalities)
    finetune = None
    if finetune_epochs > 0 and train_manifest is None:
        raise ValueError("finetune_epochs > 0 needs train_manifest (labelled training rows)")
    train_items, train_errors = (
        validation_batches(train_manifest, original, root=root) if train_manifest else ([], [])
    )
    if finetune_epochs > 0:
        finetune = finetuner(train_items, modalities, original.preprocess, finetune_epochs)
    items, errors = (
        validation_batches(val_manifest, original, root=root) if val_manifest else ([], [])
    )
    rows_for_ranges, calibrated_on = (
        (train_items, train_manifest) if train_items else (items, val_manifest)
    )
    calibration = calibration_batches(rows_for_ranges, original) if rows_for_ranges else None
    variants = build_variants(
        ckpt,
        out,
        methods,
        prune_amount=prune_amount,
        structured_amount=structured_amount,
        rank=rank,
        energy=energy,
        finetune=finetune,
        calibration=calibration,
    )
    predictors = {n: load_variant(v) for n, v in variants.items() if "folder" in v}
    pre = original.preprocess
    latency1 = time_forward(predictors, modalities, pre, 1, repeats)
    latency32 = time_forward(predictors, modalities, pre, 32, max(3, repeats // 5))
    rows = []
    for name, variant in variants.items():
        row: dict[str, Any] = {"model": name, **variant.get("notes", {})}
        if "error" in variant:
            rows.append({**row, "error": variant["error"]})
            continue
        p, folder = predictors[name], Path(variant["folder"])
        row["params"] = (
            _onnx_parameters(folder / ONNX_FILE)
            if variant["kind"] == "onnx"
            else parameter_count(p.model)
        )
        row["size_mb"] = round(_size_mb(folder), 3)
        row["latency_ms_b1"] = round(latency1[name], 3)
        row["latency_ms_b32"] = round(latency32[name], 3)
        if items:
            row["val_acc"] = accuracy(p, items)
            row["val_acc_without"] = {m: accuracy(p, items, without=m) for m in modalities}
        row["folder"] = str(folder)
        rows.append(row)
    report = {
        "checkpoint": str(ckpt),
        "val_manifest": None if val_manifest is None else str(val_manifest),
        "val_samples": len(items),
        "val_errors": errors,
        "train_errors": train_errors,
        "threads": torch.get_num_threads(),
        "repeats": {"batch_1": repeats, "batch_32": max(3, repeats // 5)},
        "prune_amount": prune_amount,
        "structured_amount": structured_amount,
        "finetune_epochs": finetune_epochs,
        "static_int8_calibrated_on": str(calibrated_on) if calibration else "synthetic batches",
        "models": rows,
    }
    write_report(report, Path(out))
    return report


def markdown_table(report: dict[str, Any]) -> str:
    """The report's models side by side as a Markdown table."""
    mods = sorted({m for r in report["models"] for m in r.get("val_acc_without", {})})
    head = ["model", "params", "size MB", "ms @1", "ms @32", "val acc"]
    head += [f"acc w/o {m}" for m in mods]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = next((r for r in report["models"] if r["model"] == "original"), {})
    for r in report["models"]:
        if "error" in r:
            lines.append(f"| {r['model']} | refused: {r['error']} |")
            continue
        acc = r.get("val_acc")
        cells = [
            r["model"],
            f"{r['params']:,}",
            f"{r['size_mb']:.2f}",
            f"{r['latency_ms_b1']:.2f} ({base['latency_ms_b1'] / r['latency_ms_b1']:.2f}x)",
            f"{r['latency_ms_b32']:.1f} ({base['latency_ms_b32'] / r['latency_ms_b32']:.2f}x)",
            "n/a" if acc is None else f"{100 * acc:.1f}",
        ]
        cells += [f"{100 * r['val_acc_without'][m]:.1f}" for m in mods if "val_acc_without" in r]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(report: dict[str, Any], out: Path) -> dict[str, Path]:
    """``report.json``, ``report.md`` and ``accuracy_vs_latency.png`` under ``out``."""
    paths = {"json": out / "report.json", "markdown": out / "report.md"}
    paths["json"].write_text(json.dumps(report, indent=1), encoding="utf-8")
    notes = [
        f"# Compression report: {report['checkpoint']}",
        "",
        f"Latency: model forward only (decode and tokenising excluded), CPU, "
        f"{report['threads']} threads, median of {report['repeats']['batch_1']} runs at batch 1 "
        f"and {report['repeats']['batch_32']} at batch 32; speed-up against the original in "
        "brackets. Accuracy: validation samples "
        f"({report['val_samples']} from {report['val_manifest']}), and with each modality "
        "removed from every sample. Size: the files of each folder (config.json aside).",
        "",
        markdown_table(report),
        "",
    ]
    paths["markdown"].write_text("\n".join(notes), encoding="utf-8")
    rows = [r for r in report["models"] if "val_acc" in r]
    if rows:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for r in rows:
            ax.scatter(r["latency_ms_b1"], 100 * r["val_acc"])
            ax.annotate(r["model"], (r["latency_ms_b1"], 100 * r["val_acc"]), fontsize=8)
        ax.set_xlabel("latency at batch 1 (ms, CPU)")
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        paths["plot"] = out / "accuracy_vs_latency.png"
        fig.savefig(paths["plot"], dpi=120)
        plt.close(fig)
    return paths


def compress_main(argv: list[str]) -> int:
    """``mmctx compress``: see the module docstring."""
    import argparse
    import sys

    from mmctx.checkpoints import CheckpointError

    parser = argparse.ArgumentParser(
        prog="mmctx compress",
        description="Prune, factorise, quantise (INT8) and export (ONNX) a trained classifier; "
        "each result is a folder that `mmctx infer --export DIR` (torch) or `--onnx DIR` "
        "loads, and report.md/.json/.png compare them with the original.",
    )
    parser.add_argument(
        "--ckpt",
        required=True,
        help="checkpoint written by `mmctx fit`, or a folder an earlier run wrote (e.g. "
        "OUT/structured: quantise or export the pruned model)",
    )
    parser.add_argument("--out", required=True, help="folder to write (created)")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        choices=METHODS,
        help="prune: zero the smallest weights; structured: remove whole units and rebuild "
        "the layers smaller (faster); lowrank: factorise Linear layers; int8: PyTorch dynamic "
        "INT8; onnx: ONNX Runtime graph; onnx-int8: its dynamic INT8; onnx-int8-static: its "
        "static INT8, activation ranges calibrated on --train-manifest rows (else "
        "--val-manifest rows). Default: all",
    )
    parser.add_argument("--val-manifest", help="labelled JSON Lines for the accuracy columns")
    parser.add_argument(
        "--prune-amount",
        type=float,
        default=0.5,
        help="share of all weights `prune` zeroes (default: %(default)s)",
    )
    parser.add_argument(
        "--structured-amount",
        type=float,
        default=0.5,
        help="share of the MLP hidden units, attention heads, conv channels and RNN hidden "
        "units `structured` removes from each layer, which is rebuilt smaller "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--rank", type=at_least(1), help="rank per factorised Linear (overrides energy)"
    )
    parser.add_argument("--energy", type=float, default=0.9, help="default: %(default)s")
    parser.add_argument(
        "--train-manifest",
        help="labelled rows to fine-tune the pruned models on (with --finetune-epochs) and to "
        "calibrate static INT8 with",
    )
    parser.add_argument(
        "--finetune-epochs", type=at_least(0), default=0, help="default: %(default)s"
    )
    parser.add_argument("--repeats", type=at_least(1), default=30, help="timed runs at batch 1")
    parser.add_argument(
        "--root",
        help="folder the manifests' media paths must stay inside (default: each manifest's "
        "folder; data modules that write manifests elsewhere name theirs as data.root)",
    )
    args = parser.parse_args(argv)
    try:
        report = compress(
            args.ckpt,
            args.out,
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
    except (CheckpointError, ValueError, FileNotFoundError) as err:
        print(f"mmctx compress: error: {err}", file=sys.stderr)
        return 2
    for split in ("train", "val"):
        for error in report[f"{split}_errors"]:
            print(f"skipped {getattr(args, split + '_manifest')}: {error}", file=sys.stderr)
    print(markdown_table(report))
    print(f"report: {Path(args.out) / 'report.md'}")
    skipped = report["train_errors"] or report["val_errors"]
    return 1 if skipped or any("error" in r for r in report["models"]) else 0
