"""Real spoken + handwritten digits from the shared data folder (skipped when absent)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mmctx.datasets.digits import make_digits_manifests
from tests.helpers import SHARED_DATA

pytestmark = pytest.mark.skipif(
    not (SHARED_DATA / "fsdd").is_dir(), reason=f"{SHARED_DATA} is absent"
)
CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "digits.yaml")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_split_holds_out_speakers_and_images(tmp_path):
    paths = make_digits_manifests(SHARED_DATA, tmp_path)
    rows = {split: _rows(p) for split, p in paths.items()}
    assert sum(len(r) for r in rows.values()) == 3000
    speakers = {s: {Path(r["audio"]).stem.split("_")[1] for r in rs} for s, rs in rows.items()}
    assert speakers["val"] == {"nicolas"} and speakers["test"] == {"theo"}
    assert not speakers["train"] & (speakers["val"] | speakers["test"])
    images = {s: {r["image"] for r in rs} for s, rs in rows.items()}
    assert not images["train"] & images["test"] and not images["train"] & images["val"]
    for r in rows["train"]:
        assert (
            Path(r["audio"]).stem.split("_")[0]
            == str(r["label"])
            == Path(r["image"]).stem.split("_")[0]
        )
        assert str(r["label"]) not in r.get("text", "")


@pytest.mark.slow
def test_fused_model_generalises_to_a_new_speaker(tmp_path, monkeypatch):
    from mmctx.cli import fit_and_evaluate

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mmctx"])
    result = fit_and_evaluate(
        [
            "--config", CONFIG,
            "--data.root", str(SHARED_DATA), "--data.cache_dir", str(tmp_path / "manifests"),
            "--trainer.max_epochs", "4", "--trainer.enable_progress_bar", "false",
        ]
    )  # fmt: skip
    assert result["test_acc"] >= 0.90, result
