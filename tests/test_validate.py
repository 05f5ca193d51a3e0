"""`mmctx validate-data`: sizes per modality, presence, labels, duplicates, problems, exit status."""

from __future__ import annotations

import json

import cv2
import numpy as np
import soundfile as sf

from mmctx.cli import main
from mmctx.data.validate import validate_manifest
from tests.helpers import write_manifest


def _dataset(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((10, 20), np.uint8))  # 200 pixels
    cv2.imwrite(str(tmp_path / "b.png"), np.zeros((30, 40), np.uint8))  # 1200 pixels
    sf.write(tmp_path / "a.wav", np.zeros(4000), 8000)  # 0.5 s
    sf.write(tmp_path / "b.wav", np.zeros(16000), 8000)  # 2 s
    (tmp_path / "bad.png").write_text("not an image")
    return tmp_path


def test_report_counts_sizes_labels_and_duplicates(tmp_path):
    root = _dataset(tmp_path)
    manifest = write_manifest(
        root / "m.jsonl",
        [
            {"id": "1", "text": "abc", "image": "a.png", "audio": "a.wav", "label": "x"},
            {"id": "2", "text": "abcdefg", "image": ["a.png", "b.png"], "label": "y"},
            {"id": "1", "audio": "b.wav", "label": "x"},
            "",
            "{broken",
            {"id": "4", "image": "bad.png", "label": "x"},
        ],
    )
    report = validate_manifest(manifest)
    assert report.rows == 5 and not report.ok
    s = report.summary()
    assert s["modalities"]["image"] == {
        "samples": 2, "unit": "pixels (w·h)", "min": 200, "median": 200, "max": 1200
    }  # fmt: skip
    assert s["modalities"]["audio"]["min"] == 0.5 and s["modalities"]["audio"]["max"] == 2.0
    assert s["modalities"]["text"]["samples"] == 2 and s["modalities"]["text"]["median"] == 5
    assert s["labels"] == {"x": 2, "y": 1}
    assert s["duplicate_ids"] == {"1": [1, 3]}
    assert len(s["problems"]) == 2
    assert ":5: not valid JSON" in s["problems"][0] or "line 5" in s["problems"][0]
    assert "bad.png: not a decodable image" in s["problems"][1] and "line 6" in s["problems"][1]


def test_command_exit_status_and_json(tmp_path, capsys):
    root = _dataset(tmp_path)
    good = write_manifest(root / "good.jsonl", [{"id": "1", "image": "a.png", "label": 0}])
    bad = write_manifest(root / "bad.jsonl", [{"id": "1", "image": "missing.png"}])
    assert main(["validate-data", str(good), "--no-progress"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("OK")
    out_json = root / "r.json"
    assert (
        main(["validate-data", str(good), str(bad), "--no-progress", "--json", str(out_json)]) == 1
    )
    text = capsys.readouterr().out
    assert "missing.png" in text and "NOT OK" in text
    assert [r["ok"] for r in json.loads(out_json.read_text())] == [True, False]
    assert main(["validate-data", str(root / "none.jsonl")]) == 2
