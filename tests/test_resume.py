"""A killed fit resumes where it was; no run trains on (or saves) non-finite values."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mmctx.cli import main
from mmctx.errors import EXIT_NON_FINITE, EXIT_USAGE
from mmctx.pipelines import LastCheckpoint, NonFiniteError, NonFiniteGuard, RunCheckpoint

DEMO = str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    """Lightning's CLI warns when pytest's own arguments sit in sys.argv."""
    monkeypatch.setattr(sys, "argv", ["mmctx"])


# --- resuming a killed `mmctx fit` ----------------------------------------------------------


def _tiny_config(tmp_path: Path, every_n_train_steps: int, max_epochs: int) -> Path:
    """An image-only classifier small enough that a CLI fit takes seconds on 2 cores."""
    config = {
        "seed_everything": 0,
        "model": {
            "class_path": "MultimodalClassifier",
            "init_args": {
                "encoders": {
                    "image": {
                        "class_path": "ImageCNNEncoder",
                        "init_args": {"out_dim": 16, "in_channels": 1, "width": 4},
                    }
                },
                "backbone": {
                    "class_path": "TransformerBackbone",
                    "init_args": {"dim": 16, "depth": 1, "heads": 2, "dropout": 0.0},
                },
            },
        },
        "data": {
            "class_path": "DemoDataModule",
            "init_args": {
                "num_samples": 120,
                "batch_size": 8,
                "image_size": 16,
                "image_channels": 1,
                "modalities": ["image"],
                "num_workers": 0,
                "cache_dir": str(tmp_path / "data"),
            },
        },
        "trainer": {
            "max_epochs": max_epochs,
            "log_every_n_steps": 1,
            "accelerator": "cpu",
            "devices": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "default_root_dir": str(tmp_path / "runs" / "tiny"),
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(tmp_path / "runs" / "tiny"), "name": "logs"},
            },
            "callbacks": [
                {
                    "class_path": "mmctx.pipelines.RunCheckpoint",
                    "init_args": {
                        "monitor": "val/acc",
                        "mode": "max",
                        "filename": "best-{epoch:02d}",
                    },
                },
                {
                    "class_path": "mmctx.pipelines.LastCheckpoint",
                    "init_args": {"every_n_train_steps": every_n_train_steps},
                },
            ],
        },
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _mmctx(*args: str) -> list[str]:
    return [sys.executable, "-m", "mmctx.cli", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _train_steps_logged(metrics_csv: Path) -> list[int]:
    with metrics_csv.open() as f:
        return sorted({int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")})


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_killed_fit_resumes_from_last_checkpoint(tmp_path):
    max_epochs = 3
    config = _tiny_config(tmp_path, every_n_train_steps=2, max_epochs=max_epochs)
    last = tmp_path / "runs" / "tiny" / "checkpoints" / "last.ckpt"
    args = _mmctx("fit", "--config", str(config))

    first = subprocess.Popen(
        args, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not last.exists():  # written through a rename: once there, it is whole
        assert first.poll() is None, "the first fit ended before any last.ckpt"
        assert time.monotonic() < deadline, "no last.ckpt after 120 s"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    assert first.wait(timeout=30) == -signal.SIGKILL
    killed = _load(last)
    n_train = len((tmp_path / "data" / "train.jsonl").read_text().splitlines())
    planned = max_epochs * math.ceil(n_train / 8)
    assert 2 <= killed["global_step"] < planned, killed["global_step"]

    second = subprocess.run(
        [*args, "--ckpt_path", "last"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    assert f"resuming from {last}" in second.stdout
    final = _load(last)
    assert final["global_step"] == planned  # the planned steps in total, not planned + killed
    assert final["epoch"] == max_epochs - 1
    # the resumed run logged exactly the steps after the kill, not a fresh start from 0
    steps = _train_steps_logged(tmp_path / "runs" / "tiny" / "logs" / "version_1" / "metrics.csv")
    assert steps == list(range(killed["global_step"], planned)), steps
    assert list((tmp_path / "runs" / "tiny" / "checkpoints").glob("best-epoch=02*.ckpt"))


def test_ckpt_path_last_without_checkpoint_exits_nonzero(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["fit", "--config", DEMO, "--data.cache_dir", str(tmp_path / "d"),
                 "--ckpt_path", "last"])  # fmt: skip
    assert code == EXIT_USAGE == 2
    err = capsys.readouterr().err
    assert "--ckpt_path last: no last checkpoint" in err
    assert str(tmp_path / "runs" / "demo" / "checkpoints") in err
    assert not list(tmp_path.rglob("*.ckpt")) and not (tmp_path / "runs" / "demo" / "logs").exists()


def test_ckpt_path_last_without_checkpoint_callback_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["fit", "--model", f"{__name__}._TinyModel", "--data", f"{__name__}._TinyData",
                 "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
                 "--ckpt_path", "last"])  # fmt: skip
    assert code == EXIT_USAGE
    assert "looked in nowhere: trainer.callbacks has no LastCheckpoint" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["validate", "test"])
def test_evaluating_twice_without_logger_works(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    model = _TinyModel()
    ckpt = tmp_path / "tiny.ckpt"
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, _loader([]))
    trainer.save_checkpoint(ckpt)
    args = [command, "--model", f"{__name__}._TinyModel", "--data", f"{__name__}._TinyData",
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(tmp_path / "run"), "--ckpt_path", str(ckpt)]  # fmt: skip
    assert main(args) == 0
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert main(args) == 0  # the first run's config.yaml is overwritten, not an error


# --- non-finite losses, gradients and weights ------------------------------------------------


def _loader(nan_batches: list[int], n_batches: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_batches * 4, 3, generator=g)
    for b in nan_batches:
        x[b * 4] = float("nan")
    y = torch.randint(0, 2, (len(x),), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=4)


class _TinyModel(L.LightningModule):
    """A linear classifier; logs ``val_score`` = epoch, so the latest epoch is always best."""

    def __init__(self, nan_weights_at_step: int | None = None) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 2)
        self.nan_weights_at_step = nan_weights_at_step

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.layer(x), y)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.global_step == self.nan_weights_at_step:
            with torch.no_grad():
                self.layer.weight.fill_(float("nan"))

    def validation_step(self, batch, batch_idx):
        self.log("val_score", float(self.current_epoch))

    test_step = validation_step

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _TinyData(L.LightningDataModule):
    def val_dataloader(self):
        return _loader([], n_batches=2)

    test_dataloader = val_dataloader


def _trainer(tmp_path: Path, guard: NonFiniteGuard, **kwargs) -> L.Trainer:
    callbacks = [
        guard,
        ModelCheckpoint(dirpath=tmp_path, monitor="val_score", mode="max", filename="best"),
        LastCheckpoint(dirpath=tmp_path, every_n_train_steps=kwargs.pop("every", 0)),
    ]
    return L.Trainer(callbacks=callbacks, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, **kwargs)  # fmt: skip


def _finite(module: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


def test_nan_loss_stops_with_the_step_and_writes_no_checkpoint(tmp_path):
    model = _TinyModel()
    trainer = _trainer(tmp_path, NonFiniteGuard(), max_epochs=2)
    with pytest.raises(NonFiniteError, match=r"non-finite training loss \(nan\) at epoch 0, "
                       r"global step 3, batch 3; training stopped"):  # fmt: skip
        trainer.fit(model, _loader([3]), _loader([], 2))
    assert _finite(model)  # stopped before the backward pass of the bad loss
    assert not list(tmp_path.glob("*.ckpt*"))


def test_nan_loss_keeps_the_last_step_checkpoint_finite(tmp_path):
    model = _TinyModel()
    trainer = _trainer(tmp_path, NonFiniteGuard(), max_epochs=3, every=3)
    bad = _loader([5])  # the run stops at epoch 0, step 5
    with pytest.raises(NonFiniteError, match="global step 5"):
        trainer.fit(model, bad, _loader([], 2))
    saved = _load(tmp_path / "last.ckpt")  # the every-3-steps save before the bad batch
    assert saved["global_step"] == 3
    assert all(bool(torch.isfinite(v).all()) for v in saved["state_dict"].values())


def test_skip_mode_counts_and_skips_bad_batches(tmp_path):
    model = _TinyModel()
    guard = NonFiniteGuard(action="skip")
    trainer = _trainer(tmp_path, guard, max_epochs=1)
    before = model.layer.weight.detach().clone()
    with pytest.warns(UserWarning, match="skipped the batch at epoch 0, global step 2, batch 2"):
        trainer.fit(model, _loader([2, 6]), _loader([], 2))
    assert guard.skipped_batches == 2
    assert _finite(model) and not torch.equal(model.layer.weight, before)
    last = _load(tmp_path / "last.ckpt")
    assert last["callbacks"]["NonFiniteGuard"] == {"skipped_batches": 2}
    assert float(trainer.callback_metrics["train/skipped_batches"]) == 2.0


def test_skip_mode_stops_after_max_skipped(tmp_path):
    guard = NonFiniteGuard(action="skip", max_skipped=1)
    trainer = _trainer(tmp_path, guard, max_epochs=1)
    with pytest.raises(NonFiniteError, match="2 batches skipped .* max_skipped=1"):
        trainer.fit(_TinyModel(), _loader([2, 6]), _loader([], 2))


def test_nan_weights_are_never_chosen_as_best(tmp_path):
    # the epoch-1 validation would score best (val_score = epoch), but its weights are NaN
    model = _TinyModel(nan_weights_at_step=16)  # after the last step of epoch 1
    trainer = _trainer(tmp_path, NonFiniteGuard(), max_epochs=3)
    with pytest.raises(NonFiniteError, match="non-finite weights in layer.weight"):
        trainer.fit(model, _loader([]), _loader([], 2))
    best = trainer.checkpoint_callback.best_model_path
    assert float(trainer.checkpoint_callback.best_model_score) == 0.0  # NaN state never ranked
    assert Path(best).name == "best.ckpt" and _load(Path(best))["epoch"] == 0
    for path in tmp_path.glob("*.ckpt"):
        state = _load(path)["state_dict"]
        assert all(bool(torch.isfinite(v).all()) for v in state.values()), path


def test_nan_weights_are_never_saved(tmp_path):
    model = _TinyModel(nan_weights_at_step=8)  # after the last step of epoch 0; no validation
    trainer = _trainer(tmp_path, NonFiniteGuard(), max_epochs=2, limit_val_batches=0)
    with pytest.raises(NonFiniteError, match="refusing to save a checkpoint with non-finite"):
        trainer.fit(model, _loader([]))
    assert not list(tmp_path.glob("*.ckpt*"))


class _TinyManualModel(_TinyModel):
    """Manual optimization, as ``MultimodalGAN`` does it."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        loss = super().training_step(batch, batch_idx)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()


