"""A built-in word tokenizer that needs no vocabulary file and no training.

Words are lower-cased, split on word boundaries, and hashed (CRC-32) into a fixed number
of buckets. Collisions are rare at the default size and harmless for training from
scratch; the point is a tokenizer that is deterministic across processes and machines and
ships nothing.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import torch
from torch import Tensor

_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)

PAD_ID = 0
RESERVED = 1  # ids below this are special


class HashTokenizer:
    """Split text into words and map each to one of ``vocab_size - RESERVED`` hash buckets.

    Args:
        vocab_size: Number of token ids, padding included.
        max_tokens: Longer texts are cut to this many tokens.
    """

    def __init__(self, vocab_size: int = 8192, max_tokens: int = 512) -> None:
        if vocab_size <= RESERVED:
            raise ValueError(f"vocab_size must be > {RESERVED}, got {vocab_size}")
        if max_tokens <= 0:
            raise ValueError(f"max_tokens must be > 0, got {max_tokens}")
        self.vocab_size = vocab_size
        self.max_tokens = max_tokens

    def encode(self, text: str) -> list[int]:
        buckets = self.vocab_size - RESERVED
        words = _WORD.findall(text.lower())[: self.max_tokens]
        return [RESERVED + zlib.crc32(w.encode("utf-8")) % buckets for w in words]

    def batch(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Encode and pad a batch.

        Returns:
            ``(ids, mask)``: ``(b, n)`` long ids and ``(b, n)`` bool mask, ``n >= 1``.
        """
        encoded = [self.encode(t) for t in texts]
        n = max(1, max((len(e) for e in encoded), default=1))
        ids = torch.full((len(texts), n), PAD_ID, dtype=torch.long)
        for row, e in enumerate(encoded):
            ids[row, : len(e)] = torch.tensor(e, dtype=torch.long)
        return ids, ids != PAD_ID
