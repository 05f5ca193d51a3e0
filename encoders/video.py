"""Video encoder: the image CNN on every frame, pooled to one feature per frame, plus time.

Input batch: ``{"frames": (b, t, c, h, w) uint8, "mask": (b, t) bool}``, ``t`` frames per
sample (padding frames masked; an all-False row is a sample without video).
Output: ``(b, t, out_dim)``, one position per frame, with the same mask.

Shape letters: b batch, t frames, c channels, h/w height/width, n valid frames in the batch,
ch CNN channels, d ``out_dim``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmctx.features import FeatureSequence

from .base import ModalityEncoder
from .image import ImageCNNEncoder


class VideoCNNEncoder(ModalityEncoder):
    """A CNN per frame (the :class:`ImageCNNEncoder` trunk) with learned temporal positions.

    Each frame is normalised like an image (uint8 to [-1, 1]), run through the CNN,
    averaged over its feature map and projected to ``out_dim``; a learned position
    embedding of its index (a table of ``max_frames`` rows, so frame order matters) is added.
    Only valid frames go through the CNN, so padding never reaches its batch norm.

    The CNN has its own weights unless :meth:`share_frame_cnn` makes it use an image
    encoder's; the projection and positions stay the video encoder's own.

    Args:
        out_dim: Width of each frame feature.
        in_channels: 1 for grayscale, 3 for RGB (must match the decoded frames).
        arch: CNN of each frame, as for :class:`ImageCNNEncoder` (``"small"`` or a
            torchvision model name).
        width: Channels of the first block of the ``"small"`` CNN.
        max_frames: Size of the temporal position table; longer clips are an error
            (match the data's frame limit).
    """

    modality = "video"

    def __init__(
        self,
        out_dim: int = 128,
        in_channels: int = 3,
        arch: str = "small",
        width: int = 32,
        max_frames: int = 16,
    ) -> None:
        super().__init__()
        if out_dim <= 0:
            raise ValueError(f"out_dim must be > 0, got {out_dim}")
        if max_frames <= 0:
            raise ValueError(f"max_frames must be > 0, got {max_frames}")
        frame_cnn = ImageCNNEncoder(out_dim, in_channels, arch, width)
        self.in_channels = in_channels
        self.min_image_size = frame_cnn.min_image_size
        self.trunk = frame_cnn.trunk
        self.proj = nn.Linear(frame_cnn.proj.in_features, out_dim)
        self.positions = nn.Embedding(max_frames, out_dim)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.max_frames = max_frames
        self.out_dim = out_dim

    def share_frame_cnn(self, image_encoder: ImageCNNEncoder) -> None:
        """Use ``image_encoder``'s CNN (the same Parameters) for the frames from now on.

        Call it when building the model, before the optimizer is made. Both encoders then
        train one CNN; its gradient sums the image and video losses.

        Raises:
            TypeError: ``image_encoder`` is not an :class:`ImageCNNEncoder`.
            ValueError: Its channels or CNN width differ from this encoder's.
        """
        if not isinstance(image_encoder, ImageCNNEncoder):
            raise TypeError(
                f"share_frame_cnn needs an ImageCNNEncoder, got {type(image_encoder).__name__}"
            )
        if image_encoder.in_channels != self.in_channels:
            raise ValueError(
                f"image encoder has in_channels={image_encoder.in_channels}, the video encoder "
                f"{self.in_channels}; set them alike to share the CNN"
            )
        if image_encoder.proj.in_features != self.proj.in_features:
            raise ValueError(
                f"image CNN gives {image_encoder.proj.in_features} channels, the video encoder "
                f"expects {self.proj.in_features}; give both the same arch and width"
            )
        self.trunk = image_encoder.trunk

    def forward(self, batch: dict[str, Any]) -> FeatureSequence:
        frames, frame_mask = batch["frames"], batch["mask"]  # (b, t, c, h, w), (b, t)
        b, t, c, h, w = frames.shape
        if c != self.in_channels:
            raise ValueError(
                f"VideoCNNEncoder(in_channels={self.in_channels}) got {c}-channel frames; "
                "set the data's channels and the encoder's in_channels alike"
            )
        if t > self.max_frames:
            raise ValueError(
                f"VideoCNNEncoder(max_frames={self.max_frames}) got {t} frames per sample; "
                "raise max_frames or lower the data's frame limit"
            )
        frame_mask = frame_mask.bool()
        valid = frames[frame_mask]  # (n, c, h, w)
        x = valid.float().div(127.5).sub(1.0)  # uint8 -> [-1, 1], as ImageCNNEncoder
        x = self.trunk(x).mean(dim=(2, 3)) if len(x) else x.new_zeros(0, self.proj.in_features)
        feats = self.proj(x)  # (n, d)
        out = feats.new_zeros(b, t, self.out_dim).masked_scatter(frame_mask[..., None], feats)
        index = torch.arange(t, device=frames.device)
        out = out + self.positions(index)  # (b, t, d) + (t, d)
        return FeatureSequence(out, frame_mask)
