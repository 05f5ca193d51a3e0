"""Text encoders: a small Transformer trained from scratch, or a local Hugging Face model.

Input batch (from ``mmctx.data.collate``): ``{"text": list[str], "present": (b,) bool}``.
Output: ``(b, n, out_dim)`` token features; absent samples are fully masked.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from mmctx.features import FeatureSequence
from mmctx.positions import sinusoidal_positions
from mmctx.tokenizer import PAD_ID, HashTokenizer

from .base import ModalityEncoder


class TextTransformerEncoder(ModalityEncoder):
    """Token embeddings + a pre-norm Transformer encoder, or a pretrained Hugging Face model.

    With ``pretrained`` unset, words are hashed into ``vocab_size`` ids
    (:class:`~mmctx.tokenizer.HashTokenizer`) and a ``depth``-layer Transformer of width
    ``dim`` is trained from scratch. With ``pretrained`` set to a local folder (or the
    name of a model already in the local Hugging Face cache), its tokenizer and
    ``AutoModel`` are loaded without touching the network and ``dim``/``depth``/``heads``
    are ignored; ``out_dim`` is the model's hidden size.

    Args:
        dim: Width of the built-in model.
        depth: Transformer layers of the built-in model.
        heads: Attention heads of the built-in model.
        vocab_size: Hash buckets of the built-in tokenizer.
        max_tokens: Texts are cut to this many tokens.
        dropout: Dropout inside the built-in model.
        pretrained: Local path or cached name of a Hugging Face model.
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
        dropout: float = 0.1,
        pretrained: str | None = None,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        self.max_tokens = max_tokens
        self.hf_model: nn.Module | None = None
        if pretrained is not None:
            self._load_pretrained(pretrained, freeze)
            return
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.tokenizer = HashTokenizer(vocab_size, max_tokens)
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout, batch_first=True, norm_first=True, activation="gelu"
        )
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.out_dim = dim

    def _load_pretrained(self, name: str, freeze: bool) -> None:
        from transformers import AutoModel, AutoTokenizer  # heavy: only when asked for

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
        texts, present = batch["text"], batch["present"]
        if self.hf_model is not None:
            return self._forward_pretrained(texts, present)
        ids, mask = self.tokenizer.batch(texts)  # (b, n)
        ids, mask = ids.to(present.device), mask.to(present.device) & present[:, None]
        x = self.embed(ids) + sinusoidal_positions(ids.shape[1], self.out_dim, ids.device)
        # A sample with no tokens would give NaN in attention; let it see its padding
        # (its output is masked out anyway).
        attend = mask.clone()
        attend[~mask.any(1), 0] = True
        x = self.transformer(x, src_key_padding_mask=~attend)  # (b, n, d)
        return FeatureSequence(self.norm(x), mask)

    def _forward_pretrained(self, texts: list[str], present: Tensor) -> FeatureSequence:
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(present.device)
        out = self.hf_model(**enc).last_hidden_state  # (b, n, hidden)
        mask = enc["attention_mask"].bool() & present[:, None]
        return FeatureSequence(out, mask)
