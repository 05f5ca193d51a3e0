"""Tests for the generated tri-modal digits dataset (mmctx.datasets.demo)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf

from mmctx.datasets import demo as demo_data
from mmctx.datasets.demo import DIGIT_WORDS, DTMF, DemoSpec, make_demo_dataset

MODALITIES = ("text", "image", "audio")
NUMBER_WORDS = {"ten", "first", "second", "third", "twice", "once", "double", "dozen", "half"}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _all_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DemoSpec, dict, list, dict]:
    spec = DemoSpec(num_samples=400, seed=7)
    root = tmp_path_factory.mktemp("demo") / "data"
    paths = make_demo_dataset(root, spec)
    splits = {name: _read_jsonl(path) for name, path in paths.items()}
    rows = [row for name in ("train", "val", "test") for row in splits[name]]
    truth = {t["id"]: t["informative"] for t in _read_jsonl(root / "truth.jsonl")}
    return root, spec, splits, rows, truth


def _pair_prominence(clip: np.ndarray, rate: int, pair: tuple[int, int]) -> tuple[list, float]:
    """The two strongest spectral peaks (Hz, 40 Hz apart) and the weaker pair tone's height
    over the median spectrum magnitude."""
    mag, freqs = np.abs(np.fft.rfft(clip)), np.fft.rfftfreq(len(clip), 1 / rate)
    first = freqs[np.argmax(mag)]
    second = freqs[np.argmax(np.where(np.abs(freqs - first) < 40, 0, mag))]
    weakest = min(mag[np.abs(freqs - f) <= 15].max() for f in pair)
    return sorted([first, second]), weakest / np.median(mag)


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    spec = DemoSpec(num_samples=60, seed=3)
    make_demo_dataset(tmp_path / "a", spec)
    make_demo_dataset(tmp_path / "b", spec)
    make_demo_dataset(tmp_path / "c", DemoSpec(num_samples=60, seed=4))
    a, b, c = (_all_files(tmp_path / name) for name in "abc")
    assert a == b
    assert a["train.jsonl"] != c["train.jsonl"]
    shared_images = [k for k in a.keys() & c.keys() if k.endswith(".png")]
    assert shared_images and any(a[k] != c[k] for k in shared_images)


def test_rows_files_and_splits(built) -> None:
    root, spec, splits, rows, truth = built
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)) == spec.num_samples == len(truth)
    assert set(ids) == set(truth)
    assert [len(splits[name]) for name in ("train", "val", "test")] == [280, 60, 60]
    assert Counter(row["label"] for row in rows) == dict.fromkeys(range(10), 40)
    for row in rows:
        assert row["label"] in range(10)
        assert any(m in row for m in MODALITIES)
        assert set(row) <= {"id", "label", *MODALITIES}
        if "text" in row:
            assert isinstance(row["text"], str) and 6 <= len(row["text"].split()) <= 14
        if "image" in row:
            assert row["image"] == f"images/{row['id']}.png"
            image = cv2.imread(str(root / row["image"]), cv2.IMREAD_UNCHANGED)
            assert image.shape == (spec.image_size, spec.image_size) and image.dtype == np.uint8
        if "audio" in row:
            assert row["audio"] == f"audio/{row['id']}.wav"
            info = sf.info(str(root / row["audio"]))
            assert (info.samplerate, info.channels, info.subtype) == (8000, 1, "PCM_16")
            assert info.frames == round(spec.clip_seconds * spec.sample_rate)
    assert len(list((root / "images").iterdir())) == sum("image" in row for row in rows)


def test_audio_has_dtmf_pair_only_when_informative(built) -> None:
    root, spec, _, rows, truth = built
    checked = Counter()
    for row in rows:
        if "audio" not in row:
            continue
        clip, rate = sf.read(str(root / row["audio"]), dtype="float64")
        assert rate == spec.sample_rate
        pair = DTMF[row["label"]]
        peaks, prominence = _pair_prominence(clip, rate, pair)
        informative = truth[row["id"]]["audio"]
        checked[informative] += 1
        if informative:
            assert abs(peaks[0] - pair[0]) <= 15 and abs(peaks[1] - pair[1]) <= 15, row["id"]
        else:
            assert prominence < 6, row["id"]
    assert checked[True] > 200 and checked[False] > 20


def test_text_names_the_digit_only_when_informative(built) -> None:
    _, _, _, rows, truth = built
    for row in rows:
        if "text" not in row:
            continue
        words = row["text"].split()
        found = [w for w in words if w in DIGIT_WORDS]
        assert not NUMBER_WORDS & set(words)
        assert not any(d in w for w in words for d in DIGIT_WORDS if w not in DIGIT_WORDS)
        if truth[row["id"]]["text"]:
            assert found == [DIGIT_WORDS[row["label"]]], row
        else:
            assert found == [], row


def test_informative_and_absent_shares(built) -> None:
    _, spec, _, rows, truth = built
    for modality in MODALITIES:
        flags = [truth[row["id"]][modality] for row in rows]
        assert abs(np.mean(flags) - spec.informative) <= 0.08, modality
        absent = [modality not in row for row, flag in zip(rows, flags, strict=True) if not flag]
        assert abs(np.mean(absent) - 0.5) <= 0.15, modality
        assert all(modality in row for row, flag in zip(rows, flags, strict=True) if flag)


def test_second_call_returns_at_once_and_other_spec_is_refused(tmp_path, monkeypatch) -> None:
    out = tmp_path / "demo"
    spec = DemoSpec(num_samples=20)
    first = make_demo_dataset(out, spec)
    assert json.loads((out / "COMPLETE").read_text()) == json.loads(json.dumps(vars(spec)))

    def fail(*args, **kwargs):
        raise AssertionError("regenerated an existing dataset")

    monkeypatch.setattr(demo_data, "_generate", fail)
    assert make_demo_dataset(str(out), spec) == first == {s: out / f"{s}.jsonl" for s in first}
    with pytest.raises(ValueError, match=re.escape(str(out))):
        make_demo_dataset(out, DemoSpec(num_samples=20, seed=1))


def test_unrelated_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="delete it or choose another"):
        make_demo_dataset(tmp_path, DemoSpec(num_samples=10))
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_losing_a_race_keeps_the_winner_and_cleans_up(tmp_path, monkeypatch) -> None:
    out, spec = tmp_path / "demo", DemoSpec(num_samples=12)
    real = demo_data._generate

    def racing(root: Path, spec: DemoSpec, progress: bool) -> None:
        monkeypatch.setattr(demo_data, "_generate", real)
        make_demo_dataset(out, spec)  # another caller finishes first
        real(root, spec, progress)

    monkeypatch.setattr(demo_data, "_generate", racing)
    paths = make_demo_dataset(out, spec)
    assert all(path.exists() for path in paths.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]


def test_progress_bar(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_demo_dataset(tmp_path / "demo", DemoSpec(num_samples=10), progress=True)
    assert "demo data" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_samples", 9),
        ("seed", -1),
        ("val_fraction", 1.0),
        ("val_fraction", -0.1),
        ("test_fraction", 1.5),
        ("informative", 1.2),
        ("informative", -0.01),
        ("image_size", 8),
        ("sample_rate", 2000),
        ("clip_seconds", 0.2),
    ],
)
def test_invalid_spec_names_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"{field}={re.escape(repr(value))}"):
        DemoSpec(**{field: value})


def test_fractions_must_leave_a_train_split() -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        DemoSpec(val_fraction=0.6, test_fraction=0.4)
