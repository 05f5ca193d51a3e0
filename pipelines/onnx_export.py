"""ONNX export of a whole classifier, run by ONNX Runtime: ``Predictor.from_onnx(DIR)`` and
``mmctx infer --onnx DIR``.

The folder holds ``model.onnx`` and ``config.json`` (the model's config, the data settings,
the graph's input names). The graph takes the collated batch's tensors (as
:func:`~mmctx.pipelines.export.tensor_inputs` names them: text as token ids and mask), with
the batch, text length, audio length and item counts dynamic; a missing modality is a
masked entry, as in the eager model. Text is tokenised in Python before the graph runs.

Two parts are swapped for exact equivalents that export: torchaudio's ``MelSpectrogram``
(a complex STFT) becomes a real-valued convolution with the same DFT basis
(:class:`RealMelSpectrogram`), and ``nn.MultiheadAttention`` one that reshapes without baking
the traced sequence length (:class:`ExportableMultiheadAttention`). Every export is run by
ONNX Runtime on batches of other sizes, lengths and missing modalities than the traced one
and compared with the eager model *before* it is written; a model that cannot be exported
faithfully is refused with a message naming the part.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mmctx.checkpoints import EXPORT_CONFIG, CheckpointError, build_module, read_export_config
from mmctx.data import Preprocess

from .export import ExportError, TensorClassifier, example_inputs, tensor_inputs

ONNX_FILE = "model.onnx"
ONNX_FORMAT = "mmctx-onnx-1"
FP32_TOLERANCE = 1e-4  # max |logit difference| of an fp32 export
INT8_TOLERANCE = 0.05  # max |probability difference| of an INT8 (ONNX Runtime) export


class RealMelSpectrogram(nn.Module):
    """torchaudio's ``MelSpectrogram`` (centred, power 2) as a real-valued conv1d over the
    windowed DFT basis: the same numbers, no complex tensors (which ONNX export lacks)."""

    def __init__(self, mel: nn.Module) -> None:
        super().__init__()
        spec = mel.spectrogram
        if spec.power != 2.0 or not spec.center or spec.normalized or not spec.onesided:
            raise ExportError(
                "the audio encoder's MelSpectrogram has settings the ONNX export does not "
                f"rebuild (power={spec.power}, center={spec.center}, normalized={spec.normalized})"
            )
        n_fft, win = spec.n_fft, spec.win_length
        window = torch.zeros(n_fft, dtype=torch.float64)
        start = (n_fft - win) // 2
        window[start : start + win] = spec.window.double()
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
        n = torch.arange(n_fft, dtype=torch.float64)[None]
        angle = 2 * math.pi * k * n / n_fft  # (f, n_fft)
        basis = torch.cat([angle.cos(), -angle.sin()]) * window  # (2f, n_fft)
        self.register_buffer("basis", basis.float()[:, None], persistent=False)  # (2f, 1, n_fft)
        self.register_buffer("fb", mel.mel_scale.fb.float(), persistent=False)  # (f, mels)
        self.pad, self.hop, self.pad_mode = n_fft // 2, spec.hop_length, spec.pad_mode

    def forward(self, waveform: Tensor) -> Tensor:
        x = nn.functional.pad(waveform[:, None], (self.pad, self.pad), mode=self.pad_mode)
        y = nn.functional.conv1d(x, self.basis, stride=self.hop)  # (b, 2f, t)
        re, im = y.chunk(2, dim=1)
        power = re * re + im * im  # (b, f, t)
        return torch.matmul(power.transpose(1, 2), self.fb).transpose(1, 2)  # (b, mels, t)


class ExportableMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` (same weights) whose reshapes keep every length dynamic."""

    def forward(  # type: ignore[override]
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, None]:
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, _, d = query.shape
        h = self.num_heads
        weights = self.in_proj_weight.chunk(3)
        biases = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None,) * 3
        q, k, v = (
            nn.functional.linear(x, w, bias).reshape(b, -1, h, d // h).transpose(1, 2)
            for x, w, bias in zip((query, key, value), weights, biases, strict=True)
        )  # (b, h, n, d/h)
        mask = None
        padding = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
        for m in (padding, attn_mask):
            if m is not None:
                if m.dtype == torch.bool:  # True = may not attend
                    m = torch.zeros(m.shape, dtype=q.dtype).masked_fill(m, float("-inf"))
                mask = m if mask is None else mask + m
        out = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal
        )
        out = self.out_proj(out.transpose(1, 2).reshape(b, -1, d))  # (b, n, d)
        return (out if self.batch_first else out.transpose(0, 1)), None


