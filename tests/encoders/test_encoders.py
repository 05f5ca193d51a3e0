"""Every built-in encoder: shapes, masks of absent samples, gradients, padding invariance."""

import pytest
import torch

import mmctx.encoders
from mmctx.encoders import (
    AudioRNNEncoder,
    ImageCNNEncoder,
    ModalityEncoder,
    TextTransformerEncoder,
    VideoCNNEncoder,
)
from mmctx.encoders.text import encode_in_windows


def text_batch():
    return {
        "text": ["one two three", "", "four five six seven eight"],
        "present": torch.tensor([True, False, True]),
    }


def image_batch():
    pixels = torch.randint(0, 256, (3, 2, 1, 16, 16), dtype=torch.uint8)
    return {"pixels": pixels, "mask": torch.tensor([[True, True], [False, False], [True, False]])}


def audio_batch():
    lengths = torch.tensor([8000, 0, 3000])
    wave = torch.randn(3, 8000) * 0.1
    wave[1:, :] *= torch.arange(8000)[None] < lengths[1:, None]
    return {"waveform": wave, "lengths": lengths, "sample_rate": 8000}


def video_batch():
    frames = torch.randint(0, 256, (3, 4, 1, 16, 16), dtype=torch.uint8)
    return {"frames": frames, "mask": torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]]) > 0}


# A tiny variant of every encoder mmctx.encoders exports, with a batch of its modality.
TINY = {
    TextTransformerEncoder: (
        lambda: TextTransformerEncoder(dim=16, depth=1, heads=2, vocab_size=64),
        text_batch,
    ),
    ImageCNNEncoder: (lambda: ImageCNNEncoder(out_dim=16, in_channels=1, width=4), image_batch),
    AudioRNNEncoder: (
        lambda: AudioRNNEncoder(sample_rate=8000, n_mels=16, hidden_dim=8, num_layers=1),
        audio_batch,
    ),
    VideoCNNEncoder: (lambda: VideoCNNEncoder(out_dim=16, in_channels=1, width=4), video_batch),
}
EXPORTED = sorted(
    (
        obj
        for obj in vars(mmctx.encoders).values()
        if isinstance(obj, type) and issubclass(obj, ModalityEncoder) and obj is not ModalityEncoder
    ),
    key=lambda cls: cls.__name__,
)


