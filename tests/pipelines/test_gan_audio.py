"""MultimodalGAN with an audio target: spectrogram networks, waveforms, WAV files, gan-eval."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf
import torch

from mmctx.data import Preprocess
from mmctx.data.manifest import parse_row
from mmctx.data.paths import UNCONFINED
from mmctx.encoders import TextTransformerEncoder
from mmctx.errors import ConfigError
from mmctx.nn.backbones import TransformerBackbone
from mmctx.pipelines import AudioTarget, MultimodalGAN
from mmctx.pipelines.generate import evaluate_gan, generate_samples

RATE = 8000


def _gan(**target_args) -> MultimodalGAN:
    target = AudioTarget(**{"sample_rate": RATE, "seconds": 0.5, "n_mels": 16, **target_args})
    return MultimodalGAN(
        {"text": TextTransformerEncoder(dim=16, depth=1, heads=2, vocab_size=128)},
        TransformerBackbone(dim=16, depth=1, heads=2),
        list("abc"),
        target=target,
        z_dim=8,
        cond_dim=8,
        g_width=4,
        d_width=4,
        ac_weight=1.0,
    )


def _text(texts: list[str]) -> dict:
    return {"text": {"text": texts, "present": torch.ones(len(texts), dtype=torch.bool)}}


@pytest.mark.parametrize(
    ("seconds", "n_mels", "hop", "frames"),
    [(1.0, 40, 256, 32), (0.5, 32, 128, 32), (0.8, 64, 128, 51), (0.3, 16, 64, 38)],
)
def test_audio_generator_and_discriminator_shapes_and_gradients(seconds, n_mels, hop, frames):
    target = AudioTarget(RATE, seconds, n_mels, n_fft=256, hop_length=hop)
    assert target.shape == (1, n_mels, frames)
    g, d = target.networks(z_dim=8, cond_dim=6, g_width=4, d_width=4, num_classes=3, sn=True)
    z, cond = torch.randn(2, 8), torch.randn(2, 6, requires_grad=True)
    x = g(z, cond)
    assert x.shape == (2, 1, n_mels, frames) and x.abs().max() <= 1
    score, logits = d(x, cond)
    assert score.shape == (2,) and logits.shape == (2, 3)
    (score.sum() + logits.sum()).backward()
    for name, p in [*g.named_parameters(), *d.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert cond.grad.abs().sum() > 0  # the condition reaches both networks
    # real clips of any length become grids of the same shape
    real, has = target.real(
        {"waveform": torch.randn(3, 2000) * 0.1, "lengths": torch.tensor([2000, 5, 0])}
    )
    assert real.shape == (3, 1, n_mels, frames) and has.tolist() == [True, True, False]


def test_a_tone_survives_the_spectrogram_and_griffin_lim():
    target = AudioTarget(RATE, seconds=0.5, n_mels=40, n_fft=512, hop_length=128)
    t = torch.arange(4000) / RATE
    tone = 0.5 * torch.sin(2 * torch.pi * 1000 * t)
    grid = target.grids(tone[None])  # (1, 1, 40, t)
    loudest_row = int(grid[0, 0].mean(1).argmax())
    assert grid.max() == 1.0 and grid.min() >= -1.0
    silence = target.grids(torch.zeros(1, 4000))
    assert torch.equal(silence, torch.full_like(silence, -1.0))  # silence is the floor, not loud
    wave = target.waveforms(target.pictures(grid))
    assert wave.shape == (1, 4000) and wave.abs().max() == pytest.approx(0.9)
    spectrum = np.abs(np.fft.rfft(wave[0].numpy()))
    assert abs(np.argmax(spectrum) * RATE / 4000 - 1000) < 40  # the same pitch comes back
    assert target.grids(wave)[0, 0].mean(1).argmax() == loudest_row


def test_generated_wavs_are_valid_of_the_duration_and_rate_and_seeded(tmp_path: Path):
    torch.manual_seed(0)
    model = _gan(seconds=0.5).eval()
    rows = [(1, {"id": "a b", "text": "a a"}), (2, {"id": "c", "text": "the c"})]
    samples = [parse_row(r, n, tmp_path, data_root=UNCONFINED, check_labels=False) for n, r in rows]
    pre = Preprocess(sample_rate=RATE)
    assert generate_samples(model, samples, pre, tmp_path / "one", n=2, seed=3) == (2, [])
    generate_samples(model, samples, pre, tmp_path / "two", n=2, seed=3)
    generate_samples(model, samples, pre, tmp_path / "other", n=2, seed=4)
    names = sorted(p.name for p in (tmp_path / "one").glob("*.wav"))
    assert names == ["a_b_00.wav", "a_b_01.wav", "c_00.wav", "c_01.wav"]
    info = sf.info(str(tmp_path / "one" / "c_01.wav"))
    assert (info.samplerate, info.frames, info.channels, info.subtype) == (RATE, 4000, 1, "PCM_16")
    wave, _ = sf.read(str(tmp_path / "one" / "c_01.wav"), dtype="float32")
    assert np.isfinite(wave).all() and 0.85 < np.abs(wave).max() <= 0.91
    same = [(tmp_path / d / "c_01.wav").read_bytes() for d in ("one", "two", "other")]
    assert same[0] == same[1] and same[0] != same[2]  # same seed, same audio
    sheet = cv2.imread(str(tmp_path / "one" / "contact_sheet.png"), cv2.IMREAD_UNCHANGED)
    assert sheet.ndim == 2 and sheet.shape[0] > 2 * 16  # two rows of 16-bin spectrograms


def test_one_manual_step_with_an_audio_target_updates_every_part():
    import lightning as L

    from tests.pipelines.test_gan import _OneBatch

    model = _gan(seconds=0.25)
    batch = {
        "ids": list("wxyz"),
        "lines": [1, 2, 3, 4],
        "errors": [],
        "inputs": {
            **_text(["an a", "a b", "the c", "a a"]),
            "audio": {
                "waveform": torch.randn(4, 2400) * 0.1,
                "lengths": torch.tensor([2400, 1200, 2400, 0]),
                "sample_rate": RATE,
            },
        },
        "present": {"text": torch.ones(4, dtype=torch.bool)},
        "label": torch.tensor([0, 1, 2, 0]),
    }
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, datamodule=_OneBatch(batch))
    after = model.state_dict()
    for part in ("generator.", "discriminator.", "context.", "aux_head.", "generator_ema."):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(part)), part
    assert model.missing_target == {"z"}  # the row without audio was skipped and counted


def test_the_audio_target_refuses_data_of_another_sample_rate():
    from types import SimpleNamespace

    model = _gan()
    data = SimpleNamespace(preprocess=Preprocess(sample_rate=16000))
    model.trainer = SimpleNamespace(datamodule=data)  # noqa: B010 - setup reads the datamodule
    with pytest.raises(ConfigError, match="sample_rate=8000 .*data.sample_rate=16000"):
        model.setup("fit")


class _FixedJudge:
    """A classifier whose answers the test fixes: one list of predictions per call."""

    def __init__(self, answers: list[list[int]]) -> None:
        self.answers, self.seen = list(answers), []

    def __call__(self, inputs: dict) -> torch.Tensor:
        self.seen.append(inputs["audio"]["waveform"].shape)
        return torch.nn.functional.one_hot(torch.tensor(self.answers.pop(0)), 3).float()


def test_gan_eval_arithmetic_on_audio_against_a_hand_computed_case():
    from mmctx.pipelines.generate import _pairwise

    torch.manual_seed(0)
    model = _gan(seconds=0.25).eval()
    waveform = torch.randn(4, 3000) * 0.1
    batch = {
        "ids": ["p", "q", "r", "s"],
        "inputs": {
            **_text(["a", "b", "a", "c"]),
            "audio": {
                "waveform": waveform,
                "lengths": torch.tensor([3000, 3000, 3000, 0]),
                "sample_rate": RATE,
            },
        },
        "present": {"text": torch.tensor([True, True, True, False])},  # s has no condition
        "label": torch.tensor([0, 1, 0, 2]),
    }
    judge = _FixedJudge(
        [
            [0, 2, 1],  # the three real recordings as they are: p right, q and r wrong
            [0, 1, 0],  # the same, rebuilt from their spectrograms: all right
            [0, 0, 1, 1] + [1, 2, 0, 0] + [0, 0, 0, 0],  # 4 clips each for p, q, r: 2 + 1 + 4
        ]
    )
    result = evaluate_gan(model, judge, Preprocess(sample_rate=RATE), iter([(batch, [])]), n=4)
    assert judge.seen == [(3, 3000), (3, 2000), (12, 2000)]  # recordings whole; drawn 0.25 s
    assert result["classifier_accuracy_real"] == pytest.approx(1 / 3)
    assert result["classifier_accuracy_real_resynthesised"] == 1.0
    assert result["conditional_accuracy"] == pytest.approx(7 / 12)
    assert result["per_class_accuracy"] == {"a": 6 / 8, "b": 1 / 4}
    assert result["conditions"] == 3 and result["samples"] == 12
    assert result["conditions_without_any_conditioning_modality"] == 1
    # real diversity: the one class with two recordings (p and r), on their spectrograms
    target = model.target
    real_pair = target.pictures(target.grids(waveform[[0, 2]]))
    assert result["diversity_per_class_real"] == pytest.approx(float(_pairwise(real_pair)))
    assert result["diversity_ratio"] == pytest.approx(
        result["diversity_per_condition"] / result["diversity_per_class_real"]
    )
    assert result["sheet"].shape == (2, 4, 1, 16, 1 + 2000 // 128)  # one row per class


def test_more_mel_bins_than_the_fft_resolves_still_give_waveforms():
    target = AudioTarget(RATE, seconds=0.25, n_mels=128, n_fft=256, hop_length=128)  # empty filters
    pictures = target.pictures(target.grids(torch.randn(2, 2000) * 0.1))
    wave = target.waveforms(pictures)
    assert wave.shape == (2, 2000) and torch.isfinite(wave).all()


def test_the_judge_hears_a_clip_up_to_where_its_sound_ends():
    target = AudioTarget(RATE, seconds=0.5, n_mels=16, n_fft=256, hop_length=128)
    short = torch.zeros(2, 4000)
    short[0, :1000] = torch.randn(1000) * 0.3  # 0.125 s of sound, then padding silence
    short[1] = torch.randn(4000) * 0.3  # sound throughout
    pictures = target.pictures(target.grids(short))
    lengths = target.sounding_lengths(pictures)
    assert 1000 <= lengths[0] <= 1000 + 3 * 128 and lengths[1] == 4000
    inputs = target.judge_inputs(pictures, Preprocess(sample_rate=RATE))["audio"]
    assert torch.equal(inputs["lengths"], lengths) and inputs["waveform"].shape == (2, 4000)


def test_a_spectrogram_of_the_dtmf_band_keeps_every_dtmf_tone_apart():
    # the demo config's grid: 48 mel bins over 600-1700 Hz. Each of the seven DTMF tones
    # (the low ones 73-89 Hz apart) gets its own loudest row, and comes back at its pitch.
    from mmctx.datasets.demo import DTMF

    target = AudioTarget(RATE, seconds=0.5, n_mels=48, n_fft=512, hop_length=256,
                         f_min=600, f_max=1700)  # fmt: skip
    tones = sorted({f for pair in DTMF.values() for f in pair})
    t = torch.arange(4000) / RATE
    waves = torch.stack([0.5 * torch.sin(2 * torch.pi * f * t) for f in tones])
    grids = target.grids(waves)  # (7, 1, 48, 16), highest bin on top
    rows = grids[:, 0].mean(2).argmax(1)
    assert torch.all(rows[1:] < rows[:-1])  # higher tone, higher row: all seven apart
    assert torch.all(rows[:-1] - rows[1:] >= 2)  # with at least one row between neighbours
    rebuilt = target.waveforms(target.pictures(grids)).numpy()
    peaks = np.argmax(np.abs(np.fft.rfft(rebuilt, axis=1)), axis=1) * RATE / 4000
    assert np.abs(peaks - np.array(tones)).max() < 16  # one FFT bin at most
