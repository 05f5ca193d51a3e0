"""Non-finite data and undecodable text never reach a model; any failure is one sample's."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf

from mmctx.checkpoints import CheckpointError
from mmctx.cli import main
from mmctx.data import ManifestDataset, Preprocess, SampleError
from mmctx.data.manifest import LabelSpace, read_manifest
from mmctx.data.modalities import AudioModality, SequenceModality
from mmctx.data.validate import validate_manifest
from mmctx.errors import EXIT_BUG, ConfigError, one_line, printable, run_command
from mmctx.io import DecodeError, check_text, read_audio, read_image, read_text, read_video
from tests.helpers import write_manifest

PRE = Preprocess(image_size=16, image_channels=3, sample_rate=8000)


def _float_wav(path: Path, bad: dict[int, float], n: int = 800, channels: int = 1) -> Path:
    wave = np.full((n, channels), 0.25, np.float32)
    for index, value in bad.items():
        wave[index, 0] = value
    sf.write(str(path), wave, 8000, subtype="FLOAT", format="WAV")
    return path


# ------------------------------------------------------------------------------ audio
@pytest.mark.parametrize(
    ("bad", "count"),
    [({3: np.nan}, 1), ({0: np.inf}, 1), ({5: -np.inf, 6: np.nan, 799: np.nan}, 3)],
)
def test_float_wav_with_non_finite_samples_is_rejected(tmp_path, bad, count):
    path = _float_wav(tmp_path / "bad.wav", bad)
    with pytest.raises(DecodeError) as info:
        read_audio(path)
    assert info.value.path == str(path)
    assert info.value.reason == f"audio holds {count} non-finite samples (NaN/inf)"
    with pytest.raises(DecodeError, match="non-finite"):  # also before resampling
        read_audio(path, sample_rate=16000)


def test_non_finite_in_one_channel_is_not_averaged_away(tmp_path):
    path = _float_wav(tmp_path / "stereo.wav", {10: np.nan}, channels=2)
    with pytest.raises(DecodeError, match="stereo.wav: audio holds 1 non-finite"):
        read_audio(path)


@pytest.mark.parametrize(
    ("fmt", "subtype"), [("WAV", "DOUBLE"), ("W64", "FLOAT"), ("AIFF", "FLOAT")]
)
def test_other_float_formats_with_non_finite_samples(tmp_path, fmt, subtype):
    """FLAC and other integer formats cannot store NaN; these floating-point ones can."""
    wave = np.full(400, 0.5, np.float64)
    wave[7] = np.nan
    path = tmp_path / f"bad.{fmt.lower()}"
    try:
        sf.write(str(path), wave, 8000, subtype=subtype, format=fmt)
    except (RuntimeError, ValueError, TypeError, AssertionError):
        pytest.skip(f"libsndfile cannot write {fmt}/{subtype}")
    with pytest.raises(DecodeError, match=f"bad.{fmt.lower()}: audio holds 1 non-finite"):
        read_audio(path)


def test_valid_float_wav_still_reads_and_huge_values_do_not_overflow(tmp_path):
    wave = np.full((800, 2), 0.25, np.float32)
    wave[0] = 3e38  # finite; the float32 mean of both channels would be inf
    sf.write(str(tmp_path / "ok.wav"), wave, 8000, subtype="FLOAT")
    out = read_audio(tmp_path / "ok.wav", sample_rate=16000)
    assert out.dtype == np.float32 and np.isfinite(out).all() and out.max() <= 1.0
    assert np.allclose(read_audio(tmp_path / "ok.wav")[1:], 0.25)


# ------------------------------------------------------------------------------ images, video
def test_float_tiff_with_nan_names_the_non_finite_pixels(tmp_path):
    img = np.full((6, 5), 0.5, np.float32)
    img[1, 1] = np.nan
    path = tmp_path / "nan.tiff"
    if not cv2.imwrite(str(path), img):
        pytest.skip("OpenCV cannot write float TIFF")
    with pytest.raises(DecodeError, match="nan.tiff: image holds 1 non-finite pixel values"):
        read_image(path)
    img[1, 1] = 0.5  # a finite float image is still not a supported pixel type
    cv2.imwrite(str(path), img)
    with pytest.raises(DecodeError, match="unsupported pixel type float32"):
        read_image(path)


def test_video_frames_are_uint8(tmp_path):
    path = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 4.0, (16, 12))
    for level in (0, 128):
        writer.write(np.full((12, 16, 3), level, np.uint8))
    writer.release()
    frames = read_video(path)
    assert frames.dtype == np.uint8 and frames.shape[0] == 2  # integers: always finite


# ------------------------------------------------------------------------------ text
@pytest.mark.parametrize(
    ("text", "offset", "what"),
    [
        ("ab\ud800c", 2, "a lone surrogate U+D800"),
        (json.loads('"seven \\udfff"'), 6, "a lone surrogate U+DFFF"),
        (os.fsdecode(b"caf\xe9"), 3, "an undecodable byte 0xe9"),  # argv with latin-1 bytes
    ],
)
def test_check_text_rejects_lone_surrogates_with_the_offset(text, offset, what):
    with pytest.raises(DecodeError) as info:
        check_text(text, source="manifest.jsonl line 4")
    assert info.value.path == "manifest.jsonl line 4"
    assert f"{what} at character {offset}" in info.value.reason
    assert check_text("a pair \U0001f600 is fine", source="x") == "a pair \U0001f600 is fine"


def test_text_file_with_surrogatepass_bytes_is_invalid_utf8(tmp_path):
    path = tmp_path / "s.txt"
    path.write_bytes("ok \ud800".encode("utf-8", "surrogatepass"))
    with pytest.raises(DecodeError, match=r"s.txt: invalid UTF-8 at byte 3 \(0xed\)"):
        read_text(path)


# ------------------------------------------------------------------------------ dataset
class Raising(SequenceModality):
    """A plugin whose loader raises whatever ``kind`` names (or returns ``value``)."""

    name = "raising"

    def __init__(self, kind: str = "ZeroDivisionError") -> None:
        self.kind = kind

    def item_shape(self, pre):
        return (2,)

    def load(self, value, pre):
        if self.kind == "nan":
            return np.array([[0.0, np.nan]], np.float32)
        if self.kind == "surrogate":
            return {"words": ["fine", "bad\udcff"]}
        if self.kind == "RecursionError":
            return self.load(value, pre)
        raise {
            "ZeroDivisionError": ZeroDivisionError("division by zero"),
            "MemoryError": MemoryError(),
        }[self.kind]


def _plugin_dataset(tmp_path, kind, strict=False, labels=("x", "y"), label="x"):
    (tmp_path / "p.bin").write_bytes(b"x")
    rows = [{"id": "s1", "raising": "p.bin", "label": label}]
    plugin = Raising(kind)
    samples, problems = read_manifest(
        write_manifest(tmp_path / "m.jsonl", rows), modalities=[plugin]
    )
    assert problems == []
    return ManifestDataset(samples, LabelSpace(list(labels)), [plugin], PRE, strict=strict)


@pytest.mark.parametrize(
    ("kind", "cause"),
    [
        ("ZeroDivisionError", "raising: ZeroDivisionError: division by zero"),
        ("RecursionError", "raising: RecursionError: maximum recursion depth exceeded"),
        ("MemoryError", "raising: out of memory while loading it (MemoryError)"),
        ("nan", "raising holds 1 non-finite values (NaN/inf)"),
        ("surrogate", "raising.words[1] is not valid Unicode (a lone surrogate at character 3)"),
    ],
)
def test_any_failure_of_a_plugin_is_that_samples_error(tmp_path, kind, cause):
    item = _plugin_dataset(tmp_path, kind)[0]
    assert isinstance(item, SampleError)
    assert str(item).startswith(f"sample 's1' (line 1): {tmp_path / 'p.bin'}: ")
    assert cause in str(item)
    with pytest.raises(SampleError, match="sample 's1' \\(line 1\\)") as info:
        _plugin_dataset(tmp_path, kind, strict=True)[0]
    assert info.value.__cause__ is not None


def test_label_and_augmentation_failures_are_the_samples_error(tmp_path, media_dir):
    rows = [{"id": "a", "audio": "a0.wav", "label": "x"}]
    samples, _ = read_manifest(write_manifest(media_dir / "m.jsonl", rows))

    def broken(inputs, rng):
        raise KeyError("gain")

    def nan_gain(inputs, rng):
        return {"audio": inputs["audio"] * np.float32("nan")}

    ds = ManifestDataset(samples, LabelSpace(["x"]), [AudioModality()], PRE, augment=broken)
    assert str(ds[0]) == "sample 'a' (line 1): augmentation: KeyError: 'gain'"
    ds.augment = nan_gain
    assert "audio holds 800 non-finite values (NaN/inf) after augmentation" in str(ds[0])
    ds.augment, ds.labels = None, LabelSpace(["y"])
    assert str(ds[0]).startswith("sample 'a' (line 1): label: ")


def test_dataset_reports_nan_audio_and_surrogate_text(tmp_path):
    _float_wav(tmp_path / "nan.wav", {1: np.nan})
    rows = [
        {"id": "nan", "audio": "nan.wav"},
        '{"id": "sur", "text": "bad \\ud800"}',
        {"id": "ok", "text": "fine"},
    ]
    samples, _ = read_manifest(write_manifest(tmp_path / "m.jsonl", rows))
    ds = ManifestDataset(samples, None, ("text", "audio"), PRE)
    assert str(ds[0]) == (
        f"sample 'nan' (line 1): {tmp_path / 'nan.wav'}: audio holds 1 non-finite samples (NaN/inf)"
    )
    assert "inline text: text is not valid Unicode: a lone surrogate U+D800 at character 4" in str(
        ds[1]
    )
    assert ds[2]["inputs"] == {"text": "fine"}


def test_validate_data_reports_non_finite_audio(tmp_path, capsys):
    _float_wav(tmp_path / "nan.wav", {1: np.inf})
    manifest = write_manifest(
        tmp_path / "m.jsonl", [{"id": "a", "audio": "nan.wav"}, {"id": "b", "text": "ok"}]
    )
    report = validate_manifest(manifest)
    assert not report.ok and len(report.problems) == 1
    assert "nan.wav: audio holds 1 non-finite samples (NaN/inf)" in report.problems[0]
    assert main(["validate-data", "--no-progress", str(manifest)]) == 1
    assert "non-finite" in capsys.readouterr().out
    assert main(["validate-data", "--no-progress", str(tmp_path)]) == 2  # a folder


# ------------------------------------------------------------------------------ exit statuses
def test_printable_and_one_line_escape():
    assert printable("a\udcffb\ud800\n") == "a\\xffb\\ud800\n"
    assert one_line("x\ny\r\x1b\u2028\udcc3") == "x\\ny\\r\\x1b\\u2028\\xc3"
    printable(os.fsdecode(b"\xff\xfe")).encode("utf-8")  # never raises


def test_a_bug_exits_3_with_one_line_naming_the_log(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("MMCTX_DEBUG", raising=False)
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR

    def buggy(argv):
        raise AttributeError("'NoneType' object has no attribute 'x'\nsecond line")

    assert run_command("demo", buggy, ["--a", "b"]) == EXIT_BUG
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error" in err and "bug in mmctx" in err
    log = Path(err.split("the traceback is in ")[1].strip())
    assert log.parent == tmp_path and log.name.startswith("mmctx-demo-crash-")
    text = log.read_text()
    assert "mmctx demo --a b" in text and "Traceback" in text and "in buggy" in text


def test_usage_errors_and_interrupts_keep_their_statuses(capsys):
    def usage(argv):
        raise SystemExit(2)

    def interrupted(argv):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit):
        run_command("x", usage, [])
    assert run_command("x", interrupted, []) == 130
    assert run_command("x", lambda argv: 1, []) == 1


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (FileNotFoundError(2, "No such file or directory", "/proc/nope"), "/proc/nope"),
        (ConfigError("data.batch_size must be >= 1"), "data.batch_size must be >= 1"),
        (CheckpointError("a.ckpt: no such checkpoint file"), "a.ckpt: no such checkpoint file"),
    ],
)
def test_the_run_s_own_input_and_output_errors_are_exit_2_in_one_line(error, shown, capsys):
    """What the run itself cannot read or write is the user's to fix, not a bug (exit 3)."""

    def failing(argv):
        raise error

    assert run_command("x", failing, []) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmctx x: error: ") and shown in err and err.count("\n") == 1


