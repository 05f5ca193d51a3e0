"""Video transforms on ``(t, c, h, w)`` uint8 frames."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Transform, _check


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
