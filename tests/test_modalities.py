"""The modality registry, the built-in video modality in the data pipeline, and a fit with
text + image + audio + video."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
import torch

import mmctx.data.modalities as modalities
from mmctx.data import Collate, ManifestDataset, Preprocess, drop_modalities, estimate_length
from mmctx.data.datamodule import MultimodalDataModule
from mmctx.data.manifest import LabelSpace, read_manifest
from mmctx.data.modalities import (
    BUILTIN,
    ImageModality,
    Modality,
    SequenceModality,
    get_modality,
    load_entry_points,
    modality_spec,
    register_modality,
    resolve_modalities,
)
from tests.helpers import write_manifest

PRE = Preprocess(image_size=16, image_channels=3, sample_rate=8000, video_max_frames=16)
LEVELS = [20 * k + 30 for k in range(8)]  # the grey level of each frame written


@pytest.fixture(autouse=True)
def registry(monkeypatch):
    """Each test gets its own copy of the registry."""
    monkeypatch.setattr(modalities, "_REGISTRY", dict(modalities._REGISTRY))
    monkeypatch.setattr(modalities, "_scanned", True)


def write_video(path, levels, size=(24, 20), fps=4.0):
    """Frames of constant grey ``levels`` (one per frame), Motion-JPEG in AVI."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for level in levels:
        writer.write(np.full((size[1], size[0], 3), level, np.uint8))
    writer.release()
    return path


class Ticks(SequenceModality):
    name = "ticks"

    def __init__(self, width: int = 2) -> None:
        self.width = width

    def item_shape(self, pre):
        return (self.width,)

    def load(self, value, pre):
        return np.ones((len(value), self.width), np.float32)


# ------------------------------------------------------------------------------ video
def test_videos_are_sampled_resized_joined_and_masked(media_dir):
    write_video(media_dir / "v0.avi", LEVELS)
    write_video(media_dir / "v1.avi", LEVELS[:3])
    rows = [
        {"id": "two", "video": ["v0.avi", "v1.avi"], "label": "x"},
        {"id": "one", "video": "v1.avi", "text": "hi", "label": "y"},
        {"id": "none", "image": "img0.png", "label": "x"},
    ]
    samples, problems = read_manifest(write_manifest(media_dir / "m.jsonl", rows))
    assert problems == [] and samples[0].media["video"] == [
        media_dir / "v0.avi",
        media_dir / "v1.avi",
    ]
    ds = ManifestDataset(samples, LabelSpace(["x", "y"]), BUILTIN, PRE)
    batch = Collate(BUILTIN, PRE, None)([ds[i] for i in range(3)])
    video = batch["inputs"]["video"]
    assert video["frames"].shape == (3, 11, 3, 16, 16) and video["frames"].dtype == torch.uint8
    assert video["mask"].sum(1).tolist() == [11, 3, 0]
    assert batch["present"]["video"].tolist() == [True, True, False]
    means = video["frames"][0, :11].float().mean((1, 2, 3))
    assert (means - torch.tensor(LEVELS + LEVELS[:3], dtype=torch.float)).abs().max() < 4
    assert (video["frames"][1, 3:] == 0).all() and (video["frames"][2] == 0).all()

    drop_modalities(batch, {"video": torch.tensor([True, False, False])})
    assert batch["present"]["video"].tolist() == [False, True, False]
    assert (batch["inputs"]["video"]["frames"][0] == 0).all()


def test_video_settings_frame_limit_rate_and_grey(media_dir):
    write_video(media_dir / "v.avi", LEVELS)  # 8 frames at 4 fps: 2 seconds
    (sample,), _ = read_manifest(write_manifest(media_dir / "m.jsonl", [{"video": "v.avi"}]))
    grey = Preprocess(image_size=8, image_channels=1, video_fps=2.0, video_max_frames=3)
    frames = ManifestDataset([sample], None, ["video"], grey)[0]["inputs"]["video"]
    assert frames.shape == (3, 1, 8, 8)  # every other frame, the first three
    assert np.abs(frames.mean((1, 2, 3)) - np.array(LEVELS[0:6:2])).max() < 4
    assert estimate_length(sample, preprocess=grey) == 1 + 3
    with pytest.raises(ValueError, match="video_fps must be > 0, got 0"):
        Preprocess(video_fps=0)
    with pytest.raises(ValueError, match="video_max_frames must be an int >= 1, got 0"):
        Preprocess(video_max_frames=0)


