"""Augmentation and corruption per modality: one vocabulary for training and for robustness.

A :class:`Transform` is a named, parameterised change to one modality of a decoded sample
(text ``str``, images ``(k, c, h, w)`` uint8, audio ``(s,)`` float32 waveform, video frames
``(t, c, h, w)`` uint8), applied with probability ``p``. The same classes serve two purposes:

* training augmentation: ``data.augment`` in a config lists them; they run on training
  samples only (never validation, test or prediction), in the DataLoader workers;
* robustness evaluation: ``mmctx robustness`` sweeps the noise-like ones (those with a
  ``sweep``) from level 0 (clean) to 1 (the strongest setting), see :meth:`Transform.at_level`.

Randomness comes from a ``numpy.random.Generator`` handed in by the caller, so the same
seed gives the same result. :class:`ModalityDropout` (whole modalities, per sample) and
:class:`SpecAugment` (masks on the log-mel, inside the audio encoder) work on batches, on
whatever device the batch is on.

Example config::

    data:
      init_args:
        augment:
          - {class_path: mmctx.transforms.CharTypos, init_args: {rate: 0.05, p: 0.5}}
          - {class_path: mmctx.transforms.Rotation, init_args: {degrees: 15}}
          - {class_path: mmctx.transforms.AddNoise, init_args: {snr_db: 10, p: 0.5}}
        modality_dropout: {text: 0.3, image: 0.3, audio: 0.3}
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

import cv2
import numpy as np
import torch
from torch import Tensor, nn
from torchvision.transforms import v2

__all__ = [
    "AddNoise",
    "Augment",
    "CharTypos",
    "ColorJitter",
    "Cutout",
    "FrameDrop",
    "Gain",
    "GaussianBlur",
    "HorizontalFlip",
    "ImageNoise",
    "ModalityDropout",
    "MotionBlur",
    "PitchShift",
    "RandomCrop",
    "RandomResizedCrop",
    "Rotation",
    "SpecAugment",
    "SynonymReplacement",
    "TemporalCrop",
    "TimeShift",
    "TimeStretch",
    "Transform",
    "VideoFrames",
    "WordDeletion",
    "WordInsertion",
    "WordSwap",
]


class Transform:
    """One change to one modality, applied with probability ``p``.

    Subclasses set ``modality`` and implement :meth:`apply`. Those that can be swept by the
    robustness report set ``sweep = (parameter, value_at_level_0, value_at_level_1)``.

    Args:
        p: Probability of applying the transform to a sample, in [0, 1].
    """

    modality: ClassVar[str]
    sweep: ClassVar[tuple[str, float, float] | None] = None

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{type(self).__name__}: p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, x: Any, rng: np.random.Generator, **context: Any) -> Any:
        if rng.random() >= self.p:
            return x
        return self.apply(x, rng, **context)

    def apply(self, x: Any, rng: np.random.Generator, **context: Any) -> Any:
        """The change itself (``p`` already decided); returns a new object."""
        raise NotImplementedError

    def at_level(self, level: float) -> Transform:
        """A copy applied always, with the swept parameter at ``level`` in [0, 1] (linear).

        Raises:
            ValueError: The transform has no ``sweep`` or ``level`` is outside [0, 1].
        """
        if self.sweep is None:
            raise ValueError(f"{type(self).__name__} has no sweep parameter")
        if not 0.0 <= level <= 1.0:
            raise ValueError(f"level must be in [0, 1], got {level}")
        name, start, end = self.sweep
        out = copy.copy(self)
        out.p = 1.0
        setattr(out, name, start + (end - start) * level)
        return out

    def __repr__(self) -> str:
        names = [n for n in inspect.signature(type(self)).parameters if hasattr(self, n)]
        args = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
        return f"{type(self).__name__}({args})"


def _check(name: str, ok: bool, value: Any) -> None:
    if not ok:
        raise ValueError(f"{name} is out of range: {value!r}")


# ----------------------------------------------------------------------------- text
class _TextTransform(Transform):
    modality = "text"

    def apply(self, x: str, rng: np.random.Generator, **context: Any) -> str:
        words = x.split()
        if not words:
            return x
        changed = self.change_words(words, rng)
        return " ".join(changed) if changed else words[int(rng.integers(len(words)))]

    def change_words(self, words: list[str], rng: np.random.Generator) -> list[str]:
        raise NotImplementedError


class WordDeletion(_TextTransform):
    """Delete each word with probability ``rate`` (at least one word always stays).

    Args:
        rate: Per-word deletion probability, in [0, 1].
        p: Probability of applying.
    """

    sweep = ("rate", 0.0, 0.9)

    def __init__(self, rate: float = 0.1, p: float = 0.5) -> None:
        super().__init__(p)
        _check("WordDeletion.rate", 0.0 <= rate <= 1.0, rate)
        self.rate = rate

    def change_words(self, words: list[str], rng: np.random.Generator) -> list[str]:
        keep = rng.random(len(words)) >= self.rate
        return [w for w, k in zip(words, keep, strict=True) if k]


class WordSwap(_TextTransform):
    """Swap ``round(rate * n)`` (at least one) random pairs of words.

    Args:
        rate: Swaps per word, in [0, 1].
        p: Probability of applying.
    """

    def __init__(self, rate: float = 0.1, p: float = 0.5) -> None:
        super().__init__(p)
        _check("WordSwap.rate", 0.0 <= rate <= 1.0, rate)
        self.rate = rate

    def change_words(self, words: list[str], rng: np.random.Generator) -> list[str]:
        words = list(words)
        for _ in range(max(1, round(self.rate * len(words)))):
            i, j = rng.integers(len(words), size=2)
            words[i], words[j] = words[j], words[i]
        return words


class WordInsertion(_TextTransform):
    """Insert ``round(rate * n)`` (at least one) words at random places.

    Args:
        rate: Insertions per word, in [0, 1].
        vocabulary: Words to insert; default: words of the same text.
        p: Probability of applying.
    """

    def __init__(
        self, rate: float = 0.1, vocabulary: list[str] | None = None, p: float = 0.5
    ) -> None:
        super().__init__(p)
        _check("WordInsertion.rate", 0.0 <= rate <= 1.0, rate)
        _check("WordInsertion.vocabulary", vocabulary is None or len(vocabulary) > 0, vocabulary)
        self.rate = rate
        self.vocabulary = vocabulary

    def change_words(self, words: list[str], rng: np.random.Generator) -> list[str]:
        pool = self.vocabulary or words
        words = list(words)
        for _ in range(max(1, round(self.rate * len(words)))):
            words.insert(int(rng.integers(len(words) + 1)), pool[int(rng.integers(len(pool)))])
        return words


_KEYBOARD_ROWS = (("qwertyuiop", 0.0), ("asdfghjkl", 0.25), ("zxcvbnm", 0.75))  # row, stagger


def _keyboard_neighbours() -> dict[str, str]:
    """Keys within one key-width of each letter on a QWERTY keyboard (same or next row)."""
    where = {
        c: (r, i + shift)
        for r, (row, shift) in enumerate(_KEYBOARD_ROWS)
        for i, c in enumerate(row)
    }
    return {
        c: "".join(
            d for d, (r2, x2) in where.items() if d != c and abs(r2 - r) <= 1 and abs(x2 - x) <= 1
        )
        for c, (r, x) in where.items()
    }


KEYBOARD_NEIGHBOURS = _keyboard_neighbours()


class CharTypos(_TextTransform):
    """Replace each letter with probability ``rate`` by a neighbouring key (QWERTY), keeping case.

    Args:
        rate: Per-letter typo probability, in [0, 1].
        p: Probability of applying.
    """

    sweep = ("rate", 0.0, 0.5)

    def __init__(self, rate: float = 0.05, p: float = 0.5) -> None:
        super().__init__(p)
        _check("CharTypos.rate", 0.0 <= rate <= 1.0, rate)
        self.rate = rate

    def change_words(self, words: list[str], rng: np.random.Generator) -> list[str]:
        return [self._typo(w, rng) for w in words]

    def _typo(self, word: str, rng: np.random.Generator) -> str:
        chars = list(word)
        for i in np.flatnonzero(rng.random(len(chars)) < self.rate):
            near = KEYBOARD_NEIGHBOURS.get(chars[i].lower())
            if near:
                typo = near[int(rng.integers(len(near)))]
                chars[i] = typo.upper() if chars[i].isupper() else typo
        return "".join(chars)


# A small built-in table; pass your own with ``synonyms=``.
SYNONYMS: dict[str, list[str]] = {
    "big": ["large", "huge"],
    "large": ["big", "huge"],
    "small": ["little", "tiny"],
    "little": ["small", "tiny"],
    "quick": ["fast", "rapid"],
    "fast": ["quick", "rapid"],
    "slow": ["unhurried", "sluggish"],
    "happy": ["glad", "cheerful"],
    "sad": ["unhappy", "gloomy"],
    "good": ["fine", "nice"],
    "bad": ["poor", "awful"],
    "old": ["aged", "ancient"],
    "new": ["fresh", "recent"],
    "warm": ["mild", "hot"],
    "cold": ["chilly", "cool"],
    "bright": ["shiny", "vivid"],
    "quiet": ["calm", "silent"],
    "soft": ["gentle", "tender"],
    "begin": ["start", "commence"],
    "start": ["begin", "commence"],
    "end": ["finish", "stop"],
    "look": ["see", "watch"],
    "see": ["look", "notice"],
    "say": ["tell", "state"],
    "carry": ["bring", "hold"],
    "bring": ["carry", "fetch"],
    "find": ["discover", "locate"],
    "road": ["street", "path"],
    "street": ["road", "avenue"],
    "house": ["home", "building"],
    "car": ["automobile", "vehicle"],
    "picture": ["image", "photo"],
    "image": ["picture", "photo"],
    "number": ["figure", "digit"],
    "digit": ["number", "figure"],
    "near": ["close", "beside"],
    "maybe": ["perhaps", "possibly"],
    "evening": ["dusk", "night"],
    "morning": ["dawn", "daybreak"],
    "forest": ["woods", "woodland"],
}


class SynonymReplacement(_TextTransform):
    """Replace each word found in the synonym table, with probability ``rate``.

    Args:
        rate: Per-word replacement probability for words in the table, in [0, 1].
        synonyms: ``{word: [synonym, ...]}``, lower-case keys (default: the built-in table).
        p: Probability of applying.
    """

    def __init__(
        self, rate: float = 0.3, synonyms: dict[str, list[str]] | None = None, p: float = 0.5
    ) -> None:
        super().__init__(p)
        _check("SynonymReplacement.rate", 0.0 <= rate <= 1.0, rate)
        self.rate = rate
        self.synonyms = SYNONYMS if synonyms is None else synonyms

    def change_words(self, words: list[str], rng: np.random.Generator) -> list[str]:
        out = []
        for w in words:
            options = self.synonyms.get(w.lower())
            if options and rng.random() < self.rate:
                w = options[int(rng.integers(len(options)))]
            out.append(w)
        return out


# ---------------------------------------------------------------------------- image
class _ImageTransform(Transform):
    """Applied to each image of a sample, ``(c, h, w)`` uint8; the output keeps that format."""

    modality = "image"

    def apply(self, x: np.ndarray, rng: np.random.Generator, **context: Any) -> np.ndarray:
        return np.stack([self.change_image(img, rng) for img in x])

    def change_image(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError


class _TorchvisionTransform(_ImageTransform):
    """A ``torchvision.transforms.v2`` transform on a uint8 tensor, seeded from ``rng``."""

    def make(self) -> nn.Module:
        raise NotImplementedError

    def change_image(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if not hasattr(self, "_tv"):
            self._tv = self.make()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**62)))
            return self._tv(torch.from_numpy(np.ascontiguousarray(img))).numpy()

    def __getstate__(self) -> dict[str, Any]:  # rebuilt lazily in each worker
        return {k: v for k, v in self.__dict__.items() if k != "_tv"}

    def at_level(self, level: float) -> Transform:
        out = super().at_level(level)
        out.__dict__.pop("_tv", None)
        return out


class RandomResizedCrop(_TorchvisionTransform):
    """Crop a random part (``scale`` of the area, aspect in ``ratio``) and resize it back.

    Args:
        scale: Range of the cropped area's share.
        ratio: Range of the crop's aspect ratio.
        p: Probability of applying.
    """

    def __init__(
        self,
        scale: tuple[float, float] = (0.6, 1.0),
        ratio: tuple[float, float] = (0.75, 1.333),
        p: float = 0.5,
    ) -> None:
        super().__init__(p)
        _check("RandomResizedCrop.scale", 0 < scale[0] <= scale[1] <= 1, scale)
        self.scale, self.ratio = tuple(scale), tuple(ratio)

    def change_image(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        self._size = img.shape[-2:]
        return super().change_image(img, rng)

    def make(self) -> nn.Module:
        return v2.RandomResizedCrop(self._size, self.scale, self.ratio, antialias=True)


class HorizontalFlip(_TorchvisionTransform):
    """Mirror left-right (only where that keeps the meaning: not for digits or text).

    Args:
        p: Probability of applying.
    """

    def make(self) -> nn.Module:
        return v2.RandomHorizontalFlip(p=1.0)


class Rotation(_TorchvisionTransform):
    """Rotate by a uniform angle in ``[-degrees, degrees]``; corners fill with black.

    Args:
        degrees: Largest rotation.
        p: Probability of applying.
    """

    sweep = ("degrees", 0.0, 90.0)

    def __init__(self, degrees: float = 15.0, p: float = 0.5) -> None:
        super().__init__(p)
        _check("Rotation.degrees", 0 <= degrees <= 180, degrees)
        self.degrees = degrees

    def make(self) -> nn.Module:
        return v2.RandomRotation(self.degrees)


class ColorJitter(_TorchvisionTransform):
    """Random brightness, contrast, saturation and hue changes (as in torchvision).

    Args:
        brightness: Factor range ``1 +- brightness``.
        contrast: Factor range ``1 +- contrast``.
        saturation: Factor range ``1 +- saturation`` (colour images).
        hue: Shift range ``+- hue`` in [0, 0.5] (colour images).
        p: Probability of applying.
    """

    def __init__(
        self,
        brightness: float = 0.3,
        contrast: float = 0.3,
        saturation: float = 0.3,
        hue: float = 0.0,
        p: float = 0.5,
    ) -> None:
        super().__init__(p)
        self.brightness, self.contrast, self.saturation, self.hue = (
            brightness,
            contrast,
            saturation,
            hue,
        )

    def change_image(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if img.shape[0] == 1:  # saturation and hue need colour; grey images get the rest
            return super().change_image(np.repeat(img, 3, 0), rng)[:1]
        return super().change_image(img, rng)

    def make(self) -> nn.Module:
        return v2.ColorJitter(self.brightness, self.contrast, self.saturation, self.hue)


class GaussianBlur(_TorchvisionTransform):
    """Blur with a Gaussian of a random sigma in ``sigma``.

    Args:
        sigma: Range of the standard deviation, in pixels.
        p: Probability of applying.
    """

    def __init__(self, sigma: tuple[float, float] = (0.1, 1.5), p: float = 0.5) -> None:
        super().__init__(p)
        _check("GaussianBlur.sigma", 0 < sigma[0] <= sigma[1], sigma)
        self.sigma = tuple(sigma)

    def make(self) -> nn.Module:
        kernel = 2 * int(np.ceil(3 * self.sigma[1])) + 1
        return v2.GaussianBlur(kernel, self.sigma)


class Cutout(_TorchvisionTransform):
    """Erase a random rectangle (``scale`` of the area) to black (random erasing).

    Args:
        scale: Range of the erased area's share.
        p: Probability of applying.
    """

    def __init__(self, scale: tuple[float, float] = (0.02, 0.2), p: float = 0.5) -> None:
        super().__init__(p)
        _check("Cutout.scale", 0 < scale[0] <= scale[1] < 1, scale)
        self.scale = tuple(scale)

    def make(self) -> nn.Module:
        return v2.RandomErasing(p=1.0, scale=self.scale, value=0)


class ImageNoise(_ImageTransform):
    """Add Gaussian pixel noise of standard deviation ``std`` (in units of the full range).

    Args:
        std: Noise level; 0.1 is visible, 0.5 buries most content.
        p: Probability of applying.
    """

    sweep = ("std", 0.0, 0.5)

    def __init__(self, std: float = 0.1, p: float = 0.5) -> None:
        super().__init__(p)
        _check("ImageNoise.std", std >= 0, std)
        self.std = std

    def change_image(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noisy = img.astype(np.float32) + rng.normal(0.0, 255.0 * self.std, img.shape)
        return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


class MotionBlur(_ImageTransform):
    """Blur along a random direction, as from camera shake (OpenCV; torchvision has none).

    Args:
        length: Streak length in pixels (odd numbers centre it).
        p: Probability of applying.
    """

    def __init__(self, length: int = 5, p: float = 0.5) -> None:
        super().__init__(p)
        _check("MotionBlur.length", length >= 1, length)
        self.length = length

    def change_image(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        k = np.zeros((self.length, self.length), np.float32)
        k[self.length // 2, :] = 1.0 / self.length
        centre = ((self.length - 1) / 2, (self.length - 1) / 2)
        turn = cv2.getRotationMatrix2D(centre, float(rng.uniform(0, 180)), 1.0)
        k = cv2.warpAffine(k, turn, k.shape)
        k /= max(k.sum(), 1e-8)
        hwc = np.ascontiguousarray(img.transpose(1, 2, 0))
        out = cv2.filter2D(hwc, -1, k, borderType=cv2.BORDER_REFLECT)
        return out.reshape(hwc.shape).transpose(2, 0, 1)


# ---------------------------------------------------------------------------- audio
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


# ---------------------------------------------------------------------------- video
class _VideoTransform(Transform):
    """Applied to a sample's frames, ``(t, c, h, w)`` uint8; the output keeps that format."""

    modality = "video"


