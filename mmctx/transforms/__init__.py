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

from .audio import AddNoise, Gain, PitchShift, RandomCrop, SpecAugment, TimeShift, TimeStretch
from .base import Augment, ModalityDropout, Transform
from .image import (
    ColorJitter,
    Cutout,
    GaussianBlur,
    HorizontalFlip,
    ImageNoise,
    MotionBlur,
    RandomResizedCrop,
    Rotation,
)
from .text import CharTypos, SynonymReplacement, WordDeletion, WordInsertion, WordSwap
from .video import FrameDrop, TemporalCrop, VideoFrames

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