def test_undecodable_video_is_a_sample_error_naming_the_file(media_dir):
    (media_dir / "fake.avi").write_text("not a video")
    (sample,), _ = read_manifest(write_manifest(media_dir / "m.jsonl", [{"video": "fake.avi"}]))
    error = ManifestDataset([sample], None, BUILTIN, PRE)[0]
    assert "fake.avi" in str(error) and "sample 'line-1' (line 1)" in str(error)


def test_datamodule_passes_video_settings_and_defaults_to_the_builtins():
    dm = MultimodalDataModule(video_fps=2.0, video_max_frames=5, image_channels=1)
    assert dm.modalities == ("text", "image", "audio", "video")
    assert dm.preprocess.video_fps == 2.0 and dm.preprocess.video_max_frames == 5
    dm = MultimodalDataModule(modalities=["video", "text"], tokens_per_image=3)
    assert dm.modalities == ("text", "video")


# --------------------------------------------------------------------------- registry
def test_register_by_class_instance_or_decorator_and_resolve(media_dir):
    assert register_modality(Ticks) is Ticks and get_modality("ticks").width == 2
    register_modality(Ticks(width=5))  # same class again: the new settings
    assert get_modality("ticks").width == 5
    assert [m.name for m in resolve_modalities(["audio", Ticks(1), "text"])] == [
        "text",
        "audio",
        "ticks",
    ]
    with pytest.raises(ValueError, match=r"name one modality twice: \['ticks', 'ticks'\]"):
        resolve_modalities(["ticks", Ticks()])

    class Other(Ticks):
        pass

    with pytest.raises(ValueError, match="'ticks' is already registered by Ticks"):
        register_modality(Other)
    register_modality(Other, replace=True)
    assert type(get_modality("ticks")) is Other


def test_bad_registrations_and_unknown_names_are_clear():
    class Nameless(Modality):
        pass

    with pytest.raises(TypeError, match="Nameless must set the class attribute `name`"):
        register_modality(Nameless)
    with pytest.raises(TypeError, match="a name or a mmctx.data.modalities.Modality, got 3"):
        resolve_modalities([3])
    with pytest.raises(ValueError, match=r"modality 'imag' is not known; did you mean \['image'\]"):
        get_modality("imag")
    with pytest.raises(ValueError, match=r"modalities \['smell'\] are not known; choose from"):
        MultimodalDataModule(modalities=["text", "smell"])


def test_a_plugin_row_is_read_collated_and_counted(media_dir):
    rows = [
        {"id": "a", "ticks": ["a0.wav", "a1.wav"], "label": "x"},
        {"id": "b", "ticks": "doc.txt"},
    ]
    path = write_manifest(media_dir / "m.jsonl", rows)
    _, problems = read_manifest(path)  # not registered: the rows have no known modality
    assert (
        len(problems) == 2 and "no modality (text, text_path, image, audio or video)" in problems[0]
    )
    samples, problems = read_manifest(path, modalities=[Ticks(width=3)])
    assert problems == [] and samples[0].media["ticks"] == [
        media_dir / "a0.wav",
        media_dir / "a1.wav",
    ]
    ds = ManifestDataset(samples, None, ["text", Ticks(width=3)], PRE)
    batch = Collate(["text", Ticks(width=3)], PRE, None)([ds[0], ds[1]])
    assert batch["inputs"]["ticks"]["values"].shape == (2, 2, 3)
    assert batch["inputs"]["ticks"]["mask"].tolist() == [[True, True], [True, False]]
    assert batch["present"] == {
        "text": batch["present"]["text"],
        "ticks": batch["present"]["ticks"],
    }
    assert estimate_length(samples[0], modalities=[Ticks()]) == 1 + 2
    with pytest.raises(
        ValueError, match=r"ticks: a sample's value has shape \(1, 2\), expected \(n, 3\)"
    ):
        Collate([Ticks(width=3)], PRE, None)(
            [{"id": "c", "line": 1, "inputs": {"ticks": np.ones((1, 2))}}]
        )


