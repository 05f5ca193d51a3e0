"""Read images, audio and text from files into plain arrays and strings, with explicit limits.

Every failure to read a file raises :class:`DecodeError`, whose message is ``"<path>: <reason>"``.
Only regular files are opened (directories, FIFOs and devices are rejected from ``os.stat``), and
sizes are checked against :class:`Limits` from the file header before anything large is decoded.
Bad arguments (not bad files) raise a plain ``ValueError`` naming the parameter.
Non-finite data never leaves this module: audio (and floating-point images) holding NaN or
infinity are rejected right after decoding, and text must be encodable as UTF-8.
"""

from __future__ import annotations

import codecs
import math
import os
import re
import stat
import warnings
from dataclasses import dataclass, fields
from fractions import Fraction
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

_SURROGATE = re.compile("[\ud800-\udfff]")  # not encodable as UTF-8 (lone surrogates)

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
        os.fsencode(path)
    except UnicodeEncodeError as err:  # e.g. a "\\ud800" escape in a manifest's path
        bad = f"U+{ord(path[err.start]):04X} at character {err.start}"
        raise DecodeError(path, f"the file name holds a lone surrogate ({bad})") from None
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


def _check_complete(path: str, data: bytes) -> None:
    """Reject JPEG and PNG files cut short: some decoders fill the missing rows with grey
    and only warn on stderr. A JPEG must end its last scan with an end-of-image marker, a
    PNG must carry its IEND chunk."""
    if data.startswith(b"\xff\xd8\xff") and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        raise DecodeError(path, "truncated JPEG (the image data stops before its end marker)")
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data.rfind(b"IEND") < 0:
        raise DecodeError(path, "truncated PNG (no IEND chunk)")


def check_finite(
    path: str | os.PathLike[str], array: np.ndarray, what: str, unit: str = "values"
) -> np.ndarray:
    """Raise DecodeError if a floating-point ``array`` holds NaN or infinity.

    Args:
        path: The file the array was decoded from (the error's path).
        array: Decoded data; integer arrays are always finite and pass unchecked.
        what: What the array is, for the message (``"audio"``).
        unit: What one element is (``"samples"``).

    Returns:
        ``array`` unchanged, e.g. ``"x.wav: audio holds 3 non-finite samples (NaN/inf)"``.
    """
    if np.issubdtype(array.dtype, np.inexact):
        bad = array.size - int(np.count_nonzero(np.isfinite(array)))
        if bad:
            raise DecodeError(path, f"{what} holds {bad:,} non-finite {unit} (NaN/inf)")
    return array


