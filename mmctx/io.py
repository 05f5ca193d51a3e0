"""Read images, audio and text from files into plain arrays and strings, with explicit limits.

Every failure to read a file raises :class:`DecodeError`, whose message is ``"<path>: <reason>"``.
Only regular files are opened (directories, FIFOs and devices are rejected from ``os.stat``), and
sizes are checked against :class:`Limits` from the file header before anything large is decoded.
Bad arguments (not bad files) raise a plain ``ValueError`` naming the parameter.
"""

from __future__ import annotations

import codecs
import os
import stat
import warnings
from dataclasses import dataclass, fields
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf
from PIL import Image, UnidentifiedImageError


@dataclass(frozen=True)
class Limits:
    """Decode limits, all positive; image pixels and audio seconds are checked from headers.

    ``crop_long_audio`` chooses what happens to audio longer than ``max_audio_seconds``:
    rejected with a :class:`DecodeError` (False), or cropped to its first
    ``max_audio_seconds`` (True), reading only those frames from the file.
    """

    max_image_pixels: int = 50_000_000
    max_audio_seconds: float = 600.0
    max_text_chars: int = 1_000_000
    crop_long_audio: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.crop_long_audio, bool):
            raise ValueError(f"Limits.crop_long_audio must be a bool, got {self.crop_long_audio!r}")
        for field in fields(self)[:3]:
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"Limits.{field.name} must be a positive number, got {value!r}")


DEFAULT_LIMITS = Limits()

_NOT_REGULAR = {
    stat.S_IFDIR: "is a directory",
    stat.S_IFIFO: "is a FIFO (named pipe), not a regular file",
    stat.S_IFCHR: "is a character device, not a regular file",
    stat.S_IFBLK: "is a block device, not a regular file",
    stat.S_IFSOCK: "is a socket, not a regular file",
}


class DecodeError(ValueError):
    """A file could not be decoded: ``str(err) == f"{err.path}: {err.reason}"``.

    ``path`` is the file (or, for inline text, its ``source``); ``reason`` is the readable cause.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[type[DecodeError], tuple[str, str]]:
        return (type(self), (self.path, self.reason))


def _check_regular_file(path: str) -> int:
    """Stat ``path`` without opening it; return its size or raise DecodeError."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise DecodeError(path, "no such file") from None
    except OSError as err:
        raise DecodeError(path, f"cannot stat: {err.strerror or err}") from None
    if not stat.S_ISREG(st.st_mode):
        raise DecodeError(path, _NOT_REGULAR.get(stat.S_IFMT(st.st_mode), "not a regular file"))
    if st.st_size == 0:
        raise DecodeError(path, "empty file")
    return st.st_size


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise DecodeError(path, f"cannot read: {err.strerror or err}") from None


def _check_pixels(path: str, width: int, height: int, limits: Limits) -> None:
    size, cap = f"{width}x{height} = {width * height:,} pixels", limits.max_image_pixels
    if width * height > cap:
        raise DecodeError(path, f"image is {size}, over max_image_pixels={cap:,}")


