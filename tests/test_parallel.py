"""Parallel recipes: DDP weights match one process's; the FSDP recipe wraps and
checkpoints every Transformer block, and (on two GPUs) matches one GPU's weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "tests" / "fsdp_run.py"


def test_fsdp_recipe_wraps_and_checkpoints_each_transformer_block():
    from jsonargparse import ArgumentParser
    from lightning.pytorch.strategies import FSDPStrategy, Strategy

    from mmctx.nn.backbones import TransformerBlock

    parser = ArgumentParser()
    parser.add_argument("--strategy", type=Strategy)
    trainer = yaml.safe_load((ROOT / "configs" / "fsdp.yaml").read_text())["trainer"]
    parsed = parser.parse_object({"strategy": trainer["strategy"]})
    strategy = parser.instantiate_classes(parsed).strategy
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {TransformerBlock}
    checkpointed = strategy._activation_checkpointing_kwargs["auto_wrap_policy"]
    assert checkpointed._module_classes == {TransformerBlock}
    assert trainer["precision"] == "bf16-mixed"


def _weights(tmp_path: Path, *args: str) -> dict[str, torch.Tensor]:
    out = tmp_path / f"{'-'.join(args)}.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, str(RUN), *args, str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    return torch.load(out, weights_only=True)


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    start = _initial_weights()
    moved = [k for k in a if not torch.equal(a[k], start[k])]
    assert len(moved) > len(a) // 2, "training did not change the weights"
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=2e-5, rtol=1e-4, msg=key)


def _initial_weights() -> dict[str, torch.Tensor]:
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from fsdp_run import TinyClassifier
    finally:
        sys.path.pop(0)
    return {k: v.detach() for k, v in TinyClassifier().state_dict().items()}


@pytest.mark.slow
def test_ddp_on_two_processes_ends_with_one_process_weights(tmp_path):
    """Two processes with half-batches take the same SGD steps as one with whole batches."""
    one = _weights(tmp_path, "cpu", "auto", "1", "16")
    two = _weights(tmp_path, "cpu", "ddp", "2", "8")
    _assert_same_weights(two, one)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_fsdp_on_two_gpus_ends_with_one_gpu_weights(tmp_path):
    one = _weights(tmp_path, "cuda", "auto", "1", "16")
    two = _weights(tmp_path, "cuda", "fsdp", "2", "8")
    _assert_same_weights(two, one)
