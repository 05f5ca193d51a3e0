"""The mmctx command end to end: help, every shipped config, fit/validate/predict, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mmctx.cli import main
from tests.helpers import config_bases

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
DEMO = str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    """Lightning's CLI warns when pytest's own arguments sit in sys.argv."""
    monkeypatch.setattr(sys, "argv", ["mmctx"])


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    from mmctx.cli import OWN_COMMANDS

    for command in ("fit", "validate", "test", "predict", *OWN_COMMANDS):
        assert f"\n  {command}" in out


@pytest.mark.parametrize("command", ["infer", "export", "validate-data", "generate", "gan-eval"])
def test_own_commands_explain_themselves(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mmctx {command}") and len(out) > 400


def _stacked(config: Path) -> list[str]:
    """``--config`` arguments for ``config`` and the configs it is stacked on."""
    return [a for c in [*config_bases(config), config] for a in ("--config", str(c))]


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_shipped_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *_stacked(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "class_path: mmctx.pipelines." in out and "data:" in out
    if config_bases(config):  # an overlay must not drop the complete base's encoders
        base_encoders = yaml.safe_load(config_bases(config)[0].read_text())
        merged = yaml.safe_load(out)
        assert set(merged["model"]["init_args"]["encoders"]) == set(
            base_encoders["model"]["init_args"]["encoders"]
        )


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_shipped_config_keeps_last_ckpt_where_a_rerun_finds_it(config, capsys):
    with pytest.raises(SystemExit):
        main(["fit", *_stacked(config), "--print_config"])
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    for base in config_bases(config):  # an overlay's runs must not resume or overwrite a base's
        base_config = yaml.safe_load(base.read_text())
        assert trainer["default_root_dir"] != base_config["trainer"]["default_root_dir"]
    callbacks = {c["class_path"].rsplit(".", 1)[-1]: c["init_args"] for c in trainer["callbacks"]}
    # both in <default_root_dir>/checkpoints (see test_resume), the same for every run
    last = callbacks["LastCheckpoint"]
    assert last["dirpath"] is None and last["every_n_train_steps"] == 0
    if config.name.startswith("gan_"):
        assert len(callbacks) == 1
    else:  # the best checkpoints, beside last.ckpt
        best = callbacks.pop("RunCheckpoint")
        assert best["dirpath"] is None and best["monitor"] == "val/acc" and best["mode"] == "max"
        assert best["filename"] == "best-{epoch:02d}" and not best["save_last"]
        assert len(callbacks) == 1


def test_demo_data_command_writes_manifests(tmp_path, capsys):
    assert (
        main(["demo-data", "--out", str(tmp_path / "d"), "--num-samples", "30", "--seed", "3"]) == 0
    )
    out = capsys.readouterr().out
    for split in ("train", "val", "test"):
        assert (tmp_path / "d" / f"{split}.jsonl").is_file() and f"{split}: " in out


def _tiny_fit_args(tmp_path: Path) -> list[str]:
    return [
        "--config", DEMO,
        "--data.num_samples", "600",
        "--data.batch_size", "32",
        "--data.cache_dir", str(tmp_path / "data"),
        "--trainer.max_epochs", "5",
        "--trainer.enable_progress_bar", "false",
        "--predictions.path", str(tmp_path / "pred.jsonl"),
    ]  # fmt: skip


@pytest.mark.slow
def test_fit_learns_then_validate_and_predict_from_the_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["fit", *_tiny_fit_args(tmp_path)])
    out = capsys.readouterr().out
    assert "fit finished" in out and "skipped samples: 0" in out
    best = next((tmp_path / "runs" / "demo").rglob("best-*.ckpt"))
    ckpt = torch.load(best, map_location="cpu", weights_only=True)  # no pickled code inside
    assert ckpt["hyper_parameters"]["class_names"] == [str(d) for d in range(10)]
    metrics = (tmp_path / "runs" / "demo" / "logs" / "version_0" / "metrics.csv").read_text()
    val_acc = [float(row.split(",")[header.index("val/acc")]) for header in [metrics.splitlines()[0].split(",")]
               for row in metrics.splitlines()[1:] if row.split(",")[header.index("val/acc")]]  # fmt: skip
    assert max(val_acc) > 0.4, f"val/acc never beat chance (0.1) clearly: {val_acc}"

    main(["predict", *_tiny_fit_args(tmp_path), "--ckpt_path", str(best)])
    records = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert records, "predict wrote nothing"
    assert {"id", "label", "probs", "modalities"} <= set(records[0])
    assert records[0]["label"] in [str(d) for d in range(10)]

    # data with 2 classes against a 10-class checkpoint: one line and exit 2, not a crash
    rows = next((tmp_path / "data").rglob("val.jsonl"))
    two = rows.with_name("two_classes.jsonl")
    two.write_text("".join(r + "\n" for r in rows.read_text().splitlines() if '"label": 1,' in r
                           or '"label": 0,' in r))  # fmt: skip
    other = tmp_path / "two.yaml"
    other.write_text(yaml.safe_dump({"data": {"class_path": "MultimodalDataModule", "init_args": {
        "train_manifest": str(two), "val_manifest": str(two), "test_manifest": str(two),
        "image_size": 32, "image_channels": 1, "sample_rate": 8000}}}))  # fmt: skip
    two_class_run = ["--config", DEMO, "--config", str(other)]
    assert main(["test", *two_class_run, "--ckpt_path", str(best)]) == 2
    err = capsys.readouterr().err
    assert "weights do not fit the model the config builds (size mismatch for head" in err
    robustness = ["robustness", *two_class_run, "--out", str(tmp_path / "rob")]
    assert main([*robustness, "--ckpt", str(best)]) == 2
    assert f"{best}: its weights do not fit" in capsys.readouterr().err
    assert main([*robustness, "--ckpt", str(tmp_path / "gone.ckpt")]) == 2
    assert "gone.ckpt: no such checkpoint file" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable, "-m", "mmctx.cli", "fit", "--config", DEMO,
        "--data.num_samples", "120", "--data.cache_dir", str(tmp_path / "data"),
        "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.save_dir", str(tmp_path),
    ]  # fmt: skip
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert "MEMBER: 2/2" in log and "fit finished" in log
    assert list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize(
    "argv",
    [
        ["infer", "--ckpt", "x.ckpt", "--text", "a", "--batch-size", "0"],
        ["infer", "--ckpt", "x.ckpt", "--text", "a", "--top-k", "-1"],
        ["generate", "--ckpt", "x.ckpt", "--text", "a", "--out", "o", "--batch-size", "0"],
        ["gan-eval", "--ckpt", "x.ckpt", "--classifier", "y.ckpt", "--batch-size", "0"],
        ["compress", "--ckpt", "x.ckpt", "--out", "o", "--repeats", "0"],
        [
            "index",
            "build",
            "--ckpt",
            "x.ckpt",
            "--manifest",
            "m",
            "--out",
            "o",
            "--batch-size",
            "0",
        ],
        ["context-sweep", "--config", DEMO, "--ckpt", "a=x.ckpt", "--out", "o", "--per-cell", "0"],
        ["demo-data", "--out", "o", "--num-samples", "-5"],
    ],
)
def test_a_count_out_of_range_is_a_usage_error(argv, capsys):
    """These reached the run and failed there (an internal error, or a stuck progress bar)."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert "must be an integer >= " in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", DEMO, "--data", "MultimodalDataModule", "--data.init_args.image_channels",
         "1", "--data.init_args.sample_rate", "8000", "--data.init_args.train_manifest", "{gone}"],
        ["--config", DEMO.replace("demo.yaml", "digits.yaml"), "--data.init_args.root", "{gone}"],
    ],
)  # fmt: skip
def test_a_missing_manifest_or_data_root_is_a_clear_stop(argv, tmp_path, capsys):
    """Both escaped as FileNotFoundError: an internal error (exit 3) instead of exit 2."""
    gone = str(tmp_path / "gone.jsonl")
    assert main(["fit", *(a.replace("{gone}", gone) for a in argv)]) == 2
    err = capsys.readouterr().err
    assert "gone.jsonl" in err and ("data.train_manifest: manifest not found" in err
                                    or "data.root: " in err)  # fmt: skip


