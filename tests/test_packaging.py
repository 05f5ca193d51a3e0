"""The wheel installs encoders/ and pipelines/ under the mmctx namespace, with the command."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_layout(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("mmctx-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in (
        "mmctx/cli.py",
        "mmctx/encoders/audio.py",
        "mmctx/encoders/base.py",
        "mmctx/pipelines/classifier.py",
    ):
        assert module in names
    assert not any(n.startswith(("encoders/", "pipelines/", "tests/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "mmctx = mmctx.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
