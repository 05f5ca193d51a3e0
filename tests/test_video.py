"""Video: decoding with read_video, the VideoCNNEncoder, and the demo data's video option."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from mmctx.datasets import demo as demo_data
from mmctx.datasets.demo import VIDEO_FPS, DemoSpec, make_demo_dataset
from mmctx.encoders import ImageCNNEncoder, ModalityEncoder, VideoCNNEncoder
from mmctx.io import DecodeError, Limits, read_video

CODECS = [("MJPG", "avi"), ("mp4v", "mp4")]


def _clip(n: int = 10, h: int = 32, w: int = 40) -> np.ndarray:
    """``(n, h, w, 3)`` RGB frames, each a distinct colour with a moving white box."""
    frames = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):
        frames[i] = (i * 25, 100, 250 - i * 25)
        frames[i, 5:15, 2 * i : 2 * i + 10] = 255
    return frames


def _write(path: Path, frames: np.ndarray, fps: float = 8.0, codec: str = "MJPG") -> Path:
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (w, h), True)
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


class _SpyCapture:
    """Wraps ``cv2.VideoCapture`` (its Python subclasses crash OpenCV's garbage collection),
    counting grabs or refusing them."""

    real = cv2.VideoCapture

    def __init__(self, *args, grabs: list, allow: bool) -> None:
        self.cap, self.grabs, self.allow = self.real(*args), grabs, allow

    def grab(self) -> bool:
        assert self.allow, "a frame was read before the size check"
        self.grabs.append(1)
        return self.cap.grab()

    def __getattr__(self, name: str):
        return getattr(self.cap, name)


def _spy(monkeypatch: pytest.MonkeyPatch, *, allow: bool = True) -> list:
    grabs: list = []
    monkeypatch.setattr(cv2, "VideoCapture", lambda *a: _SpyCapture(*a, grabs=grabs, allow=allow))
    return grabs


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


# ------------------------------------------------------------------------- read_video
@pytest.mark.parametrize(("codec", "ext"), CODECS)
@pytest.mark.parametrize(
    ("fps", "kept"),
    [(4.0, [0, 2, 4, 6, 8]), (3.0, [0, 3, 6, 8]), (8.0, list(range(10))), (100.0, list(range(10)))],
)
def test_frames_sampled_by_timestamp_match_the_written_ones(tmp_path, codec, ext, fps, kept):
    frames = _clip()  # 10 frames at 8 fps: t = 0, 125, ..., 1125 ms
    video = read_video(_write(tmp_path / f"v.{ext}", frames, codec=codec), fps=fps)
    assert video.shape == (len(kept), 32, 40, 3) and video.dtype == np.uint8
    for got, index in zip(video, kept, strict=True):
        errors = [_mae(got, f) for f in frames]
        assert int(np.argmin(errors)) == index and errors[index] < 6.0  # RGB, codec-close


def test_frame_limit_crops_and_stops_decoding(tmp_path, monkeypatch):
    path = _write(tmp_path / "v.avi", _clip())
    grabs = _spy(monkeypatch)
    video = read_video(path, fps=8.0, max_frames=3)
    assert len(video) == 3 and len(grabs) == 3  # the other 7 frames are never decoded
    assert _mae(video[2], _clip()[2]) < 6.0


def test_grayscale_frames(tmp_path):
    frames = _clip(4)
    video = read_video(_write(tmp_path / "v.avi", frames), fps=8.0, channels=1)
    assert video.shape == (4, 32, 40, 1)
    grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
    assert _mae(video[..., 0], grey) < 6.0


def test_png_named_mp4_is_a_one_frame_video(tmp_path):
    # Decided: decoding goes by content, and a still image is a video of one frame.
    image = np.zeros((12, 20, 3), np.uint8)
    image[:, :, 0] = 200  # red in RGB
    path = tmp_path / "still.mp4"
    cv2.imwrite(str(tmp_path / "still.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    os.rename(tmp_path / "still.png", path)
    np.testing.assert_array_equal(read_video(path), image[None])


def test_declared_size_over_pixel_limit_is_refused_before_reading_frames(tmp_path, monkeypatch):
    path = _write(tmp_path / "v.avi", _clip(3))
    _spy(monkeypatch, allow=False)
    with pytest.raises(DecodeError, match=r"v\.avi: video frames are 40x32 .* max_image_pixels"):
        read_video(path, limits=Limits(max_image_pixels=40 * 32 - 1))
    monkeypatch.undo()
    assert len(read_video(path, fps=8.0, limits=Limits(max_image_pixels=40 * 32))) == 3


def test_bad_files_name_the_file_and_the_cause(tmp_path):
    with pytest.raises(DecodeError, match=r"missing\.mp4: no such file"):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(DecodeError, match=r"empty\.mp4: empty file"):
        read_video(tmp_path / "empty.mp4")
    (tmp_path / "notes.mp4").write_text("not a video at all\n" * 20)
    with pytest.raises(DecodeError, match=r"notes\.mp4: not a decodable video"):
        read_video(tmp_path / "notes.mp4")
    data = _write(tmp_path / "v.mp4", _clip(), codec="mp4v").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(DecodeError, match=r"cut\.mp4: truncated MP4/MOV: .* declare 1,"):
        read_video(tmp_path / "cut.mp4")
    data = _write(tmp_path / "v.avi", _clip()).read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: len(data) * 3 // 4])  # FFmpeg alone: 2 of 5 frames
    with pytest.raises(DecodeError, match=r"cut\.avi: truncated AVI: .* the file holds"):
        read_video(tmp_path / "cut.avi")
    with pytest.raises(DecodeError, match="is a directory"):
        read_video(tmp_path)


def test_frames_that_do_not_decode(tmp_path):
    data = bytearray(_write(tmp_path / "v.avi", _clip(4)).read_bytes())
    first = data.find(b"00dc")  # the first frame's chunk: keep the headers, blank the frames
    data[first + 8 : len(data) - 200] = bytes(len(data) - 200 - first - 8)
    (tmp_path / "blank.avi").write_bytes(bytes(data))
    with pytest.raises(DecodeError, match=r"blank\.avi: no decodable video frames"):
        read_video(tmp_path / "blank.avi")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_fifo_is_refused_without_opening_it(tmp_path):
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)  # opening it for reading would block: the test hangs if that happens
    with pytest.raises(DecodeError, match=r"pipe\.mp4: is a FIFO"):
        read_video(fifo)


def test_bad_arguments_name_the_parameter(tmp_path):
    path = _write(tmp_path / "v.avi", _clip(2))
    for kwargs, name in [
        ({"fps": 0}, "fps"),
        ({"fps": float("nan")}, "fps"),
        ({"fps": True}, "fps"),
        ({"max_frames": 0}, "max_frames"),
        ({"max_frames": 2.0}, "max_frames"),
        ({"channels": 2}, "channels"),
    ]:
        with pytest.raises(ValueError, match=f"^{name} must be"):
            read_video(path, **kwargs)


# --------------------------------------------------------------------- VideoCNNEncoder
def _batch(b: int = 3, t: int = 4, c: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (b, t, c, 16, 16), dtype=torch.uint8, generator=g)
    mask = torch.tensor([[True, True, True, False], [False] * 4, [True, True, False, False]])
    return {"frames": frames, "mask": mask[:b, :t]}


def _tiny(**kwargs) -> VideoCNNEncoder:
    return VideoCNNEncoder(out_dim=8, in_channels=1, width=4, max_frames=4, **kwargs)


def test_encoder_shapes_masks_and_gradients():
    enc = _tiny()
    assert isinstance(enc, ModalityEncoder) and enc.modality == "video"
    batch = _batch()
    seq = enc(batch).check("video")
    assert seq.features.shape == (3, 4, 8)
    assert torch.equal(seq.mask, batch["mask"]) and not seq.mask[1].any()
    (seq.features * seq.mask[..., None]).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.trunk.parameters())


def test_encoder_ignores_padding_frames_and_other_samples():
    enc = _tiny().eval()
    batch = _batch()
    out = enc(batch).features
    noisy = dict(batch, frames=batch["frames"].clone())
    noisy["frames"][~batch["mask"]] = 255 - noisy["frames"][~batch["mask"]]
    torch.testing.assert_close(enc(noisy).features[batch["mask"]], out[batch["mask"]])
    alone = enc({"frames": batch["frames"][2:], "mask": batch["mask"][2:]}).features
    torch.testing.assert_close(alone[0, :2], out[2, :2])
    empty = enc({"frames": batch["frames"][1:2], "mask": batch["mask"][1:2]})
    assert empty.features.shape == (1, 4, 8) and not empty.mask.any()


def test_temporal_positions_make_frame_order_matter():
    enc = _tiny().eval()
    batch = {"frames": _batch()["frames"][:1], "mask": torch.ones(1, 4, dtype=torch.bool)}
    reverse = {"frames": batch["frames"].flip(1), "mask": batch["mask"]}
    forward, backward = enc(batch).features, enc(reverse).features.flip(1)
    assert (forward - backward).abs().max() > 1e-3
    with torch.no_grad():
        enc.positions.weight.zero_()  # without positions, reversing only reverses
    torch.testing.assert_close(enc(batch).features, enc(reverse).features.flip(1))


def test_encoder_refuses_wrong_channels_and_too_many_frames():
    with pytest.raises(ValueError, match="in_channels=1.* got 3-channel frames"):
        _tiny()(_batch(c=3))
    frames = torch.zeros(1, 5, 1, 16, 16, dtype=torch.uint8)
    with pytest.raises(ValueError, match="max_frames=4.* got 5 frames"):
        _tiny()({"frames": frames, "mask": torch.ones(1, 5, dtype=torch.bool)})


def test_frames_are_normalised_like_images():
    image, video = ImageCNNEncoder(8, 1, width=4).eval(), _tiny().eval()
    video.share_frame_cnn(image)
    seen = []
    image.trunk.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    pixels = _batch()["frames"][:1, :1]  # one 16x16 picture
    image({"pixels": pixels, "mask": torch.ones(1, 1, dtype=torch.bool)})
    video({"frames": pixels, "mask": torch.ones(1, 1, dtype=torch.bool)})
    torch.testing.assert_close(seen[0], seen[1])
    assert seen[0].min() < -0.9 and seen[0].max() > 0.9


def test_shared_frame_cnn_is_one_set_of_parameters_trained_by_both():
    image, video = ImageCNNEncoder(8, 1, width=4), _tiny()
    own = video.trunk[0][0].weight
    assert own is not image.trunk[0][0].weight
    video.share_frame_cnn(image)
    shared = image.trunk[0][0].weight
    assert video.trunk[0][0].weight is shared
    model = nn.ModuleDict({"image": image, "video": video})
    assert not any(p is own for p in model.parameters())
    assert sum(p is shared for p in model.parameters()) == 1  # listed once for the optimizer
    batch = _batch()
    pixels = {"pixels": batch["frames"], "mask": batch["mask"]}

    def grad_of(*losses) -> torch.Tensor:
        model.zero_grad()
        sum(loss().features.sum() for loss in losses).backward()
        return shared.grad.clone()

    from_image = grad_of(lambda: image(pixels))
    from_video = grad_of(lambda: video(batch))
    assert from_image.abs().sum() > 0 and from_video.abs().sum() > 0
    torch.testing.assert_close(
        grad_of(lambda: image(pixels), lambda: video(batch)), from_image + from_video
    )


def test_share_frame_cnn_refuses_a_mismatched_cnn():
    with pytest.raises(ValueError, match="in_channels=3, the video encoder 1"):
        _tiny().share_frame_cnn(ImageCNNEncoder(8, 3, width=4))
    with pytest.raises(ValueError, match="gives 32 channels, the video encoder expects 16"):
        _tiny().share_frame_cnn(ImageCNNEncoder(8, 1, width=8))
    with pytest.raises(TypeError, match="needs an ImageCNNEncoder"):
        _tiny().share_frame_cnn(nn.Linear(2, 2))


# ------------------------------------------------------------------------ demo option
def _rows(folder: Path) -> list[dict]:
    lines = [ln for s in ("train", "val", "test") for ln in (folder / f"{s}.jsonl").open()]
    return [json.loads(line) for line in lines]


def test_demo_video_option_writes_decodable_videos(tmp_path):
    spec = DemoSpec(num_samples=10, image_size=16, video_frames=4)
    make_demo_dataset(tmp_path / "v", spec)
    rows = _rows(tmp_path / "v")
    assert len(rows) == 10 and all(r["video"] == f"video/{r['id']}.avi" for r in rows)
    clips = [read_video(tmp_path / "v" / r["video"], fps=VIDEO_FPS) for r in rows]
    assert all(c.shape == (4, 16, 16, 3) for c in clips)
    assert all(_mae(c[0], c[-1]) > 0.5 for c in clips)  # the content moves
    truth = [json.loads(line) for line in (tmp_path / "v" / "truth.jsonl").open()]
    assert all(isinstance(t["informative"]["video"], bool) for t in truth)


def test_demo_without_video_is_unchanged_by_the_option(tmp_path, monkeypatch):
    spec = DemoSpec(num_samples=10, image_size=16)
    make_demo_dataset(tmp_path / "plain", spec)
    make_demo_dataset(tmp_path / "v", DemoSpec(num_samples=10, image_size=16, video_frames=2))
    assert not (tmp_path / "plain" / "video").exists()
    complete = tmp_path / "plain" / "COMPLETE"  # a cache from before the option still matches
    record = json.loads(complete.read_text())
    assert record.pop("video_frames") == 0
    complete.write_text(json.dumps(record))
    monkeypatch.setattr(demo_data, "_generate", lambda *a: pytest.fail("regenerated"))
    assert make_demo_dataset(tmp_path / "plain", spec)["train"] == tmp_path / "plain/train.jsonl"
    with pytest.raises(ValueError, match="does not hold"):
        make_demo_dataset(
            tmp_path / "plain", DemoSpec(num_samples=10, image_size=16, video_frames=2)
        )
    plain, with_video = _rows(tmp_path / "plain"), _rows(tmp_path / "v")
    assert all("video" not in r for r in plain)
    assert plain == [{k: v for k, v in r.items() if k != "video"} for r in with_video]
    for r in plain:
        for key in ("image", "audio"):
            if key in r:
                a, b = (tmp_path / d / r[key] for d in ("plain", "v"))
                assert a.read_bytes() == b.read_bytes()


def test_demo_datamodule_passes_video_frames_through(tmp_path):
    from mmctx.datasets.modules import DemoDataModule

    dm = DemoDataModule(num_samples=10, cache_dir=str(tmp_path / "d"), video_frames=3)
    assert not (tmp_path / "d").exists(), "data is written by prepare_data, not __init__"
    dm.prepare_data()
    assert json.loads((tmp_path / "d" / "COMPLETE").read_text())["video_frames"] == 3
    assert all("video" in r for r in _rows(tmp_path / "d"))
    assert dm.manifests["train"] == str(tmp_path / "d" / "train.jsonl")
    with pytest.raises(ValueError, match="video_frames=-1"):
        DemoSpec(video_frames=-1)