class TemporalCrop(_VideoTransform):
    """Keep a random contiguous run of ``frames`` frames of longer clips.

    Args:
        frames: Frames kept (clips this short or shorter are unchanged).
        p: Probability of applying.
    """

    def __init__(self, frames: int = 8, p: float = 0.5) -> None:
        super().__init__(p)
        _check("TemporalCrop.frames", isinstance(frames, int) and frames >= 1, frames)
        self.frames = frames

    def apply(self, x: np.ndarray, rng: np.random.Generator, **context: Any) -> np.ndarray:
        if len(x) <= self.frames:
            return x
        start = int(rng.integers(len(x) - self.frames + 1))
        return x[start : start + self.frames]


class FrameDrop(_VideoTransform):
    """Drop each frame with probability ``rate``; one random frame stays if all would go.

    Args:
        rate: Per-frame drop probability, in [0, 1].
        p: Probability of applying.
    """

    sweep = ("rate", 0.0, 0.9)

    def __init__(self, rate: float = 0.2, p: float = 0.5) -> None:
        super().__init__(p)
        _check("FrameDrop.rate", 0.0 <= rate <= 1.0, rate)
        self.rate = rate

    def apply(self, x: np.ndarray, rng: np.random.Generator, **context: Any) -> np.ndarray:
        keep = rng.random(len(x)) >= self.rate
        if len(x) and not keep.any():
            keep[int(rng.integers(len(x)))] = True
        return x[keep]


