"""Audio encoder: log-mel frames from torchaudio, then a bidirectional RNN over them.

Input batch (from ``mmctx.data.collate``): ``{"waveform": (b, s) float, "lengths": (b,)
long, "sample_rate": int}``; a sample without audio has length 0.
Output: ``(b, n, out_dim)``, one position per ``subsample`` mel frames.

Long clips: with ``chunk_seconds`` the RNN reads the clip as independent chunks of that
length, all chunks of the batch in one call, so a 10-minute clip costs a few hundred
sequential RNN steps instead of tens of thousands, and the RNN's memory per step is bounded
by the chunk. Each chunk's features see only their own chunk; the fusion backbone is what
links chunks. Without it, one pass runs over the whole clip (exact bidirectional context).
"""

from __future__ import annotations

from typing import Any

import torch
import torchaudio
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mmctx.features import FeatureSequence
from mmctx.transforms import SpecAugment

from .base import ModalityEncoder


class AudioRNNEncoder(ModalityEncoder):
    """Log-mel spectrogram, per-utterance normalisation, frame stacking, bidirectional GRU/LSTM.

    Features are computed inside the module, so they run batched on whatever device the
    model is on (the GPU when there is one).

    Args:
        sample_rate: Rate of the incoming waveforms (must match the data's ``sample_rate``).
        n_mels: Mel bins per frame.
        hop_ms: Frame hop in milliseconds.
        win_ms: Analysis window in milliseconds.
        subsample: Adjacent frames stacked into one RNN step (shortens the sequence).
        hidden_dim: RNN width per direction; ``out_dim == 2 * hidden_dim``.
        num_layers: Stacked RNN layers.
        rnn: ``"gru"`` or ``"lstm"``.
        dropout: Dropout between RNN layers.
        max_seconds: Read only the first ``max_seconds`` of each clip (None: all of it).
        chunk_seconds: Run the RNN over independent chunks of this length (None: the
            whole clip as one sequence). Chunks start at 0 s, so padding never moves them.
        spec_augment: SpecAugment masks applied to the log-mel frames in training only,
            batched on the model's device (e.g. ``{class_path: mmctx.transforms.SpecAugment}``).
    """

    modality = "audio"

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 64,
        hop_ms: float = 10.0,
        win_ms: float = 25.0,
        subsample: int = 2,
        hidden_dim: int = 128,
        num_layers: int = 2,
        rnn: str = "gru",
        dropout: float = 0.0,
        max_seconds: float | None = None,
        chunk_seconds: float | None = None,
        spec_augment: SpecAugment | None = None,
    ) -> None:
        super().__init__()
        if rnn not in ("gru", "lstm"):
            raise ValueError(f"rnn must be 'gru' or 'lstm', got {rnn!r}")
        if hidden_dim <= 0 or subsample <= 0:
            raise ValueError(f"hidden_dim and subsample must be > 0, got {hidden_dim}, {subsample}")
        for name, value in (
            ("sample_rate", sample_rate),
            ("n_mels", n_mels),
            ("hop_ms", hop_ms),
            ("win_ms", win_ms),
            ("num_layers", num_layers),
        ):
            if not value > 0:  # also NaN
                raise ValueError(f"{name} must be > 0, got {value}")
        if max_seconds is not None and not max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0 or None, got {max_seconds}")
        self.sample_rate = sample_rate
        self.max_samples = None if max_seconds is None else max(1, int(max_seconds * sample_rate))
        self.hop = max(1, round(sample_rate * hop_ms / 1000))
        win = max(2, round(sample_rate * win_ms / 1000))
        self.half_window = win // 2
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate, n_fft=win, hop_length=self.hop, n_mels=n_mels
        )
        self.subsample = subsample
        self.spec_augment = spec_augment
        if chunk_seconds is not None and chunk_seconds <= 0:
            raise ValueError(f"chunk_seconds must be > 0 or None, got {chunk_seconds}")
        step_ms = hop_ms * subsample
        self.chunk_steps = (
            None if chunk_seconds is None else max(1, round(chunk_seconds * 1000 / step_ms))
        )
        rnn_cls = nn.GRU if rnn == "gru" else nn.LSTM
        self.rnn = rnn_cls(
            n_mels * subsample,
            hidden_dim,
            num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.out_dim = 2 * hidden_dim

    def log_mel(self, waveform: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised log-mel frames.

        Returns:
            ``(frames, valid)``: ``(b, t, n_mels)`` features, ``(b,)`` valid frame counts.
        """
        short = 2 * self.half_window + 1 - waveform.shape[1]
        if short > 0:  # the STFT's reflect padding needs a signal longer than half a window
            waveform = nn.functional.pad(waveform, (0, short))
        with torch.autocast(waveform.device.type, enabled=False):
            mel = self.mel(waveform.float()).clamp_min(1e-10).log().transpose(1, 2)  # (b, t, m)
        # a frame counts when its window lies inside the signal, so padding never changes it
        inside = (lengths - self.half_window).clamp_min(0) // self.hop + 1
        valid = torch.where(lengths > 0, inside, 0).clamp(max=mel.shape[1])
        keep = (torch.arange(mel.shape[1], device=mel.device)[None] < valid[:, None])[..., None]
        count = valid.clamp_min(1)[:, None, None]
        mean = (mel * keep).sum(1, keepdim=True) / count
        std = (((mel - mean) * keep) ** 2).sum(1, keepdim=True).div(count).sqrt()
        return (mel - mean) / (std + 1e-5) * keep, valid

    def forward(self, batch: dict[str, Any]) -> FeatureSequence:
        if batch["sample_rate"] != self.sample_rate:
            raise ValueError(
                f"AudioRNNEncoder(sample_rate={self.sample_rate}) got audio at "
                f"{batch['sample_rate']} Hz; set the data's sample_rate and the encoder's alike"
            )
        waveform, lengths = batch["waveform"], batch["lengths"]
        if self.max_samples is not None:
            waveform, lengths = waveform[:, : self.max_samples], lengths.clamp(max=self.max_samples)
        frames, valid = self.log_mel(waveform, lengths)
        if self.spec_augment is not None:
            frames = self.spec_augment(frames)
        b, t, m = frames.shape
        pad = (-t) % self.subsample
        frames = nn.functional.pad(frames, (0, 0, 0, pad))
        steps = frames.reshape(b, (t + pad) // self.subsample, m * self.subsample)  # (b, n, m*s)
        n_valid = (valid + self.subsample - 1) // self.subsample  # (b,)
        if self.chunk_steps is None:
            out = self._run_rnn(steps, n_valid)
        else:
            out = self._run_chunked(steps, n_valid, self.chunk_steps)
        mask = torch.arange(steps.shape[1], device=out.device)[None] < n_valid[:, None]
        return FeatureSequence(out * mask[..., None], mask)  # an empty clip gives zeros too

    def _run_rnn(self, steps: Tensor, n_valid: Tensor) -> Tensor:
        """The RNN over ``(b, n, f)`` steps of which the first ``n_valid`` count; pads are 0.

        Training on CPU takes :func:`_unpacked_rnn` (same outputs): the backward pass of a
        packed sequence there costs O(n^2), a full-size gradient per time step.
        """
        if self.training and torch.is_grad_enabled() and steps.device.type == "cpu":
            return _unpacked_rnn(self.rnn, steps, n_valid)
        packed = pack_padded_sequence(
            steps, n_valid.clamp_min(1).cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=steps.shape[1])
        return out

    def _run_chunked(self, steps: Tensor, n_valid: Tensor, chunk: int) -> Tensor:
        """The RNN over each ``chunk`` steps as its own sequence; only chunks holding audio run."""
        b, n, f = steps.shape
        k = -(-n // chunk)
        chunks = nn.functional.pad(steps, (0, 0, 0, k * chunk - n)).reshape(b * k, chunk, f)
        starts = torch.arange(k, device=steps.device) * chunk
        lengths = (n_valid[:, None] - starts[None]).clamp(0, chunk).reshape(-1)  # (b * k,)
        used = (lengths > 0).nonzero().squeeze(1)
        out = chunks.new_zeros(b * k, chunk, self.out_dim)
        if used.numel():
            out = out.index_copy(0, used, self._run_rnn(chunks[used], lengths[used]))
        return out.reshape(b, k * chunk, self.out_dim)[:, :n]


def _unpacked_rnn(rnn: nn.GRU | nn.LSTM, steps: Tensor, n_valid: Tensor) -> Tensor:
    """``rnn``'s output on padded ``(b, n, f)`` steps, layer by layer and direction by direction.

    The forward direction runs over the padded batch (padding comes after every valid step);
    the reverse direction runs forward over each sequence flipped within its valid length.
    Outputs past ``n_valid`` are zeroed, as ``pad_packed_sequence`` leaves them.
    """
    n = steps.shape[1]
    if bool((n_valid >= n).all()):  # no padding anywhere: the module itself is exact
        return rnn(steps)[0]
    t = torch.arange(n, device=steps.device)[None]
    length = n_valid.clamp_min(1)[:, None]  # an empty sequence runs one step, as when packed
    valid = t < length  # (b, n)
    flip = torch.where(valid, length - 1 - t, t)[..., None]  # (b, n, 1)
    x = steps
    for layer in range(rnn.num_layers):
        if layer and rnn.dropout:
            x = nn.functional.dropout(x, rnn.dropout, rnn.training)
        ahead = _rnn_layer(rnn, x, layer, "")
        back = _rnn_layer(rnn, x.gather(1, flip.expand_as(x)), layer, "_reverse")
        x = torch.cat([ahead, back.gather(1, flip.expand_as(back))], -1)
    return x * valid[..., None]


def _rnn_layer(rnn: nn.GRU | nn.LSTM, x: Tensor, layer: int, suffix: str) -> Tensor:
    """One layer, one direction of ``rnn`` over batch-first ``x`` from a zero state."""
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    params = [getattr(rnn, f"{name}_l{layer}{suffix}") for name in names]
    h0 = x.new_zeros(1, x.shape[0], rnn.hidden_size)
    if isinstance(rnn, nn.LSTM):
        return torch.lstm(x, (h0, h0), params, True, 1, 0.0, rnn.training, False, True)[0]
    return torch.gru(x, h0, params, True, 1, 0.0, rnn.training, False, True)[0]
