"""Tests for the long-context digits dataset (mmctx.datasets.longctx)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mmctx.data.manifest import read_manifest
from mmctx.datasets.demo import _VOCAB, DIGIT_WORDS, DTMF
from mmctx.datasets.longctx import (
    _LEADS,
    LongSpec,
    SweepSpec,
    make_longctx_dataset,
    make_sweep_dataset,
)
from mmctx.io import read_audio, read_text
from mmctx.tokenizer import HashTokenizer

SPLITS = ("train", "val", "test")


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _all_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _pair_strength(segment: np.ndarray, rate: int, pair: tuple[int, int]) -> tuple[list, float]:
    """The two strongest spectral peaks (Hz, 40 Hz apart) and the weaker pair tone's height
    over the median spectrum magnitude."""
    window = segment * np.hanning(len(segment))
    mag, freqs = np.abs(np.fft.rfft(window)), np.fft.rfftfreq(len(segment), 1 / rate)
    first = freqs[np.argmax(mag)]
    second = freqs[np.argmax(np.where(np.abs(freqs - first) < 40, 0, mag))]
    weakest = min(mag[np.abs(freqs - f) <= 15].max() for f in pair)
    return sorted([first, second]), weakest / np.median(mag)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LongSpec, dict, list, dict]:
    spec = LongSpec(num_samples=30, seed=5, audio_seconds=3.0, text_words=300)
    root = tmp_path_factory.mktemp("long") / "data"
    paths = make_longctx_dataset(root, spec)
    splits = {name: _read_jsonl(path) for name, path in paths.items()}
    rows = [row for name in SPLITS for row in splits[name]]
    truth = {t["id"]: t for t in _read_jsonl(root / "truth.jsonl")}
    return root, spec, splits, rows, truth


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    spec = LongSpec(num_samples=12, seed=3, audio_seconds=1.5, text_words=40)
    make_longctx_dataset(tmp_path / "a", spec)
    make_longctx_dataset(tmp_path / "b", spec)
    make_longctx_dataset(tmp_path / "c", LongSpec(num_samples=12, seed=4, audio_seconds=1.5))
    a, b, c = (_all_files(tmp_path / name) for name in "abc")
    assert a == b
    assert a["audio/long-000000.wav"] != c["audio/long-000000.wav"]
    assert a["truth.jsonl"] != c["truth.jsonl"]


def test_rows_files_and_splits(built) -> None:
    root, spec, splits, rows, truth = built
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)) == spec.num_samples == len(truth)
    assert set(ids) == set(truth) == {f"long-{i:06d}" for i in range(spec.num_samples)}
    assert [len(splits[name]) for name in SPLITS] == [22, 4, 4]
    assert Counter(row["label"] for row in rows) == dict.fromkeys(range(10), 3)
    for row in rows:
        assert set(row) == {"id", "label", "text_path", "audio"}
        assert row["text_path"] == f"text/{row['id']}.txt"
        assert row["audio"] == f"audio/{row['id']}.wav"
        assert truth[row["id"]]["label"] == row["label"]
        info = sf.info(root / row["audio"])
        assert (info.samplerate, info.subtype, info.channels) == (8000, "PCM_16", 1)
        assert info.frames == 3 * 8000
    # The library's own readers take the files as they are.
    samples, problems = read_manifest(root / "train.jsonl", strict=True)
    assert not problems and len(samples) == 22
    first = samples[0]
    assert len(read_text(first.text_path).split()) == spec.text_words
    assert read_audio(first.media["audio"][0]).shape[-1] == 3 * 8000


def test_burst_sits_where_truth_says(built) -> None:
    root, spec, _, rows, truth = built
    for row in rows:
        t = truth[row["id"]]
        assert 0.15 <= t["burst_seconds"] <= 0.35
        assert 0 <= t["onset_seconds"] <= spec.audio_seconds - t["burst_seconds"]
        clip, rate = sf.read(root / row["audio"])
        start, n = round(t["onset_seconds"] * rate), round(t["burst_seconds"] * rate)
        pair = DTMF[row["label"]]
        peaks, strength = _pair_strength(clip[start : start + n], rate, pair)
        assert np.allclose(peaks, pair, atol=15), (row["id"], peaks, pair)
        assert strength > 20, (row["id"], strength)
        # The same span half a clip away holds noise only.
        away = (start + len(clip) // 2) % (len(clip) - n)
        assert abs(away - start) >= n
        assert _pair_strength(clip[away : away + n], rate, pair)[1] < 6


def test_telling_word_sits_at_the_recorded_index_and_only_there(built) -> None:
    root, spec, _, rows, truth = built
    allowed = set(_VOCAB) | {w for lead in _LEADS for w in lead}
    tokenizer = HashTokenizer(max_tokens=10 * spec.text_words)
    for row in rows:
        text = (root / row["text_path"]).read_text(encoding="utf-8")
        words = text.split()
        index, word = truth[row["id"]]["word_index"], DIGIT_WORDS[row["label"]]
        assert len(words) == spec.text_words
        assert words[index] == word
        assert [i for i, w in enumerate(words) if w in DIGIT_WORDS] == [index]
        assert set(words) - allowed == {word}
        assert (
            tuple(words[index - 4 : index]) in _LEADS or tuple(words[index - 3 : index]) in _LEADS
        )
        # One word is one token, so the word index is the token index.
        ids = tokenizer.encode(text)
        assert len(ids) == spec.text_words
        assert ids[index] == tokenizer.encode(word)[0]


def test_clue_positions_are_uniform(tmp_path: Path) -> None:
    spec = LongSpec(num_samples=200, seed=1, audio_seconds=4.0, text_words=400)
    make_longctx_dataset(tmp_path / "d", spec)
    truth = _read_jsonl(tmp_path / "d" / "truth.jsonl")
    word = np.array([t["word_index"] for t in truth]) / spec.text_words
    onset = np.array([t["onset_seconds"] for t in truth]) / spec.audio_seconds
    for share in (word, onset):
        assert 0.03 <= np.mean(share < 0.1) <= 0.18  # ~0.1 expected
        quarters = np.bincount((share * 4).astype(int), minlength=4)
        assert len(quarters) == 4 and quarters.min() >= 30 and quarters.max() <= 70


def test_default_text_mostly_hides_the_clue_past_512_tokens(tmp_path: Path) -> None:
    spec = LongSpec(num_samples=200, modalities=("text",))
    paths = make_longctx_dataset(tmp_path / "t", spec)
    truth = _read_jsonl(tmp_path / "t" / "truth.jsonl")
    early = np.mean([t["word_index"] < 512 for t in truth])
    assert 0.08 <= early <= 0.27  # ~512 / 3000
    assert not (tmp_path / "t" / "audio").exists()
    assert all("audio" not in row for row in _read_jsonl(paths["train"]))


def test_dropping_a_modality_leaves_the_other_unchanged(tmp_path: Path) -> None:
    both = LongSpec(num_samples=10, audio_seconds=1.0, text_words=20)
    audio_only = LongSpec(num_samples=10, audio_seconds=1.0, text_words=20, modalities=["audio"])
    assert audio_only.modalities == ("audio",)
    make_longctx_dataset(tmp_path / "both", both)
    paths = make_longctx_dataset(tmp_path / "audio", audio_only)
    assert all(set(row) == {"id", "label", "audio"} for row in _read_jsonl(paths["train"]))
    a, b = _all_files(tmp_path / "both"), _all_files(tmp_path / "audio")
    wavs = [k for k in b if k.endswith(".wav")]
    assert len(wavs) == 10 and all(a[k] == b[k] for k in wavs)


def test_second_call_is_a_no_op_and_other_content_is_refused(tmp_path: Path) -> None:
    spec = LongSpec(num_samples=10, audio_seconds=1.0, text_words=20)
    root = tmp_path / "data"
    paths = make_longctx_dataset(root, spec)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert make_longctx_dataset(root, spec) == paths
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no temporary folder left
    with pytest.raises(ValueError, match="does not hold"):
        make_longctx_dataset(root, LongSpec(num_samples=10, audio_seconds=1.0, text_words=21))
    with pytest.raises(ValueError, match="does not hold"):
        make_longctx_dataset(
            root, LongSpec(num_samples=10, audio_seconds=1.0, modalities=("text",))
        )
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="does not hold"):
        make_longctx_dataset(tmp_path / "other", spec)
    (tmp_path / "empty").mkdir()
    assert make_longctx_dataset(tmp_path / "empty", spec)["val"].is_file()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_samples", 9),
        ("seed", -1),
        ("val_fraction", 1.0),
        ("test_fraction", -0.1),
        ("sample_rate", 3000),
        ("audio_seconds", 0.5),
        ("audio_seconds", 3601.0),  # a sample is generated whole, in memory
        ("text_words", 9),
        ("text_words", 1_000_001),
        ("modalities", ()),
        ("modalities", ("text", "text")),
        ("modalities", ("image",)),
        ("modalities", "text"),
    ],
)
def test_bad_spec_values_are_refused_by_name(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"LongSpec.{field}="):
        LongSpec(**{field: value})


def test_fractions_must_leave_room_for_training() -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        LongSpec(val_fraction=0.5, test_fraction=0.5)


# Mixed training lengths (LongSpec.length_range).


def _digest(root: Path) -> str:
    digest = hashlib.sha256()
    for name, data in _all_files(root).items():
        digest.update(name.encode())
        digest.update(data)
    return digest.hexdigest()


def test_without_a_length_range_the_files_are_those_of_earlier_versions(tmp_path: Path) -> None:
    # Digests of every file (names and bytes) as written before length_range existed.
    spec = LongSpec(num_samples=12, seed=3, audio_seconds=1.5, text_words=40)
    make_longctx_dataset(tmp_path / "a", spec)
    assert _digest(tmp_path / "a") == (
        "02a7c1fcfaec3cf792ebdf1c756e8f39766463a1d53a871a531560e05dda545f"
    )
    base = LongSpec(audio_seconds=1.0, text_words=20, length_range=(1.0, 3.0))
    grid = SweepSpec(base, scales=(1, 2), bins=2, per_cell=2, seed=4)
    assert grid.base.length_range is None  # the grid never varies the length it asks for
    make_sweep_dataset(tmp_path / "s", grid)
    assert _digest(tmp_path / "s") == (
        "dfbaeaae4ec639a20ed596a1fbb36847350de904156c97325ec54681171d9592"
    )
    # A cache written then still counts as this spec's data, and not as a mixed-length one's.
    assert make_longctx_dataset(tmp_path / "a", spec)["train"].is_file()
    with pytest.raises(ValueError, match="does not hold"):
        make_longctx_dataset(tmp_path / "a", replace(spec, length_range=(1.0, 1.5)))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LongSpec, dict, dict]:
    spec = LongSpec(
        num_samples=60, seed=2, audio_seconds=2.0, text_words=100, length_range=[0.5, 2]
    )
    root = tmp_path_factory.mktemp("mixed") / "data"
    paths = make_longctx_dataset(root, spec)
    splits = {name: _read_jsonl(path) for name, path in paths.items()}
    truth = {t["id"]: t for t in _read_jsonl(root / "truth.jsonl")}
    return root, spec, splits, truth


def test_training_lengths_spread_over_the_range_and_the_rest_stay_nominal(mixed) -> None:
    root, spec, splits, truth = mixed
    assert spec.length_range == (0.5, 2.0)
    scales = []
    for row in splits["train"]:
        t = truth[row["id"]]
        scale = t["audio_seconds"] / spec.audio_seconds
        assert 0.5 <= scale <= 2.0
        assert t["text_words"] == round(scale * spec.text_words)
        assert len((root / row["text_path"]).read_text().split()) == t["text_words"]
        assert sf.info(root / row["audio"]).frames == round(t["audio_seconds"] * 8000)
        scales.append(scale)
    assert len(scales) == 42 and min(scales) < 0.7 and max(scales) > 1.8
    assert 0.25 <= np.mean(np.array(scales) < 1.0) <= 0.5  # a third expected
    for row in splits["val"] + splits["test"]:
        assert "text_words" not in truth[row["id"]]
        assert len((root / row["text_path"]).read_text().split()) == spec.text_words
        assert sf.info(root / row["audio"]).frames == 2 * 8000


def test_mixed_length_clues_sit_where_truth_says_anywhere_in_the_input(mixed) -> None:
    root, spec, splits, truth = mixed
    share = []
    for row in splits["train"]:
        t = truth[row["id"]]
        words = (root / row["text_path"]).read_text().split()
        assert words[t["word_index"]] == DIGIT_WORDS[row["label"]]
        assert [i for i, w in enumerate(words) if w in DIGIT_WORDS] == [t["word_index"]]
        clip, rate = sf.read(root / row["audio"])
        start, n = round(t["onset_seconds"] * rate), round(t["burst_seconds"] * rate)
        assert start + n <= len(clip)
        peaks, strength = _pair_strength(clip[start : start + n], rate, DTMF[row["label"]])
        assert np.allclose(peaks, DTMF[row["label"]], atol=15) and strength > 20
        share.append(t["word_index"] / len(words))
    assert min(share) < 0.25 and max(share) > 0.75  # relative positions spread over the input


def test_mixed_lengths_are_deterministic_per_seed(tmp_path: Path) -> None:
    spec = LongSpec(num_samples=12, seed=3, audio_seconds=1.5, text_words=40, length_range=(1, 2))
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        make_longctx_dataset(tmp_path / name, replace(spec, seed=seed))
    a, b, c = (_all_files(tmp_path / name) for name in "abc")
    assert a == b and a["truth.jsonl"] != c["truth.jsonl"]
    fixed = _all_files(
        make_longctx_dataset(tmp_path / "f", replace(spec, length_range=None))["train"].parent
    )
    # Only the training samples change length; validation and test keep their files.
    nominal = [r["id"] for r in _read_jsonl(tmp_path / "a" / "val.jsonl")]
    assert all(a[f"audio/{i}.wav"] == fixed[f"audio/{i}.wav"] for i in nominal)
    trained = [r["id"] for r in _read_jsonl(tmp_path / "a" / "train.jsonl")]
    assert all(a[f"audio/{i}.wav"] != fixed[f"audio/{i}.wav"] for i in trained)


@pytest.mark.parametrize(
    "value", [(0.0, 1.0), (1.5, 1.0), (0.5,), (0.4, 1.0), (0.5, 1.0, 2.0), (1.0, 2000.0)]
)
def test_bad_length_ranges_are_refused_by_name(value: tuple) -> None:
    # (0.4, 1.0): 0.4 x 2 s is shorter than the 1 s a clip needs.
    with pytest.raises(ValueError, match="LongSpec.length_range="):
        LongSpec(audio_seconds=2.0, text_words=100, length_range=value)


def test_the_data_module_passes_the_range_and_keeps_its_own_cache(tmp_path: Path) -> None:
    from mmctx.datasets.modules import LongContextDataModule

    plain = LongContextDataModule(num_samples=20, audio_seconds=2, text_words=50)
    mixed = LongContextDataModule(
        num_samples=20, audio_seconds=2, text_words=50, length_range=[0.5, 1.5]
    )
    assert plain.spec.length_range is None and mixed.spec.length_range == (0.5, 1.5)
    assert mixed.folder.name == plain.folder.name + "-r0.5-1.5"
