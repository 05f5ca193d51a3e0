"""Several processes on CPU (gloo): a DDP fit and a two-"node" torchrun launch streaming
shards, each sample of the epoch trained on exactly once across ranks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "demo_shards.yaml"


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards of a small demo dataset (train: an odd number of samples)."""
    from mmctx.data.shard_writer import settings_from_config, write_shards
    from mmctx.datasets.demo import DemoSpec, make_demo_dataset

    folder = tmp_path_factory.mktemp("dist")
    paths = make_demo_dataset(folder / "demo", DemoSpec(num_samples=150, seed=2))
    settings = settings_from_config(str(CONFIG))
    for split in ("train", "val"):
        write_shards(paths[split], folder / split, **settings)
    return folder


def _fit_command(shards: Path, out: Path, *callbacks: str) -> list[str]:
    """``mmctx fit`` arguments on the shards, recording the ids each rank trains on in
    ``out/ids``; ``callbacks`` are more YAML list items for ``trainer.callbacks``."""
    out.mkdir(parents=True, exist_ok=True)
    overlay = out / f"overlay-{len(list(out.glob('overlay-*')))}.yaml"
    items = [f"{{class_path: tests.stream_ids.RecordTrainIds, init_args: {{out: {out / 'ids'}}}}}"]
    overlay.write_text(
        "trainer:\n  callbacks:\n" + "".join(f"    - {c}\n" for c in [*callbacks, *items])
    )
    return [
        "-m", "mmctx.cli", "fit", "--config", str(CONFIG), "--config", str(overlay),
        "--data.init_args.train_shards", str(shards / "train"),
        "--data.init_args.val_shards", str(shards / "val"),
        "--data.init_args.batch_size", "8", "--trainer.max_epochs", "1",
        "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def _train_ids(shards: Path) -> list[str]:
    manifest = shards / "demo" / "train.jsonl"
    return sorted(json.loads(line)["id"] for line in manifest.read_text().splitlines())


def _batches(folder: Path, world: int) -> list[list[dict]]:
    """Per rank, the recorded batches (``{"world", "ids"}``) in order."""
    return [
        [json.loads(line) for line in (folder / f"ids-rank{r}.jsonl").read_text().splitlines()]
        for r in range(world)
    ]


def _check_each_sample_once(out: Path, shards: Path, world: int) -> None:
    runs = _batches(out / "ids", world)
    assert {batch["world"] for run in runs for batch in run} == {world}
    ids = [i for run in runs for batch in run for i in batch["ids"]]
    assert len(ids) == len(set(ids)), "a sample was trained on twice"
    assert sorted(ids) == _train_ids(shards), "a sample was never trained on"
    assert len({len(run) for run in runs}) == 1  # the ranks stepped together


@pytest.mark.slow
def test_ddp_fit_on_two_processes_trains_on_each_sample_once(demo_shards, tmp_path):
    cmd = [sys.executable, *_fit_command(demo_shards, tmp_path)]
    cmd += ["--trainer.strategy", "ddp", "--trainer.devices", "2"]
    run = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert "MEMBER: 2/2" in log and "fit finished" in log
    assert "val/acc=" in log  # the validation split was streamed and scored too
    _check_each_sample_once(tmp_path, demo_shards, world=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_launched_by_torchrun_train_on_each_sample_once(demo_shards, tmp_path):
    """Two torchrun launches, one per "node" (one process each), as on two machines."""
    port = _free_port()
    fit = _fit_command(demo_shards, tmp_path)
    fit += ["--trainer.strategy", "ddp", "--trainer.devices", "1", "--trainer.num_nodes", "2"]
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--node-rank",
                str(rank),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                str(port),
                *fit,
            ],
            cwd=tmp_path,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for rank in range(2)
    ]
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    assert "MEMBER: 2/2" in logs[0] + logs[1]
    assert "val/acc=" in logs[0] + logs[1]
    _check_each_sample_once(tmp_path, demo_shards, world=2)


@pytest.mark.slow
def test_fit_killed_mid_epoch_resumes_from_the_stream_position(demo_shards, tmp_path):
    """Killed after the checkpoint of step 3, then resumed with ``--ckpt_path last``: the
    two runs together train on each sample of the epoch once."""
    last = "{class_path: mmctx.pipelines.LastCheckpoint, init_args: {every_n_train_steps: 3}}"
    first = _fit_command(
        demo_shards,
        tmp_path / "first",
        "{class_path: tests.stream_ids.KillAtStep, init_args: {step: 3}}",
        last,
    )
    first += ["--trainer.default_root_dir", str(tmp_path)]
    run = subprocess.run(
        [sys.executable, *first],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == -9, (run.stdout + run.stderr)[-3000:]
    second = _fit_command(demo_shards, tmp_path / "second", last)
    second += ["--trainer.default_root_dir", str(tmp_path), "--ckpt_path", "last"]
    run = subprocess.run(
        [sys.executable, *second],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    before = [b["ids"] for b in _batches(tmp_path / "first" / "ids", 1)[0]]
    after = [b["ids"] for b in _batches(tmp_path / "second" / "ids", 1)[0]]
    assert len(before) == 3
    ids = [i for batch in before + after for i in batch]
    assert len(ids) == len(set(ids)), "a sample was trained on twice"
    assert sorted(ids) == _train_ids(demo_shards), "a sample was never trained on"