def _refuse_unexportable(model: nn.Module) -> None:
    """Parts known to compute differently from what a trace records, named before export."""
    for name, enc in model.encoders.items():
        window, limit = getattr(enc, "window", None), getattr(enc, "max_tokens", None)
        if window is not None and limit is not None and window < limit:
            raise ExportError(
                f"encoders.{name} ({type(enc).__name__}) reads texts longer than window={window} "
                f"tokens in windows, a loop whose count depends on the text's length, which an "
                f"ONNX graph traced on one length does not follow; set window >= max_tokens "
                f"({limit}) or use the safetensors export"
            )
        if getattr(enc, "chunk_steps", None) is not None:
            raise ExportError(
                f"encoders.{name} ({type(enc).__name__}) runs its RNN over chunks chosen by the "
                "audio's content (chunk_seconds), which ONNX export does not follow; "
                "use the safetensors export"
            )
        if getattr(enc, "hf_model", None) is not None:
            raise ExportError(
                f"encoders.{name} wraps a Hugging Face model, which this export does not handle"
            )


def exportable_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with the parts ONNX cannot take swapped for equivalents."""
    import torchaudio

    model = copy.deepcopy(model).cpu().eval().requires_grad_(True)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torchaudio.transforms.MelSpectrogram):
                setattr(module, name, RealMelSpectrogram(child))
            elif type(child) is nn.MultiheadAttention:
                swapped = ExportableMultiheadAttention.__new__(ExportableMultiheadAttention)
                swapped.__dict__ = child.__dict__.copy()
                setattr(module, name, swapped)
    return model


def _dynamic_axes(names: list[str], tensors: list[Tensor]) -> dict[str, dict[int, str]]:
    """Every axis dynamic except an image's (channels, height, width)."""
    axes = {}
    for name, t in zip(names, tensors, strict=True):
        fixed = 3 if t.dim() >= 4 else 0
        axes[name] = {i: f"{name}:{i}" for i in range(t.dim() - fixed)}
    axes["logits"] = {0: "batch"}
    return axes


def check_batches(modalities: tuple[str, ...], pre: Preprocess) -> list[dict]:
    """Batches unlike the traced one: other sizes and lengths, a single sample, and one per
    modality in which no sample has that modality."""
    batches = [
        example_inputs(modalities, pre, [12, 3, 9], seed=1),
        example_inputs(modalities, pre, [5], seed=2),
        example_inputs(modalities, pre, [20, 2, 8, 30, 1], seed=3),
    ]
    if len(modalities) > 1:
        for i, m in enumerate(modalities):
            batches.append(example_inputs(modalities, pre, [6, 10], seed=4 + i, missing=m))
    return batches


class OnnxRunner:
    """An ONNX Runtime session fed with a collated batch's tensors (CPU)."""

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3
        # ONNX Runtime's threads otherwise spin after each run, taking the cores from
        # everything else in the process (measured: eager torch beside it ran 30x slower).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def feed(
        self, model: nn.Module, names: list[str], tensors: list[Tensor]
    ) -> dict[str, np.ndarray]:
        """The session's inputs (an input the graph does not use was dropped from it)."""
        given = dict(zip(names, tensors, strict=True))
        for name, enc in model.encoders.items():
            key = f"{name}.waveform"
            least = 2 * getattr(enc, "half_window", 0) + 1
            if key in given and given[key].shape[1] < least:
                # The eager encoder pads audio this short itself, in a branch a trace does
                # not record; padding here does the same (lengths, hence masks, unchanged).
                given[key] = nn.functional.pad(given[key], (0, least - given[key].shape[1]))
        return {n: given[n].detach().cpu().numpy() for n in self.inputs}

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, feed)[0]


def _max_difference(
    runner: OnnxRunner, model: nn.Module, batches: list[dict], probs: bool
) -> float:
    worst = 0.0
    with torch.no_grad():
        for batch in batches:
            names, tensors = tensor_inputs(model, batch)
            got = torch.from_numpy(runner.run(runner.feed(model, names, tensors)))
            want = model(batch)
            if probs:
                got, want = got.softmax(-1), want.softmax(-1)
            worst = max(worst, (got - want).abs().max().item())
    return worst


