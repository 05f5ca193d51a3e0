"""A dataset whose answer lives in a corpus: code words that name digits, via a lookup text.

Each sample's text hides one made-up code word ("vorak") among filler words; its label is the
digit that the code word stands for. Nothing in the sample says which digit that is: only a
corpus entry does ("vorak means seven"), one entry per code word. Train and validation use
one mapping of code words to digits (``corpus_train.jsonl``); the test split uses a NEW
mapping, written in a NEW corpus (``corpus_test.jsonl``). A model that memorised the training
mapping is at chance on the test split; a model that reads the retrieved entry is not.

Files: ``train.jsonl``, ``val.jsonl``, ``test.jsonl`` (rows ``{"id", "text", "label",
"evidence"}``, ``evidence`` the id of the corpus entry that answers the query),
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
        train_worlds: Mappings ("worlds") of the training corpus (>= 1); a query names its
            world, and the corpus holds one entry per world and code word. Many worlds make
            memorising a mapping harder than reading the retrieved entry.
        rounds: Versions of the training data (>= 1): round r > 0 holds the same queries with
            every training world's mapping redrawn (``train_r<r>.jsonl``,
            ``corpus_train_r<r>.jsonl``); training epoch e reads round ``e % rounds``, so
            memorising a mapping stops paying.
        seed: Base seed (>= 0).
    """

    num_samples: int = 2000
    num_codes: int = 40
    filler_words: int = 6
    train_worlds: int = 10
    rounds: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name, ok in (
            ("num_samples", self.num_samples >= 10),
            ("num_codes", 10 <= self.num_codes <= len(_SYLLABLES) ** 3),
            ("filler_words", self.filler_words >= 0),
            ("train_worlds", self.train_worlds >= 1),
            ("rounds", self.rounds >= 1),
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


def _corpus(world: str, words: list[str], mapping: np.ndarray) -> list[dict]:
    return [
        {"id": f"{world}-{w}", "text": f"in {world} {w} means {DIGIT_WORDS[int(d)]}"}
        for w, d in zip(words, mapping, strict=True)
    ]


def _queries(
    rng: np.random.Generator, ids: range, worlds: list[str], maps: list, words: list[str], spec
) -> list[dict]:
    rows = []
    for i in ids:
        world = int(rng.integers(len(worlds)))
        code = int(rng.integers(spec.num_codes))
        text = [str(w) for w in rng.choice(_VOCAB, spec.filler_words)]
        text.insert(int(rng.integers(0, spec.filler_words + 1)), words[code])
        text = ["in", worlds[world], *text]
        rows.append({
            "id": f"q{i:05d}", "text": " ".join(text), "label": int(maps[world][code]),
            "evidence": f"{worlds[world]}-{words[code]}",
        })  # fmt: skip
    return rows


def _generate(root: Path, spec: CodeWordSpec) -> None:
    rng = np.random.default_rng(spec.seed)
    names = code_words(spec.num_codes + spec.train_worlds + 1, spec.seed)
    words, worlds = names[: spec.num_codes], names[spec.num_codes :]
    maps = [rng.permutation(np.arange(spec.num_codes) % 10) for _ in worlds]
    n_train = int(spec.num_samples * 0.7)
    n_val = int(spec.num_samples * 0.15)
    train_worlds, test_world = worlds[:-1], worlds[-1:]
    remaps = [[rng.permutation(m) for m in maps[:-1]] for _ in range(1, spec.rounds)]
    state = rng.bit_generator.state
    for r, round_maps in enumerate([maps[:-1], *remaps]):
        # Round r: the same queries (same draws), every training world's mapping redrawn.
        rng.bit_generator.state = state
        rows = _queries(rng, range(n_train + n_val), train_worlds, round_maps, words, spec)
        corpus = [
            e for w, m in zip(train_worlds, round_maps, strict=True) for e in _corpus(w, words, m)
        ]
        suffix = f"_r{r}" if r else ""
        _write_jsonl(root / f"train{suffix}.jsonl", rows[:n_train])
        _write_jsonl(root / f"corpus_train{suffix}.jsonl", corpus)
        if not r:
            _write_jsonl(root / "val.jsonl", rows[n_train:])
    test = _queries(
        rng, range(n_train + n_val, spec.num_samples), test_world, maps[-1:], words, spec
    )
    _write_jsonl(root / "test.jsonl", test)
    _write_jsonl(root / "corpus_test.jsonl", _corpus(test_world[0], words, maps[-1]))
    (root / "COMPLETE").write_text(json.dumps(asdict(spec), sort_keys=True) + "\n")


def make_codeword_dataset(out_dir: str | Path, spec: CodeWordSpec | None = None) -> dict[str, Path]:
    """Generate the dataset under ``out_dir`` unless it is already there.

    Returns:
        The manifest path of each split, keyed ``"train"``, ``"val"`` and ``"test"``; the
        corpora sit beside them.
    """
    spec = spec or CodeWordSpec()
    return build_once(out_dir, spec, lambda folder: _generate(folder, spec), "code-word data")
