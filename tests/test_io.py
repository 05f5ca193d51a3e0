"""Tests for mmctx.io: every file is generated in tmp_path by the test itself."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf

from mmctx.io import (
    DEFAULT_LIMITS,
    DecodeError,
    Limits,
    check_text,
    read_audio,
    read_image,
    read_text,
)
from tests.helpers import png_header_only

BOM = b"\xef\xbb\xbf"


def _write_wav(path: Path, samples: np.ndarray, rate: int = 8000, subtype: str = "PCM_16") -> Path:
    sf.write(str(path), samples, rate, subtype=subtype, format="WAV")
    return path


# ---------------------------------------------------------------- images


def test_png_colour_round_trip_is_rgb(tmp_path):
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 2] = 255  # pure red in OpenCV's BGR order
    bgr[0, 0] = (10, 20, 30)
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    img = read_image(tmp_path / "red.png")
    assert img.shape == (4, 5, 3) and img.dtype == np.uint8
    assert (img[1:, :] == (255, 0, 0)).all()
    assert tuple(img[0, 0]) == (30, 20, 10)


def test_png_gray_round_trip(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    one = read_image(tmp_path / "g.png", channels=1)
    assert one.shape == (3, 4, 1) and one.dtype == np.uint8
    np.testing.assert_array_equal(one[..., 0], gray)
    three = read_image(str(tmp_path / "g.png"))
    assert three.shape == (3, 4, 3)
    np.testing.assert_array_equal(three, np.repeat(gray[..., None], 3, axis=2))


def test_colour_to_gray(tmp_path):
    cv2.imwrite(str(tmp_path / "w.png"), np.full((2, 2, 3), 255, np.uint8))
    img = read_image(tmp_path / "w.png", channels=1)
    assert img.shape == (2, 2, 1) and (img == 255).all()


def test_bgra_drops_alpha(tmp_path):
    bgra = np.zeros((2, 3, 4), np.uint8)
    bgra[..., 0] = 200  # blue
    bgra[..., 3] = 7  # nearly transparent: alpha is dropped, not composited
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    img = read_image(tmp_path / "a.png")
    assert img.shape == (2, 3, 3)
    assert (img == (0, 0, 200)).all()


def test_16bit_scaled_to_uint8(tmp_path):
    deep = np.array([[0, 257 * 100], [65535, 257 * 3]], np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    img = read_image(tmp_path / "d.png", channels=1)
    assert img.dtype == np.uint8
    np.testing.assert_array_equal(img[..., 0], [[0, 100], [255, 3]])


def test_jpeg_with_png_extension_decodes_by_content(tmp_path):
    bgr = np.zeros((16, 16, 3), np.uint8)
    bgr[..., 2] = 255
    ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    (tmp_path / "liar.png").write_bytes(jpeg.tobytes())
    img = read_image(tmp_path / "liar.png")
    assert img.shape == (16, 16, 3)
    assert img[..., 0].min() > 240 and img[..., 1:].max() < 15


def test_garbage_image(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"definitely not pixels " * 20)
    with pytest.raises(DecodeError, match=r"junk\.png: not a decodable image"):
        read_image(tmp_path / "junk.png")


def test_image_over_pixel_limit_small_real_image(tmp_path):
    cv2.imwrite(str(tmp_path / "ten.png"), np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(
        DecodeError, match=r"ten\.png: image is 10x10 = 100 pixels, over max_image_pixels=99$"
    ):
        read_image(tmp_path / "ten.png", limits=Limits(max_image_pixels=99))
    assert read_image(tmp_path / "ten.png", limits=Limits(max_image_pixels=100)).shape == (
        10,
        10,
        3,
    )


def test_image_header_checked_before_decoding(tmp_path):
    # 8000x8000 declared in ~70 bytes; the truncated IDAT would fail to decode, so getting the
    # limit message proves the size was rejected from the header alone.
    path = png_header_only(tmp_path / "big.png", 8000, 8000)
    assert path.stat().st_size < 200
    with pytest.raises(
        DecodeError,
        match=r"big\.png: image is 8000x8000 = 64,000,000 pixels, over max_image_pixels=50,000,000",
    ):
        read_image(path)


def test_image_bomb_past_pillow_cap(tmp_path):
    path = png_header_only(tmp_path / "bomb.png", 20000, 20000)
    with pytest.raises(
        DecodeError,
        match=r"bomb\.png: image declares more than .* over max_image_pixels=50,000,000",
    ):
        read_image(path)


def test_image_bad_channels(tmp_path):
    with pytest.raises(ValueError, match="channels must be 1 or 3, got 4"):
        read_image(tmp_path / "x.png", channels=4)


# ---------------------------------------------------------------- audio


def test_wav_16bit_round_trip(tmp_path):
    samples = np.array([0.0, 0.5, -0.25, -1.0, 0.125] * 100, np.float32)
    path = _write_wav(tmp_path / "a.wav", samples)
    out = read_audio(path)
    assert out.dtype == np.float32 and out.shape == (500,)
    np.testing.assert_array_equal(out, samples)


def test_stereo_averaged_to_mono(tmp_path):
    stereo = np.stack([np.full(800, 0.5), np.full(800, -0.25)], axis=1)
    out = read_audio(_write_wav(tmp_path / "s.wav", stereo))
    assert out.shape == (800,) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.125)


def test_resample_doubles_length(tmp_path):
    t = np.arange(8000) / 8000
    path = _write_wav(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 440 * t))
    out = read_audio(path, sample_rate=16000)
    assert out.dtype == np.float32
    assert abs(out.shape[0] - 16000) <= 1
    assert read_audio(path, sample_rate=8000).shape == (8000,)  # same rate: untouched


def test_float_wav_clipped_to_unit_range(tmp_path):
    path = _write_wav(tmp_path / "loud.wav", np.array([1.5, -2.0, 0.25]), subtype="FLOAT")
    np.testing.assert_array_equal(read_audio(path), np.array([1.0, -1.0, 0.25], np.float32))


def test_audio_over_duration_limit(tmp_path):
    path = _write_wav(tmp_path / "long.wav", np.zeros(16000))
    with pytest.raises(DecodeError, match=r"long\.wav: audio is 2\.0 s, over max_audio_seconds=1$"):
        read_audio(path, limits=Limits(max_audio_seconds=1.0))


def test_long_audio_cropped_when_asked(tmp_path):
    path = _write_wav(tmp_path / "long.wav", np.linspace(-0.5, 0.5, 16000))  # 2 s at 8 kHz
    cropped = read_audio(path, limits=Limits(max_audio_seconds=0.5, crop_long_audio=True))
    np.testing.assert_allclose(cropped, np.linspace(-0.5, 0.5, 16000)[:4000], atol=1e-4)
    with pytest.raises(ValueError, match="crop_long_audio must be a bool"):
        Limits(crop_long_audio=1)


def test_audio_without_frames(tmp_path):
    path = _write_wav(tmp_path / "silent.wav", np.zeros(0))
    with pytest.raises(DecodeError, match=r"silent\.wav: no audio frames"):
        read_audio(path)


def test_garbage_audio(tmp_path):
    (tmp_path / "junk.wav").write_bytes(b"RIFF? no, just noise " * 20)
    with pytest.raises(DecodeError, match=r"junk\.wav: not a decodable audio file"):
        read_audio(tmp_path / "junk.wav")


@pytest.mark.parametrize("rate", [0, -8000, 16000.0, True])
def test_audio_bad_sample_rate(tmp_path, rate):
    with pytest.raises(ValueError, match="sample_rate must be a positive int"):
        read_audio(tmp_path / "x.wav", sample_rate=rate)


# ---------------------------------------------------------------- text


def test_text_round_trip_strips_bom(tmp_path):
    (tmp_path / "t.txt").write_bytes(BOM + "héllo\nwörld".encode())
    assert read_text(tmp_path / "t.txt") == "héllo\nwörld"


def test_invalid_utf8_names_byte_offset(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"hello \xff world")
    with pytest.raises(DecodeError, match=r"bad\.txt: invalid UTF-8 at byte 6 \(0xff\)"):
        read_text(tmp_path / "bad.txt")


def test_invalid_utf8_offset_counts_the_bom(tmp_path):
    (tmp_path / "bom.txt").write_bytes(BOM + b"ab\xc3(")
    with pytest.raises(DecodeError, match=r"bom\.txt: invalid UTF-8 at byte 5 \(0xc3\)"):
        read_text(tmp_path / "bom.txt")


def test_text_over_char_limit(tmp_path):
    (tmp_path / "long.txt").write_text("ééé", encoding="utf-8")  # 6 bytes, 3 characters
    with pytest.raises(
        DecodeError, match=r"long\.txt: text has 3 characters, over max_text_chars=2$"
    ):
        read_text(tmp_path / "long.txt", limits=Limits(max_text_chars=2))
    assert read_text(tmp_path / "long.txt", limits=Limits(max_text_chars=3)) == "ééé"


def test_text_too_many_bytes_rejected_before_reading(tmp_path):
    (tmp_path / "huge.txt").write_text("x" * 12)
    with pytest.raises(
        DecodeError, match=r"huge\.txt: text file is 12 bytes, so over max_text_chars=2"
    ):
        read_text(tmp_path / "huge.txt", limits=Limits(max_text_chars=2))


def test_check_text():
    assert check_text("fine", source="m.jsonl line 1") == "fine"
    with pytest.raises(
        DecodeError, match=r"^manifest\.jsonl line 3: expected text \(str\), got bytes$"
    ):
        check_text(b"raw", source="manifest.jsonl line 3")  # type: ignore[arg-type]
    with pytest.raises(
        DecodeError, match=r"^m line 2: text has 5 characters, over max_text_chars=4$"
    ):
        check_text("abcde", source="m line 2", limits=Limits(max_text_chars=4))


# ---------------------------------------------------------------- failures common to all readers

READERS = [read_image, read_audio, read_text]


@pytest.mark.parametrize("reader", READERS)
def test_missing_file(tmp_path, reader):
    with pytest.raises(DecodeError, match=r"nope\.bin: no such file$"):
        reader(tmp_path / "nope.bin")


@pytest.mark.parametrize("reader", READERS)
def test_empty_file(tmp_path, reader):
    (tmp_path / "empty.bin").touch()
    with pytest.raises(DecodeError, match=r"empty\.bin: empty file$"):
        reader(tmp_path / "empty.bin")


@pytest.mark.parametrize("reader", READERS)
def test_directory(tmp_path, reader):
    (tmp_path / "folder").mkdir()
    with pytest.raises(DecodeError, match=r"folder: is a directory$"):
        reader(tmp_path / "folder")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
@pytest.mark.parametrize("reader", READERS)
def test_fifo_rejected_without_opening(tmp_path, reader, no_hang):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(DecodeError, match=r"pipe: is a FIFO \(named pipe\), not a regular file$"):
        reader(tmp_path / "pipe")


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
@pytest.mark.parametrize("reader", READERS)
def test_device_rejected(reader, no_hang):
    with pytest.raises(
        DecodeError, match=r"^/dev/null: is a character device, not a regular file$"
    ):
        reader("/dev/null")


# ---------------------------------------------------------------- error and limits types


def test_decode_error_fields_and_pickle():
    err = DecodeError(Path("a/b.png"), "empty file")
    assert (err.path, err.reason, str(err)) == ("a/b.png", "empty file", "a/b.png: empty file")
    assert isinstance(err, ValueError)
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.path, copy.reason, str(copy)) == (err.path, err.reason, str(err))


def test_limits_validated_and_frozen():
    assert Limits() == DEFAULT_LIMITS
    with pytest.raises(
        ValueError, match="Limits.max_image_pixels must be a positive number, got 0"
    ):
        Limits(max_image_pixels=0)
    with pytest.raises(ValueError, match="max_audio_seconds"):
        Limits(max_audio_seconds=-1.0)
    with pytest.raises(AttributeError):
        DEFAULT_LIMITS.max_text_chars = 5  # type: ignore[misc]


def _smooth_image() -> np.ndarray:
    y, x = np.mgrid[0:64, 0:64]
    return np.stack([x * 4, y * 4, (x + y) * 2], -1).astype(np.uint8)


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_truncated_image_rejected(tmp_path, ext):
    data = cv2.imencode(ext, _smooth_image())[1].tobytes()
    whole, cut = tmp_path / f"whole{ext}", tmp_path / f"cut{ext}"
    whole.write_bytes(data)
    cut.write_bytes(data[: len(data) * 2 // 3])
    assert read_image(whole).shape == (64, 64, 3)
    with pytest.raises(DecodeError, match=r"cut\.(jpg|png): truncated (JPEG|PNG)"):
        read_image(cut)


def test_jpeg_with_bytes_after_end_marker_still_reads(tmp_path):
    data = cv2.imencode(".jpg", _smooth_image())[1].tobytes()
    path = tmp_path / "trailer.jpg"
    path.write_bytes(data + b"camera trailer")
    assert read_image(path).shape == (64, 64, 3)


def test_truncated_wav_rejected_not_shortened(tmp_path):
    path = _write_wav(tmp_path / "a.wav", 0.1 * np.ones(8000))
    data = path.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 2])
    assert read_audio(path).shape == (8000,)
    with pytest.raises(DecodeError, match=r"cut\.wav: truncated WAV: the header declares 16,000"):
        read_audio(cut)
