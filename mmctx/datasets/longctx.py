"""A long-context dataset of the digits 0-9: one small clue hidden somewhere in a long input.

Each sample's text is thousands of neutral filler words with a single telling sentence ("the
secret code is seven") at a uniformly random word position, and its audio is tens of seconds of
white noise with a single short DTMF burst of the digit at a uniformly random onset. Every
modality a sample carries holds the answer, but only at that one place. A model that sees the
whole input can be near perfect, while one that keeps only the first 512 positions finds the
clue only about 512 / ``text_words`` of the time and is otherwise left guessing (near chance).

The pieces are those of :mod:`mmctx.datasets.demo` (digit words, filler vocabulary, DTMF burst in
noise, WAV encoding, split cutting); only the layout is longer. Sample ``i`` draws its text from
``np.random.default_rng([seed, i, 0])`` and its audio from ``np.random.default_rng([seed, i,
1])``, so dropping a modality leaves the other unchanged. ``truth.jsonl`` records where each clue
sits (for analysis; models must not read it).

With ``LongSpec.length_range = (lo, hi)`` the training samples vary in length: sample ``i``
of the train split draws a scale ``s`` uniformly from ``[lo, hi]`` (from
``np.random.default_rng([seed, i, 2])``) and gets ``round(s * text_words)`` words and ``s *
audio_seconds`` of audio, its clue still uniform over the whole input; validation and test
samples keep the nominal length, so their accuracy stays comparable with fixed-length
training. Without it (the default) the files are exactly those of earlier versions.

:func:`make_sweep_dataset` writes test inputs with the clue at a chosen place instead: a grid of
input lengths (multiples of the training length) by relative clue positions, for asking how
accuracy depends on where the evidence sits and how long the input is (``mmctx context-sweep``).
Position ``at`` in [0, 1] puts the digit word at word index ``at * (text_words - 1)`` (rounded,
after at least its lead-in) and the burst's onset at ``at * (clip - burst)`` samples.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from mmctx.datasets.demo import (
    _VOCAB,
    DIGIT_WORDS,
    DemoSpec,
    _make_audio,
    _split_indices,
    _wav_bytes,
    _without_off_fields,
    _write_jsonl,
    build_once,
    check_spec,
)

__all__ = ["MODALITIES", "LongSpec", "SweepSpec", "make_longctx_dataset", "make_sweep_dataset"]

MODALITIES = ("text", "audio")
# Lead-ins of the telling sentence; the digit word follows. None holds a digit word.
_LEADS = (
    ("the", "secret", "code", "is"),
    ("the", "answer", "is"),
    ("remember", "the", "number"),
    ("the", "hidden", "digit", "is"),
)
_MIN_TEXT_WORDS = 10
# The longest inputs the generator writes (a sample is generated whole, in memory).
MAX_AUDIO_SECONDS = 3600.0
MAX_TEXT_WORDS = 1_000_000
# A last seed word for sweep samples, so that none shares a random stream with a training
# sample (numpy's SeedSequence treats trailing zero words as absent: it must not be 0).
_SWEEP_STREAM = 1


@dataclass(frozen=True)
class LongSpec:
    """What to generate; the same spec always yields byte-identical files.

    Attributes:
        num_samples: Total number of samples over all splits (>= 10).
        seed: Base seed (>= 0).
        val_fraction: Share of samples in the validation split, in [0, 1).
        test_fraction: Share of samples in the test split, in [0, 1); the two sum to < 1.
        sample_rate: Audio sample rate in Hz (>= 4000, so the highest DTMF tone is below Nyquist).
        audio_seconds: Length of each noise clip (1 to 3,600); it holds one 0.15-0.35 s DTMF
            burst.
        text_words: Words in each text (10 to 1,000,000); one of them is the digit's word.
        modalities: Which of ``"text"`` and ``"audio"`` every sample carries (non-empty, no
            repeats); each carried modality holds the answer.
        length_range: ``(lo, hi)``: each training sample's length is a scale drawn uniformly
            from ``[lo, hi]`` times ``text_words`` and ``audio_seconds`` (0 < lo <= hi, the
            shortest still a valid length); validation and test stay at scale 1. None: every
            sample has the nominal length.
    """

    num_samples: int = 600
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    sample_rate: int = 8000
    audio_seconds: float = 30.0
    text_words: int = 3000
    modalities: tuple[str, ...] = MODALITIES
    length_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        """Raise a ValueError naming the first field whose value is out of range."""
        for name in ("modalities", "length_range"):  # a list would not round-trip otherwise
            if isinstance(getattr(self, name), (list, tuple)):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        mods, scales = self.modalities, self.length_range
        check_spec(
            self,
            audio_seconds=1.0 <= self.audio_seconds <= MAX_AUDIO_SECONDS,
            text_words=_MIN_TEXT_WORDS <= self.text_words <= MAX_TEXT_WORDS,
            modalities=isinstance(mods, tuple)
            and len(mods) > 0
            and len(set(mods)) == len(mods)
            and set(mods) <= set(MODALITIES),
            length_range=scales is None
            or (
                len(scales) == 2
                and 0 < scales[0] <= scales[1]
                and scales[0] * self.audio_seconds >= 1.0
                and self.fits(scales[1])
                and round(scales[0] * self.text_words) >= _MIN_TEXT_WORDS
            ),
        )

    def fits(self, scale: float) -> bool:
        """Whether inputs ``scale`` times this long stay within the generator's limits
        (:data:`MAX_AUDIO_SECONDS`, :data:`MAX_TEXT_WORDS`)."""
        return (
            scale * self.audio_seconds <= MAX_AUDIO_SECONDS
            and scale * self.text_words <= MAX_TEXT_WORDS
        )

    def scaled(self, scale: float) -> LongSpec:
        """The fixed-length spec of inputs ``scale`` times this one's length."""
        words = max(_MIN_TEXT_WORDS, round(scale * self.text_words))
        return replace(
            self, text_words=words, audio_seconds=scale * self.audio_seconds, length_range=None
        )


