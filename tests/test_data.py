import numpy as np
import pytest
import torch

from mmctx.data import Collate, ManifestDataset, Preprocess, SampleError
from mmctx.data.manifest import LabelSpace, read_manifest
from tests.helpers import write_manifest

PRE = Preprocess(image_size=16, image_channels=3, sample_rate=8000)
MODS = ("text", "image", "audio")


def _dataset(media_dir, rows, strict=False):
    samples, problems = read_manifest(write_manifest(media_dir / "m.jsonl", rows))
    assert problems == []
    return ManifestDataset(samples, LabelSpace(["x", "y"]), MODS, PRE, strict=strict)


def test_collate_pads_each_modality_and_flags_presence(media_dir):
    ds = _dataset(
        media_dir,
        [
            {
                "id": "a",
                "text": "hello there",
                "image": ["img0.png", "img1.png"],
                "audio": ["a0.wav", "a1.wav"],
                "label": "y",
            },
            {"id": "b", "audio": "a0.wav", "label": "x"},
            {"id": "c", "text_path": "doc.txt", "image": "img1.png", "label": 1},
        ],
    )
    batch = Collate(MODS, PRE, None)([ds[i] for i in range(3)])
    assert batch["ids"] == ["a", "b", "c"] and batch["errors"] == []
    assert batch["label"].tolist() == [1, 0, 1]
    text, image, audio = (batch["inputs"][m] for m in MODS)
    assert text["text"] == ["hello there", "", "a longer document about digits"]
    assert image["pixels"].shape == (3, 2, 3, 16, 16) and image["pixels"].dtype == torch.uint8
    assert image["mask"].tolist() == [[True, True], [False, False], [True, False]]
    assert (image["pixels"][1] == 0).all()
    # two clips of 800 and 1600 samples are joined end to end
    assert audio["lengths"].tolist() == [2400, 800, 0] and audio["waveform"].shape == (3, 2400)
    assert audio["waveform"].dtype == torch.float32 and audio["sample_rate"] == 8000
    assert (audio["waveform"][1, 800:] == 0).all()
    assert {m: batch["present"][m].tolist() for m in MODS} == {
        "text": [True, False, True],
        "image": [True, False, True],
        "audio": [True, True, False],
    }


def test_images_are_resized_and_rgb(media_dir):
    import cv2

    cv2.imwrite(str(media_dir / "red.png"), np.full((40, 30, 3), (0, 0, 255), np.uint8))  # BGR red
    ds = _dataset(media_dir, [{"id": "r", "image": "red.png", "label": "x"}])
    pixels = ds[0]["inputs"]["image"]
    assert pixels.shape == (1, 3, 16, 16)
    assert pixels[0, 0].min() == 255 and pixels[0, 1:].max() == 0


def test_undecodable_sample_is_carried_as_an_error_not_dropped(media_dir):
    (media_dir / "broken.wav").write_bytes(b"RIFF not really a wav file at all")
    ds = _dataset(
        media_dir,
        [
            {"id": "good", "text": "fine", "label": "x"},
            {"id": "bad", "audio": "broken.wav", "label": "y"},
        ],
    )
    loaded = [ds[0], ds[1]]
    assert isinstance(loaded[1], SampleError)
    batch = Collate(MODS, PRE, None)(loaded)
    assert batch["ids"] == ["good"]
    assert len(batch["errors"]) == 1 and "sample 'bad' (line 2)" in batch["errors"][0]
    assert "broken.wav" in batch["errors"][0]


def test_strict_mode_raises_with_the_file(media_dir):
    (media_dir / "broken.png").write_bytes(b"\x89PNG garbage")
    ds = _dataset(media_dir, [{"id": "bad", "image": "broken.png", "label": "x"}], strict=True)
    with pytest.raises(SampleError, match="broken.png"):
        ds[0]


def test_unknown_label_is_a_sample_error(media_dir):
    ds = _dataset(media_dir, [{"id": "z", "text": "t", "label": "zebra"}])
    assert isinstance(ds[0], SampleError) and "unknown label 'zebra'" in str(ds[0])


def test_multilabel_targets_are_multi_hot(media_dir):
    samples, _ = read_manifest(
        write_manifest(media_dir / "m.jsonl", [{"id": "a", "text": "t", "label": ["x", "z"]}])
    )
    space = LabelSpace(["x", "y", "z"], multilabel=True)
    ds = ManifestDataset(samples, space, ("text",), PRE)
    batch = Collate(("text",), PRE, num_classes=3)([ds[0]])
    assert batch["label"].tolist() == [[1.0, 0.0, 1.0]]