def _check_header_size(path: str, data: bytes, limits: Limits) -> None:
    """Check the declared pixel count with Pillow, which reads only the header."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(BytesIO(data)) as im:
                width, height = im.size
    except Image.DecompressionBombError:
        cap = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        hint = f"over max_image_pixels={limits.max_image_pixels:,}"
        if limits.max_image_pixels >= cap:
            hint = "raise PIL.Image.MAX_IMAGE_PIXELS as well as max_image_pixels to read it"
        raise DecodeError(path, f"image declares more than {cap:,} pixels, {hint}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return  # Pillow cannot parse this header; OpenCV decides, checked after decoding.
    _check_pixels(path, width, height, limits)


def _to_uint8(path: str, img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:  # round(x / 257) maps 0..65535 onto 0..255
        return ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    raise DecodeError(path, f"unsupported pixel type {img.dtype}")


def read_image(
    path: str | Path, *, channels: int = 3, limits: Limits = DEFAULT_LIMITS
) -> np.ndarray:
    """Decode an image file, choosing the format by content rather than by extension.

    Args:
        path: Image file (any format OpenCV decodes: PNG, JPEG, WebP, TIFF, BMP, ...).
        channels: 3 for RGB, 1 for grayscale.
        limits: ``max_image_pixels`` is checked from the header before decoding.

    Returns:
        ``(h, w, channels)`` uint8 array, RGB order when ``channels == 3``; alpha is dropped
        (not composited) and 16-bit images are scaled to 8 bits.

    Raises:
        DecodeError: Missing, not a regular file, empty, undecodable or too large.
        ValueError: ``channels`` is not 1 or 3.
    """
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    path = os.fspath(path)
    _check_regular_file(path)
    data = _read_bytes(path)
    _check_header_size(path, data, limits)
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        img = None
    if img is None or img.size == 0:
        raise DecodeError(path, "not a decodable image")
    _check_pixels(path, img.shape[1], img.shape[0], limits)
    img = _to_uint8(path, img if img.ndim == 3 else img[:, :, None])
    if img.shape[2] in (2, 4):
        img = img[:, :, :-1]
    if img.shape[2] == 1:
        return np.ascontiguousarray(img) if channels == 1 else np.repeat(img, 3, axis=2)
    if channels == 1:
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[:, :, None]
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_audio(
    path: str | Path, *, sample_rate: int | None = None, limits: Limits = DEFAULT_LIMITS
) -> np.ndarray:
    """Decode an audio file with libsndfile (WAV, FLAC, OGG/Vorbis, ...) into mono samples.

    Args:
        path: Audio file.
        sample_rate: Resample to this rate (Hz) when given and different from the file's.
        limits: ``max_audio_seconds`` is checked from the header before reading samples;
            longer audio is rejected, or with ``crop_long_audio`` read only up to the limit.

    Returns:
        ``(s,)`` float32 array in ``[-1, 1]``: channels averaged, then resampled if asked.

    Raises:
        DecodeError: Missing, not a regular file, empty, undecodable, no frames, too long.
        ValueError: ``sample_rate`` is not a positive int.
    """
    if sample_rate is not None and (type(sample_rate) is not int or sample_rate <= 0):
        raise ValueError(f"sample_rate must be a positive int or None, got {sample_rate!r}")
    path = os.fspath(path)
    _check_regular_file(path)
    try:  # libsndfile errors are RuntimeErrors; DecodeError (a ValueError) passes through.
        info = sf.info(path)  # header only: reject long audio before reading any samples
        seconds = info.frames / max(info.samplerate, 1)
        frames = -1  # all
        if seconds > limits.max_audio_seconds:
            if not limits.crop_long_audio:
                limit = f"max_audio_seconds={limits.max_audio_seconds:g}"
                raise DecodeError(path, f"audio is {seconds:.1f} s, over {limit}")
            frames = int(limits.max_audio_seconds * info.samplerate)
        data, rate = sf.read(path, frames=frames, dtype="float32", always_2d=True)
    except (RuntimeError, TypeError) as err:
        detail = (getattr(err, "error_string", None) or str(err)).strip()
        raise DecodeError(path, f"not a decodable audio file ({detail})") from None
    if data.shape[0] == 0:
        raise DecodeError(path, "no audio frames")
    mono = data.mean(axis=1, dtype=np.float32)
    if sample_rate is not None and sample_rate != rate:
        import torch
        import torchaudio.functional as AF

        mono = AF.resample(torch.from_numpy(mono), rate, sample_rate).numpy()
    return np.clip(mono, -1.0, 1.0).astype(np.float32, copy=False)


def check_text(text: str, *, source: str, limits: Limits = DEFAULT_LIMITS) -> str:
    """Validate inline text, e.g. a field of a manifest line.

    Args:
        text: The value to check.
        source: Where it came from (e.g. ``"manifest.jsonl line 3"``), used as the error's path.
        limits: ``max_text_chars`` applies.

    Returns:
        ``text`` unchanged; DecodeError if it is not a str or is too long.
    """
    if not isinstance(text, str):
        raise DecodeError(source, f"expected text (str), got {type(text).__name__}")
    if len(text) > (cap := limits.max_text_chars):
        raise DecodeError(source, f"text has {len(text):,} characters, over max_text_chars={cap:,}")
    return text


def read_text(path: str | Path, *, limits: Limits = DEFAULT_LIMITS) -> str:
    """Read a UTF-8 text file strictly (errors give the byte offset); a leading BOM is removed.

    Args:
        path: Text file.
        limits: ``max_text_chars``; files over 4 bytes per allowed character are not read.

    Returns:
        The decoded text.

    Raises:
        DecodeError: Missing, not a regular file, empty, too long, or invalid UTF-8.
    """
    path = os.fspath(path)
    size = _check_regular_file(path)
    if size > 4 * (cap := limits.max_text_chars) + len(codecs.BOM_UTF8):
        over = f"over max_text_chars={cap:,} (UTF-8 uses at most 4 bytes per character)"
        raise DecodeError(path, f"text file is {size:,} bytes, so {over}")
    data = _read_bytes(path)
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        at = start + err.start
        reason = f"invalid UTF-8 at byte {at} (0x{data[at]:02x}): {err.reason}"
        raise DecodeError(path, reason) from None
    return check_text(text, source=path, limits=limits)
