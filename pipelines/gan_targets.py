"""What a :class:`MultimodalGAN` draws: one small object per target modality.

A target turns a collated batch of its modality into the ``(b, c, h, w)`` grids in
``[-1, 1]`` the networks learn (:meth:`GanTarget.real`), builds the generator and
discriminator for that grid, turns grids into uint8 *pictures* (what sample sheets show
and diversity is measured on), into files (:meth:`GanTarget.write`) and into the inputs of
a classifier of that modality (:meth:`GanTarget.judge_inputs`, for ``mmctx gan-eval``).
A new target modality is one more subclass.

Shape legend: b = batch, c = channels, h/w = grid height/width, m = mel bins, t = frames,
n = audio samples.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import soundfile as sf
import torch
import torch.nn.functional as F
from torch import Tensor

from mmctx.data import Preprocess
from mmctx.errors import ConfigError
from mmctx.nn.gan import Discriminator, Generator

from .gan_images import to_uint8, write_png


class GanTarget:
    """Base class of the generated modality; subclasses set ``name`` and ``shape``."""

    name = ""
    shape: tuple[int, int, int] = (1, 8, 8)  # (c, h, w) of what the generator draws

    def networks(
        self, z_dim: int, cond_dim: int, g_width: int, d_width: int, num_classes: int, sn: bool
    ) -> tuple[Generator, Discriminator]:
        """A generator and a discriminator of this target's grid."""
        c, h, w = self.shape
        size = h if h == w else (h, w)
        generator = Generator(z_dim, cond_dim, size, c, g_width)
        discriminator = Discriminator(cond_dim, size, c, d_width, num_classes, sn)
        return generator, discriminator

    def real(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """``(b, c, h, w)`` grids in ``[-1, 1]`` of a collated batch, and ``(b,)`` presence."""
        raise NotImplementedError

    def pictures(self, grids: Tensor) -> Tensor:
        """Grids in ``[-1, 1]`` to uint8 pictures of the same shape, on the CPU."""
        return to_uint8(grids)

    def check_data(self, pre: Preprocess) -> None:
        """Raise ConfigError when the data's decoding differs from what is drawn."""

    def check_judge(self, pre: Preprocess, source: str) -> None:
        """Raise ValueError when a classifier trained with ``pre`` cannot judge the pictures."""

    def judge_inputs(self, pictures: Tensor, pre: Preprocess) -> dict[str, Any]:
        """The inputs of a classifier of this modality for ``(m, c, h, w)`` uint8 pictures."""
        raise NotImplementedError

    def judge_real(
        self, batch: dict[str, Any], pictures: Tensor, pre: Preprocess
    ) -> dict[str, Any]:
        """The classifier inputs of real samples as they are: their collated ``batch`` rows,
        or (by default) their ``(m, c, h, w)`` pictures."""
        return self.judge_inputs(pictures, pre)

    def write(self, stem: Path, picture: Tensor) -> Path:
        """Write one ``(c, h, w)`` picture as a file (``stem`` plus the suffix); its path."""
        raise NotImplementedError


class ImageTarget(GanTarget):
    """Draw square images of the data's ``image_size`` and ``image_channels``.

    Args:
        size: Side of the images (8, 16, 28, 32, 64, ...: 4..7 times a power of two); the
            data's ``image_size``.
        channels: 1 (grayscale) or 3 (colour); the data's ``image_channels``.
    """

    name = "image"

    def __init__(self, size: int = 32, channels: int = 1) -> None:
        if channels not in (1, 3):
            raise ValueError(f"image channels must be 1 or 3, got {channels}")
        self.size, self.channels = size, channels
        self.shape = (channels, size, size)

    def real(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        pixels, has = batch["pixels"], batch["mask"][:, 0]  # (b, k, c, s, s), (b,)
        if pixels.shape[2:] != self.shape:
            raise ValueError(
                f"the GAN draws images of shape {self.shape} (target size={self.size}, "
                f"channels={self.channels}) but got {tuple(pixels.shape[2:])}; set the data's "
                "image_size/image_channels and the target's alike"
            )
        return pixels[:, 0].float().div(127.5).sub(1.0), has

    def check_data(self, pre: Preprocess) -> None:
        if (pre.image_size, pre.image_channels) != (self.size, self.channels):
            raise ConfigError(
                f"the GAN draws image_size={self.size}, image_channels={self.channels} but the "
                f"data decodes data.image_size={pre.image_size}, data.image_channels="
                f"{pre.image_channels}: set the target's size/channels and the data's alike"
            )

    def check_judge(self, pre: Preprocess, source: str) -> None:
        if pre.image_channels != self.channels:
            raise ValueError(
                f"{source}: classifies {pre.image_channels}-channel images, the GAN draws "
                f"{self.channels}-channel ones"
            )

    def judge_inputs(self, pictures: Tensor, pre: Preprocess) -> dict[str, Any]:
        if pictures.shape[-1] != pre.image_size:  # the judge's own image side
            size = (pre.image_size, pre.image_size)
            resized = F.interpolate(pictures.float(), size=size, mode="bilinear", antialias=True)
            pictures = resized.round().clamp(0, 255).to(torch.uint8)
        mask = torch.ones(len(pictures), 1, dtype=torch.bool)
        return {"image": {"pixels": pictures[:, None], "mask": mask}}  # one image per sample

    def write(self, stem: Path, picture: Tensor) -> Path:
        return write_png(stem.with_name(stem.name + ".png"), picture)


class AudioTarget(GanTarget):
    """Draw a fixed-length clip as a log-mel spectrogram; Griffin-Lim makes it a waveform.

    The grid is the clip's log-mel power in decibels relative to its loudest bin, clamped
    to ``top_db`` below it and scaled to ``[-1, 1]``, with the highest mel bin in the top
    row (as a spectrogram is drawn). Real clips are cut or padded with silence to
    ``seconds``. A drawn grid becomes a waveform through the inverse mel filterbank and
    Griffin-Lim from a fixed start (so the same grid always gives the same samples),
    normalised to a peak of 0.9.

    Args:
        sample_rate: Rate of the clips (the data's ``sample_rate``).
        seconds: Duration of every drawn clip.
        n_mels: Mel bins: the grid's height (8, 16, 32, 40, 48, 64, ...: 4..7 times a
            power of two).
        n_fft: FFT size (samples) of the spectrogram.
        hop_length: Samples between frames; the grid has ``1 + seconds * rate // hop``
            frames.
        f_min: Lowest frequency of the mel filterbank (Hz).
        f_max: Highest frequency (Hz); None for half the sample rate.
        top_db: Dynamic range kept below each clip's loudest bin.
        griffin_lim_iters: Griffin-Lim iterations when making waveforms.
    """

    name = "audio"
    _AMIN_DB = -100.0  # the power floor (1e-10) in dB: silence

    def __init__(
        self,
        sample_rate: int = 8000,
        seconds: float = 1.0,
        n_mels: int = 40,
        n_fft: int = 512,
        hop_length: int = 128,
        f_min: float = 0.0,
        f_max: float | None = None,
        top_db: float = 80.0,
        griffin_lim_iters: int = 32,
    ) -> None:
        if seconds <= 0 or sample_rate <= 0 or hop_length <= 0 or top_db <= 0:
            raise ValueError(
                "AudioTarget needs seconds, sample_rate, hop_length and top_db > 0, got "
                f"{seconds}, {sample_rate}, {hop_length}, {top_db}"
            )
        self.sample_rate, self.seconds, self.n_mels = sample_rate, seconds, n_mels
        self.n_fft, self.hop_length, self.top_db = n_fft, hop_length, top_db
        self.f_min, self.f_max, self.griffin_lim_iters = f_min, f_max, griffin_lim_iters
        self.samples = round(seconds * sample_rate)
        self.shape = (1, n_mels, 1 + self.samples // hop_length)
        self._transforms: dict[str, Any] = {}

    def _transform(self, kind: str) -> Any:
        """The torchaudio transforms, built once (on the CPU; moved with the data)."""
        if not self._transforms:
            import torchaudio.transforms as T

            mel = {"n_mels": self.n_mels, "f_min": self.f_min, "f_max": self.f_max}
            self._transforms = {
                "mel": T.MelSpectrogram(
                    self.sample_rate, self.n_fft, hop_length=self.hop_length, **mel
                ),
                # gelsd: a least-squares solver that also copes with empty mel filters
                "inverse_mel": T.InverseMelScale(
                    self.n_fft // 2 + 1, sample_rate=self.sample_rate, driver="gelsd", **mel
                ),
                "griffin_lim": T.GriffinLim(
                    self.n_fft,
                    self.griffin_lim_iters,
                    hop_length=self.hop_length,
                    length=self.samples,
                    rand_init=False,
                ),
            }
        return self._transforms[kind]

    def grids(self, waveform: Tensor) -> Tensor:
        """``(b, n)`` waveforms -> ``(b, 1, m, t)`` grids in ``[-1, 1]`` (cut/padded first)."""
        wave = F.pad(waveform.float(), (0, max(0, self.samples - waveform.shape[1])))
        mel = self._transform("mel").to(wave.device)(wave[:, : self.samples])  # (b, m, t)
        db = 10 * mel.clamp_min(1e-10).log10()
        ref = db.amax(dim=(1, 2), keepdim=True).clamp_min(self._AMIN_DB + self.top_db)
        rel = (db - ref).clamp_min(-self.top_db)  # (b, m, t) in [-top_db, 0]
        return (rel / self.top_db * 2 + 1).flip(1)[:, None]  # highest mel bin on top

    def real(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        return self.grids(batch["waveform"]), batch["lengths"] > 0

    def waveforms(self, pictures: Tensor) -> Tensor:
        """``(m, 1, n_mels, t)`` uint8 pictures -> ``(m, samples)`` float32 in [-1, 1]."""
        rel = (pictures[:, 0].float().flip(1) / 255 - 1) * self.top_db  # (m, n_mels, t) dB
        power = 10 ** (rel / 10) * (rel > -self.top_db)  # the floor is silence
        spec = self._transform("inverse_mel")(power)  # (m, n_fft // 2 + 1, t)
        wave = self._transform("griffin_lim")(spec.clamp_min(0))
        peak = wave.abs().amax(dim=1, keepdim=True).clamp_min(1e-8)
        return (wave / peak * 0.9).float()

    def check_data(self, pre: Preprocess) -> None:
        if pre.sample_rate != self.sample_rate:
            raise ConfigError(
                f"the GAN draws audio at sample_rate={self.sample_rate} but the data decodes "
                f"data.sample_rate={pre.sample_rate}: set both alike"
            )

    def check_judge(self, pre: Preprocess, source: str) -> None:
        if pre.sample_rate != self.sample_rate:
            raise ValueError(
                f"{source}: classifies audio at {pre.sample_rate} Hz, the GAN draws "
                f"{self.sample_rate} Hz"
            )

    def sounding_lengths(self, pictures: Tensor, within_db: float = 60.0) -> Tensor:
        """``(m,)`` samples up to the end of the last frame of each ``(m, 1, n_mels, t)``
        picture with a bin within ``within_db`` of the loudest: where the sound ends."""
        level = (pictures[:, 0].float() / 255 - 1) * self.top_db  # (m, n_mels, t) dB
        sounding = level.amax(dim=1) > -within_db  # (m, t)
        frames = torch.arange(1, sounding.shape[1] + 1) * sounding
        return (frames.amax(dim=1).clamp_min(1) * self.hop_length).clamp(max=self.samples)

    def judge_inputs(self, pictures: Tensor, pre: Preprocess) -> dict[str, Any]:
        # the judge hears each clip up to where its sound ends, as recordings come: the
        # silence a short clip is padded with would otherwise weigh in its per-clip statistics
        wave = self.waveforms(pictures)
        lengths = self.sounding_lengths(pictures)
        return {"audio": {"waveform": wave, "lengths": lengths, "sample_rate": self.sample_rate}}

    def judge_real(
        self, batch: dict[str, Any], pictures: Tensor, pre: Preprocess
    ) -> dict[str, Any]:
        return {"audio": batch}  # the recordings themselves, at their own length

    def write(self, stem: Path, picture: Tensor) -> Path:
        path = stem.with_name(stem.name + ".wav")
        buffer = io.BytesIO()
        sf.write(
            buffer,
            self.waveforms(picture[None])[0].numpy(),
            self.sample_rate,
            "PCM_16",
            format="WAV",
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer.getvalue())
        return path
