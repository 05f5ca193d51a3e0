"""A modality and an encoder defined outside mmctx (the sensor example of docs/extending.md):
named by class_path and by entry points, trained through the CLI, then used for prediction."""

from __future__ import annotations

import csv
import importlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import mmctx.data.modalities as modalities
from mmctx.checkpoints import data_settings
from mmctx.cli import load_plugins, main
from mmctx.data import Collate, Preprocess, drop_modalities
from mmctx.data.datamodule import MultimodalDataModule
from mmctx.data.manifest import read_manifest
from mmctx.data.modalities import get_modality, modality_spec, resolve_modalities

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
MODULE = "my_sensor"  # the name the docs give the plugin module
ENTRY_POINTS = f"""\
[mmctx.encoders]
sensor = {MODULE}:SensorEncoder

[mmctx.data.modalities]
sensor = {MODULE}:SensorModality
"""


def plugin_source() -> str:
    """The ``my_sensor.py`` code block of docs/extending.md, verbatim."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    return next(b for b in blocks if b.startswith(f"# {MODULE}.py"))


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    """A folder on sys.path holding the plugin module and a ``*.dist-info`` declaring its
    entry points, as ``pip install`` would leave them (importlib.metadata finds it)."""
    root = tmp_path_factory.mktemp("plugin")
    (root / f"{MODULE}.py").write_text(plugin_source(), encoding="utf-8")
    info = root / f"{MODULE}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {MODULE}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        mp.setattr(modalities, "_REGISTRY", dict(modalities._REGISTRY))  # restored after
        mp.setattr(modalities, "_scanned", False)
        yield root


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["mmctx"])


def write_sensor_data(root: Path, n: int, seed: int) -> Path:
    """Rows whose label only the sensor tells: class "up" drifts upward, "down" downward.
    Half of the rows also carry (uninformative) text; a few use CSV, the rest NPY."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = ["down", "up"][i % 2]
        steps = int(rng.integers(4, 12))
        slope = 1.0 if label == "up" else -1.0
        x = slope * np.linspace(0, 1, steps)[:, None] + 0.2 * rng.standard_normal((steps, 3))
        name = f"s{seed}-{i}" + (".csv" if i % 5 == 0 else ".npy")
        if name.endswith(".csv"):
            np.savetxt(root / name, x, delimiter=",")
        else:
            np.save(root / name, x.astype(np.float32))
        row = {"id": f"{seed}-{i}", "sensor": name, "label": label}
        if i % 2 == rng.integers(2):
            row["text"] = "a reading"
        rows.append(row)
    path = root / f"m{seed}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_docs_example_is_a_sensor_modality_and_encoder(plugin_dir, tmp_path):
    mod = importlib.import_module(MODULE)
    sensor = mod.SensorModality(channels=3)
    (tmp_path / "a.csv").write_text("1,2,3\n4,5,6\n")
    np.save(tmp_path / "b.npy", np.ones((3, 3), np.float32))
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    pre = Preprocess()
    a = sensor.load([tmp_path / "a.csv"], pre)
    ab = sensor.load([tmp_path / "a.csv", tmp_path / "b.npy"], pre)
    assert a.tolist() == [[1, 2, 3], [4, 5, 6]] and ab.shape == (5, 3)
    with pytest.raises(ValueError, match=r"bad\.npy: not a readable sensor file"):
        sensor.load([tmp_path / "bad.npy"], pre)
    with pytest.raises(ValueError, match=r"a\.csv: expected \(n, 4\) readings, got \(2, 3\)"):
        mod.SensorModality(channels=4).load([tmp_path / "a.csv"], pre)

    batch = Collate(["text", sensor], pre, None)(
        [{"id": "1", "line": 1, "inputs": {"sensor": ab}}, {"id": "2", "line": 2, "inputs": {}}]
    )
    values, mask = batch["inputs"]["sensor"]["values"], batch["inputs"]["sensor"]["mask"]
    assert values.shape == (2, 5, 3) and values.dtype == torch.float32
    assert mask.tolist() == [[True] * 5, [False] * 5]
    assert batch["present"]["sensor"].tolist() == [True, False]
    features = mod.SensorEncoder(channels=3, out_dim=8)(batch["inputs"]["sensor"])
    assert features.features.shape == (2, 5, 8) and features.mask.tolist() == mask.tolist()

    drop_modalities(batch, {"sensor": torch.tensor([True, False])}, modalities=[sensor])
    assert not batch["present"]["sensor"].any() and (batch["inputs"]["sensor"]["values"] == 0).all()