_DEFAULT_SPEC = LongSpec()


def _as_demo_spec(spec: LongSpec) -> DemoSpec:
    """The :class:`DemoSpec` whose audio clips and splits match ``spec``."""
    return DemoSpec(
        num_samples=spec.num_samples,
        seed=spec.seed,
        val_fraction=spec.val_fraction,
        test_fraction=spec.test_fraction,
        sample_rate=spec.sample_rate,
        clip_seconds=spec.audio_seconds,
    )


def _make_text(
    rng: np.random.Generator, digit: int, n_words: int, at: float | None = None
) -> tuple[str, int]:
    """``n_words`` filler words holding one telling sentence; return the text and the digit
    word's index, which is uniform over every position the sentence allows, or (with ``at``)
    ``at * (n_words - 1)`` rounded, moved right just enough for the lead-in to fit."""
    lead = _LEADS[int(rng.integers(len(_LEADS)))]
    where = int(rng.integers(len(lead), n_words))  # drawn in any case: same stream after it
    if at is not None:
        where = max(len(lead), round(at * (n_words - 1)))
    filler = [_VOCAB[j] for j in rng.integers(len(_VOCAB), size=n_words - len(lead) - 1)]
    cut = where - len(lead)
    words = [*filler[:cut], *lead, DIGIT_WORDS[digit], *filler[cut:]]
    return " ".join(words) + "\n", where


def _move_burst(clip: np.ndarray, onset: int, length: int, at: float) -> tuple[np.ndarray, int]:
    """``clip`` rotated so that its burst starts at ``at * (len(clip) - length)``; the rest of
    the clip is white noise, and rotated white noise is still white noise."""
    target = round(at * (len(clip) - length))
    return np.roll(clip, target - onset), target


def _make_sample(
    index: int, label: int, spec: LongSpec, root: Path, varied: bool
) -> tuple[dict, dict]:
    """Write sample ``index``'s files under ``root``, at a length drawn from
    ``spec.length_range`` if ``varied``; return its manifest row and truth row."""
    rngs = [np.random.default_rng([spec.seed, index, part]) for part in (0, 1)]
    if not (varied and spec.length_range):
        return _write_sample(f"long-{index:06d}", label, rngs, spec, _as_demo_spec(spec), root)
    lo, hi = spec.length_range
    data = spec.scaled(float(np.random.default_rng([spec.seed, index, 2]).uniform(lo, hi)))
    row, truth = _write_sample(f"long-{index:06d}", label, rngs, data, _as_demo_spec(data), root)
    return row, {**truth, "text_words": data.text_words, "audio_seconds": data.audio_seconds}