def test_manual_optimization_is_guarded_too(tmp_path):
    model = _TinyManualModel()
    trainer = _trainer(tmp_path, NonFiniteGuard(), max_epochs=1)
    with pytest.raises(NonFiniteError, match="non-finite training loss .* batch 4"):
        trainer.fit(model, _loader([4]), _loader([], 2))
    assert _finite(model)


def test_cli_exits_with_status_4_and_a_message_on_nan(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(_TinyData, "train_dataloader", lambda self: _loader([1]), raising=False)
    code = main(["fit", "--model", f"{__name__}._TinyModel", "--data", f"{__name__}._TinyData",
                 "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                 "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    assert code == EXIT_NON_FINITE == 4
    err = capsys.readouterr().err
    assert err.startswith("mmctx fit: non-finite training loss (nan) at epoch 0, global step 1")
    assert "Traceback" not in err


def test_checkpoint_folder_defaults_to_the_root_dir_not_a_version_folder(tmp_path):
    best, last = RunCheckpoint(monitor="val_score"), LastCheckpoint()
    own = RunCheckpoint(dirpath=tmp_path / "mine")
    trainer = L.Trainer(default_root_dir=tmp_path / "run", callbacks=[best, last, own])
    assert best.resolve_dirpath(trainer) == tmp_path / "run" / "checkpoints"
    assert last.resolve_dirpath(trainer) == tmp_path / "run" / "checkpoints"
    assert own.resolve_dirpath(trainer) == tmp_path / "mine"


def test_guard_rejects_bad_settings():
    with pytest.raises(ValueError, match="action must be one of .*'stop', 'skip'.* got 'ignore'"):
        NonFiniteGuard(action="ignore")
    with pytest.raises(ValueError, match="every_n_train_steps must be >= 0, got -1"):
        LastCheckpoint(every_n_train_steps=-1)


class _OneBatch(L.LightningDataModule):
    def __init__(self, batch: dict) -> None:
        super().__init__()
        self.batch = batch

    def train_dataloader(self):
        return DataLoader([self.batch], batch_size=None)


def test_gan_with_a_nan_condition_stops_before_any_weight_moves(tmp_path):
    from mmctx.encoders import AudioRNNEncoder
    from mmctx.nn.backbones import TransformerBackbone
    from mmctx.pipelines import ImageTarget, MultimodalGAN

    encoders = {"audio": AudioRNNEncoder(sample_rate=8000, n_mels=16, hidden_dim=8, num_layers=1)}
    model = MultimodalGAN(encoders, TransformerBackbone(dim=16, depth=1, heads=2), list("ab"),
                          target=ImageTarget(16), z_dim=8, cond_dim=8, g_width=4, d_width=4,
                          sample_every_n_steps=0)  # fmt: skip
    waveform = torch.randn(2, 1600) * 0.1
    waveform[1, 5] = float("nan")
    batch = {
        "ids": ["x", "y"], "lines": [0, 1], "errors": [], "label": torch.tensor([0, 1]),
        "present": {"audio": torch.ones(2, dtype=torch.bool)},
        "inputs": {
            "audio": {"waveform": waveform, "lengths": torch.full((2,), 1600), "sample_rate": 8000},
            "image": {"pixels": torch.randint(0, 256, (2, 1, 1, 16, 16), dtype=torch.uint8),
                      "mask": torch.ones(2, 1, dtype=torch.bool)},
        },
    }  # fmt: skip
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainer = _trainer(tmp_path, NonFiniteGuard(), max_steps=2, limit_val_batches=0)
    with pytest.raises(NonFiniteError, match="non-finite training loss .* global step 0, batch 0"):
        trainer.fit(model, datamodule=_OneBatch(batch))
    assert all(torch.equal(before[k], p) for k, p in model.named_parameters())  # no step taken
    assert not list(tmp_path.glob("*.ckpt*"))


def test_fit_help_documents_resuming_and_exit_statuses(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--nonfinite.action" in out and "run the same command with --ckpt_path last" in out
    assert "2 bad arguments or config, or --ckpt_path last found no checkpoint" in out
    assert "3 a bug in mmctx" in out and "4 stopped on a non-finite value" in out