class VideoFrames(_VideoTransform):
    """Apply an image transform to every frame with the same random parameters.

    The same crop, rotation, colour change (or noise pattern) hits each frame, so the clip
    stays consistent over time. Whether it applies at all is decided once per clip, with
    ``p``. The robustness report sweeps it when the image transform has a sweep.

    Args:
        transform: An image transform (``modality == "image"``), e.g. :class:`Rotation`.
        p: Probability of applying; default: the image transform's own ``p``.
    """

    def __init__(self, transform: Transform, p: float | None = None) -> None:
        if not isinstance(transform, Transform) or transform.modality != "image":
            raise TypeError(f"VideoFrames needs an image Transform, got {transform!r}")
        super().__init__(transform.p if p is None else p)
        self.transform = transform
        self.sweep = transform.sweep

    def apply(self, x: np.ndarray, rng: np.random.Generator, **context: Any) -> np.ndarray:
        seed = int(rng.integers(2**63))  # one draw for the clip; every frame replays it
        return np.stack(
            [
                self.transform.apply(frame[None], np.random.default_rng(seed), **context)[0]
                for frame in x
            ]
        )

    def at_level(self, level: float) -> Transform:
        """A copy applied always, with the image transform at ``level`` (see its sweep)."""
        if self.sweep is None:
            raise ValueError(f"VideoFrames({type(self.transform).__name__}) has no sweep parameter")
        return VideoFrames(self.transform.at_level(level), p=1.0)

    def __getattr__(self, name: str) -> Any:
        """The swept parameter reads through to the image transform (for the report)."""
        sweep = self.__dict__.get("sweep")
        if sweep is not None and name == sweep[0]:
            return getattr(self.__dict__["transform"], name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


# ------------------------------------------------------------------------ pipeline
class Augment:
    """The per-sample transforms of a config, applied in order to each modality they name.

    Args:
        transforms: Transforms of any modalities.
        sample_rate: Rate of the waveforms (audio transforms need it).
    """

    def __init__(self, transforms: Sequence[Transform], sample_rate: int) -> None:
        for t in transforms:
            if not isinstance(t, Transform):
                raise TypeError(f"augment entries must be mmctx.transforms.Transform, got {t!r}")
        self.transforms = list(transforms)
        self.sample_rate = sample_rate

    def __call__(self, inputs: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """A new inputs dict with the transforms applied (modalities not present are skipped)."""
        out = dict(inputs)
        for t in self.transforms:
            if t.modality in out:
                out[t.modality] = t(out[t.modality], rng, sample_rate=self.sample_rate)
        return out

    def __repr__(self) -> str:
        return f"Augment({self.transforms!r})"


class ModalityDropout:
    """Drop whole modalities per sample, never all that a sample has.

    Each sample loses each of its modalities with that modality's probability; when that
    would leave it with none, one of them, chosen at random, is kept.

    Args:
        p: Drop probability per modality, e.g. ``{"text": 0.3, "audio": 0.3}``.
    """

    def __init__(self, p: dict[str, float]) -> None:
        for m, q in p.items():
            _check(f"modality_dropout[{m!r}]", 0.0 <= q <= 1.0, q)
        self.p = dict(p)

    def choose(
        self, present: dict[str, Tensor], generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Which (sample, modality) pairs to drop: ``{modality: (b,) bool}`` on the CPU."""
        names = list(present)
        have = torch.stack([present[m].cpu() for m in names], 1)  # (b, M)
        prob = torch.tensor([self.p.get(m, 0.0) for m in names])
        drop = (torch.rand(have.shape, generator=generator) < prob) & have
        emptied = (have & ~drop).sum(1) == 0
        if emptied.any():
            score = torch.rand(have.shape, generator=generator).masked_fill(~have, -1.0)
            keep = torch.nn.functional.one_hot(score.argmax(1), len(names)).bool()
            drop &= ~(keep & emptied[:, None])
        return {m: drop[:, i] for i, m in enumerate(names)}


# ---------------------------------------------------------------------- spectrogram
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