def export_onnx(
    model: nn.Module, modalities: tuple[str, ...], pre: Preprocess, path: str | os.PathLike[str]
) -> list[str]:
    """Export ``model`` (a classifier) to ONNX at ``path`` once ONNX Runtime reproduces it
    within :data:`FP32_TOLERANCE` on :func:`check_batches`; return the graph's input names.

    Raises:
        ExportError: A part that cannot be exported faithfully (named), or outputs that differ.
    """
    model = model.cpu().eval()
    _refuse_unexportable(model)
    trace = example_inputs(modalities, pre, [4, 7], seed=0)
    names, tensors = tensor_inputs(model, trace)
    constants = {
        m: {k: v for k, v in b.items() if not isinstance(v, Tensor) and k != "text"}
        for m, b in trace.items()
    }
    wrapper = TensorClassifier(exportable_copy(model), names, constants).eval()
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".onnx-")) / ONNX_FILE
    try:
        # With gradients on, nn.TransformerEncoderLayer takes its plain (exportable) path
        # rather than the fused kernel ONNX has no operator for.
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                tuple(tensors),
                str(tmp),
                input_names=names,
                output_names=["logits"],
                dynamic_axes=_dynamic_axes(names, tensors),
                opset_version=17,
                dynamo=False,
            )
        try:
            diff = _max_difference(OnnxRunner(tmp), model, check_batches(modalities, pre), False)
            how = f"by {diff:.2g}"
        except Exception as err:  # noqa: BLE001 - ONNX Runtime raises its own kinds
            diff, how = math.inf, f"(it fails: {str(err).splitlines()[0][:300]})"
        if not diff <= FP32_TOLERANCE:
            raise ExportError(
                f"the ONNX graph differs from the model {how} (more than {FP32_TOLERANCE}) on "
                "batches of other sizes, lengths or missing modalities; not written"
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.parent.rmdir()
    return names


STATIC_OPS = ("MatMul", "Gemm", "Conv", "Gather")  # Gather: the text embedding


class _CalibrationFeeds:
    """ONNX Runtime's calibration reader protocol over prepared feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def _quantise_graph(src: Path, dst: Path, model: nn.Module, calibration: list[dict] | None) -> None:
    """ONNX Runtime's quantiser: dynamic, or static (QDQ) with ``calibration`` batches."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if calibration is None:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        return
    runner = OnnxRunner(src)
    feeds = [runner.feed(model, *tensor_inputs(model, batch)) for batch in calibration]
    quantize_static(
        str(src),
        str(dst),
        _CalibrationFeeds(feeds),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(STATIC_OPS),
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )


def quantise_onnx(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    model: nn.Module,
    modalities: tuple[str, ...],
    pre: Preprocess,
    calibration: list[dict] | None = None,
) -> float:
    """ONNX Runtime's INT8 quantisation of the graph at ``src``, written to ``dst`` once its
    probabilities stay within :data:`INT8_TOLERANCE` of ``model``'s on
    :func:`check_batches`; returns that largest difference.

    Without ``calibration``: dynamic (MatMul, Gemm, Conv and embedding weights int8,
    activations quantised at run time). With ``calibration`` (collated batches' ``inputs``,
    ideally real training rows): static, QDQ format: the ranges of the activations entering
    :data:`STATIC_OPS` are measured on those batches (min/max) and fixed in the graph, so
    no range is computed while it runs."""
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.disable(logging.WARNING)  # it logs each tensor it leaves in float
            try:
                _quantise_graph(Path(src), tmp, model, calibration)
            finally:
                logging.disable(logging.NOTSET)
        diff = _max_difference(OnnxRunner(tmp), model, check_batches(modalities, pre), True)
        if not diff <= INT8_TOLERANCE:
            raise ExportError(
                f"the INT8 ONNX graph's probabilities differ from the model's by {diff:.3g} "
                f"(more than {INT8_TOLERANCE}); not written"
            )
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return diff


def write_onnx_config(
    folder: Path, config: dict[str, Any], data: dict[str, Any], names: list[str], **extra: Any
) -> Path:
    """``config.json`` beside ``model.onnx``: the model config (to tokenise and name classes),
    data settings and input names."""
    meta = {"model": config, "data": data, "format": ONNX_FORMAT, "onnx_inputs": names, **extra}
    path = folder / EXPORT_CONFIG
    path.write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return path


class OnnxClassifier(nn.Module):
    """A classifier run by ONNX Runtime, called like the eager one: ``forward(inputs) ->
    logits``. The eager model rebuilt from the config (weights unused) only tokenises text
    and names the classes and modalities.

    Args:
        runner: The session.
        skeleton: The classifier built from the config.
    """

    def __init__(self, runner: OnnxRunner, skeleton: nn.Module) -> None:
        super().__init__()
        self.runner = runner
        self._skeleton = [skeleton]  # a list: not a submodule, its weights never move
        self.class_names = list(skeleton.class_names)
        self.multilabel = bool(getattr(skeleton, "multilabel", False))

    @property
    def encoders(self) -> nn.ModuleDict:
        return self._skeleton[0].encoders

    def forward(self, inputs: dict[str, Any]) -> Tensor:
        names, tensors = tensor_inputs(self._skeleton[0], inputs)
        return torch.from_numpy(
            self.runner.run(self.runner.feed(self._skeleton[0], names, tensors))
        )


def load_onnx(folder: str | os.PathLike[str]) -> tuple[OnnxClassifier, dict[str, Any]]:
    """Open a folder holding ``model.onnx`` and ``config.json``; returns the model and its
    data settings."""
    folder = Path(folder)
    graph, cfg_path = folder / ONNX_FILE, folder / EXPORT_CONFIG
    meta = read_export_config(folder, ONNX_FILE, "an ONNX folder")
    skeleton = build_module(meta["model"], cfg_path).eval()
    try:
        runner = OnnxRunner(graph)
    except Exception as err:  # noqa: BLE001 - ONNX Runtime raises its own kinds
        raise CheckpointError(f"{graph}: ONNX Runtime cannot load it ({err})") from None
    return OnnxClassifier(runner, skeleton), meta.get("data", {})
