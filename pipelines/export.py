"""Exports of a trained classifier: `mmctx export` (safetensors + config, and TorchScript).

TorchScript: tensors in, logits out, no Python or mmctx needed to run it.

The traced module takes the collated batch's tensors as positional arguments, in the order
:func:`tensor_inputs` gives (and ``config.json`` records under ``torchscript_inputs``); text
goes in as token ids and mask (``TextTransformerEncoder.tokenize``), since strings cannot. A
trace records one path through the code, so every export is checked against the eager model
on a second batch of another size, lengths and missing modalities; a model whose computation
depends on its input's shape in ways a trace cannot follow (e.g. a text encoder reading in
windows) is refused rather than exported wrong.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mmctx.data import Collate, Preprocess

TORCHSCRIPT_FILE = "model.torchscript.pt"


class ExportError(ValueError):
    """The model cannot be exported faithfully in this format."""


def tensor_inputs(model: nn.Module, inputs: dict[str, Any]) -> tuple[list[str], list[Tensor]]:
    """Names (``"modality.key"``) and tensors of a collated ``inputs`` dict, text tokenized."""
    names, tensors = [], []
    for modality, encoder in model.encoders.items():
        batch = inputs[modality]
        if hasattr(encoder, "tokenize") and "ids" not in batch:
            batch = encoder.tokenize(batch)
        for key, value in sorted(batch.items()):
            if isinstance(value, Tensor):
                names.append(f"{modality}.{key}")
                tensors.append(value)
    return names, tensors


class TensorClassifier(nn.Module):
    """A classifier's encoders, fusion, backbone and head, called with plain tensors."""

    def __init__(self, model: nn.Module, names: list[str], constants: dict[str, Any]) -> None:
        super().__init__()
        self.fused, self.head = model.fused, model.head
        self.names = names
        self.constants = constants  # non-tensor values of the batch, e.g. the audio sample rate

    def forward(self, *tensors: Tensor) -> Tensor:
        inputs: dict[str, dict[str, Any]] = {m: dict(c) for m, c in self.constants.items()}
        for name, tensor in zip(self.names, tensors, strict=True):
            modality, key = name.split(".", 1)
            inputs[modality][key] = tensor
        return self.head(self.fused(inputs).pooled)


def example_inputs(
    modalities: tuple[str, ...],
    pre: Preprocess,
    sizes: list[int],
    seed: int,
    missing: str | None = None,
) -> dict:
    """A collated batch of synthetic samples (one per entry of ``sizes``, which sets text
    words, audio length and frames); every third sample lacks one modality, and no sample
    has the ``missing`` one."""
    rng = np.random.default_rng(seed)
    s, c = pre.image_size, pre.image_channels
    items = []
    for i, n in enumerate(sizes):
        sample: dict[str, Any] = {
            "text": " ".join(f"w{j}" for j in range(n)),
            "image": rng.integers(0, 256, (1, c, s, s), dtype=np.uint8),
            "audio": (0.1 * rng.standard_normal(n * pre.sample_rate // 10)).astype(np.float32),
            "video": rng.integers(0, 256, (max(1, n // 3), c, s, s), dtype=np.uint8),
        }
        unknown = set(modalities) - set(sample)
        if unknown:
            raise ExportError(f"cannot make example inputs for modalities {sorted(unknown)}")
        if i % 3 == 2:
            sample.pop(modalities[i % len(modalities)])
        sample.pop(missing, None)
        items.append(
            {
                "id": str(i),
                "line": i + 1,
                "inputs": {m: sample[m] for m in modalities if m in sample},
            }
        )
    return Collate(modalities, pre, None)(items)["inputs"]


def export_torchscript(
    model: nn.Module, modalities: tuple[str, ...], pre: Preprocess, path: str | Path
) -> list[str]:
    """Trace ``model`` (eval mode, CPU), check it on another batch, save it; return input names.

    Raises:
        ExportError: The traced module disagrees with the model (more than 1e-4).
    """
    model = model.cpu().eval()
    trace_batch = example_inputs(modalities, pre, [4, 7], seed=0)
    check_batch = example_inputs(modalities, pre, [12, 3, 9], seed=1)
    names, tensors = tensor_inputs(model, trace_batch)
    constants = {
        m: {k: v for k, v in b.items() if not isinstance(v, Tensor) and k != "text"}
        for m, b in trace_batch.items()
    }
    wrapper = TensorClassifier(model, names, constants).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(wrapper, tuple(tensors), check_trace=False)
        check_names, check_tensors = tensor_inputs(model, check_batch)
        if check_names != names:
            raise ExportError(f"inputs differ between batches: {names} vs {check_names}")
        try:
            diff = (traced(*check_tensors) - model(check_batch)).abs().max().item()
            how = f"by {diff:.2g}"
        except RuntimeError as err:  # a shape baked into the trace no longer fits
            diff, how = float("inf"), f"(it fails: {str(err).splitlines()[-1]})"
    if not diff <= 1e-4:
        raise ExportError(
            f"the traced model differs from the model {how} on a batch of another shape "
            "(some part of it depends on input shapes in a way tracing cannot follow); "
            "use the safetensors export instead"
        )
    torch.jit.save(traced, str(path))
    return names


def export_main(argv: list[str]) -> int:
    """``mmctx export``: safetensors + config.json, and optionally TorchScript."""
    import argparse
    import json
    import sys

    from mmctx.checkpoints import CheckpointError, data_settings, export_model, load_module
    from mmctx.data.modalities import resolve_modalities

    from .inference import preprocess_from

    parser = argparse.ArgumentParser(
        prog="mmctx export",
        description="Write a trained model as model.safetensors + config.json (weights and the "
        "full config; load it back with Predictor.from_export(DIR) or `mmctx infer --export "
        "DIR`, no Lightning checkpoint needed), and with --torchscript also "
        f"{TORCHSCRIPT_FILE}: a traced module taking the batch's tensors (their order is "
        "config.json's torchscript_inputs), checked against the model before it is saved.",
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `mmctx fit`")
    parser.add_argument("--out", required=True, help="folder to write (created)")
    parser.add_argument("--torchscript", action="store_true", help=f"also write {TORCHSCRIPT_FILE}")
    args = parser.parse_args(argv)
    try:
        paths = export_model(args.ckpt, args.out)
        if args.torchscript:
            data = data_settings(args.ckpt)
            model = load_module(args.ckpt)
            specs = resolve_modalities(data.get("modalities") or list(model.encoders))
            modalities = tuple(m.name for m in specs if m.name in model.encoders)
            path = Path(args.out) / TORCHSCRIPT_FILE
            names = export_torchscript(model, modalities, preprocess_from(data), path)
            meta = json.loads(paths["config"].read_text())
            meta["torchscript_inputs"] = names
            paths["config"].write_text(json.dumps(meta, indent=1))
            paths["torchscript"] = path
    except (CheckpointError, ExportError) as err:  # nothing is exported: the run cannot go on
        print(f"mmctx export: error: {err}", file=sys.stderr)
        return 2
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0
