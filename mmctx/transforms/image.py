"""Image transforms on ``(c, h, w)`` uint8 images (torchvision v2 and OpenCV)."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2

from .base import Transform, _check


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