def _to_uint8(path: str, img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    check_finite(path, img, "image", "pixel values")  # a float TIFF/EXR may hold NaN
    if img.dtype == np.uint16:  # round(x / 257) maps 0..65535 onto 0..255
        # in one pass to uint8: no wider temporaries (a 7000x7000 RGBA PNG is 392 MB)
        return cv2.convertScaleAbs(img, alpha=1 / 257).reshape(img.shape)
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
    _check_complete(path, data)
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


def _check_wav_complete(path: str, size: int) -> None:
    """Reject a RIFF/WAVE file shorter than its data chunk declares (libsndfile would
    silently return only the frames present)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as err:
        raise DecodeError(path, f"cannot read: {err.strerror or err}") from None
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    pos = 12
    while pos + 8 <= len(head):
        chunk, length = head[pos : pos + 4], int.from_bytes(head[pos + 4 : pos + 8], "little")
        if chunk == b"data":
            if length not in (0, 0xFFFFFFFF) and pos + 8 + length > size:  # 0/-1: streamed
                have = size - pos - 8
                raise DecodeError(
                    path,
                    f"truncated WAV: the header declares {length:,} bytes of audio, "
                    f"the file holds {have:,}",
                )
            return
        pos += 8 + length + (length & 1)


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
        ``(s,)`` float32 array in ``[-1, 1]``, finite: channels averaged, then resampled if
        asked.

    Raises:
        DecodeError: Missing, not a regular file, empty, undecodable, no frames, too long,
            or samples that are NaN or infinite (floating-point files can hold them).
        ValueError: ``sample_rate`` is not a positive int.
    """
    if sample_rate is not None and (type(sample_rate) is not int or sample_rate <= 0):
        raise ValueError(f"sample_rate must be a positive int or None, got {sample_rate!r}")
    path = os.fspath(path)
    _check_wav_complete(path, _check_regular_file(path))
    # Bytes on POSIX: soundfile would encode a str strictly, failing on names that are not UTF-8.
    sf_path = path if os.name == "nt" else os.fsencode(path)
    try:  # libsndfile errors are RuntimeErrors; DecodeError (a ValueError) passes through.
        info = sf.info(sf_path)  # header only: reject long audio before reading any samples
        seconds = info.frames / max(info.samplerate, 1)
        frames = -1  # all
        if seconds > limits.max_audio_seconds:
            if not limits.crop_long_audio:
                limit = f"max_audio_seconds={limits.max_audio_seconds:g}"
                raise DecodeError(path, f"audio is {seconds:.1f} s, over {limit}")
            frames = int(limits.max_audio_seconds * info.samplerate)
        rate, parts, bad = info.samplerate, [], 0
        # Mixed down block by block: memory holds the mono signal, never every channel (a
        # small FLAC of 8-channel silence would otherwise decode to gigabytes).
        for block in sf.blocks(
            sf_path, blocksize=AUDIO_BLOCK_FRAMES, frames=frames, dtype="float32", always_2d=True
        ):
            bad += block.size - int(np.count_nonzero(np.isfinite(block)))  # before any mixing
            # The mean in float64: two channels near float32's maximum would overflow to inf.
            parts.append(block.mean(axis=1, dtype=np.float64).astype(np.float32))
    except (RuntimeError, TypeError) as err:
        detail = (getattr(err, "error_string", None) or str(err)).strip()
        raise DecodeError(path, f"not a decodable audio file ({detail})") from None
    if bad:
        raise DecodeError(path, f"audio holds {bad:,} non-finite samples (NaN/inf)")
    mono = np.concatenate(parts) if parts else np.empty(0, np.float32)
    if mono.shape[0] == 0:
        raise DecodeError(path, "no audio frames")
    if sample_rate is not None and sample_rate != rate:
        mono = _resample(mono, rate, sample_rate)
    mono = np.clip(mono, -1.0, 1.0, out=mono)
    return check_finite(path, mono.astype(np.float32, copy=False), "resampled audio", "samples")


AUDIO_BLOCK_FRAMES = 2**16  # frames decoded at a time (all channels), then mixed to mono

# Most elements of the sinc kernel a resampling may build (torchaudio's kernel is about
# (target / g) x (rate / g) for g = gcd(rate, target): 44,101 Hz -> 8 kHz would need 6 GB).
MAX_RESAMPLE_KERNEL = 2**22


def _resample(mono: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``mono`` from ``rate`` to ``target`` Hz, in bounded memory whatever the header says.

    Rates whose exact ratio needs a kernel over :data:`MAX_RESAMPLE_KERNEL` elements (a
    prime rate such as 44,101 Hz) use the nearest ratio that fits; the output's rate is then
    off by far less than one part in a million.
    """
    import torch
    import torchaudio.functional as AF

    g = math.gcd(rate, target)
    orig, new = rate // g, target // g
    if orig * new > MAX_RESAMPLE_KERNEL:
        ratio = Fraction(rate, target)
        approx = ratio.limit_denominator(max(1, math.isqrt(int(MAX_RESAMPLE_KERNEL / ratio))))
        orig, new = max(approx.numerator, 1), approx.denominator
    return AF.resample(torch.from_numpy(mono), orig, new).numpy()


def check_text(text: str, *, source: str, limits: Limits = DEFAULT_LIMITS) -> str:
    """Validate inline text, e.g. a field of a manifest line or a command-line argument.

    Text must be encodable as UTF-8: a lone surrogate (a legal JSON escape such as
    ``"\\ud800"``, or a byte that was not UTF-8 in a command-line argument, which Python
    keeps as ``\\udcxx``) is rejected here rather than failing later in a tokenizer.

    Args:
        text: The value to check.
        source: Where it came from (e.g. ``"manifest.jsonl line 3"``), used as the error's path.
        limits: ``max_text_chars`` applies.

    Returns:
        ``text`` unchanged.

    Raises:
        DecodeError: Not a str, too long, or holding a lone surrogate (named with its
            character offset).
    """
    if not isinstance(text, str):
        raise DecodeError(source, f"expected text (str), got {type(text).__name__}")
    if len(text) > (cap := limits.max_text_chars):
        raise DecodeError(source, f"text has {len(text):,} characters, over max_text_chars={cap:,}")
    if (bad := _SURROGATE.search(text)) is not None:
        code = ord(bad.group())
        what = (
            f"an undecodable byte 0x{code - 0xDC00:02x}"
            if 0xDC80 <= code <= 0xDCFF
            else f"a lone surrogate U+{code:04X}"
        )
        raise DecodeError(
            source,
            f"text is not valid Unicode: {what} at character {bad.start()} "
            "(it cannot be encoded as UTF-8)",
        )
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


def _open_video(path: str, limits: Limits) -> cv2.VideoCapture:
    """Open ``path`` with FFmpeg (by content, never as an image pattern or device) and check
    the declared frame size against ``limits`` before any frame is read."""
    backend = cv2.CAP_FFMPEG if cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG) else cv2.CAP_ANY
    if _SURROGATE.search(path):  # OpenCV crashes the process on such a str (it is not UTF-8)
        reason = "the file name is not valid UTF-8, which OpenCV cannot open; rename the file"
        raise DecodeError(path, reason)
    try:  # an absolute path keeps FFmpeg from reading a "proto:" prefix as a protocol
        cap = cv2.VideoCapture(os.path.abspath(path), backend)
    except cv2.error:
        cap = None
    if cap is None or not cap.isOpened():
        raise DecodeError(path, "not a decodable video (FFmpeg cannot open it)")
    width, height = (int(cap.get(p)) for p in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT))
    try:
        _check_video_pixels(path, width, height, limits)
    except DecodeError:
        cap.release()
        raise
    return cap


def _check_video_complete(path: str, size: int) -> None:
    """Reject an AVI (RIFF) or MP4/MOV (ISO BMFF) file shorter than its top-level chunks
    declare: FFmpeg would return the frames before the cut without complaint. Only the
    chunk headers are read; other containers are left to FFmpeg."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
                kind, order, fixed = "AVI", "little", False
            elif head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide"):
                kind, order, fixed = "MP4/MOV", "big", True
            else:
                return
            pos = 0
            for _ in range(100_000):  # top-level chunks only: a handful in real files
                f.seek(pos)
                header = f.read(16)
                if len(header) < 8:
                    break
                if fixed:  # ISO BMFF: (size, type), size 1: 64-bit size follows, 0: to the end
                    length = int.from_bytes(header[:4], order)
                    length = int.from_bytes(header[8:16], order) if length == 1 else length
                    if length == 0 or length < 8:
                        return
                else:  # RIFF: (id, size), data padded to an even length
                    length = 8 + int.from_bytes(header[4:8], order)
                    length += length & 1
                pos += length
                if pos >= size:
                    break
    except OSError as err:
        raise DecodeError(path, f"cannot read: {err.strerror or err}") from None
    if pos > size + (0 if fixed else 1):  # a missing last pad byte is tolerated
        raise DecodeError(
            path, f"truncated {kind}: its chunks declare {pos:,} bytes, the file holds {size:,}"
        )


def _check_video_pixels(path: str, width: int, height: int, limits: Limits) -> None:
    try:
        _check_pixels(path, width, height, limits)
    except DecodeError as err:
        raise DecodeError(path, err.reason.replace("image is", "video frames are", 1)) from None


def _frame_time_ms(cap: cv2.VideoCapture, index: int, previous: float | None) -> float | None:
    """The grabbed frame's time in ms from its timestamp, else from the stream's frame rate;
    None when neither is usable (then every frame is taken)."""
    ms = cap.get(cv2.CAP_PROP_POS_MSEC)
    if np.isfinite(ms) and ms >= 0 and (previous is None or ms > previous):
        return float(ms)
    rate = cap.get(cv2.CAP_PROP_FPS)
    if np.isfinite(rate) and 0 < rate <= 1000:
        return 1000.0 * index / rate
    return None


def read_video(
    path: str | Path,
    *,
    fps: float = 4.0,
    max_frames: int = 16,
    channels: int = 3,
    limits: Limits = DEFAULT_LIMITS,
) -> np.ndarray:
    """Decode a video file (any container and codec FFmpeg reads) into frames sampled at ``fps``.

    Frames are chosen by their decoded timestamps: for each instant ``0, 1/fps, 2/fps, ...`` the
    first frame at or after it is kept, and no frame is kept twice (a video slower than ``fps``
    gives each of its frames). Without timestamps the stream's frame rate is used, and without
    that every frame is kept. The reported frame count is never trusted: a still image (PNG,
    JPEG, ...) opens as a one-frame video and is returned as one frame. Longer videos are cropped
    to their first ``max_frames`` sampled frames; decoding stops there, the rest is never read.
    AVI and MP4/MOV files cut short are rejected from their chunk sizes; in other containers
    a cut file gives the frames decoded before the cut.

    Args:
        path: Video file; the format is found from its content, not its extension.
        fps: Sampling rate in frames per second (> 0).
        max_frames: Most frames returned (>= 1).
        channels: 3 for RGB, 1 for grayscale.
        limits: ``max_image_pixels`` applies to each frame, checked from the declared
            width x height before any frame is read.

    Returns:
        ``(t, h, w, channels)`` uint8 array, ``1 <= t <= max_frames``.

    Raises:
        DecodeError: Missing, not a regular file, empty, truncated, undecodable, no decodable
            frame, or frames over ``max_image_pixels``.
        ValueError: ``fps``, ``max_frames`` or ``channels`` is out of range.
    """
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not 0 < fps < float("inf"):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if type(max_frames) is not int or max_frames < 1:
        raise ValueError(f"max_frames must be an int >= 1, got {max_frames!r}")
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    path = os.fspath(path)
    _check_video_complete(path, _check_regular_file(path))
    cap = _open_video(path, limits)
    step, next_ms, previous, grabbed = 1000.0 / fps, 0.0, None, 0
    frames: list[np.ndarray] = []
    try:
        while len(frames) < max_frames and cap.grab():
            ms, grabbed = _frame_time_ms(cap, grabbed, previous), grabbed + 1
            if ms is not None:
                previous = ms
                if ms < next_ms - 1.0:  # 1 ms tolerance for rounded timestamps
                    continue
                next_ms = (np.floor((ms + 1.0) / step) + 1) * step
            ok, frame = cap.retrieve()
            if ok and frame is not None and frame.size:
                if not frames:  # the decoded size, in case none was declared
                    _check_video_pixels(path, frame.shape[1], frame.shape[0], limits)
                frames.append(frame)
    except cv2.error as err:
        raise DecodeError(path, f"not a decodable video ({err.err or err})") from None
    finally:
        cap.release()
    if not frames:
        raise DecodeError(path, "no decodable video frames")
    return _video_array(path, frames, channels, limits)


def _video_array(path: str, frames: list[np.ndarray], channels: int, limits: Limits) -> np.ndarray:
    """Stack decoded BGR frames into ``(t, h, w, channels)`` uint8, RGB or grey."""
    height, width = frames[0].shape[:2]
    out = np.empty((len(frames), height, width, channels), np.uint8)
    for i, frame in enumerate(frames):
        if frame.shape[:2] != (height, width):
            size = f"{frame.shape[1]}x{frame.shape[0]}"
            raise DecodeError(path, f"frame {i} is {size}, unlike the first ({width}x{height})")
        frame = _to_uint8(path, frame if frame.ndim == 3 else frame[:, :, None])
        if frame.shape[2] == 1:
            out[i] = frame if channels == 1 else np.repeat(frame, 3, axis=2)
        elif channels == 1:
            out[i, :, :, 0] = cv2.cvtColor(frame[:, :, :3], cv2.COLOR_BGR2GRAY)
        else:
            out[i] = cv2.cvtColor(frame[:, :, :3], cv2.COLOR_BGR2RGB)
    return out
