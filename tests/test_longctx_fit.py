"""The long-context demo trains end to end at small sizes (sliding window + global tokens)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

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


@pytest.fixture(scope="module")
def mixed_batch(tmp_path_factory):
    """An untrained small long-context model, six training samples of mixed lengths (0.5x to
    2x), and the collate function of its data loader."""
    from mmctx.cli import lightning_cli

    root = tmp_path_factory.mktemp("mixed")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setattr(sys, "argv", ["mmctx"])
        cli = lightning_cli(
            [
                "--config", CONFIG,
                "--data.num_samples", "20", "--data.audio_seconds", "2",
                "--data.text_words", "100", "--data.length_range", "[0.5, 2.0]",
                "--data.cache_dir", str(root / "data"),
                "--model.init_args.backbone.init_args.window", "8",
                "--model.init_args.backbone.init_args.zero_init_residual", "false",
                "--model.init_args.encoders.text.init_args.window", "32",
                "--model.init_args.encoders.text.init_args.stride", "24",
                "--model.init_args.encoders.audio.init_args.chunk_seconds", "1",
            ],
            run=False,
        )  # fmt: skip
        cli.datamodule.prepare_data()
        cli.datamodule.setup("fit")
    loader = cli.datamodule.train_dataloader()
    items = [loader.dataset[i] for i in range(6)]
    lengths = loader.collate_fn(items)["inputs"]["audio"]["lengths"]
    assert lengths.max() > 1.5 * lengths.min()  # really mixed
    return cli.model.eval().fused, items, loader.collate_fn


def test_padding_in_a_mixed_length_batch_leaves_every_fused_input_as_alone(mixed_batch):
    # Encoders (text windows, audio chunks) and fusion give each sample of a batch of mixed
    # lengths, at its valid positions, exactly what it gets alone.
    fused, items, collate = mixed_batch
    with torch.no_grad():
        together = fused.fuse(collate(items)["inputs"])
        for row, item in enumerate(items):
            alone = fused.fuse(collate([item])["inputs"])
            assert together.mask[row].sum() == alone.mask[0].sum()
            torch.testing.assert_close(
                together.features[row][together.mask[row]], alone.features[0][alone.mask[0]]
            )


def test_a_mixed_length_batch_gives_each_sample_its_answer_alone(mixed_batch):
    fused, items, collate = mixed_batch
    with torch.no_grad():
        together = fused(collate(items)["inputs"]).pooled
        alone = torch.cat([fused(collate([item])["inputs"]).pooled for item in items])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)