def test_every_own_command_documents_exit_statuses(capsys, monkeypatch):
    from mmctx.cli import OWN_COMMANDS

    monkeypatch.setattr(sys, "argv", ["mmctx"])
    for name in OWN_COMMANDS:
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert "exit status" in out.lower() and "3" in out.lower().split("exit status")[1], name


# ------------------------------------------------------------------------------ file names
def test_names_that_are_not_utf8_are_read_or_refused_cleanly(tmp_path):
    raw = os.path.join(os.fsencode(tmp_path), b"bad\xff.wav")
    sf.write(raw, np.full(800, 0.1), 8000)
    assert read_audio(os.fsdecode(raw)).shape == (800,)  # libsndfile gets the bytes
    video = os.path.join(os.fsencode(tmp_path), b"v\xff.avi")
    writer = cv2.VideoWriter(
        str(tmp_path / "v.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 4.0, (16, 12)
    )
    writer.write(np.zeros((12, 16, 3), np.uint8))
    writer.release()
    os.rename(os.fsencode(tmp_path / "v.avi"), video)
    with pytest.raises(DecodeError, match="not valid UTF-8, which OpenCV cannot open"):
        read_video(os.fsdecode(video))  # OpenCV would crash the process on this str
    for reader in (read_audio, read_image, read_text, read_video):
        with pytest.raises(DecodeError, match=r"lone surrogate \(U\+D800 at character"):
            reader(str(tmp_path / "x\ud800.wav"))
