"""GAN networks: a FiLM-conditioned DCGAN generator and a projection discriminator.

Both draw or judge a ``(c, h, w)`` grid: a square image, or a spectrogram of ``h`` mel bins
by ``w`` frames. ``h`` fixes the number of upsamplings; ``w`` may be any length of at least
that coarse grid (the generator draws the next multiple and crops).

Shape legend: b = batch, z = noise width, c = channels, h/w = grid height/width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm


def _levels(size: int) -> tuple[int, int]:
    """``(upsamplings, base side)`` with ``base * 2**upsamplings == size`` and base in 4..7."""
    if not 8 <= size <= 256:
        raise ValueError(f"image_size (or n_mels) must be in [8, 256], got {size}")
    levels = 0
    while size % 2 ** (levels + 1) == 0 and size // 2 ** (levels + 1) >= 4:
        levels += 1
    if size // 2**levels > 7:
        raise ValueError(
            f"image_size (or n_mels) must be 4..7 times a power of two (8, 28, 32, 40, 64), "
            f"got {size}"
        )
    return levels, size // 2**levels


def _grid(size: int | tuple[int, int]) -> tuple[int, int, int, int, int]:
    """``(upsamplings, base height, base width, height, width)`` of a side or ``(h, w)``.

    The height sets the upsamplings; the base width is the width over ``2**upsamplings``,
    rounded up (a square side gives exactly the square grid).
    """
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    levels, base_h = _levels(h)
    if w < 2**levels:
        raise ValueError(f"width {w} is under {2**levels}, the coarsest grid for height {h}")
    return levels, base_h, -(-w // 2**levels), h, w


def _channels(width: int, levels: int) -> list[int]:
    """Channels from the coarsest level (index 0) to the finest (index ``levels``)."""
    return [width * 2 ** min(3, levels - i) for i in range(levels + 1)]


class Generator(nn.Module):
    """DCGAN-style generator: (noise, condition) -> image in ``[-1, 1]``.

    Each block doubles the side (nearest upsampling, 3x3 conv), normalises without
    affine parameters and applies FiLM (scale and shift) computed from the condition.

    Args:
        z_dim: Noise width.
        cond_dim: Condition width.
        image_size: Output side (8, 16, 28, 32, 64, ...), or ``(height, width)`` with a
            height of that form and any width of at least ``2**upsamplings``.
        channels: Output channels (1 or 3 for images, 1 for a spectrogram).
        width: Channels of the finest block (coarser blocks have up to 8x as many).
    """

    def __init__(
        self,
        z_dim: int,
        cond_dim: int,
        image_size: int | tuple[int, int],
        channels: int,
        width: int = 32,
    ) -> None:
        super().__init__()
        levels, self.base_h, self.base_w, self.height, self.width = _grid(image_size)
        self.ch = _channels(width, levels)
        self.z_dim = z_dim
        self.stem = nn.Linear(z_dim + cond_dim, self.ch[0] * self.base_h * self.base_w)
        self.stem_norm = nn.BatchNorm2d(self.ch[0], affine=False)
        self.convs = nn.ModuleList(
            nn.Conv2d(self.ch[i], self.ch[i + 1], 3, padding=1) for i in range(levels)
        )
        self.norms = nn.ModuleList(nn.BatchNorm2d(c, affine=False) for c in self.ch[1:])
        self.films = nn.ModuleList(nn.Linear(cond_dim, 2 * c) for c in self.ch)
        self.out = nn.Conv2d(self.ch[-1], channels, 3, padding=1)

    @staticmethod
    def _film(x: Tensor, film: nn.Module, cond: Tensor) -> Tensor:
        scale, shift = film(cond)[:, :, None, None].chunk(2, dim=1)  # (b, ch, 1, 1) each
        return F.relu(x * (1 + scale) + shift)

    def forward(self, z: Tensor, cond: Tensor) -> Tensor:
        """``(b, z)`` noise and ``(b, cond_dim)`` condition -> ``(b, c, h, w)`` in ``[-1, 1]``."""
        x = self.stem(torch.cat([z, cond], dim=1)).view(-1, self.ch[0], self.base_h, self.base_w)
        x = self._film(self.stem_norm(x), self.films[0], cond)
        for conv, norm, film in zip(self.convs, self.norms, self.films[1:], strict=True):
            x = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (b, ch, 2s', 2s')
            x = self._film(norm(x), film, cond)
        return torch.tanh(self.out(x[..., : self.width]))  # crop the canvas to the width


class Discriminator(nn.Module):
    """Projection discriminator: ``D(x, c) = psi(phi(x)) + <embed(c), phi(x)>``.

    Args:
        cond_dim: Condition width.
        image_size: Input side, or ``(height, width)`` (as for :class:`Generator`).
        channels: Input channels.
        width: Channels of the first (finest) block.
        num_classes: Add an auxiliary class head on ``phi(x)`` (AC-GAN); 0 for none.
        use_spectral_norm: Spectral normalisation on every layer.
    """

    def __init__(
        self,
        cond_dim: int,
        image_size: int | tuple[int, int],
        channels: int,
        width: int = 32,
        num_classes: int = 0,
        use_spectral_norm: bool = True,
    ) -> None:
        super().__init__()
        levels = _grid(image_size)[0]
        ch = _channels(width, levels)[::-1]  # finest first
        sn = spectral_norm if use_spectral_norm else (lambda m: m)
        layers: list[nn.Module] = [sn(nn.Conv2d(channels, ch[0], 3, padding=1)), nn.LeakyReLU(0.2)]
        for i in range(levels):  # each halves the side
            layers += [sn(nn.Conv2d(ch[i], ch[i + 1], 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
        layers += [sn(nn.Conv2d(ch[-1], ch[-1], 3, padding=1)), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.psi = sn(nn.Linear(ch[-1], 1))
        self.embed = sn(nn.Linear(cond_dim, ch[-1]))
        self.classify = nn.Linear(ch[-1], num_classes) if num_classes else None

    def forward(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(b, c, h, w)`` grids and ``(b, cond_dim)`` -> scores ``(b,)`` and class logits."""
        phi = self.features(x).sum(dim=(2, 3))  # (b, ch): global sum pooling
        score = self.psi(phi).squeeze(1) + (self.embed(cond) * phi).sum(1)
        return score, None if self.classify is None else self.classify(phi)
