"""A deterministic tri-modal (text, image, audio) dataset of the digits 0-9, written to disk.

Every sample carries one label three ways: a sentence naming the digit, a drawn glyph, and the
digit's DTMF telephone tone. Each modality is independently *informative* with probability
``p = DemoSpec.informative``; otherwise it is absent from the row (half the time) or present but
corrupted (the same style of content, without the digit). So no single modality can do better
than about ``p + (1 - p) / 10`` (0.72 + 0.28 * 0.1 ~ 0.75 by default), while a model that fuses
all three is only stuck when every one fails, reaching up to ``1 - (1 - p) ** 3`` (~0.98). That
gap is what makes it a useful smoke test of multimodal fusion.

Sample ``i`` draws everything from ``np.random.default_rng([seed, i])``; labels (an exact
permutation of ``i % 10``) and the split come from ``np.random.default_rng(seed)``. Files are
generated in a temporary sibling folder and renamed into place, so concurrent callers are safe.

With ``DemoSpec.video_frames > 0`` every row also gets a short video (``"video"``): the glyph
drifting a little from frame to frame, or drifting clutter when the video is not informative
(chance ``informative``, like the others). Its randomness comes from a separate generator,
so the text, image and audio files are the same with or without video.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import soundfile as sf

from mmctx.errors import ConfigError

__all__ = ["DIGIT_WORDS", "DTMF", "DemoSpec", "make_demo_dataset"]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DTMF = {
    1: (697, 1209), 2: (697, 1336), 3: (697, 1477),
    4: (770, 1209), 5: (770, 1336), 6: (770, 1477),
    7: (852, 1209), 8: (852, 1336), 9: (852, 1477),
    0: (941, 1336),
}  # fmt: skip
MODALITIES = ("text", "image", "audio")
SPLITS = ("train", "val", "test")

# Neutral filler words: no digit or number words, and none contains a digit word as a substring.
_VOCAB = (
    "please", "bring", "the", "blue", "boxes", "to", "garden", "red", "green", "small", "large",
    "quiet", "river", "window", "table", "chair", "lamp", "paper", "cup", "coffee", "bread",
    "morning", "evening", "kitchen", "street", "car", "bicycle", "yellow", "bright", "soft",
    "warm", "cold", "old", "near", "under", "over", "behind", "with", "and", "from", "this",
    "that", "my", "your", "we", "they", "see", "find", "carry", "paint", "open", "close",
    "after", "before", "maybe", "today", "city", "forest", "book", "song", "cat", "dog", "bird",
)  # fmt: skip
_FONTS = tuple(
    getattr(cv2, f"FONT_HERSHEY_{n}") for n in ("SIMPLEX", "PLAIN", "DUPLEX", "COMPLEX", "TRIPLEX")
)
_SUPERSAMPLE = 4  # glyphs are drawn at 4x and reduced with INTER_AREA
_FADE_SECONDS = 0.005
_MAX_TONE_SECONDS = 0.35
VIDEO_FPS = 4.0  # frame rate of the demo videos
_VIDEO_FOURCC = "MJPG"  # Motion-JPEG in AVI: OpenCV writes and reads it, byte-stable
_VIDEO_DRIFT = 1.0  # largest glyph motion, in pixels per frame along each axis
# Options added later: missing from older COMPLETE files, meaning off (0 or None).
_LATER_FIELDS = ("video_frames", "length_range")


def check_spec(spec: Any, **extra: bool) -> None:
    """Raise a ValueError naming the first field of ``spec`` whose value is out of range.

    Checks the fields every generated dataset has (size, seed, split fractions, sample
    rate), then the ``extra`` ones (field name -> whether its value is fine).
    """
    checks = {
        "num_samples": spec.num_samples >= 10,
        "seed": spec.seed >= 0,
        "val_fraction": 0 <= spec.val_fraction < 1,
        "test_fraction": 0 <= spec.test_fraction < 1 and spec.val_fraction + spec.test_fraction < 1,
        "sample_rate": spec.sample_rate >= 4000,  # the highest DTMF tone stays under Nyquist
        **extra,
    }
    for name, ok in checks.items():
        if not ok:
            raise ValueError(
                f"{type(spec).__name__}.{name}={getattr(spec, name)!r} is out of range"
            )


@dataclass(frozen=True)
class DemoSpec:
    """What to generate; the same spec always yields byte-identical files.

    Attributes:
        num_samples: Total number of samples over all splits (>= 10).
        seed: Base seed (>= 0).
        val_fraction: Share of samples in the validation split, in [0, 1).
        test_fraction: Share of samples in the test split, in [0, 1); the two sum to < 1.
        image_size: Side of the square grayscale images in pixels (>= 16).
        sample_rate: Audio sample rate in Hz (>= 4000, so the highest DTMF tone is below Nyquist).
        clip_seconds: Length of each audio clip (>= 0.4, to hold the longest tone).
        informative: Chance that each modality carries the digit in a sample, in [0, 1]. When it
            does not, it is absent from the row half the time and present-but-corrupted otherwise.
        video_frames: Frames of a video added to every row (0: no video, the default). The
            videos are Motion-JPEG AVI files of ``image_size`` (rounded down to even) square
            frames at ``VIDEO_FPS`` frames per second; never absent, corrupted (clutter) when
            not informative.
    """

    num_samples: int = 3000
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    image_size: int = 32
    sample_rate: int = 8000
    clip_seconds: float = 1.0
    informative: float = 0.72
    video_frames: int = 0

    def __post_init__(self) -> None:
        """Raise a ValueError naming the first field whose value is out of range."""
        check_spec(
            self,
            image_size=self.image_size >= 16,
            clip_seconds=self.clip_seconds >= _MAX_TONE_SECONDS + 0.05,
            informative=0 <= self.informative <= 1,
            video_frames=self.video_frames >= 0,
        )


_DEFAULT_SPEC = DemoSpec()


def _make_text(rng: np.random.Generator, digit: int | None) -> str:
    """A 6-14 word sentence of filler words, with the digit's word inserted when given."""
    length = int(rng.integers(6, 15))
    picks = rng.integers(len(_VOCAB), size=length if digit is None else length - 1)
    words = [_VOCAB[j] for j in picks]
    if digit is not None:
        words.insert(int(rng.integers(length)), DIGIT_WORDS[digit])
    return " ".join(words)


