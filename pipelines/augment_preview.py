"""A picture of what a config's augmentation does: training samples before and after.

One row per sample; columns: the first image, the audio's log-mel spectrogram (through the
model's own audio front end, so the audio encoder's ``spec_augment`` shows too), and the
text, each before and after. Modality dropout, which acts on whole batches, is drawn as a
crossed-out "dropped" panel for the modalities it would remove from that sample.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mmctx.data.datamodule import MultimodalDataModule

_TEXT_CHARS = 300


def _log_mel(model: nn.Module, wave: np.ndarray, rate: int, augment: bool) -> np.ndarray:
    """``(n_mels, t)`` log-mel of a waveform: the model's audio front end when it has one."""
    encoders = getattr(model, "encoders", None)
    encoder = encoders["audio"] if encoders is not None and "audio" in encoders else None
    x = torch.from_numpy(np.ascontiguousarray(wave))[None]
    with torch.no_grad():
        if encoder is not None and hasattr(encoder, "log_mel"):
            frames, _ = encoder.log_mel(x, torch.tensor([x.shape[1]]))
            spec = getattr(encoder, "spec_augment", None)
            if augment and spec is not None:
                frames = spec.train()(frames)
            return frames[0].T.numpy()
        import torchaudio

        mel = torchaudio.transforms.MelSpectrogram(rate, n_fft=512, hop_length=rate // 100)
        return mel(x)[0].clamp_min(1e-10).log().numpy()


def _text(text: str) -> str:
    short = text if len(text) <= _TEXT_CHARS else text[:_TEXT_CHARS] + " ..."
    return "\n".join(textwrap.wrap(short, 40)[:9])


def _before_after(
    datamodule: MultimodalDataModule, n: int, seed: int
) -> list[tuple[dict[str, Any], dict[str, Any], set[str]]]:
    """The first ``n`` training samples that decode: (clean, augmented, dropped modalities)."""
    clean_set = datamodule.dataset("train")
    torch.manual_seed(seed)
    pairs: list[tuple[dict[str, Any], dict[str, Any], set[str]]] = []
    for i in range(len(clean_set)):
        clean = clean_set[i]
        if isinstance(clean, Exception):
            continue
        augmented = clean["inputs"]  # each sample is decoded once and augmented from that
        if datamodule.augment is not None:
            augmented = datamodule.augment(augmented, np.random.default_rng([seed, i]))
        dropped: set[str] = set()
        if datamodule.modality_dropout is not None:
            present = {m: torch.tensor([m in clean["inputs"]]) for m in datamodule.modalities}
            dropped = {m for m, d in datamodule.modality_dropout.choose(present).items() if d[0]}
        pairs.append((clean["inputs"], augmented, dropped))
        if len(pairs) == n:
            break
    return pairs


def _draw(
    ax: Any, modality: str, value: Any, had_it: bool, model: nn.Module, rate: int, augment: bool
) -> None:
    """One panel: the image, the log-mel of the audio, the text, or why there is none."""
    ax.set_xticks([])
    ax.set_yticks([])
    if value is None:
        note = "dropped\n(modality dropout)" if had_it else "absent"
        ax.text(0.5, 0.5, note, ha="center", va="center", color="#b03030")
    elif modality == "image":
        img = value[0].transpose(1, 2, 0)
        ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray")
    elif modality == "audio":
        spec = _log_mel(model, value, rate, augment=augment)
        ax.imshow(spec, origin="lower", aspect="auto", cmap="magma")
    else:
        ax.text(0.02, 0.98, _text(value), va="top", fontsize=7, family="monospace")


def augment_preview(
    model: nn.Module,
    datamodule: MultimodalDataModule,
    out: str | Path,
    *,
    n: int = 4,
    seed: int = 0,
) -> Path:
    """Draw ``n`` training samples before and after augmentation into the PNG ``out``.

    Args:
        model: The configured model (its audio encoder draws the spectrograms).
        datamodule: Supplies the training split, ``augment`` and ``modality_dropout``.
        out: PNG path (folders are created).
        n: Samples to draw (the first ``n`` of the training split that decode).
        seed: Seed of the augmentation.

    Returns:
        The PNG path.

    Raises:
        ValueError: ``n`` < 1, or no training sample decodes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    pairs = _before_after(datamodule, n, seed)
    if not pairs:
        raise ValueError("no training sample could be decoded")
    columns = [m for m in ("image", "audio", "text") if m in datamodule.modalities]
    fig, axes = plt.subplots(
        len(pairs),
        2 * len(columns),
        figsize=(3.2 * 2 * len(columns), 2.6 * len(pairs)),
        squeeze=False,
    )
    rate = datamodule.preprocess.sample_rate
    for row, (clean, augmented, dropped) in enumerate(pairs):
        for c, m in enumerate(columns):
            for side, inputs in enumerate((clean, augmented)):
                ax = axes[row, 2 * c + side]
                if row == 0:
                    ax.set_title(f"{m} {'after' if side else 'before'}", fontsize=10)
                gone = m not in inputs or (side and m in dropped)
                _draw(ax, m, None if gone else inputs[m], m in inputs, model, rate, bool(side))
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
