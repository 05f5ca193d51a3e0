"""Shared fixtures: tiny on-disk datasets the tests write themselves."""

from __future__ import annotations

import signal
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` skip on a machine without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def media_dir(tmp_path: Path) -> Path:
    """A folder with two images, two WAVs (8 kHz) and a text file."""
    rng = np.random.default_rng(0)
    for i in range(2):
        cv2.imwrite(
            str(tmp_path / f"img{i}.png"), rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
        )
        sf.write(
            tmp_path / f"a{i}.wav", 0.1 * rng.standard_normal(800 * (i + 1)), 8000, subtype="PCM_16"
        )
    (tmp_path / "doc.txt").write_text("a longer document about digits", encoding="utf-8")
    return tmp_path


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo dataset (shared by the tests of one session)."""
    from mmctx.datasets.demo import DemoSpec, make_demo_dataset

    out = tmp_path_factory.mktemp("demo") / "data"
    make_demo_dataset(out, DemoSpec(num_samples=240, seed=1))
    return out


@pytest.fixture
def no_hang():
    """Fail instead of hanging if a read blocks (e.g. on a FIFO)."""

    def on_alarm(signum, frame):
        raise TimeoutError("read blocked")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(5)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)