def _draw_digit(rng: np.random.Generator, ink: np.ndarray, char: str) -> None:
    """Draw ``char`` into the blank ``ink`` canvas: random font, size, offset and rotation."""
    big = ink.shape[0]
    font = _FONTS[int(rng.integers(len(_FONTS)))]
    thickness = int(rng.integers(max(1, big * 2 // 100), max(2, big * 6 // 100) + 1))
    (w, h), _ = cv2.getTextSize(char, font, 1.0, thickness)
    scale = 0.6 * big / h
    (w, h), _ = cv2.getTextSize(char, font, scale, thickness)
    glyph = np.zeros_like(ink)
    cv2.putText(
        glyph, char, ((big - w) // 2, (big + h) // 2), font, scale, 255, thickness, cv2.LINE_AA
    )
    x, y, bw, bh = cv2.boundingRect(glyph)
    angle = rng.uniform(-20.0, 20.0)
    zoom = rng.uniform(0.5, 0.85) * big / bh  # the upright glyph fills 50-85% of the height
    cos, sin = abs(np.cos(np.radians(angle))), abs(np.sin(np.radians(angle)))
    half_w, half_h = (bw * cos + bh * sin) * zoom / 2, (bw * sin + bh * cos) * zoom / 2
    fit = min(1.0, 0.48 * big / max(half_w, half_h))  # keep the rotated glyph inside
    zoom, half_w, half_h = zoom * fit, half_w * fit, half_h * fit
    room_x, room_y = max(0.0, 0.48 * big - half_w), max(0.0, 0.48 * big - half_h)
    shift = (rng.uniform(-room_x, room_x), rng.uniform(-room_y, room_y))
    matrix = cv2.getRotationMatrix2D((x + bw / 2, y + bh / 2), angle, zoom)
    matrix[:, 2] += (big / 2 - x - bw / 2 + shift[0], big / 2 - y - bh / 2 + shift[1])
    ink[:] = cv2.warpAffine(glyph, matrix, (big, big), flags=cv2.INTER_LINEAR)


def _draw_clutter(rng: np.random.Generator, ink: np.ndarray) -> None:
    """Draw a few random lines and blobs (no digit) into the ``ink`` canvas."""
    big = ink.shape[0]
    for _ in range(int(rng.integers(2, 5))):
        thickness = int(rng.integers(max(1, big * 3 // 100), max(2, big * 6 // 100) + 1))
        a, b = (tuple(int(v) for v in rng.integers(big // 10, big * 9 // 10, size=2)) for _ in "ab")
        if rng.random() < 0.5:
            cv2.line(ink, a, b, 255, thickness, cv2.LINE_AA)
        else:
            axes = tuple(int(v) for v in rng.integers(big // 20, big // 7 + 1, size=2))
            cv2.ellipse(ink, a, axes, rng.uniform(0, 180), 0, 360, 255, -1, cv2.LINE_AA)


def _make_image(rng: np.random.Generator, digit: int | None, size: int) -> np.ndarray:
    """A ``size`` x ``size`` uint8 image of the digit, or of clutter when ``digit`` is None."""
    background = rng.uniform(0, 255)
    low, high = (background + 100, 255) if background < 128 else (0, background - 100)
    foreground, sigma = rng.uniform(low, high), rng.uniform(5, 25)
    ink = np.zeros((size * _SUPERSAMPLE,) * 2, np.uint8)
    if digit is None:
        _draw_clutter(rng, ink)
    else:
        _draw_digit(rng, ink, str(digit))
    cover = cv2.resize(ink, (size, size), interpolation=cv2.INTER_AREA).astype(np.float64) / 255
    pixels = background + (foreground - background) * cover + rng.normal(0, sigma, cover.shape)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _make_audio(
    rng: np.random.Generator, digit: int | None, spec: DemoSpec
) -> tuple[np.ndarray, int, int]:
    """A float32 clip: the digit's DTMF burst in white noise, or noise (maybe a stray tone).

    Returns:
        ``(clip, onset, length)``: the clip, and where the burst starts and how many
        samples it lasts.
    """
    rate = spec.sample_rate
    amplitude, snr_db = rng.uniform(0.2, 0.6), rng.uniform(5, 20)
    duration = rng.uniform(0.15, _MAX_TONE_SECONDS)
    start = int(rng.uniform(0, spec.clip_seconds - duration) * rate)
    if digit is not None:
        freqs: tuple[float, ...] = DTMF[digit]
    else:
        freqs = (rng.uniform(300, 600),) if rng.random() < 0.5 else ()
    # Noise power is set against a nominal DTMF pair so its level never hints at the case.
    sigma = np.sqrt(amplitude**2 / 4 / 10 ** (snr_db / 10))
    clip = rng.normal(0, sigma, int(round(spec.clip_seconds * rate)))
    n = int(duration * rate)
    t = np.arange(n) / rate
    burst = sum((np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) for f in freqs), np.zeros(n))
    fade = min(int(_FADE_SECONDS * rate), n // 2)
    envelope = np.ones(n)
    envelope[:fade], envelope[n - fade :] = np.linspace(0, 1, fade), np.linspace(1, 0, fade)
    clip[start : start + n] += amplitude / max(1, len(freqs)) * burst * envelope
    return (clip / max(1.0, np.abs(clip).max() / 0.99)).astype(np.float32), start, n


def _write_video(rng: np.random.Generator, digit: int | None, spec: DemoSpec, path: Path) -> None:
    """Write ``spec.video_frames`` frames of a glyph (or clutter) drifting at a random speed."""
    size = spec.image_size - spec.image_size % 2  # the codecs need even sides
    still = _make_image(rng, digit, size)
    vx, vy = rng.uniform(-_VIDEO_DRIFT, _VIDEO_DRIFT, size=2)
    fourcc = cv2.VideoWriter_fourcc(*_VIDEO_FOURCC)
    writer = cv2.VideoWriter(str(path), fourcc, VIDEO_FPS, (size, size), True)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {_VIDEO_FOURCC} video to {path}")
    try:
        for k in range(spec.video_frames):
            offset = k - (spec.video_frames - 1) / 2  # centred, so the glyph stays in view
            shift = np.float32([[1, 0, vx * offset], [0, 1, vy * offset]])
            frame = cv2.warpAffine(still, shift, (size, size), borderMode=cv2.BORDER_REPLICATE)
            writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    finally:
        writer.release()


def _wav_bytes(clip: np.ndarray, rate: int) -> bytes:
    """Encode ``clip`` as 16-bit PCM WAV in memory (writing to a path fsyncs every file: slow)."""
    buffer = io.BytesIO()
    sf.write(buffer, clip, rate, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def _make_sample(index: int, label: int, spec: DemoSpec, root: Path) -> tuple[dict, dict]:
    """Write sample ``index``'s files under ``root``; return its manifest row and truth row."""
    rng = np.random.default_rng([spec.seed, index])
    informative = rng.random(3) < spec.informative
    absent = ~informative & (rng.random(3) < 0.5)
    keep = int(rng.integers(3))
    if absent.all():  # every row keeps at least one (corrupted) modality
        absent[keep] = False
    flags = informative.tolist()
    carries = {m: label if f else None for m, f in zip(MODALITIES, flags, strict=True)}
    present = dict(zip(MODALITIES, (~absent).tolist(), strict=True))
    sample_id = f"demo-{index:06d}"
    row: dict = {"id": sample_id, "label": label}
    if present["text"]:
        row["text"] = _make_text(rng, carries["text"])
    if present["image"]:
        row["image"] = f"images/{sample_id}.png"
        cv2.imwrite(str(root / row["image"]), _make_image(rng, carries["image"], spec.image_size))
    if present["audio"]:
        row["audio"] = f"audio/{sample_id}.wav"
        clip, _, _ = _make_audio(rng, carries["audio"], spec)
        (root / row["audio"]).write_bytes(_wav_bytes(clip, spec.sample_rate))
    truth = {"id": sample_id, "informative": dict(zip(MODALITIES, flags, strict=True))}
    if spec.video_frames:
        vrng = np.random.default_rng([spec.seed, index, 1])  # apart: other files stay the same
        informative_video = bool(vrng.random() < spec.informative)
        row["video"] = f"video/{sample_id}.avi"
        _write_video(vrng, label if informative_video else None, spec, root / row["video"])
        truth["informative"]["video"] = informative_video
    return row, truth


def _split_indices(spec: DemoSpec, order: np.ndarray) -> dict[str, np.ndarray]:
    """Cut the shuffled ``order`` into sorted train/val/test index arrays."""
    n_val = int(spec.num_samples * spec.val_fraction + 1e-9)
    n_test = int(spec.num_samples * spec.test_fraction + 1e-9)
    val, test, train = np.split(order, [n_val, n_val + n_test])
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` as JSON Lines."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def _generate(root: Path, spec: DemoSpec, progress: bool) -> None:
    """Write every file of the dataset into the empty folder ``root``, ending with COMPLETE."""
    for folder in ("images", "audio") + (("video",) if spec.video_frames else ()):
        (root / folder).mkdir()
    master = np.random.default_rng(spec.seed)
    labels = master.permutation(np.arange(spec.num_samples) % 10)
    order = master.permutation(spec.num_samples)
    indices = range(spec.num_samples)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc="demo data", unit="sample")
    rows, truths = zip(*(_make_sample(i, int(labels[i]), spec, root) for i in indices), strict=True)
    for name, picked in _split_indices(spec, order).items():
        _write_jsonl(root / f"{name}.jsonl", [rows[i] for i in picked])
    _write_jsonl(root / "truth.jsonl", list(truths))
    (root / "COMPLETE").write_text(json.dumps(asdict(spec), sort_keys=True) + "\n")


def _without_off_fields(record: Any) -> Any:
    """A spec record (and the records nested in it) without the later fields that are off (0
    or None): caches written before those fields existed match the same spec."""
    if not isinstance(record, dict):
        return record
    return {
        k: _without_off_fields(v)
        for k, v in record.items()
        if not (k in _LATER_FIELDS and (v is None or v == 0))
    }


def _holds(out: Path, spec: Any, what: str) -> bool:
    """True if ``out`` holds the dataset of ``spec``, False if it is missing or an empty folder.

    Raises:
        ValueError: ``out`` holds something else (another spec, or unrelated files).
    """
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    wanted = json.loads(json.dumps(asdict(spec)))  # tuples become lists, as in the file
    try:
        found = json.loads((out / "COMPLETE").read_text())
        same = _without_off_fields(found) == _without_off_fields(wanted)
    except (OSError, ValueError):
        same = False
    if not same:  # a ConfigError (a ValueError): the run cannot start, exit status 2
        raise ConfigError(
            f"{out} already exists but does not hold the {what} for {spec}; "
            "delete it or choose another folder"
        )
    return True


def build_once(
    out_dir: str | Path, spec: Any, generate: Callable[[Path], None], what: str
) -> dict[str, Path]:
    """Run ``generate(folder)`` unless ``out_dir`` already holds the dataset of ``spec``.

    Everything is built in a temporary sibling folder that is renamed into place at the end,
    so an interrupted run leaves nothing behind and racing callers all end with the same
    data. ``generate`` must write ``COMPLETE`` holding ``asdict(spec)`` as JSON.

    Returns:
        The manifest path of each split, keyed ``"train"``, ``"val"`` and ``"test"``.

    Raises:
        ValueError: ``out_dir`` exists with a different spec or unrelated content.
    """
    out = Path(out_dir)
    paths = {name: out / f"{name}.jsonl" for name in SPLITS}
    if _holds(out, spec, what):
        return paths
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the dataset should be readable like any folder
    try:
        generate(tmp)
        try:
            os.replace(tmp, out)  # atomic; fails if another caller already filled ``out``
        except OSError:
            if not _holds(out, spec, what):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths


def make_demo_dataset(
    out_dir: str | Path, spec: DemoSpec = _DEFAULT_SPEC, *, progress: bool = False
) -> dict[str, Path]:
    """Generate the demo dataset under ``out_dir`` unless it is already there.

    Writes ``images/``, ``audio/`` (and ``video/`` if asked), ``train.jsonl``, ``val.jsonl``,
    ``test.jsonl``, ``truth.jsonl`` (which modalities carry the digit, for analysis only) and
    ``COMPLETE`` (the spec as JSON).
    Everything is built in a temporary sibling folder that is renamed into place at the end, so
    an interrupted run leaves nothing behind and racing callers all end with the same data.

    Args:
        out_dir: Folder to hold the dataset; created if missing.
        spec: What to generate.
        progress: Show a tqdm progress bar.

    Returns:
        The manifest path of each split, keyed ``"train"``, ``"val"`` and ``"test"``.

    Raises:
        ValueError: ``out_dir`` exists with a different spec or unrelated content.
    """
    return build_once(out_dir, spec, lambda folder: _generate(folder, spec, progress), "demo data")
