"""Text transforms: word deletion, swap, insertion, typos, synonyms."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Transform, _check


class _TextTransform(Transform):
    modality = "text"

    def apply(self, x: str, rng: np.random.Generator, **context: Any) -> str:
        words = x.split()
        if not words:
            return x
        changed = self.change_words(words, rng)
        return " ".join(changed) if changed else words[int(rng.integers(len(words)))]

    def change_words(self, words: list[str], rng: np.random.Generator) -> list[str]:
        raise NotImplementedError


class WordDeletion(_TextTransform):
    """Delete each word with probability ``rate`` (at least one word always stays).

    Args:
        rate: Per-word deletion probability, in [0, 1].
        p: Probability of applying.
    """

    sweep = ("rate", 0.0, 0.9)

    def __init__(self, rate: float = 0.1, p: float = 0.5) -> None:
        super().__init__(p)
        _check("WordDeletion.rate", 0.0 <= rate <= 1.0, rate)
        self.rate = rate

    def change_words(self, words: list[str], rng: np.random.Generator) -> list[str]:
        keep = rng.random(len(words)) >= self.rate
        return [w for w, k in zip(words, keep, strict=True) if k]


class WordSwap(_TextTransform):
    """Swap ``round(rate * n)`` (at least one) random pairs of words.

    Args:
        rate: Swaps per word, in [0, 1].
        p: Probability of applying.
    """

    def __init__(self, rate: float = 0.1, p: float = 0.5) -> None:
        super().__init__(p)
        _check("WordSwap.rate", 0.0 <= rate <= 1.0, rate)
        self.rate = rate

    def change_words(self, words: list[str], rng: np.random.Generator) -> list[str]:
        words = list(words)
        for _ in range(max(1, round(self.rate * len(words)))):
            i, j = rng.integers(len(words), size=2)
            words[i], words[j] = words[j], words[i]
        return words


class WordInsertion(_TextTransform):
    """Insert ``round(rate * n)`` (at least one) words at random places.

    Args:
        rate: Insertions per word, in [0, 1].
        vocabulary: Words to insert; default: words of the same text.
        p: Probability of applying.
    """

    def __init__(
        self, rate: float = 0.1, vocabulary: list[str] | None = None, p: float = 0.5
    ) -> None:
        super().__init__(p)
        _check("WordInsertion.rate", 0.0 <= rate <= 1.0, rate)
        _check("WordInsertion.vocabulary", vocabulary is None or len(vocabulary) > 0, vocabulary)
        self.rate = rate
        self.vocabulary = vocabulary

    def change_words(self, words: list[str], rng: np.random.Generator) -> list[str]:
        pool = self.vocabulary or words
        words = list(words)
        for _ in range(max(1, round(self.rate * len(words)))):
            words.insert(int(rng.integers(len(words) + 1)), pool[int(rng.integers(len(pool)))])
        return words


_KEYBOARD_ROWS = (("qwertyuiop", 0.0), ("asdfghjkl", 0.25), ("zxcvbnm", 0.75))  # row, stagger


def _keyboard_neighbours() -> dict[str, str]:
    """Keys within one key-width of each letter on a QWERTY keyboard (same or next row)."""
    where = {
        c: (r, i + shift)
        for r, (row, shift) in enumerate(_KEYBOARD_ROWS)
        for i, c in enumerate(row)
    }
    return {
        c: "".join(
            d for d, (r2, x2) in where.items() if d != c and abs(r2 - r) <= 1 and abs(x2 - x) <= 1
        )
        for c, (r, x) in where.items()
    }


KEYBOARD_NEIGHBOURS = _keyboard_neighbours()


class CharTypos(_TextTransform):
    """Replace each letter with probability ``rate`` by a neighbouring key (QWERTY), keeping case.

    Args:
        rate: Per-letter typo probability, in [0, 1].
        p: Probability of applying.
    """

    sweep = ("rate", 0.0, 0.5)

    def __init__(self, rate: float = 0.05, p: float = 0.5) -> None:
        super().__init__(p)
        _check("CharTypos.rate", 0.0 <= rate <= 1.0, rate)
        self.rate = rate

    def change_words(self, words: list[str], rng: np.random.Generator) -> list[str]:
        return [self._typo(w, rng) for w in words]

    def _typo(self, word: str, rng: np.random.Generator) -> str:
        chars = list(word)
        for i in np.flatnonzero(rng.random(len(chars)) < self.rate):
            near = KEYBOARD_NEIGHBOURS.get(chars[i].lower())
            if near:
                typo = near[int(rng.integers(len(near)))]
                chars[i] = typo.upper() if chars[i].isupper() else typo
        return "".join(chars)


# A small built-in table; pass your own with ``synonyms=``.
SYNONYMS: dict[str, list[str]] = {
    "big": ["large", "huge"],
    "large": ["big", "huge"],
    "small": ["little", "tiny"],
    "little": ["small", "tiny"],
    "quick": ["fast", "rapid"],
    "fast": ["quick", "rapid"],
    "slow": ["unhurried", "sluggish"],
    "happy": ["glad", "cheerful"],
    "sad": ["unhappy", "gloomy"],
    "good": ["fine", "nice"],
    "bad": ["poor", "awful"],
    "old": ["aged", "ancient"],
    "new": ["fresh", "recent"],
    "warm": ["mild", "hot"],
    "cold": ["chilly", "cool"],
    "bright": ["shiny", "vivid"],
    "quiet": ["calm", "silent"],
    "soft": ["gentle", "tender"],
    "begin": ["start", "commence"],
    "start": ["begin", "commence"],
    "end": ["finish", "stop"],
    "look": ["see", "watch"],
    "see": ["look", "notice"],
    "say": ["tell", "state"],
    "carry": ["bring", "hold"],
    "bring": ["carry", "fetch"],
    "find": ["discover", "locate"],
    "road": ["street", "path"],
    "street": ["road", "avenue"],
    "house": ["home", "building"],
    "car": ["automobile", "vehicle"],
    "picture": ["image", "photo"],
    "image": ["picture", "photo"],
    "number": ["figure", "digit"],
    "digit": ["number", "figure"],
    "near": ["close", "beside"],
    "maybe": ["perhaps", "possibly"],
    "evening": ["dusk", "night"],
    "morning": ["dawn", "daybreak"],
    "forest": ["woods", "woodland"],
}


class SynonymReplacement(_TextTransform):
    """Replace each word found in the synonym table, with probability ``rate``.

    Args:
        rate: Per-word replacement probability for words in the table, in [0, 1].
        synonyms: ``{word: [synonym, ...]}``, lower-case keys (default: the built-in table).
        p: Probability of applying.
    """

    def __init__(
        self, rate: float = 0.3, synonyms: dict[str, list[str]] | None = None, p: float = 0.5
    ) -> None:
        super().__init__(p)
        _check("SynonymReplacement.rate", 0.0 <= rate <= 1.0, rate)
        self.rate = rate
        self.synonyms = SYNONYMS if synonyms is None else synonyms

    def change_words(self, words: list[str], rng: np.random.Generator) -> list[str]:
        out = []
        for w in words:
            options = self.synonyms.get(w.lower())
            if options and rng.random() < self.rate:
                w = options[int(rng.integers(len(options)))]
            out.append(w)
        return out