def test_a_run_folder_that_cannot_be_made_is_a_clear_stop(tmp_path, monkeypatch, capsys):
    """An OSError of the run's own output (a file where its folder should be) was exit 3."""
    monkeypatch.chdir(tmp_path)
    blocker = tmp_path / "runs_file"
    blocker.write_text("not a folder")
    args = [*_tiny_fit_args(tmp_path), "--trainer.max_epochs", "1"]
    args += ["--trainer.default_root_dir", str(blocker), "--trainer.logger", "false"]
    assert main(["fit", *args]) == 2
    assert f"mmctx fit: error: [Errno 17] File exists: '{blocker}'" in capsys.readouterr().err


def test_a_config_that_is_not_text_and_a_digits_root_without_data_are_clear_stops(tmp_path, capsys):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\x00\xff\xfe")
    assert main(["fit", "--config", str(binary)]) == 2
    assert "a config file is not UTF-8 text" in capsys.readouterr().err
    assert main(["digits-data", "--root", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    assert "does not hold fsdd/recordings" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["robustness", "--config", DEMO, "--ckpt", "x.ckpt", "--out", "o", "--levels", "2"])
    assert stop.value.code == 2 and "--levels must lie in [0, 1]" in capsys.readouterr().err


@pytest.mark.parametrize("device", ["banana", "cuda:99"])
@pytest.mark.parametrize(
    "argv",
    [
        ["infer", "--ckpt", "x.ckpt", "--text", "a"],
        ["generate", "--ckpt", "x.ckpt", "--text", "a", "--out", "o"],
        ["index", "build", "--ckpt", "x.ckpt", "--manifest", "m", "--out", "o"],
        ["context-sweep", "--config", DEMO, "--ckpt", "a=x.ckpt", "--out", "o"],
    ],
)
def test_a_device_this_machine_lacks_is_a_usage_error(argv, device, capsys):
    """Unknown or absent devices failed at the first .to(device): an internal error."""
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--device", device])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "not a device: 'banana'" in err or "'cuda:99' is not available on this machine" in err