def _write_sample(
    sample_id: str,
    label: int,
    rngs: list[np.random.Generator],
    spec: LongSpec,
    demo: DemoSpec,
    root: Path,
    at: float | None = None,
) -> tuple[dict, dict]:
    """Write one sample's files, its text drawn from ``rngs[0]`` and its audio from
    ``rngs[1]``, with the clue at random or at relative position ``at``; return its manifest
    row and truth row."""
    text_rng, audio_rng = rngs
    row: dict = {"id": sample_id, "label": label}
    truth: dict = {"id": sample_id, "label": label}
    if "text" in spec.modalities:
        text, truth["word_index"] = _make_text(text_rng, label, spec.text_words, at)
        row["text_path"] = f"text/{sample_id}.txt"
        (root / row["text_path"]).write_text(text, encoding="utf-8")
    if "audio" in spec.modalities:
        clip, onset, length = _make_audio(audio_rng, label, demo)
        if at is not None:
            clip, onset = _move_burst(clip, onset, length, at)
        row["audio"] = f"audio/{sample_id}.wav"
        (root / row["audio"]).write_bytes(_wav_bytes(clip, spec.sample_rate))
        truth["onset_seconds"] = onset / spec.sample_rate
        truth["burst_seconds"] = length / spec.sample_rate
    return row, truth


def _generate(root: Path, spec: LongSpec, progress: bool) -> None:
    """Write every file of the dataset into the empty folder ``root``, ending with COMPLETE."""
    for folder in spec.modalities:
        (root / folder).mkdir()
    master = np.random.default_rng(spec.seed)
    labels = master.permutation(np.arange(spec.num_samples) % 10)
    order = master.permutation(spec.num_samples)
    splits = _split_indices(_as_demo_spec(spec), order)
    training = set(splits["train"].tolist())
    indices = range(spec.num_samples)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc="long-context data", unit="sample")
    made = [_make_sample(i, int(labels[i]), spec, root, i in training) for i in indices]
    rows, truths = zip(*made, strict=True)
    for name, picked in splits.items():
        _write_jsonl(root / f"{name}.jsonl", [rows[i] for i in picked])
    _write_jsonl(root / "truth.jsonl", list(truths))
    _write_complete(root, spec)


def _write_complete(root: Path, spec: LongSpec | SweepSpec) -> None:
    """Write ``COMPLETE``: the spec as JSON, without the options that are off (so data made
    without them has the same bytes as before they existed)."""
    record = _without_off_fields(asdict(spec))
    (root / "COMPLETE").write_text(json.dumps(record, sort_keys=True) + "\n")


def make_longctx_dataset(
    out_dir: str | Path, spec: LongSpec = _DEFAULT_SPEC, *, progress: bool = False
) -> dict[str, Path]:
    """Generate the long-context dataset under ``out_dir`` unless it is already there.

    Writes ``text/*.txt`` and ``audio/*.wav`` (for the modalities in ``spec``), ``train.jsonl``,
    ``val.jsonl``, ``test.jsonl`` (rows ``{"id", "label", "text_path", "audio"}``),
    ``truth.jsonl`` (the digit word's index ``word_index``, and ``onset_seconds`` and
    ``burst_seconds`` of the tone) and ``COMPLETE`` (the spec as JSON). As with
    :func:`mmctx.datasets.demo.make_demo_dataset`, it is all built in a temporary sibling folder
    renamed into place at the end, so an interrupted run leaves nothing behind and racing callers
    all end with the same data.

    Args:
        out_dir: Folder to hold the dataset; created if missing.
        spec: What to generate.
        progress: Show a tqdm progress bar.

    Returns:
        The manifest path of each split, keyed ``"train"``, ``"val"`` and ``"test"``.

    Raises:
        ValueError: ``out_dir`` exists with a different spec or unrelated content.
    """
    return build_once(
        out_dir, spec, lambda folder: _generate(folder, spec, progress), "long-context data"
    )


