"""A dataset whose answer lives in a corpus: code words that name digits, via a lookup text.

Each sample's text hides one made-up code word ("vorak") among filler words; its label is the
digit that the code word stands for. Nothing in the sample says which digit that is: only a
corpus entry does ("vorak means seven"), one entry per code word. Train and validation use
one mapping of code words to digits (``corpus_train.jsonl``); the test split uses a NEW
mapping, written in a NEW corpus (``corpus_test.jsonl``). A model that memorised the training
mapping is at chance on the test split; a model that reads the retrieved entry is not.

Files: ``train.jsonl``, ``val.jsonl``, ``test.jsonl`` (rows ``{"id", "text", "label"}``),
``corpus_train.jsonl`` and ``corpus_test.jsonl`` (rows ``{"id": "code-<word>", "text"}``),
``COMPLETE`` (the spec). Same spec, same bytes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mmctx.datasets.demo import _VOCAB, DIGIT_WORDS, _write_jsonl, build_once

__all__ = ["CodeWordSpec", "code_words", "make_codeword_dataset"]

_SYLLABLES = ("ka", "vo", "rel", "mi", "tus", "zan", "qo", "bri", "lek", "du", "fen", "ox")


@dataclass(frozen=True)
class CodeWordSpec:
    """What to generate.

    Attributes:
        num_samples: Queries over all splits (>= 10); split 70/15/15.
        num_codes: Distinct code words (>= 10); the corpus has one entry per code word.
        filler_words: Filler words around the code word in each query (>= 0).
        seed: Base seed (>= 0).
    """

    num_samples: int = 2000
    num_codes: int = 40
    filler_words: int = 6
    seed: int = 0

    def __post_init__(self) -> None:
        for name, ok in (
            ("num_samples", self.num_samples >= 10),
            ("num_codes", 10 <= self.num_codes <= len(_SYLLABLES) ** 3),
            ("filler_words", self.filler_words >= 0),
            ("seed", self.seed >= 0),
        ):
            if not ok:
                raise ValueError(f"CodeWordSpec.{name}={getattr(self, name)!r} is out of range")


def code_words(n: int, seed: int) -> list[str]:
    """``n`` distinct made-up words of three syllables."""
    rng = np.random.default_rng([seed, 7])
    words: list[str] = []
    while len(words) < n:
        word = "".join(_SYLLABLES[i] for i in rng.integers(0, len(_SYLLABLES), 3))
        if word not in words:
            words.append(word)
    return words


def _corpus(words: list[str], mapping: np.ndarray) -> list[dict]:
    return [
        {"id": f"code-{w}", "text": f"{w} means {DIGIT_WORDS[int(d)]}"}
        for w, d in zip(words, mapping, strict=True)
    ]


def _generate(root: Path, spec: CodeWordSpec) -> None:
    rng = np.random.default_rng(spec.seed)
    words = code_words(spec.num_codes, spec.seed)
    train_map = np.arange(spec.num_codes) % 10
    rng.shuffle(train_map)
    test_map = (train_map + rng.integers(1, 10, spec.num_codes)) % 10  # every code changes
    n_train = int(spec.num_samples * 0.7)
    n_val = int(spec.num_samples * 0.15)
    splits = {"train": (0, n_train), "val": (n_train, n_train + n_val)}
    splits["test"] = (n_train + n_val, spec.num_samples)
    for split, (lo, hi) in splits.items():
        mapping = test_map if split == "test" else train_map
        rows = []
        for i in range(lo, hi):
            code = int(rng.integers(spec.num_codes))
            text = [str(w) for w in rng.choice(_VOCAB, spec.filler_words)]
            text.insert(int(rng.integers(0, spec.filler_words + 1)), words[code])
            rows.append({"id": f"q{i:05d}", "text": " ".join(text), "label": int(mapping[code])})
        _write_jsonl(root / f"{split}.jsonl", rows)
    _write_jsonl(root / "corpus_train.jsonl", _corpus(words, train_map))
    _write_jsonl(root / "corpus_test.jsonl", _corpus(words, test_map))
    (root / "COMPLETE").write_text(json.dumps(asdict(spec), sort_keys=True) + "\n")


def make_codeword_dataset(out_dir: str | Path, spec: CodeWordSpec | None = None) -> dict[str, Path]:
    """Generate the dataset under ``out_dir`` unless it is already there.

    Returns:
        The manifest path of each split, keyed ``"train"``, ``"val"`` and ``"test"``; the
        corpora sit beside them.
    """
    spec = spec or CodeWordSpec()
    return build_once(out_dir, spec, lambda folder: _generate(folder, spec), "code-word data")