def test_specs_record_builtins_by_name_and_plugins_by_class_path():
    assert modality_spec(ImageModality(tokens_per_image=3)) == "image"
    spec = modality_spec(Ticks(width=4))
    assert spec == {"class_path": f"{__name__}.Ticks", "init_args": {"width": 4}}
    (rebuilt,) = resolve_modalities([spec])
    assert type(rebuilt) is Ticks and rebuilt.width == 4
    with pytest.raises(ValueError, match="'nowhere.Thing' cannot be imported"):
        resolve_modalities([{"class_path": "nowhere.Thing"}])
    with pytest.raises(
        TypeError, match="'collections.OrderedDict' is not a mmctx.data.modalities.Modality"
    ):
        resolve_modalities([{"class_path": "collections.OrderedDict"}])


def test_entry_points_register_and_broken_plugins_are_skipped(tmp_path, monkeypatch, caplog):
    (tmp_path / "tick_plugin.py").write_text(
        "from tests.test_modalities import Ticks\nclass Imposter(Ticks):\n    name = 'image'\n"
    )
    info = tmp_path / "tick_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tick-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[mmctx.data.modalities]\nticks = tick_plugin:Ticks\nimage = tick_plugin:Imposter\n"
        "broken = tick_plugin_missing:Nothing\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="mmctx.data.modalities"):
        loaded = load_entry_points("mmctx.data.modalities")
    assert set(loaded) == {"ticks", "image"}
    assert type(get_modality("ticks")).__name__ == "Ticks"
    assert type(get_modality("image")) is ImageModality  # a built-in is never replaced
    assert "broken = tick_plugin_missing:Nothing" in caplog.text
    assert "modality name 'image' is taken by ImageModality" in caplog.text


# ------------------------------------------------------------------------------- fit
@pytest.mark.slow
def test_fit_with_all_four_modalities_trains_the_video_encoder(tmp_path):
    import lightning as L

    from mmctx.datasets.demo import DemoSpec, make_demo_dataset
    from mmctx.encoders import (
        AudioRNNEncoder,
        ImageCNNEncoder,
        TextTransformerEncoder,
        VideoCNNEncoder,
    )
    from mmctx.nn.backbones import TransformerBackbone
    from mmctx.pipelines import MultimodalClassifier

    paths = make_demo_dataset(tmp_path / "d", DemoSpec(num_samples=40, seed=2, video_frames=4))
    dm = MultimodalDataModule(
        train_manifest=str(paths["train"]),
        val_fraction=0.0,
        batch_size=8,
        image_size=16,
        image_channels=1,
        sample_rate=8000,
        video_max_frames=4,
    )
    batch = next(iter(dm.loader("train")))
    assert {m: bool(batch["present"][m].any()) for m in BUILTIN} == dict.fromkeys(BUILTIN, True)
    assert batch["inputs"]["video"]["frames"].shape[1:] == (4, 1, 16, 16)
    encoders = {
        "text": TextTransformerEncoder(dim=16, depth=1, heads=2, vocab_size=64, max_tokens=32),
        "image": ImageCNNEncoder(16, in_channels=1, width=8),
        "audio": AudioRNNEncoder(sample_rate=8000, n_mels=16, hidden_dim=8, num_layers=1),
        "video": VideoCNNEncoder(16, in_channels=1, width=8, max_frames=4),
    }
    model = MultimodalClassifier(
        encoders, TransformerBackbone(dim=16, depth=1, heads=2), [str(d) for d in range(10)]
    )
    before = {k: v.clone() for k, v in model.encoders["video"].state_dict().items()}
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=dm)
    after = model.encoders["video"].state_dict()
    changed = [
        k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])
    ]
    assert {"proj.weight", "positions.weight"} <= set(changed)
    assert any(k.startswith("trunk.") for k in changed)
