"""A tiny classifier trained once through the CLI, shared by the inference tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

DEMO = str(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml")


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{"ckpt": best checkpoint, "data": demo data folder}`` after one short CLI fit."""
    from mmctx.cli import main

    root = tmp_path_factory.mktemp("trained")
    argv = sys.argv
    sys.argv = ["mmctx"]  # Lightning's CLI warns when pytest's own arguments are there
    try:
        main([
            "fit", "--config", DEMO,
            "--data.num_samples", "80",
            "--data.batch_size", "16",
            "--data.cache_dir", str(root / "data"),
            "--trainer.max_epochs", "1",
            "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(root / "runs"),
            "--trainer.logger.init_args.save_dir", str(root / "runs"),
        ])  # fmt: skip
    finally:
        sys.argv = argv
    return {"ckpt": next((root / "runs").rglob("best-*.ckpt")), "data": root / "data"}
