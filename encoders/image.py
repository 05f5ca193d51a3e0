"""Image encoder: a CNN whose spatial feature map becomes a sequence of positions.

Input batch (from ``mmctx.data.collate``): ``{"pixels": (b, k, c, h, w) uint8,
"mask": (b, k) bool}``, ``k`` images per sample (padding images masked).
Output: ``(b, k * h' * w', out_dim)``, one position per cell of each image's feature map.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmctx.features import FeatureSequence

from .base import ModalityEncoder, require_counts


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


def _torchvision_trunk(arch: str, in_channels: int) -> tuple[nn.Module, int]:
    """A torchvision classifier without its pooling and head, and its channel count."""
    import torchvision

    try:
        model = torchvision.models.get_model(arch, weights=None)
    except ValueError as err:
        raise ValueError(f"arch={arch!r} is neither 'small' nor a torchvision model name") from err
    if hasattr(model, "features"):  # VGG, MobileNet, EfficientNet, ConvNeXt, ...
        trunk = model.features
    elif hasattr(model, "layer4"):  # ResNet family
        trunk = nn.Sequential(*list(model.children())[:-2])
    else:
        raise ValueError(f"arch={arch!r}: cannot find the convolutional trunk of this model")
    if in_channels != 3:
        trunk = nn.Sequential(nn.Conv2d(in_channels, 3, 1), trunk)
    with torch.no_grad():
        channels = trunk(torch.zeros(1, in_channels, 64, 64)).shape[1]
    return trunk, channels


class ImageCNNEncoder(ModalityEncoder):
    """A small VGG-style CNN or any torchvision backbone, applied to each image.

    Args:
        out_dim: Width of each output position.
        in_channels: 1 for grayscale, 3 for RGB (must match the data's ``image_channels``).
        arch: ``"small"`` for a built-in 3-block CNN (``width``, 2x and 4x ``width`` channels,
            stride 8), or a torchvision model name such as ``"resnet18"`` (random initialisation).
        width: Channels of the first block of the ``"small"`` CNN.
        weights_path: Optional local ``state_dict`` file for the torchvision trunk.
    """

    modality = "image"
    min_image_size: int | None = None  # smallest side it can read (None: not known)

    def __init__(
        self,
        out_dim: int = 128,
        in_channels: int = 3,
        arch: str = "small",
        width: int = 32,
        weights_path: str | None = None,
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        require_counts(out_dim=out_dim, width=width)
        self.in_channels = in_channels
        if arch == "small" and weights_path is not None:
            raise ValueError(
                f"weights_path={weights_path!r} loads a torchvision trunk; arch='small' is trained "
                "from scratch (name a torchvision arch such as 'resnet18', or drop weights_path)"
            )
        if arch == "small":
            self.trunk = nn.Sequential(
                _conv_block(in_channels, width),
                _conv_block(width, 2 * width),
                _conv_block(2 * width, 4 * width),
            )
            channels = 4 * width
            self.min_image_size = 8  # three 2x max-pools: a smaller image pools to nothing
        else:
            self.trunk, channels = _torchvision_trunk(arch, in_channels)
            if weights_path is not None:
                state = torch.load(weights_path, map_location="cpu", weights_only=True)
                self.trunk.load_state_dict(state)
        self.proj = nn.Linear(channels, out_dim)
        self.out_dim = out_dim

    def forward(self, batch: dict[str, Any]) -> FeatureSequence:
        pixels, image_mask = batch["pixels"], batch["mask"]  # (b, k, c, h, w), (b, k)
        b, k, c, h, w = pixels.shape
        if c != self.in_channels:
            raise ValueError(
                f"ImageCNNEncoder(in_channels={self.in_channels}) got {c}-channel images; "
                "set the data's image_channels and the encoder's in_channels alike"
            )
        x = pixels.reshape(b * k, c, h, w).float().div(127.5).sub(1.0)  # uint8 -> [-1, 1]
        x = self.trunk(x)  # (b*k, ch, h', w')
        x = x.flatten(2).transpose(1, 2)  # (b*k, h'*w', ch)
        cells = x.shape[1]
        x = self.proj(x).reshape(b, k * cells, self.out_dim)  # (b, k*h'*w', d)
        mask = image_mask.repeat_interleave(cells, dim=1)  # (b, k*h'*w')
        return FeatureSequence(x, mask)