@pytest.mark.parametrize("cls", EXPORTED, ids=[c.__name__ for c in EXPORTED])
def test_shapes_masks_and_gradients(cls):
    assert cls in TINY, f"add a tiny {cls.__name__} and a batch for it to TINY"
    make, batch_fn = TINY[cls]
    enc = make()
    name = enc.modality
    assert isinstance(enc, cls)
    seq = enc(batch_fn()).check(name)
    assert seq.features.shape[0] == 3 and seq.features.shape[2] == enc.out_dim
    assert not seq.mask[1].any(), "an absent sample must be fully masked"
    assert seq.mask[0].any() and seq.mask[2].any()
    assert torch.isfinite(seq.features).all()
    (seq.features * seq.mask[..., None]).sum().backward()
    grads = [p.grad for p in enc.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_image_positions_follow_the_feature_map():
    enc = ImageCNNEncoder(out_dim=8, in_channels=1, width=4)
    seq = enc(image_batch())
    assert seq.features.shape[1] == 2 * 2 * 2  # k=2 images, 16/8 = 2x2 cells each
    assert seq.mask[2].tolist() == [True] * 4 + [False] * 4


def test_audio_mask_follows_length_and_padding_does_not_leak():
    enc = AudioRNNEncoder(
        sample_rate=8000, n_mels=16, hop_ms=10, subsample=2, hidden_dim=8, num_layers=1
    ).eval()
    batch = audio_batch()
    seq = enc(batch)
    # 3000 samples, window 200, hop 80: (3000 - 100) // 80 + 1 = 37 frames -> 19 steps of 2
    assert seq.mask[2].sum() == 19 and seq.mask[0].sum() == 50
    alone = enc(
        {
            "waveform": batch["waveform"][2:, :3000],
            "lengths": batch["lengths"][2:],
            "sample_rate": 8000,
        }
    )
    torch.testing.assert_close(alone.features[0, :19], seq.features[2, :19], atol=1e-5, rtol=1e-4)


def test_audio_chunks_are_independent_rnn_runs():
    torch.manual_seed(0)
    enc = AudioRNNEncoder(sample_rate=8000, n_mels=4, hidden_dim=3, num_layers=1).eval()
    steps = torch.randn(3, 23, 8)
    n_valid = torch.tensor([23, 10, 0])
    out = enc._run_chunked(steps, n_valid, chunk=5)
    assert out.shape == (3, 23, 6)
    for start in range(0, 23, 5):
        piece = steps[:, start : start + 5]
        lengths = (n_valid - start).clamp(0, 5)
        alone = enc._run_rnn(piece, lengths)
        for row, n in enumerate(lengths.tolist()):
            got = out[row, start : start + piece.shape[1]]
            torch.testing.assert_close(got[:n], alone[row, :n])
            assert not got[n:].any()  # positions past the audio stay zero


@pytest.mark.parametrize("rnn", ["gru", "lstm"])
def test_audio_training_path_without_packing_matches_the_packed_rnn(rnn):
    """Training on CPU runs the RNN unpacked (a packed backward is O(n^2) there): same
    outputs, zeros past each length, same gradients, for both directions and two layers."""
    torch.manual_seed(0)
    enc = AudioRNNEncoder(sample_rate=8000, n_mels=3, hidden_dim=5, num_layers=2, rnn=rnn)
    steps = torch.randn(4, 9, 6)
    n_valid = torch.tensor([9, 4, 1, 0])
    grads = []
    for training in (True, False):  # train mode: unpacked; eval mode: packed
        enc.train(training)
        x = steps.clone().requires_grad_()
        out = enc._run_rnn(x, n_valid)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append((out.detach(), x.grad, [p.grad.clone() for p in enc.rnn.parameters()]))
        enc.zero_grad()
    (out_u, dx_u, dw_u), (out_p, dx_p, dw_p) = grads
    assert out_u.shape == out_p.shape == (4, 9, 10)
    torch.testing.assert_close(out_u, out_p, atol=1e-6, rtol=1e-5)
    assert not out_u[1, 4:].any() and not out_u[3, 1:].any()
    torch.testing.assert_close(dx_u, dx_p, atol=1e-6, rtol=1e-5)
    for a, b in zip(dw_u, dw_p, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_audio_chunking_covering_the_clip_is_the_plain_encoder():
    torch.manual_seed(0)
    kw = dict(sample_rate=8000, n_mels=16, hop_ms=10, subsample=2, hidden_dim=8, num_layers=1)
    plain = AudioRNNEncoder(**kw).eval()
    chunked = AudioRNNEncoder(**kw, chunk_seconds=2.0).eval()
    chunked.load_state_dict(plain.state_dict())
    batch = audio_batch()  # clips of at most 1 s: one chunk each
    a, b = plain(batch), chunked(batch)
    torch.testing.assert_close(a.features, b.features)
    assert torch.equal(a.mask, b.mask)
    with pytest.raises(ValueError, match="chunk_seconds"):
        AudioRNNEncoder(chunk_seconds=0)


def test_audio_rejects_a_different_sample_rate():
    enc = AudioRNNEncoder(sample_rate=16000, n_mels=16, hidden_dim=8)
    with pytest.raises(ValueError, match="got audio at 8000 Hz"):
        enc(audio_batch())


def test_text_padding_does_not_change_a_sample():
    enc = TextTransformerEncoder(dim=16, depth=1, heads=2, vocab_size=64, dropout=0.0).eval()
    both = enc(
        {
            "text": ["short one", "a much longer text than the other"],
            "present": torch.tensor([True, True]),
        }
    )
    alone = enc({"text": ["short one"], "present": torch.tensor([True])})
    torch.testing.assert_close(alone.features[0], both.features[0, :2], atol=1e-5, rtol=1e-4)


def test_image_channel_mismatch_is_explained():
    with pytest.raises(ValueError, match="in_channels=3.*1-channel"):
        ImageCNNEncoder(out_dim=8, in_channels=3, width=4)(image_batch())


def test_torchvision_backbone_by_name():
    enc = ImageCNNEncoder(out_dim=8, in_channels=1, arch="resnet18")
    seq = enc(
        {
            "pixels": torch.zeros(1, 1, 1, 64, 64, dtype=torch.uint8),
            "mask": torch.ones(1, 1, dtype=torch.bool),
        }
    )
    assert seq.features.shape == (1, 4, 8)  # resnet stride 32: 64 -> 2x2
    with pytest.raises(ValueError, match="arch='nope'"):
        ImageCNNEncoder(arch="nope")


def test_hf_text_model_from_a_local_folder_offline(tmp_path, monkeypatch):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "one", "two", "three"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path / "tiny")
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    BertModel(config).save_pretrained(tmp_path / "tiny")
    enc = TextTransformerEncoder(pretrained=str(tmp_path / "tiny"), freeze=True)
    seq = enc(text_batch())
    assert enc.out_dim == 16 and seq.features.shape[-1] == 16
    assert not seq.mask[1].any() and seq.mask[0].sum() == 3  # one two three (specials dropped)
    assert not any(p.requires_grad for p in enc.parameters())
    # a text longer than the model's window is read in windows, one position per token
    long_text = " ".join(["one", "two", "three"] * 10)
    windowed = TextTransformerEncoder(pretrained=str(tmp_path / "tiny"), window=8, stride=6)
    seq = windowed({"text": [long_text, "two"], "present": torch.tensor([True, True])})
    assert seq.features.shape == (2, 30, 16) and seq.mask.sum(1).tolist() == [30, 1]


def test_missing_pretrained_model_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="mmctx never downloads"):
        TextTransformerEncoder(pretrained=str(tmp_path / "absent"))


