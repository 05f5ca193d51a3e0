"""Robustness report and augmentation preview."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import Accuracy

from mmctx import transforms as T
from mmctx.cli import main
from mmctx.data.datamodule import MultimodalDataModule
from mmctx.pipelines.robustness import corruptions_to_sweep, robustness_report, write_report

CONFIG_ARGS = ["--config", "configs/demo.yaml", "--config", "configs/demo_augment.yaml"]


class AudioOrBright(nn.Module):
    """Predicts class 0 when a sample has audio, else 1 + (mean pixel > threshold): a model
    whose answers the tests can work out by hand."""

    multilabel = False

    def __init__(self, classes: int, threshold: float = 100.0) -> None:
        super().__init__()
        self.threshold = threshold
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the model a device
        self.val_metrics = MetricCollection(
            {"acc": Accuracy(task="multiclass", num_classes=classes)}, prefix="val/"
        )
        self.classes = classes

    def forward(self, inputs):
        audio = inputs["audio"]["lengths"] > 0
        bright = inputs["image"]["pixels"].float().mean((1, 2, 3, 4)) > self.threshold
        pred = torch.where(audio, 0, 1 + bright.long())
        return nn.functional.one_hot(pred, self.classes).float() + self.anchor


@pytest.fixture
def dm(demo_dir):
    return MultimodalDataModule(
        train_manifest=str(demo_dir / "train.jsonl"),
        val_manifest=str(demo_dir / "val.jsonl"),
        image_size=16,
        image_channels=1,
        sample_rate=8000,
        batch_size=32,
        augment=[T.ImageNoise(0.1, p=0.5), T.Cutout()],  # Cutout has no sweep
    )


def test_report_removes_each_modality_and_sweeps_corruptions(dm):
    model = AudioOrBright(len(dm.class_names))
    labels = np.array([dm.label_space.encode(s.label) for s in dm.dataset("val").samples])
    results = robustness_report(model, dm, split="val", levels=[0.0, 1.0])
    by = {(r.condition, r.level): r for r in results}
    assert by[("clean", 0.0)].accuracy == pytest.approx(np.mean(labels == 0))
    assert by[("without audio", 1.0)].samples == len(labels)
    without_audio = by[("without audio", 1.0)].accuracy
    assert without_audio == pytest.approx(np.mean((labels == 1) | (labels == 2)), abs=0.5)
    assert without_audio != by[("clean", 0.0)].accuracy
    assert by[("without text", 1.0)].accuracy == by[("clean", 0.0)].accuracy
    # the config's own image noise is swept; text and audio get their defaults
    assert [(r.condition, r.setting) for r in results if r.modality == "image" and r.level < 1][
        -1
    ] == ("ImageNoise", "std=0")
    names = {r.condition for r in results}
    assert {"CharTypos", "ImageNoise", "AddNoise"} <= names and "Cutout" not in names
    assert by[("ImageNoise", 0.0)].accuracy == by[("clean", 0.0)].accuracy  # std 0: no change
    assert len(results) == 1 + 3 + 3 * 2


def test_without_audio_matches_hand_count(dm):
    items = list(dm.dataset("val"))
    means = [
        it["inputs"]["image"].astype(np.float32).mean() if "image" in it["inputs"] else 0.0
        for it in items
    ]
    threshold = float(np.median(means))
    model = AudioOrBright(len(dm.class_names), threshold)
    results = robustness_report(model, dm, split="val", levels=[0.5])
    row = next(r for r in results if r.condition == "without audio")
    # with audio gone the model answers 1 or 2 by brightness, so accuracy counts those labels
    expected = [it["label"] == 1 + int(m > threshold) for it, m in zip(items, means, strict=True)]
    assert 0 < row.accuracy == pytest.approx(np.mean(expected))


def test_corruptions_to_sweep_defaults():
    chosen = corruptions_to_sweep([T.AddNoise(5), T.Gain()], ["text", "audio"])
    assert [type(t).__name__ for t in chosen] == ["AddNoise", "CharTypos"]


def test_write_report_files(tmp_path, dm):
    results = robustness_report(AudioOrBright(len(dm.class_names)), dm, levels=[0.0, 1.0])
    paths = write_report(results, tmp_path / "rep", title="t")
    rows = json.loads(paths["json"].read_text())
    assert len(rows) == len(results) and rows[0]["condition"] == "clean"
    with paths["csv"].open() as f:
        assert len(list(csv.DictReader(f))) == len(results)
    with Image.open(paths["png"]) as img:
        assert img.format == "PNG" and img.size[0] > 500


def test_augment_preview_command_writes_png(tmp_path, capsys):
    out = tmp_path / "preview.png"
    args = [
        "augment-preview",
        *CONFIG_ARGS,
        "--out",
        str(out),
        "--n",
        "3",
        "--data.init_args.num_samples",
        "40",
        "--data.init_args.cache_dir",
        str(tmp_path / "data"),
    ]
    assert main(args) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    with Image.open(out) as img:
        assert img.format == "PNG"
        assert img.size[0] > img.size[1] > 300  # 6 panels wide, 3 rows high


def test_commands_have_help(capsys):
    for command in ("augment-preview", "robustness"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--config" in capsys.readouterr().out