@dataclass(frozen=True)
class SweepSpec:
    """Test inputs with the clue at chosen places: a grid of input lengths x position bins.

    Cell ``(scale, bin)`` holds ``per_cell`` samples whose texts have
    ``round(scale * base.text_words)`` words and whose clips last ``scale * base.audio_seconds``;
    their clues sit at relative positions spread evenly over ``[bin / bins, (bin + 1) / bins)``
    (the same position in every modality), and their labels are balanced over the digits.
    The same spec always yields byte-identical files.

    Attributes:
        base: The training data: its text and clip lengths are scale 1, and its sample rate
            and modalities are kept (its size, seed, split fractions and length range are
            not used).
        scales: Input lengths as multiples of the training length (non-empty, each > 0, no
            repeats, within the limits of :meth:`LongSpec.fits`); e.g. ``(1, 2, 3, 4)``.
        bins: Position bins (>= 1).
        per_cell: Samples per cell (>= 1).
        seed: Seed of the grid (>= 0); no sample shares a random stream with a training one.
    """

    base: LongSpec = _DEFAULT_SPEC
    scales: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)
    bins: int = 10
    per_cell: int = 20
    seed: int = 1

    def __post_init__(self) -> None:
        """Raise a ValueError naming the first field whose value is out of range."""
        if isinstance(self.base, dict):  # as read back from COMPLETE
            object.__setattr__(self, "base", LongSpec(**self.base))
        object.__setattr__(self, "base", replace(self.base, length_range=None))
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        checks = {
            "scales": len(self.scales) > 0
            and min(self.scales) > 0
            and self.base.fits(max(self.scales))
            and len(set(self.scales)) == len(self.scales),
            "bins": self.bins >= 1,
            "per_cell": self.per_cell >= 1,
            "seed": self.seed >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"SweepSpec.{name}={getattr(self, name)!r} is out of range")
        for scale in self.scales:  # each length must itself be a valid long-context spec
            self.scaled(scale)

    def fits(self, scale: float) -> bool:
        """Whether inputs ``scale`` times this long stay within the generator's limits
        (:data:`MAX_AUDIO_SECONDS`, :data:`MAX_TEXT_WORDS`)."""
        return (
            scale * self.audio_seconds <= MAX_AUDIO_SECONDS
            and scale * self.text_words <= MAX_TEXT_WORDS
        )

    def scaled(self, scale: float) -> LongSpec:
        """The data spec of inputs ``scale`` times the training length."""
        return self.base.scaled(scale)

    def cells(self) -> Iterator[tuple[int, float, int]]:
        """``(cell index, scale, bin)`` of every cell, scales outermost."""
        for i, scale in enumerate(self.scales):
            for b in range(self.bins):
                yield i * self.bins + b, scale, b

    def position(self, b: int, j: int) -> float:
        """Relative clue position of sample ``j`` of bin ``b``: evenly spread over the bin."""
        return (b + (j + 0.5) / self.per_cell) / self.bins


def _generate_sweep(root: Path, spec: SweepSpec, progress: bool) -> None:
    """Write every cell's samples into the empty folder ``root``, ending with COMPLETE."""
    for folder in spec.base.modalities:
        (root / folder).mkdir()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(spec.scales) * spec.bins * spec.per_cell, desc="sweep data")
    rows, truths = [], []
    for cell, scale, b in spec.cells():
        data = spec.scaled(scale)
        demo = _as_demo_spec(data)
        labels = np.random.default_rng([spec.seed, cell, 2, _SWEEP_STREAM]).permutation(
            np.arange(spec.per_cell) % 10
        )
        for j, label in enumerate(labels):
            index, at = cell * spec.per_cell + j, spec.position(b, j)
            rngs = [np.random.default_rng([spec.seed, index, p, _SWEEP_STREAM]) for p in (0, 1)]
            sample_id = f"sweep-x{scale:g}-b{b:02d}-{j:04d}"
            row, truth = _write_sample(sample_id, int(label), rngs, data, demo, root, at)
            rows.append(row)
            where = {"scale": scale, "bin": b, "position": at}
            size = {"text_words": data.text_words, "audio_seconds": data.audio_seconds}
            truths.append({**truth, **where, **size})
            if bar is not None:
                bar.update()
    _write_jsonl(root / "sweep.jsonl", rows)
    _write_jsonl(root / "truth.jsonl", truths)
    _write_complete(root, spec)


def make_sweep_dataset(
    out_dir: str | Path, spec: SweepSpec, *, progress: bool = False
) -> dict[str, Path]:
    """Generate the length x position grid of :class:`SweepSpec` under ``out_dir`` unless it is
    already there (built in a temporary sibling folder renamed into place at the end).

    Writes ``text/*.txt`` and ``audio/*.wav``, one manifest ``sweep.jsonl`` (rows ``{"id",
    "label", "text_path", "audio"}``, ids ``sweep-x<scale>-b<bin>-<j>``), ``truth.jsonl`` (per
    sample: ``scale``, ``bin``, the requested ``position``, ``text_words`` and
    ``audio_seconds`` of the input, and where the clue landed: ``word_index``,
    ``onset_seconds``, ``burst_seconds``) and ``COMPLETE`` (the spec as JSON).

    Returns:
        ``{"manifest": .../sweep.jsonl, "truth": .../truth.jsonl}``.

    Raises:
        ValueError: ``out_dir`` exists with a different spec or unrelated content.
    """
    build_once(out_dir, spec, lambda folder: _generate_sweep(folder, spec, progress), "sweep data")
    return {"manifest": Path(out_dir) / "sweep.jsonl", "truth": Path(out_dir) / "truth.jsonl"}
