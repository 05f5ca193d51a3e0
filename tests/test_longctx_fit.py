"""The long-context demo trains end to end at small sizes (sliding window + global tokens)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "longctx_demo.yaml")


@pytest.mark.slow
def test_longctx_demo_fits_at_small_sizes(tmp_path, monkeypatch):
    from mmctx.cli import lightning_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mmctx"])
    cli = lightning_cli(
        [
            "--config", CONFIG,
            "--data.num_samples", "40", "--data.audio_seconds", "3", "--data.text_words", "200",
            "--data.cache_dir", str(tmp_path / "data"), "--data.batch_size", "4",
            "--model.init_args.backbone.init_args.window", "8",
            "--model.init_args.encoders.text.init_args.window", "64",
            "--model.init_args.encoders.text.init_args.stride", "48",
            "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
        ],
        run=False,
    )  # fmt: skip
    batch = next(iter(cli.datamodule.train_dataloader()))
    fused = cli.model.embed(batch["inputs"])
    assert fused.features.shape[1] > 300  # far longer than the window of 8
    assert fused.globals.sum(1).tolist() == [3] * 4  # the summary token and one per modality
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    result = cli.trainer.validate(cli.model, datamodule=cli.datamodule, ckpt_path="best")[0]
    assert math.isfinite(result["val/loss"]) and 0.0 <= result["val/acc"] <= 1.0
    assert list(tmp_path.rglob("best-*.ckpt"))
