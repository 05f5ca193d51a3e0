"""Every shipped config builds its model, data module and trainer without touching data."""

from pathlib import Path

import pytest

from mmctx.cli import lightning_cli
from tests.helpers import config_bases

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
NEEDS_GPU = {"fsdp.yaml"}  # Lightning's FSDPStrategy runs on CUDA only


def _build(config: Path, tmp_path: Path, *overrides: str):
    base = config_bases(config)
    argv = [a for c in [*base, config] for a in ("--config", str(c))]
    argv += ["--data.init_args.cache_dir", str(tmp_path / "cache"), *overrides]
    if "digits" in config.name:  # the real data is only read by prepare_data / setup
        argv += ["--data.init_args.root", str(tmp_path / "nowhere")]
    return lightning_cli(argv, run=False, save_config_callback=None)


@pytest.mark.parametrize(
    "config",
    [pytest.param(c, marks=[pytest.mark.gpu] if c.name in NEEDS_GPU else []) for c in CONFIGS],
    ids=[c.name for c in CONFIGS],
)
def test_every_shipped_config_instantiates_without_generating_data(config, tmp_path):
    cli = _build(config, tmp_path)
    assert cli.model.class_names == [str(d) for d in range(10)]
    assert sum(p.numel() for p in cli.model.parameters()) > 1000
    assert not (tmp_path / "cache").exists(), "data was generated while building the config"
    assert cli.model.hparams["_class_path"].startswith("mmctx.pipelines.")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--model.init_args.pool", "median"], "pool must be one of"),
        (["--model.init_args.backbone.init_args.heads", "5"], r"dim \(64\) must be divisible"),
        (["--model.init_args.backbone.init_args.heads", "0"], "heads must be >= 1, got 0"),
        (["--model.init_args.backbone.init_args.mlp_ratio", "0"], "mlp_ratio must make"),
        (["--model.init_args.encoders.text.init_args.heads", "0"], "heads must be >= 1, got 0"),
        (["--model.init_args.encoders.text.init_args.depth", "-1"], "depth must be >= 1"),
        (["--model.init_args.encoders.image.init_args.width", "0"], "width must be >= 1"),
        (["--model.init_args.encoders.image.init_args.out_dim", "0"], "out_dim must be >= 1"),
        (["--model.init_args.encoders.audio.init_args.hop_ms", "0"], "hop_ms must be > 0"),
        (["--model.init_args.encoders.audio.init_args.n_mels", "0"], "n_mels must be > 0"),
        (["--model.init_args.optimizer.init_args.lr", "-1"], "Invalid learning rate"),
        (["--model.init_args.optimizer.init_args.weight_decay", "-1"], "Invalid weight_decay"),
        (["--trainer.accumulate_grad_batches", "0"], "accumulate_grad_batches must be >= 1"),
    ],
)
def test_a_bad_setting_in_a_config_fails_naming_it(override, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        _build(CONFIGS[[c.name for c in CONFIGS].index("demo.yaml")], tmp_path, *override)


def test_the_cli_reports_a_bad_setting_in_one_line_with_exit_status_2(
    tmp_path, capsys, monkeypatch
):
    from mmctx.cli import main

    monkeypatch.setattr("sys.argv", ["mmctx"])
    demo = CONFIGS[[c.name for c in CONFIGS].index("demo.yaml")]
    code = main(
        ["fit", "--config", str(demo), "--data.init_args.cache_dir", str(tmp_path / "c"),
         "--trainer.default_root_dir", str(tmp_path / "r"), "--model.init_args.pool", "median"]
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1] == (
        "mmctx fit: cannot build the configured run: pool must be one of "
        "['attention', 'max', 'mean', 'summary'], got 'median'"
    )


def test_a_cache_folder_holding_other_data_is_a_clear_error_with_exit_status_2(
    tmp_path, capsys, monkeypatch
):
    from mmctx.cli import main

    monkeypatch.setattr("sys.argv", ["mmctx"])
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "unrelated.txt").write_text("not the demo data")
    demo = CONFIGS[[c.name for c in CONFIGS].index("demo.yaml")]
    code = main(
        ["fit", "--config", str(demo), "--data.init_args.cache_dir", str(tmp_path / "c"),
         "--trainer.default_root_dir", str(tmp_path / "r")]
    )  # fmt: skip
    assert code == 2
    assert "already exists but does not hold the demo data" in capsys.readouterr().err


def test_an_accelerator_the_machine_lacks_is_a_config_error_with_exit_status_2(
    tmp_path, capsys, monkeypatch
):
    from mmctx.cli import main

    monkeypatch.setattr("sys.argv", ["mmctx"])
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    demo = CONFIGS[[c.name for c in CONFIGS].index("demo.yaml")]
    code = main(
        ["fit", "--config", str(demo), "--data.init_args.cache_dir", str(tmp_path / "c"),
         "--trainer.default_root_dir", str(tmp_path / "r"), "--trainer.accelerator", "gpu"]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("mmctx fit: cannot build the configured run: ") and "gpu" in err
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--model.init_args.lr_g", "-1"], "lr_g must be >= 0, got -1"),
        (["--model.init_args.betas", "[0.5, 1.5]"], r"betas must be two numbers in \[0, 1\)"),
    ],
)
def test_a_bad_gan_optimizer_setting_fails_when_the_model_is_built(override, message, tmp_path):
    gan = CONFIGS[[c.name for c in CONFIGS].index("gan_demo.yaml")]
    with pytest.raises(ValueError, match=message):
        _build(gan, tmp_path, *override)


def test_a_scheduler_that_fails_on_its_first_step_is_refused_when_the_model_is_built(tmp_path):
    demo = CONFIGS[[c.name for c in CONFIGS].index("demo.yaml")]
    override = ["--model.init_args.lr_scheduler", "torch.optim.lr_scheduler.StepLR"]
    with pytest.raises(ValueError, match="lr_scheduler fails on its first step"):
        _build(demo, tmp_path, *override, "--model.init_args.lr_scheduler.init_args.step_size", "0")
    plateau = ["--model.init_args.lr_scheduler", "torch.optim.lr_scheduler.ReduceLROnPlateau"]
    assert _build(demo, tmp_path, *plateau).model.scheduler_factory is not None


def test_demo_data_without_video_does_not_load_video_so_a_video_encoder_is_refused(tmp_path):
    video = CONFIGS[[c.name for c in CONFIGS].index("demo_video.yaml")]
    assert "video" in _build(video, tmp_path).datamodule.modalities
    cli = _build(video, tmp_path, "--data.init_args.video_frames", "0")
    assert cli.datamodule.modalities == ("text", "image", "audio")
    with pytest.raises(ValueError, match=r"encoders \['video'\] read what the data does not load"):
        cli.model.fused.check_data(8000, 1, 32, cli.datamodule.modalities)
    retrieval = CONFIGS[[c.name for c in CONFIGS].index("retrieval_demo.yaml")]
    assert _build(retrieval, tmp_path).datamodule.modalities == ("text",)