def test_entry_points_give_short_names(plugin_dir, tmp_path, capsys):
    load_plugins()
    mod = sys.modules[MODULE]  # imported by the entry points, not by this test
    assert type(get_modality("sensor")) is mod.SensorModality
    assert [m.name for m in resolve_modalities(["sensor", "text"])] == ["text", "sensor"]
    # the manifest reads the registered plugin's key with no further argument
    path = write_sensor_data(tmp_path, 4, seed=3)
    samples, problems = read_manifest(path)
    assert problems == [] and samples[0].media["sensor"] == [tmp_path / "s3-0.csv"]
    config = {
        "model": {
            "class_path": "MultimodalClassifier",
            "init_args": {
                "encoders": {"sensor": {"class_path": "SensorEncoder"}},  # short name
                "backbone": {"class_path": "TransformerBackbone", "init_args": {"dim": 16}},
            },
        },
        "data": {
            "class_path": "MultimodalDataModule",
            "init_args": {"train_manifest": str(path), "modalities": ["sensor"]},
        },
    }
    cfg = tmp_path / "ep.yaml"
    cfg.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(cfg), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    sensor_encoder = printed["model"]["init_args"]["encoders"]["sensor"]
    assert sensor_encoder["class_path"] == f"{MODULE}.SensorEncoder"
    assert sensor_encoder["init_args"] == {"channels": 3, "out_dim": 32}


def test_unknown_modality_name_lists_close_matches(plugin_dir):
    load_plugins()
    with pytest.raises(ValueError, match=r"modalities \['sensr'\] are not known.*'sensor'"):
        MultimodalDataModule(modalities=["text", "sensr"])
    with pytest.raises(ValueError, match=r"did you mean \['sensor'\]"):
        get_modality("sensr")


@pytest.mark.slow
def test_fit_and_predict_through_the_cli(plugin_dir, tmp_path, monkeypatch):
    """The modality by class_path with its own settings, the encoder by entry-point name."""
    train = write_sensor_data(tmp_path, 48, seed=0)
    val = write_sensor_data(tmp_path, 16, seed=1)
    run = tmp_path / "run"
    config = {
        "seed_everything": 0,
        "model": {
            "class_path": "MultimodalClassifier",
            "init_args": {
                "encoders": {
                    "text": {
                        "class_path": "TextTransformerEncoder",
                        "init_args": {"dim": 16, "depth": 1, "heads": 2, "vocab_size": 64},
                    },
                    "sensor": {"class_path": "SensorEncoder", "init_args": {"out_dim": 16}},
                },
                "backbone": {
                    "class_path": "TransformerBackbone",
                    "init_args": {"dim": 16, "depth": 1, "heads": 2},
                },
                "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.01}},
            },
        },
        "data": {
            "class_path": "MultimodalDataModule",
            "init_args": {
                "train_manifest": str(train),
                "val_manifest": str(val),
                "predict_manifest": str(val),
                "batch_size": 8,
                "modalities": [
                    "text",
                    {"class_path": f"{MODULE}.SensorModality", "init_args": {"max_rows": 8}},
                ],
            },
        },
        "trainer": {
            "max_epochs": 6,
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(run),
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(run), "name": "logs"},
            },
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"monitor": "val/acc", "mode": "max", "filename": "best"},
                }
            ],
        },
    }
    cfg = tmp_path / "sensor.yaml"
    cfg.write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", str(cfg)]) == 0

    with open(next(run.glob("logs/*/metrics.csv"))) as fh:
        val_acc = [float(r["val/acc"]) for r in csv.DictReader(fh) if r.get("val/acc")]
    assert len(val_acc) == 6 and max(val_acc) >= 0.9  # only the sensor tells the label
    ckpt = next(run.glob("**/best.ckpt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert any(k.startswith("fused.encoders.sensor.mlp.") for k in state["state_dict"])
    # the checkpoint records the plugin modality with its settings, and that rebuilds it
    recorded = data_settings(state)["modalities"]
    sensor = {"class_path": f"{MODULE}.SensorModality", "init_args": {"channels": 3, "max_rows": 8}}
    assert recorded == ["text", sensor]
    rebuilt = resolve_modalities(recorded)[1]
    assert rebuilt.max_rows == 8 and modality_spec(rebuilt) == sensor

    out = tmp_path / "pred.jsonl"
    predict = ["predict", "--config", str(cfg), "--ckpt_path", str(ckpt)]
    assert main([*predict, "--predictions.path", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    truth = {json.loads(r)["id"]: json.loads(r)["label"] for r in val.read_text().splitlines()}
    assert len(records) == 16 and all("sensor" in r["modalities"] for r in records)
    assert np.mean([r["label"] == truth[r["id"]] for r in records]) >= 0.9

    # ---- mmctx infer: the checkpoint alone rebuilds model and data side -----------------
    # (with "sensor" unregistered, the modality comes from the checkpoint's class_path)
    monkeypatch.delitem(modalities._REGISTRY, "sensor", raising=False)
    monkeypatch.setattr(modalities, "_scanned", True)
    infer_out = tmp_path / "infer.jsonl"
    infer = ["infer", "--ckpt", str(ckpt), "--manifest", str(val), "--out", str(infer_out)]
    assert main(infer) == 0
    inferred = [json.loads(line) for line in infer_out.read_text().splitlines()]
    assert len(inferred) == 16 and {r["status"] for r in inferred} == {"ok"}
    assert all("sensor" in r["modalities"] for r in inferred)
    by_id = {r["id"]: r["label"] for r in records}
    assert [r["label"] for r in inferred] == [by_id[r["id"]] for r in inferred]  # as `predict`
