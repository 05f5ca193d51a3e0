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
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mmctx.datasets.demo import (
    _VOCAB,
    DIGIT_WORDS,
    DemoSpec,
    _make_audio,
    _split_indices,
    _wav_bytes,
    _write_jsonl,
    build_once,
    check_spec,
)

__all__ = ["MODALITIES", "LongSpec", "make_longctx_dataset"]

MODALITIES = ("text", "audio")
# Lead-ins of the telling sentence; the digit word follows. None holds a digit word.
_LEADS = (
    ("the", "secret", "code", "is"),
    ("the", "answer", "is"),
    ("remember", "the", "number"),
    ("the", "hidden", "digit", "is"),
)
_MIN_TEXT_WORDS = 10


@dataclass(frozen=True)
class LongSpec:
    """What to generate; the same spec always yields byte-identical files.

    Attributes:
        num_samples: Total number of samples over all splits (>= 10).
        seed: Base seed (>= 0).
        val_fraction: Share of samples in the validation split, in [0, 1).
        test_fraction: Share of samples in the test split, in [0, 1); the two sum to < 1.
        sample_rate: Audio sample rate in Hz (>= 4000, so the highest DTMF tone is below Nyquist).
        audio_seconds: Length of each noise clip (>= 1); it holds one 0.15-0.35 s DTMF burst.
        text_words: Words in each text (>= 10); one of them is the digit's word.
        modalities: Which of ``"text"`` and ``"audio"`` every sample carries (non-empty, no
            repeats); each carried modality holds the answer.
    """

    num_samples: int = 600
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    sample_rate: int = 8000
    audio_seconds: float = 30.0
    text_words: int = 3000
    modalities: tuple[str, ...] = MODALITIES

    def __post_init__(self) -> None:
        """Raise a ValueError naming the first field whose value is out of range."""
        if isinstance(self.modalities, (list, tuple)):  # a list would not round-trip otherwise
            object.__setattr__(self, "modalities", tuple(self.modalities))
        mods = self.modalities
        check_spec(
            self,
            audio_seconds=self.audio_seconds >= 1.0,
            text_words=self.text_words >= _MIN_TEXT_WORDS,
            modalities=isinstance(mods, tuple)
            and len(mods) > 0
            and len(set(mods)) == len(mods)
            and set(mods) <= set(MODALITIES),
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


def _make_text(rng: np.random.Generator, digit: int, n_words: int) -> tuple[str, int]:
    """``n_words`` filler words holding one telling sentence; return the text and the digit
    word's index, which is uniform over every position the sentence allows."""
    lead = _LEADS[int(rng.integers(len(_LEADS)))]
    where = int(rng.integers(len(lead), n_words))
    filler = [_VOCAB[j] for j in rng.integers(len(_VOCAB), size=n_words - len(lead) - 1)]
    cut = where - len(lead)
    words = [*filler[:cut], *lead, DIGIT_WORDS[digit], *filler[cut:]]
    return " ".join(words) + "\n", where


def _make_sample(
    index: int, label: int, spec: LongSpec, demo: DemoSpec, root: Path
) -> tuple[dict, dict]:
    """Write sample ``index``'s files under ``root``; return its manifest row and truth row."""
    sample_id = f"long-{index:06d}"
    row: dict = {"id": sample_id, "label": label}
    truth: dict = {"id": sample_id, "label": label}
    if "text" in spec.modalities:
        rng = np.random.default_rng([spec.seed, index, 0])
        text, truth["word_index"] = _make_text(rng, label, spec.text_words)
        row["text_path"] = f"text/{sample_id}.txt"
        (root / row["text_path"]).write_text(text, encoding="utf-8")
    if "audio" in spec.modalities:
        clip, onset, length = _make_audio(np.random.default_rng([spec.seed, index, 1]), label, demo)
        row["audio"] = f"audio/{sample_id}.wav"
        (root / row["audio"]).write_bytes(_wav_bytes(clip, spec.sample_rate))
        truth["onset_seconds"] = onset / spec.sample_rate
        truth["burst_seconds"] = length / spec.sample_rate
    return row, truth


def _generate(root: Path, spec: LongSpec, progress: bool) -> None:
    """Write every file of the dataset into the empty folder ``root``, ending with COMPLETE."""
    for folder in spec.modalities:
        (root / folder).mkdir()
    demo = _as_demo_spec(spec)
    master = np.random.default_rng(spec.seed)
    labels = master.permutation(np.arange(spec.num_samples) % 10)
    order = master.permutation(spec.num_samples)
    indices = range(spec.num_samples)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc="long-context data", unit="sample")
    made = [_make_sample(i, int(labels[i]), spec, demo, root) for i in indices]
    rows, truths = zip(*made, strict=True)
    for name, picked in _split_indices(demo, order).items():
        _write_jsonl(root / f"{name}.jsonl", [rows[i] for i in picked])
    _write_jsonl(root / "truth.jsonl", list(truths))
    (root / "COMPLETE").write_text(json.dumps(asdict(spec), sort_keys=True) + "\n")


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
