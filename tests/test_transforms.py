"""Per-modality transforms, modality dropout and SpecAugment."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmctx import transforms as T
from mmctx.data import drop_modalities
from mmctx.data.datamodule import MultimodalDataModule
from mmctx.transforms.text import KEYBOARD_NEIGHBOURS

TEXT = "The quick brown fox sees a big old car near the forest in the evening"
RATE = 8000


def _image(channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (2, channels, 24, 20), dtype=np.uint8)  # two images


def _wave() -> np.ndarray:
    t = np.arange(RATE) / RATE
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


TEXT_TRANSFORMS = [
    T.WordDeletion(0.3, p=1),
    T.WordSwap(0.3, p=1),
    T.WordInsertion(0.3, p=1),
    T.CharTypos(0.3, p=1),
    T.SynonymReplacement(1.0, p=1),
]
IMAGE_TRANSFORMS = [
    T.RandomResizedCrop(p=1),
    T.HorizontalFlip(p=1),
    T.Rotation(30, p=1),
    T.ColorJitter(0.5, 0.5, 0.5, 0.1, p=1),
    T.GaussianBlur(p=1),
    T.Cutout(p=1),
    T.ImageNoise(0.2, p=1),
    T.MotionBlur(7, p=1),
]
AUDIO_TRANSFORMS = [
    T.Gain(6, p=1),
    T.AddNoise(10, p=1),
    T.TimeShift(0.2, p=1),
    T.PitchShift(2, p=1),
]
AUDIO_LENGTH_CHANGING = [T.TimeStretch(0.2, p=1), T.RandomCrop(0.5, p=1)]
ALL = TEXT_TRANSFORMS + IMAGE_TRANSFORMS + AUDIO_TRANSFORMS + AUDIO_LENGTH_CHANGING
INPUT = {"text": lambda: TEXT, "image": _image, "audio": _wave}


def _apply(t: T.Transform, seed: int):
    return t(INPUT[t.modality](), np.random.default_rng(seed), sample_rate=RATE)


@pytest.mark.parametrize("t", TEXT_TRANSFORMS, ids=repr)
def test_text_transforms_change_words_and_never_empty(t):
    out = _apply(t, 0)
    assert isinstance(out, str) and out.strip() and out != TEXT
    short = t("one", np.random.default_rng(0), sample_rate=RATE)
    assert short.strip()


def test_word_deletion_keeps_one_word_and_typos_hit_neighbour_keys():
    assert len(T.WordDeletion(1.0, p=1)(TEXT, np.random.default_rng(0)).split()) == 1
    out = T.CharTypos(1.0, p=1)("aaaa", np.random.default_rng(0))
    assert len(out) == 4 and set(out) <= set(KEYBOARD_NEIGHBOURS["a"])
    assert T.CharTypos(1.0, p=1)("A", np.random.default_rng(1)).isupper()
    swapped = T.SynonymReplacement(1.0, {"fox": ["wolf"]}, p=1)(TEXT, np.random.default_rng(0))
    assert "wolf" in swapped.split() and "fox" not in swapped.split()


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("t", IMAGE_TRANSFORMS, ids=repr)
def test_image_transforms_keep_shape_and_dtype(t, channels):
    img = _image(channels)
    out = t(img, np.random.default_rng(0))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert not np.array_equal(out, img)


@pytest.mark.parametrize("t", AUDIO_TRANSFORMS + AUDIO_LENGTH_CHANGING, ids=repr)
def test_audio_transforms_keep_dtype_and_range(t):
    wave = _wave()
    out = _apply(t, 0)
    assert out.dtype == np.float32 and out.ndim == 1
    assert np.abs(out).max() <= 1.0 and not np.array_equal(out[: len(wave)], wave[: len(out)])
    if t in AUDIO_TRANSFORMS:
        assert out.shape == wave.shape


def test_audio_noise_reaches_the_asked_snr_and_stretch_changes_duration():
    wave = _wave()
    noisy = T.AddNoise(10.0, p=1)(wave, np.random.default_rng(0), sample_rate=RATE)
    snr = 10 * np.log10(np.mean(wave**2) / np.mean((noisy - wave) ** 2))
    assert abs(snr - 10.0) < 0.3
    fast = T.TimeStretch(0.5, p=1).apply(wave, np.random.default_rng(0), sample_rate=RATE)
    assert abs(len(fast) - len(wave)) > 0.05 * len(wave)
    assert len(T.RandomCrop(0.25, p=1)(wave, np.random.default_rng(0), sample_rate=RATE)) == 2000


@pytest.mark.parametrize("t", ALL, ids=repr)
def test_same_seed_same_result(t):
    a, b = _apply(t, 7), _apply(t, 7)
    if isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b


def test_probability_zero_is_identity_and_bad_arguments_are_refused():
    img = _image()
    assert T.Rotation(30, p=0)(img, np.random.default_rng(0)) is img
    with pytest.raises(ValueError, match="p must be in"):
        T.Gain(p=1.5)
    with pytest.raises(ValueError, match="WordDeletion.rate"):
        T.WordDeletion(rate=2)
    with pytest.raises(TypeError, match="must be mmctx.transforms.Transform"):
        T.Augment(["not a transform"], RATE)


def test_at_level_sweeps_the_named_parameter():
    noise = T.AddNoise(snr_db=20, p=0.1)
    assert noise.at_level(0).snr_db == 40 and noise.at_level(1).snr_db == -10
    assert noise.at_level(0.5).p == 1.0 and noise.snr_db == 20  # the original is unchanged
    img = _image()
    np.testing.assert_array_equal(T.ImageNoise().at_level(0)(img, np.random.default_rng(0)), img)
    with pytest.raises(ValueError, match="no sweep"):
        T.WordSwap().at_level(0.5)
    with pytest.raises(ValueError, match="level must be"):
        noise.at_level(1.5)


def test_augment_applies_transforms_to_their_own_modality():
    aug = T.Augment([T.WordDeletion(1.0, p=1), T.ImageNoise(0.3, p=1)], RATE)
    inputs = {"text": TEXT, "audio": _wave()}
    out = aug(inputs, np.random.default_rng(0))
    assert len(out["text"].split()) == 1 and "image" not in out
    assert out["audio"] is inputs["audio"] and inputs["text"] == TEXT


@settings(max_examples=60, deadline=None)
@given(
    present=st.lists(st.lists(st.booleans(), min_size=3, max_size=3), min_size=1, max_size=12),
    probs=st.lists(st.floats(0, 1), min_size=3, max_size=3),
    seed=st.integers(0, 1000),
)
def test_modality_dropout_never_drops_everything(present, probs, seed):
    names = ["text", "image", "audio"]
    have = torch.tensor(present)
    dropout = T.ModalityDropout(dict(zip(names, probs, strict=True)))
    drop = dropout.choose(
        {m: have[:, i] for i, m in enumerate(names)}, torch.Generator().manual_seed(seed)
    )
    dropped = torch.stack([drop[m] for m in names], 1)
    assert not (dropped & ~have).any()  # only what is there can go
    left = (have & ~dropped).sum(1)
    assert ((left >= 1) | (have.sum(1) == 0)).all()
    if all(q == 1.0 for q in probs):
        assert ((left == 1) | (have.sum(1) == 0)).all()  # everything droppable went but one


def test_drop_modalities_clears_inputs_and_flags():
    batch = {
        "inputs": {
            "text": {"text": ["a b", "c d"], "present": torch.tensor([True, True])},
            "image": {
                "pixels": torch.ones(2, 1, 1, 4, 4, dtype=torch.uint8),
                "mask": torch.ones(2, 1, dtype=torch.bool),
            },
            "audio": {
                "waveform": torch.ones(2, 10),
                "lengths": torch.tensor([10, 5]),
                "sample_rate": 8000,
            },
        },
        "present": {m: torch.tensor([True, True]) for m in ("text", "image", "audio")},
    }
    rows = torch.tensor([False, True])
    drop_modalities(batch, {"text": rows, "image": rows, "audio": rows})
    inputs = batch["inputs"]
    assert inputs["text"]["text"] == ["a b", ""]
    assert inputs["image"]["pixels"][1].sum() == 0 and inputs["image"]["pixels"][0].sum() == 16
    assert (
        inputs["audio"]["lengths"].tolist() == [10, 0] and inputs["audio"]["waveform"][1].sum() == 0
    )
    for m in ("text", "image", "audio"):
        assert batch["present"][m].tolist() == [True, False]


def test_spec_augment_masks_in_training_only():
    frames = torch.randn(4, 200, 32)
    spec = T.SpecAugment(freq_mask=8, time_mask=30, n_masks=2)
    assert spec.eval()(frames) is frames
    out = spec.train()(frames)
    assert out.shape == frames.shape
    zeroed = (out == 0) & (frames != 0)
    assert zeroed.any() and zeroed.float().mean() < 0.6
    assert ((out == frames) | (out == 0)).all()


def test_datamodule_augments_training_data_only(demo_dir):
    dm = MultimodalDataModule(
        train_manifest=str(demo_dir / "train.jsonl"),
        val_manifest=str(demo_dir / "val.jsonl"),
        test_manifest=str(demo_dir / "test.jsonl"),
        predict_manifest=str(demo_dir / "test.jsonl"),
        image_size=16,
        sample_rate=8000,
        augment=[T.WordDeletion(0.5, p=1), T.ImageNoise(0.3, p=1), T.AddNoise(0, p=1)],
    )
    plain = MultimodalDataModule(
        train_manifest=str(demo_dir / "train.jsonl"),
        val_fraction=0,
        image_size=16,
        sample_rate=8000,
    )
    clean = plain.dataset("train")[0]["inputs"]
    torch.manual_seed(3)
    first = dm.train_dataloader().dataset[0]["inputs"]
    torch.manual_seed(3)
    again = dm.dataset("train", dm.augment)[0]["inputs"]
    for m in clean:
        assert not np.array_equal(np.asarray(first[m]), np.asarray(clean[m])), m
        np.testing.assert_array_equal(np.asarray(first[m]), np.asarray(again[m]))
    loaders = (dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader())
    assert all(loader.dataset.augment is None for loader in loaders)
    val = loaders[0].dataset[0]["inputs"]
    val_plain = MultimodalDataModule(
        train_manifest=str(demo_dir / "val.jsonl"), val_fraction=0, image_size=16, sample_rate=8000
    ).dataset("train")[0]["inputs"]
    for m in val:
        np.testing.assert_array_equal(np.asarray(val[m]), np.asarray(val_plain[m]))


def test_datamodule_drops_modalities_in_training_batches_only(demo_dir):
    dm = MultimodalDataModule(
        train_manifest=str(demo_dir / "train.jsonl"),
        image_size=16,
        sample_rate=8000,
        batch_size=16,
        modality_dropout={"text": 1.0, "image": 1.0, "audio": 1.0},
    )
    before = next(iter(dm.train_dataloader()))
    have = torch.stack([before["present"][m] for m in ("text", "image", "audio")], 1)
    dm.trainer = SimpleNamespace(training=False)
    same = dm.on_after_batch_transfer(copy.deepcopy(before), 0)
    assert all(torch.equal(same["present"][m], before["present"][m]) for m in before["present"])
    dm.trainer = SimpleNamespace(training=True)
    after = dm.on_after_batch_transfer(copy.deepcopy(before), 0)
    left = torch.stack([after["present"][m] for m in ("text", "image", "audio")], 1)
    assert (left.sum(1) == 1).all() and not (left & ~have).any()
    assert (after["inputs"]["audio"]["lengths"] > 0).tolist() == left[:, 2].tolist()


# ---------------------------------------------------------------------------- video
def _video(t: int = 6, channels: int = 3) -> np.ndarray:
    """``(t, c, h, w)`` frames, each a different random picture."""
    return np.random.default_rng(1).integers(0, 256, (t, channels, 24, 20), dtype=np.uint8)


VIDEO_TRANSFORMS = [
    T.TemporalCrop(3, p=1),
    T.FrameDrop(0.5, p=1),
    T.VideoFrames(T.Rotation(30, p=1)),
]


@pytest.mark.parametrize("t", VIDEO_TRANSFORMS, ids=repr)
def test_video_transforms_keep_format_and_repeat_with_the_seed(t):
    clip = _video()
    out = t(clip, np.random.default_rng(3))
    assert out.dtype == np.uint8 and out.ndim == 4 and out.shape[1:] == clip.shape[1:]
    assert 1 <= len(out) <= len(clip) and not np.array_equal(out, clip)
    np.testing.assert_array_equal(out, t(clip, np.random.default_rng(3)))
    assert any(not np.array_equal(out, t(clip, np.random.default_rng(s))) for s in range(4, 9))


def test_temporal_crop_keeps_a_contiguous_run():
    clip = _video(6)
    starts = set()
    for seed in range(20):
        out = T.TemporalCrop(3, p=1)(clip, np.random.default_rng(seed))
        start = next(i for i in range(4) if np.array_equal(out, clip[i : i + 3]))
        starts.add(start)
    assert starts == {0, 1, 2, 3}  # every start is possible
    short = _video(2)
    assert T.TemporalCrop(3, p=1)(short, np.random.default_rng(0)) is short
    with pytest.raises(ValueError, match="TemporalCrop.frames"):
        T.TemporalCrop(0)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rate=st.floats(0, 1), t=st.integers(1, 8))
def test_frame_drop_keeps_frames_in_order_and_never_all_are_dropped(seed, rate, t):
    clip = np.arange(t, dtype=np.uint8)[:, None, None, None] * np.ones((1, 1, 2, 2), np.uint8)
    out = T.FrameDrop(rate, p=1)(clip, np.random.default_rng(seed))
    kept = out[:, 0, 0, 0].tolist()
    assert len(kept) >= 1 and kept == sorted(set(kept))  # a subsequence, in order
    if rate == 0:
        assert len(kept) == t
    if rate == 1:
        assert len(kept) == 1


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("image_t", IMAGE_TRANSFORMS, ids=repr)
def test_video_frames_apply_the_same_change_to_every_frame(image_t, channels):
    frame = _image(channels)[0]
    still = np.stack([frame] * 4)  # the same picture four times: outputs must agree
    out = T.VideoFrames(image_t)(still, np.random.default_rng(0))
    assert out.shape == still.shape and out.dtype == np.uint8 and not np.array_equal(out, still)
    for later in out[1:]:
        np.testing.assert_array_equal(later, out[0])
    # Different frames get that same change: frame k equals the change of frame k alone.
    clip = _video(3, channels)
    seed = int(np.random.default_rng(5).integers(2**63))  # what VideoFrames draws first
    moved = T.VideoFrames(image_t).apply(clip, np.random.default_rng(5))
    for k in range(3):
        alone = image_t.apply(clip[k : k + 1], np.random.default_rng(seed))[0]
        np.testing.assert_array_equal(moved[k], alone)


def test_video_frames_probability_sweep_and_pickling():
    import pickle

    clip = _video(3)
    assert T.VideoFrames(T.Rotation(30, p=1), p=0)(clip, np.random.default_rng(0)) is clip
    assert T.VideoFrames(T.Rotation(30, p=0.25)).p == 0.25
    noisy = T.VideoFrames(T.ImageNoise(0.1, p=0.3))
    assert noisy.sweep == ("std", 0.0, 0.5) and noisy.std == 0.1
    strong = noisy.at_level(1.0)
    assert isinstance(strong, T.VideoFrames) and strong.p == 1.0 and strong.std == 0.5
    np.testing.assert_array_equal(noisy.at_level(0)(clip, np.random.default_rng(0)), clip)
    with pytest.raises(ValueError, match="no sweep"):
        T.VideoFrames(T.HorizontalFlip()).at_level(0.5)
    with pytest.raises(TypeError, match="needs an image Transform"):
        T.VideoFrames(T.Gain())
    again = pickle.loads(pickle.dumps(T.VideoFrames(T.Rotation(30, p=1))))
    np.testing.assert_array_equal(
        again(clip, np.random.default_rng(2)),
        T.VideoFrames(T.Rotation(30, p=1))(clip, np.random.default_rng(2)),
    )


def test_augment_dispatches_video_transforms_to_the_video_only():
    from mmctx.pipelines.robustness import corruptions_to_sweep

    inputs = {"video": _video(6), "image": _image()}
    augment = T.Augment([T.TemporalCrop(2, p=1), T.Rotation(30, p=0)], RATE)
    out = augment(inputs, np.random.default_rng(0))
    assert out["video"].shape == (2, 3, 24, 20) and out["image"] is inputs["image"]
    assert T.Augment([T.FrameDrop(p=1)], RATE)({"text": TEXT}, np.random.default_rng(0)) == {
        "text": TEXT
    }
    drop = T.FrameDrop()
    assert drop in corruptions_to_sweep([drop, T.TemporalCrop()], ["video"])
