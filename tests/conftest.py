"""Shared fixtures: tiny on-disk datasets the tests write themselves."""

from __future__ import annotations

import json
import signal
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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


def write_manifest(path: Path, rows: list[dict | str]) -> Path:
    """Write rows (dicts as JSON, strings verbatim) one per line."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo dataset (shared by the tests of one session)."""
    from mmctx.datasets.demo import DemoSpec, make_demo_dataset

    out = tmp_path_factory.mktemp("demo") / "data"
    make_demo_dataset(out, DemoSpec(num_samples=240, seed=1))
    return out


def png_header_only(path: Path, width: int, height: int) -> Path:
    """Write a tiny PNG whose header declares width x height but holds almost no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


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