def test_encoder_subclass_must_name_its_modality():
    with pytest.raises(TypeError, match="must set the class attribute `modality`"):

        class NoModality(ModalityEncoder):
            pass


def test_windows_are_stitched_without_duplicates_or_gaps():
    ids = torch.arange(1, 24)[None].repeat(2, 1)  # (2, 23) tokens 1..23
    mask = torch.ones_like(ids, dtype=torch.bool)
    calls = []

    def encode(win_ids, win_mask):
        calls.append(win_ids.shape)
        offset = torch.arange(win_ids.shape[1]).expand_as(win_ids)
        return torch.stack((win_ids.float(), offset.float()), dim=-1)  # (b', w, 2): id, offset

    out = encode_in_windows(encode, ids, mask, window=8, stride=5)
    assert calls == [(2 * 4, 8)]  # windows start at 0, 5, 10, 15
    assert out[0, :, 0].tolist() == list(range(1, 24))  # every token once, in order
    # overlap 3: window k supplies tokens from 5k + 1 on (so only the text's first token sits
    # at a window's left edge), and the last window supplies everything to the end
    assert out[0, :, 1].tolist() == [0, 1, 2, 3, 4, 5] + [1, 2, 3, 4, 5] * 2 + [1, 2, 3, 4, 5, 6, 7]


def test_a_padded_row_takes_its_tokens_from_its_own_windows():
    # Row 1 has 12 tokens: alone its windows start at 0 and 5, and tokens 11 and 12 come
    # from the window at 5 (offsets 5, 6); the batch's longer row must not move them into
    # the window at 10, which a row of 12 tokens alone never has.
    ids = torch.arange(1, 24)[None].repeat(2, 1)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 12:] = False

    def encode(win_ids, win_mask):
        offset = torch.arange(win_ids.shape[1]).expand_as(win_ids)
        return torch.stack((win_ids.float(), offset.float()), dim=-1)

    out = encode_in_windows(encode, ids, mask, window=8, stride=5)
    alone = encode_in_windows(encode, ids[1:, :12], mask[1:, :12], window=8, stride=5)
    assert out[1, :12].tolist() == alone[0].tolist()
    assert out[1, :12, 1].tolist() == [0, 1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 6]
    assert out[0, :, 1].tolist() == [0, 1, 2, 3, 4, 5] + [1, 2, 3, 4, 5] * 2 + [1, 2, 3, 4, 5, 6, 7]

    enc = TextTransformerEncoder(
        dim=16, depth=1, heads=2, vocab_size=64, window=8, stride=5, dropout=0.0
    ).eval()
    texts = [" ".join(f"w{i}" for i in range(n)) for n in (12, 30)]
    both = enc({"text": texts, "present": torch.tensor([True, True])})
    short = enc({"text": texts[:1], "present": torch.tensor([True])})
    torch.testing.assert_close(short.features[0], both.features[0, :12], atol=1e-5, rtol=1e-4)


def test_builtin_text_encoder_reads_long_texts_in_windows():
    enc = TextTransformerEncoder(
        dim=16, depth=1, heads=2, vocab_size=64, max_tokens=100, window=8, stride=6
    )
    seq = enc({"text": [" ".join(["w"] * 50), "short"], "present": torch.tensor([True, True])})
    assert seq.features.shape == (2, 50, 16) and seq.mask.sum(1).tolist() == [50, 1]
    with pytest.raises(ValueError, match="stride must be in 1..window \\(8\\), got 9"):
        TextTransformerEncoder(dim=16, heads=2, window=8, stride=9)


@pytest.mark.parametrize("width", [1, 50])
def test_audio_batch_without_audio_or_shorter_than_a_window(width):
    """A batch whose clips are all absent (collated to width 1) or very short still encodes."""
    enc = AudioRNNEncoder(sample_rate=8000, n_mels=16, hidden_dim=8, num_layers=1)
    lengths = torch.tensor([0, width if width > 1 else 0])
    seq = enc({"waveform": torch.ones(2, width) * 0.1, "lengths": lengths, "sample_rate": 8000})
    assert not seq.mask[0].any() and torch.isfinite(seq.features).all()
    assert seq.mask[1].any() == (width > 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"window": 0}, "window must be >= 1"), ({"stride": 0}, "stride must be >= 1")],
)
def test_text_window_and_stride_zero_are_errors_not_defaults(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TextTransformerEncoder(dim=16, depth=1, heads=2, **kwargs)


def test_weights_path_with_the_small_cnn_is_an_error():
    with pytest.raises(ValueError, match="weights_path='w.pt' loads a torchvision trunk"):
        ImageCNNEncoder(arch="small", weights_path="w.pt")
