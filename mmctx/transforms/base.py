"""The transform contract, the per-sample pipeline, and modality dropout."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor


class Transform:
    """One change to one modality, applied with probability ``p``.

    Subclasses set ``modality`` and implement :meth:`apply`. Those that can be swept by the
    robustness report set ``sweep = (parameter, value_at_level_0, value_at_level_1)``.

    Args:
        p: Probability of applying the transform to a sample, in [0, 1].
    """

    modality: ClassVar[str]
    sweep: ClassVar[tuple[str, float, float] | None] = None

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{type(self).__name__}: p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, x: Any, rng: np.random.Generator, **context: Any) -> Any:
        if rng.random() >= self.p:
            return x
        return self.apply(x, rng, **context)

    def apply(self, x: Any, rng: np.random.Generator, **context: Any) -> Any:
        """The change itself (``p`` already decided); returns a new object."""
        raise NotImplementedError

    def at_level(self, level: float) -> Transform:
        """A copy applied always, with the swept parameter at ``level`` in [0, 1] (linear).

        Raises:
            ValueError: The transform has no ``sweep`` or ``level`` is outside [0, 1].
        """
        if self.sweep is None:
            raise ValueError(f"{type(self).__name__} has no sweep parameter")
        if not 0.0 <= level <= 1.0:
            raise ValueError(f"level must be in [0, 1], got {level}")
        name, start, end = self.sweep
        out = copy.copy(self)
        out.p = 1.0
        setattr(out, name, start + (end - start) * level)
        return out

    def __repr__(self) -> str:
        names = [n for n in inspect.signature(type(self)).parameters if hasattr(self, n)]
        args = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
        return f"{type(self).__name__}({args})"


def _check(name: str, ok: bool, value: Any) -> None:
    if not ok:
        raise ValueError(f"{name} is out of range: {value!r}")


class Augment:
    """The per-sample transforms of a config, applied in order to each modality they name.

    Args:
        transforms: Transforms of any modalities.
        sample_rate: Rate of the waveforms (audio transforms need it).
    """

    def __init__(self, transforms: Sequence[Transform], sample_rate: int) -> None:
        for t in transforms:
            if not isinstance(t, Transform):
                raise TypeError(f"augment entries must be mmctx.transforms.Transform, got {t!r}")
        self.transforms = list(transforms)
        self.sample_rate = sample_rate

    def __call__(self, inputs: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """A new inputs dict with the transforms applied (modalities not present are skipped)."""
        out = dict(inputs)
        for t in self.transforms:
            if t.modality in out:
                out[t.modality] = t(out[t.modality], rng, sample_rate=self.sample_rate)
        return out

    def __repr__(self) -> str:
        return f"Augment({self.transforms!r})"


class ModalityDropout:
    """Drop whole modalities per sample, never all that a sample has.

    Each sample loses each of its modalities with that modality's probability; when that
    would leave it with none, one of them, chosen at random, is kept.

    Args:
        p: Drop probability per modality, e.g. ``{"text": 0.3, "audio": 0.3}``.
    """

    def __init__(self, p: dict[str, float]) -> None:
        for m, q in p.items():
            _check(f"modality_dropout[{m!r}]", 0.0 <= q <= 1.0, q)
        self.p = dict(p)

    def choose(
        self, present: dict[str, Tensor], generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Which (sample, modality) pairs to drop: ``{modality: (b,) bool}`` on the CPU."""
        names = list(present)
        have = torch.stack([present[m].cpu() for m in names], 1)  # (b, M)
        prob = torch.tensor([self.p.get(m, 0.0) for m in names])
        drop = (torch.rand(have.shape, generator=generator) < prob) & have
        emptied = (have & ~drop).sum(1) == 0
        if emptied.any():
            score = torch.rand(have.shape, generator=generator).masked_fill(~have, -1.0)
            keep = torch.nn.functional.one_hot(score.argmax(1), len(names)).bool()
            drop &= ~(keep & emptied[:, None])
        return {m: drop[:, i] for i, m in enumerate(names)}
