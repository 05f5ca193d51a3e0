"""Audio transforms on ``(s,)`` float32 waveforms, and SpecAugment on log-mel batches."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .base import Transform, _check


class _AudioTransform(Transform):
    """Applied to a sample's ``(s,)`` float32 waveform; needs ``sample_rate=`` in context."""

    modality = "audio"

    def apply(self, x: np.ndarray, rng: np.random.Generator, **context: Any) -> np.ndarray:
        out = self.change_wave(x, rng, int(context["sample_rate"]))
        return np.clip(out, -1.0, 1.0).astype(np.float32, copy=False)

    def change_wave(self, x: np.ndarray, rng: np.random.Generator, rate: int) -> np.ndarray:
        raise NotImplementedError


class Gain(_AudioTransform):
    """Scale by a uniform gain in ``[-db, +db]`` decibels (clipped to [-1, 1]).

    Args:
        db: Largest gain change.
        p: Probability of applying.
    """

    def __init__(self, db: float = 6.0, p: float = 0.5) -> None:
        super().__init__(p)
        _check("Gain.db", db >= 0, db)
        self.db = db

    def change_wave(self, x: np.ndarray, rng: np.random.Generator, rate: int) -> np.ndarray:
        return x * np.float32(10 ** (rng.uniform(-self.db, self.db) / 20))


class AddNoise(_AudioTransform):
    """Add white noise at a signal-to-noise ratio of ``snr_db`` decibels.

    Args:
        snr_db: Signal power over noise power, in dB (lower is noisier).
        p: Probability of applying.
    """

    sweep = ("snr_db", 40.0, -10.0)

    def __init__(self, snr_db: float = 20.0, p: float = 0.5) -> None:
        super().__init__(p)
        self.snr_db = snr_db

    def change_wave(self, x: np.ndarray, rng: np.random.Generator, rate: int) -> np.ndarray:
        power = float(np.mean(x.astype(np.float64) ** 2)) or 1e-8
        std = np.sqrt(power / 10 ** (self.snr_db / 10))
        return x + rng.normal(0.0, std, x.shape).astype(np.float32)


class TimeShift(_AudioTransform):
    """Shift by a uniform ``[-max_seconds, max_seconds]``; the gap fills with silence.

    Args:
        max_seconds: Largest shift.
        p: Probability of applying.
    """

    def __init__(self, max_seconds: float = 0.2, p: float = 0.5) -> None:
        super().__init__(p)
        _check("TimeShift.max_seconds", max_seconds >= 0, max_seconds)
        self.max_seconds = max_seconds

    def change_wave(self, x: np.ndarray, rng: np.random.Generator, rate: int) -> np.ndarray:
        n = int(rng.uniform(-self.max_seconds, self.max_seconds) * rate)
        out = np.zeros_like(x)
        if n >= 0:
            out[n:] = x[: len(x) - n]
        else:
            out[:n] = x[-n:]
        return out


class TimeStretch(_AudioTransform):
    """Speed up or slow down by a uniform factor in ``1 +- max_rate``, keeping the pitch
    (librosa's phase vocoder; runs in the DataLoader workers, off the training step).

    Args:
        max_rate: Largest relative speed change, in [0, 1).
        p: Probability of applying.
    """

    def __init__(self, max_rate: float = 0.15, p: float = 0.5) -> None:
        super().__init__(p)
        _check("TimeStretch.max_rate", 0 <= max_rate < 1, max_rate)
        self.max_rate = max_rate

    def change_wave(self, x: np.ndarray, rng: np.random.Generator, rate: int) -> np.ndarray:
        import librosa

        factor = float(rng.uniform(1 - self.max_rate, 1 + self.max_rate))
        return librosa.effects.time_stretch(x, rate=factor, n_fft=_n_fft(len(x)))


class PitchShift(_AudioTransform):
    """Shift the pitch by a uniform ``+- semitones``, keeping the duration (librosa; runs in
    the DataLoader workers).

    Args:
        semitones: Largest shift.
        p: Probability of applying.
    """

    def __init__(self, semitones: float = 2.0, p: float = 0.5) -> None:
        super().__init__(p)
        _check("PitchShift.semitones", semitones >= 0, semitones)
        self.semitones = semitones

    def change_wave(self, x: np.ndarray, rng: np.random.Generator, rate: int) -> np.ndarray:
        import librosa

        steps = float(rng.uniform(-self.semitones, self.semitones))
        return librosa.effects.pitch_shift(x, sr=rate, n_steps=steps, n_fft=_n_fft(len(x)))


def _n_fft(n: int) -> int:
    """librosa's default 2048-point FFT, smaller for clips shorter than that."""
    return int(min(2048, 2 ** max(4, int(np.log2(max(n, 16))))))


class RandomCrop(_AudioTransform):
    """Keep a random ``seconds``-long stretch of longer clips.

    Args:
        seconds: Length kept.
        p: Probability of applying.
    """

    def __init__(self, seconds: float = 1.0, p: float = 0.5) -> None:
        super().__init__(p)
        _check("RandomCrop.seconds", seconds > 0, seconds)
        self.seconds = seconds

    def change_wave(self, x: np.ndarray, rng: np.random.Generator, rate: int) -> np.ndarray:
        n = max(1, int(self.seconds * rate))
        if len(x) <= n:
            return x
        start = int(rng.integers(len(x) - n + 1))
        return x[start : start + n]


class SpecAugment(nn.Module):
    """SpecAugment masks on log-mel frames, batched on the frames' device, training only.

    Used inside :class:`mmctx.encoders.AudioRNNEncoder` (``spec_augment=``): each sample
    gets ``n_masks`` frequency bands of up to ``freq_mask`` bins and ``n_masks`` time spans of
    up to ``time_mask`` frames set to zero (the mean of the normalised features).

    Args:
        freq_mask: Widest frequency mask, in mel bins.
        time_mask: Longest time mask, in frames.
        n_masks: Masks of each kind per sample.
        p: Probability of masking a sample at all.
    """

    def __init__(
        self, freq_mask: int = 8, time_mask: int = 20, n_masks: int = 2, p: float = 1.0
    ) -> None:
        super().__init__()
        import torchaudio

        _check("SpecAugment.p", 0.0 <= p <= 1.0, p)
        self.p = p
        self.n_masks = n_masks
        self.freq = torchaudio.transforms.FrequencyMasking(freq_mask, iid_masks=True)
        self.time = torchaudio.transforms.TimeMasking(time_mask, iid_masks=True)

    def forward(self, frames: Tensor) -> Tensor:
        """``(b, t, n_mels)`` frames, masked when the module is in training mode."""
        if not self.training or self.p == 0:
            return frames
        spec = frames.transpose(1, 2).unsqueeze(1)  # (b, 1, m, t)
        masked = spec
        for _ in range(self.n_masks):
            masked = self.time(self.freq(masked))
        pick = torch.rand(frames.shape[0], 1, 1, 1, device=frames.device) < self.p
        return torch.where(pick, masked, spec).squeeze(1).transpose(1, 2)
