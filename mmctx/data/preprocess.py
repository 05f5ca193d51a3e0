"""Preprocessing settings shared by the data pipeline and the modalities."""

from __future__ import annotations

from dataclasses import dataclass

from mmctx.io import DEFAULT_LIMITS, Limits


@dataclass(frozen=True)
class Preprocess:
    """How decoded media become fixed-format arrays.

    Attributes:
        image_size: Images (and video frames) are resized to this square size.
        image_channels: 1 (grayscale) or 3 (RGB), for images and video frames.
        sample_rate: Audio is resampled to this rate.
        limits: Decode limits (pixels, seconds, characters).
        video_fps: Video frames are sampled at this rate (frames per second).
        video_max_frames: Frames kept per video file (its first ones at ``video_fps``).
    """

    image_size: int = 32
    image_channels: int = 3
    sample_rate: int = 16000
    limits: Limits = DEFAULT_LIMITS
    video_fps: float = 4.0
    video_max_frames: int = 16

    def __post_init__(self) -> None:
        if isinstance(self.video_fps, bool) or not self.video_fps > 0:
            raise ValueError(f"video_fps must be > 0, got {self.video_fps!r}")
        if type(self.video_max_frames) is not int or self.video_max_frames < 1:
            raise ValueError(f"video_max_frames must be an int >= 1, got {self.video_max_frames!r}")


class SampleError(Exception):
    """A sample that failed to load; carries the message for the batch's ``errors``."""
