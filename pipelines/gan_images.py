"""Small image helpers for the GAN: tensors to uint8, contact sheets, PNG files.

Shape legend: r = rows (conditions), n = samples per row, c = channels, h/w = pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor


def to_uint8(images: Tensor) -> Tensor:
    """Generator output in ``[-1, 1]`` to uint8 pixels (same shape, on the CPU)."""
    return images.detach().float().cpu().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def contact_sheet(
    images: Tensor, labels: Sequence[str] | None = None, cell: int = 48, margin: int = 2
) -> np.ndarray:
    """One picture of ``r`` rows of ``n`` images, each row optionally named on its left.

    Args:
        images: ``(r, n, c, h, w)`` uint8.
        labels: One caption per row (drawn in a left margin), or ``None``.
        cell: Side of each image in the sheet (nearest-neighbour upscale, never smaller).
        margin: Pixels between cells.

    Returns:
        ``(H, W, c)`` uint8 array, ready for :func:`write_png`.
    """
    r, n, c, h, w = images.shape
    scale = max(1, cell // max(h, w))
    ch, cw = h * scale, w * scale
    label_w = 0 if labels is None else 8 * max((len(s) for s in labels), default=0) + 8
    sheet = np.full(
        (r * (ch + margin) + margin, label_w + n * (cw + margin) + margin, c), 255, np.uint8
    )
    pix = images.numpy().transpose(0, 1, 3, 4, 2)  # (r, n, h, w, c)
    for i in range(r):
        y = margin + i * (ch + margin)
        for j in range(n):
            x = label_w + margin + j * (cw + margin)
            big = np.kron(pix[i, j], np.ones((scale, scale, 1), np.uint8))
            sheet[y : y + ch, x : x + cw] = big
        if labels is not None:
            canvas = np.ascontiguousarray(sheet[y : y + ch, :label_w])
            cv2.putText(
                canvas, _ascii(labels[i]), (4, ch // 2 + 4), cv2.FONT_HERSHEY_PLAIN, 0.8, 0, 1
            )
            sheet[y : y + ch, :label_w] = canvas
    return sheet


def _ascii(label: str) -> str:
    """``label`` with every character but printable ASCII shown as ``?``: OpenCV's fonts
    draw nothing else, and a lone surrogate (valid in JSON) crashes ``cv2.putText``."""
    return "".join(ch if " " <= ch <= "~" else "?" for ch in label)


def write_png(path: str | Path, image: np.ndarray | Tensor) -> Path:
    """Write an ``(h, w, c)`` (or ``(c, h, w)`` tensor) uint8 image as PNG; folders are made.

    Raises:
        OSError: The file could not be written (the message names it).
    """
    path = Path(path)
    if isinstance(image, Tensor):
        image = image.numpy().transpose(1, 2, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = image[..., ::-1] if image.shape[-1] == 3 else image  # RGB -> OpenCV's BGR
    if not cv2.imwrite(str(path), np.ascontiguousarray(pixels)):
        raise OSError(f"could not write PNG {path}")
    return path
