"""MultimodalGAN: shapes, gradients, one manual step, seeded sampling, and the CLI tools."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import lightning as L
import pytest
import torch

from mmctx.encoders import AudioRNNEncoder, ImageCNNEncoder, TextTransformerEncoder
from mmctx.nn.backbones import TransformerBackbone
from mmctx.pipelines import Discriminator, Generator, ImageTarget, MultimodalGAN
from mmctx.pipelines.gan_images import contact_sheet
from mmctx.pipelines.generate import _pairwise


def _gan(image_size: int = 16, **kwargs) -> MultimodalGAN:
    encoders = {
        "text": TextTransformerEncoder(dim=16, depth=1, heads=2, vocab_size=128),
        "audio": AudioRNNEncoder(sample_rate=8000, n_mels=16, hidden_dim=8, num_layers=1),
    }
    args = {
        "target": ImageTarget(image_size),
        "z_dim": 8,
        "cond_dim": 8,
        "g_width": 4,
        "d_width": 4,
    }
    args.update(kwargs)
    return MultimodalGAN(
        encoders, TransformerBackbone(dim=16, depth=1, heads=2), list("abc"), **args
    )


def _batch(b: int = 4, size: int = 16) -> dict:
    has_image = torch.tensor([True, True, True, False])[:b]
    return {
        "ids": list("wxyz")[:b],
        "lines": list(range(b)),
        "errors": [],
        "inputs": {
            "text": {
                "text": ["an a", "a b", "the c", "a a"][:b],
                "present": torch.ones(b, dtype=torch.bool),
            },
            "audio": {
                "waveform": torch.randn(b, 1600) * 0.1,
                "lengths": torch.full((b,), 1600),
                "sample_rate": 8000,
            },
            "image": {
                "pixels": torch.randint(0, 256, (b, 1, 1, size, size), dtype=torch.uint8),
                "mask": has_image[:, None],
            },
        },
        "present": {"text": torch.ones(b, dtype=torch.bool)},
        "label": torch.tensor([0, 1, 2, 0])[:b],
    }


@pytest.mark.parametrize("size", [8, 16, 28, 32])
def test_generator_and_discriminator_shapes_and_gradients(size):
    g = Generator(z_dim=8, cond_dim=6, image_size=size, channels=3, width=4)
    d = Discriminator(cond_dim=6, image_size=size, channels=3, width=4, num_classes=5)
    z, cond = torch.randn(3, 8), torch.randn(3, 6, requires_grad=True)
    x = g(z, cond)
    assert x.shape == (3, 3, size, size)
    assert x.abs().max() <= 1
    score, logits = d(x, cond)
    assert score.shape == (3,) and logits.shape == (3, 5)
    (score.sum() + logits.sum()).backward()
    for name, p in [*g.named_parameters(), *d.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert cond.grad.abs().sum() > 0  # the condition reaches both networks


@pytest.mark.parametrize("size", [4, 9, 36, 300])
def test_unsupported_image_size_is_refused(size):
    with pytest.raises(ValueError, match="image_size"):
        Generator(8, 8, size, 1)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="must not condition"):
        MultimodalGAN(
            {"image": ImageCNNEncoder(out_dim=8, in_channels=1, width=4)},
            TransformerBackbone(dim=16, depth=1, heads=2),
            list("ab"),
        )
    with pytest.raises(ValueError, match="loss must be one of"):
        _gan(loss="wasserstein")
    with pytest.raises(ValueError, match="multilabel"):
        _gan(multilabel=True)


class _OneBatch(L.LightningDataModule):
    def __init__(self, batch: dict) -> None:
        super().__init__()
        self.batch = batch

    def train_dataloader(self):
        return torch.utils.data.DataLoader([self.batch], batch_size=None)


@pytest.mark.parametrize("loss", ["bce", "hinge"])
def test_one_manual_step_updates_generator_discriminator_and_context(loss):
    model = _gan(loss=loss, r1_gamma=1.0, ac_weight=1.0, ms_weight=1.0, sample_every_n_steps=0)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainer = L.Trainer(
        max_steps=2,  # one D step and one G step
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=_OneBatch(_batch()))
    after = model.state_dict()

    def changed(prefix: str) -> bool:
        return any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))

    for part in ("generator.", "discriminator.", "context.", "aux_head.", "generator_ema."):
        assert changed(part), part
    assert model.missing_target == {"z"}  # the sample without an image was skipped, counted


def test_sampling_is_deterministic_under_a_seed():
    model = _gan()
    inputs = {m: _batch()["inputs"][m] for m in ("text", "audio")}
    a = model.sample(inputs, n=3, seed=1)
    b = model.sample(inputs, n=3, seed=1)
    c = model.sample(inputs, n=3, seed=2)
    assert a.shape == (4, 3, 1, 16, 16) and a.dtype == torch.uint8
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_truncated_noise_is_seeded_bounded_and_has_the_truncated_normal_spread():
    from mmctx.pipelines.gan import truncated_normal

    a = truncated_normal((200_000,), 1.0, torch.Generator().manual_seed(3))
    b = truncated_normal((200_000,), 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.dtype == torch.float32
    assert a.abs().max() <= 1.0
    # variance of N(0, 1) truncated to [-1, 1]: 1 - 2 phi(1) / (2 Phi(1) - 1) = 0.29112
    assert abs(a.var().item() - 0.29112) < 0.003 and abs(a.mean().item()) < 0.005
    wide = truncated_normal((200_000,), 8.0, torch.Generator().manual_seed(3))
    assert abs(wide.std().item() - 1.0) < 0.01  # far tails cut: the plain normal
    plain = truncated_normal((5,), None, torch.Generator().manual_seed(3))
    assert torch.equal(plain, torch.randn(5, generator=torch.Generator().manual_seed(3)))
    for bad in (0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="truncation"):
            truncated_normal((2,), bad, torch.Generator())


def test_strong_truncation_draws_nearly_one_sample_per_condition():
    model = _gan()
    inputs = {m: _batch()["inputs"][m] for m in ("text", "audio")}
    free = model.sample(inputs, n=4, seed=1).float()
    tight = model.sample(inputs, n=4, seed=1, truncation=1e-3).float()
    spread = (free - free.mean(1, keepdim=True)).abs().mean()
    tight_spread = (tight - tight.mean(1, keepdim=True)).abs().mean()
    assert spread > 1.0 and tight_spread < 0.05 * spread


def test_wrong_image_size_names_both_settings():
    model = _gan(image_size=32)
    with pytest.raises(ValueError, match="image_size"):
        model._targets(_batch(size=16))


def test_pairwise_distance_and_contact_sheet():
    black, white = (
        torch.zeros(1, 4, 4, dtype=torch.uint8),
        torch.full((1, 4, 4), 255, dtype=torch.uint8),
    )
    assert float(_pairwise(torch.stack([black, white]))) == pytest.approx(1.0)
    assert float(_pairwise(torch.stack([black, black, black]))) == 0.0
    sheet = contact_sheet(torch.stack([torch.stack([black, white])] * 3), ["a", "b", "c"], cell=8)
    assert sheet.shape[0] == 3 * 8 + 4 * 2 and sheet.shape[2] == 1


@pytest.mark.parametrize("label", ["\ud800", "a\x00b", "\u00e9t\u00e9", "x\ny", "\U0001f600"])
def test_a_contact_sheet_draws_any_sample_id_as_its_label(label):
    """Sample ids come from manifests: a lone surrogate (valid JSON) crashed cv2.putText."""
    grey = torch.full((1, 1, 1, 8, 8), 128, dtype=torch.uint8)
    sheet = contact_sheet(grey, [label], cell=16)
    label_w = 8 * len(label) + 8
    assert sheet.shape == (16 + 2 * 2, label_w + 16 + 2 * 2, 1)
    assert (sheet[:, :label_w] < 255).any()  # something (at least a "?") was drawn


# -- through the CLI -------------------------------------------------------------------------

TINY = """\
seed_everything: 0
model:
  class_path: MultimodalGAN
  init_args:
    encoders:
      text: {{class_path: TextTransformerEncoder, init_args: {{dim: 16, depth: 1, heads: 2, max_tokens: 32}}}}
    backbone: {{class_path: TransformerBackbone, init_args: {{dim: 16, depth: 1, heads: 2}}}}
    target: {{class_path: ImageTarget, init_args: {{size: 16, channels: 1}}}}
    z_dim: 8
    g_width: 4
    d_width: 4
    ac_weight: 1.0
    sample_every_n_steps: 2
data:
  class_path: MultimodalDataModule
  init_args:
    train_manifest: {data}/train.jsonl
    val_manifest: {data}/val.jsonl
    test_manifest: {data}/test.jsonl
    batch_size: 16
    image_size: 16
    image_channels: 1
    modalities: [text, image]
trainer:
  max_steps: 12  # two optimizer steps a batch: 6 batches
  limit_val_batches: 1
  enable_progress_bar: false
  default_root_dir: {root}
  logger: {{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {{save_dir: {root}, name: logs}}}}
  callbacks:
    - {{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: {{save_last: true, save_top_k: 0}}}}
"""


@pytest.fixture(scope="module")
def fitted(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A GAN and an image-only judge, each fitted for a few steps through ``mmctx fit``."""
    from mmctx.cli import main

    root = tmp_path_factory.mktemp("gan")
    config = root / "gan.yaml"
    config.write_text(TINY.format(data=demo_dir, root=root / "gan"))
    argv = sys.argv
    sys.argv = ["mmctx"]
    try:
        assert main(["fit", "--config", str(config)]) == 0
        judge = [
            "fit", "--config", str(config),
            "--model", "MultimodalClassifier",
            "--model.init_args.encoders", '{"image": {"class_path": "ImageCNNEncoder", '
            '"init_args": {"out_dim": 8, "in_channels": 1, "width": 4}}}',
            "--model.init_args.backbone", '{"class_path": "TransformerBackbone", '
            '"init_args": {"dim": 16, "depth": 1, "heads": 2}}',
            "--data.init_args.modalities", "[image]",
            "--trainer.default_root_dir", str(root / "judge"),
            "--trainer.logger.init_args.save_dir", str(root / "judge"),
        ]  # fmt: skip
        assert main(judge) == 0
    finally:
        sys.argv = argv
    return {
        "gan": next((root / "gan").rglob("last.ckpt")),
        "judge": next((root / "judge").rglob("last.ckpt")),
        "config": config,
        "root": root,
    }


@pytest.mark.slow
def test_fit_through_the_cli_saves_sample_grids(fitted):
    grids = sorted((fitted["root"] / "gan").rglob("samples/step_*.png"))
    assert [g.name for g in grids] == ["step_000002.png", "step_000004.png", "step_000006.png"]
    assert cv2.imread(str(grids[0]), cv2.IMREAD_UNCHANGED).ndim == 2  # a grayscale picture


@pytest.mark.slow
def test_generate_writes_one_png_per_sample_and_a_contact_sheet(fitted, demo_dir, tmp_path):
    from mmctx.pipelines.generate import generate_main

    out = tmp_path / "gen"
    code = generate_main(
        ["--ckpt", str(fitted["gan"]), "--text", "bring the seven cups", "--id", "seven",
         "--out", str(out), "--n", "3", "--seed", "5"]
    )  # fmt: skip
    assert code == 0
    files = sorted(p.name for p in out.glob("seven_*.png"))
    assert files == ["seven_00.png", "seven_01.png", "seven_02.png"]
    image = cv2.imread(str(out / "seven_00.png"), cv2.IMREAD_UNCHANGED)
    assert image.shape == (16, 16) and image.dtype.name == "uint8"
    assert (out / "contact_sheet.png").is_file()
    again = tmp_path / "again"
    generate_main(["--ckpt", str(fitted["gan"]), "--text", "bring the seven cups", "--id", "seven",
                   "--out", str(again), "--n", "3", "--seed", "5"])  # fmt: skip
    assert (out / "seven_01.png").read_bytes() == (again / "seven_01.png").read_bytes()
    tight = tmp_path / "tight"
    generate_main(["--ckpt", str(fitted["gan"]), "--text", "bring the seven cups", "--id", "seven",
                   "--out", str(tight), "--n", "3", "--seed", "5", "--truncation", "0.5"])  # fmt: skip
    assert (out / "seven_01.png").read_bytes() != (tight / "seven_01.png").read_bytes()
    # a manifest of conditions, one of them broken: the rest are drawn, the failure reported
    manifest = tmp_path / "conds.jsonl"
    manifest.write_text('{"id": "a", "text": "one"}\n{"id": "b", "text_path": "missing.txt"}\n')
    assert generate_main(["--ckpt", str(fitted["gan"]), "--manifest", str(manifest),
                          "--out", str(tmp_path / "m"), "--n", "2"]) == 1  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "m").glob("a_*.png")) == ["a_00.png", "a_01.png"]


@pytest.mark.slow
def test_gan_eval_prints_accuracy_and_diversity(fitted, tmp_path, capsys):
    from mmctx.cli import main

    argv = sys.argv
    sys.argv = ["mmctx"]
    try:
        code = main(
            ["gan-eval", "--ckpt", str(fitted["gan"]), "--classifier", str(fitted["judge"]),
             "--n", "2", "--out", str(tmp_path), "--truncation", "0.7"]  # config: the fit's
        )  # fmt: skip
    finally:
        sys.argv = argv
    assert code == 0
    out = capsys.readouterr().out
    assert "conditional accuracy:" in out and "diversity per condition:" in out
    assert "noise truncated to [-0.7, 0.7]" in out
    import json

    result = json.loads((tmp_path / "gan_eval.json").read_text())
    assert result["truncation"] == 0.7
    assert 0 <= result["conditional_accuracy"] <= 1
    assert result["diversity_per_class_real"] > 0
    assert (tmp_path / "contact_sheet.png").is_file()


@pytest.mark.slow
def test_gan_eval_skips_and_reports_rows_it_cannot_use(fitted, demo_dir, tmp_path, capsys):
    from mmctx.cli import main

    good = (demo_dir / "test.jsonl").read_text().splitlines()[:6]
    bad = ['{"id": "broken", ', '{"id": "nolabel", "text": "seven"}']
    bad += ['{"id": "unknown", "label": "zebra", "text": "seven"}']
    manifest = demo_dir / "gan_eval_rows.jsonl"  # paths are relative to the data folder
    manifest.write_text("\n".join(good[:3] + bad + good[3:]) + "\n")
    argv = sys.argv
    sys.argv = ["mmctx"]
    try:
        code = main(["gan-eval", "--ckpt", str(fitted["gan"]), "--classifier",
                     str(fitted["judge"]), "--manifest", str(manifest), "--n", "2",
                     "--out", str(tmp_path)])  # fmt: skip
    finally:
        sys.argv = argv
    err = capsys.readouterr().err
    assert code == 1
    assert "line 4:" in err and "line 5:" in err and "no label" in err and "(line 6)" in err
    import json

    result = json.loads((tmp_path / "gan_eval.json").read_text())
    assert result["conditions"] == 6 and len(result["failed_samples"]) == 3
    # not one row survives: each failure is listed, and no figures are made up
    only_bad = demo_dir / "gan_eval_bad.jsonl"
    only_bad.write_text("\n".join(bad) + "\n")
    assert main(["gan-eval", "--ckpt", str(fitted["gan"]), "--classifier",
                 str(fitted["judge"]), "--manifest", str(only_bad), "--n", "2"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "no condition to evaluate (3 samples failed)" in err and "(line 3)" in err
    # not one row parses or has a label: nothing to start from
    only_bad.write_text("\n".join(bad[:2]) + "\n")
    assert main(["gan-eval", "--ckpt", str(fitted["gan"]), "--classifier",
                 str(fitted["judge"]), "--manifest", str(only_bad), "--n", "2"]) == 2  # fmt: skip
    assert "no labelled condition to evaluate: 2 rows failed" in capsys.readouterr().err


def test_gan_eval_refuses_a_classifier_as_the_gan(tmp_path, capsys):
    from mmctx.pipelines.generate import generate_main

    missing = tmp_path / "none.ckpt"
    assert generate_main(["--ckpt", str(missing), "--text", "x", "--out", str(tmp_path)]) == 2
    assert "none.ckpt" in capsys.readouterr().err


def test_gan_eval_arithmetic_against_a_hand_computed_case():
    from mmctx.pipelines.generate import _Tally

    tally = _Tally(n=2)
    labels = torch.tensor([0, 1, 1])
    fake = torch.zeros(3, 2, 1, 2, 2, dtype=torch.uint8)
    fake[0, 1] = 255  # condition 0: two images at RMS distance 1.0; the others identical
    tally.add_generated(labels, fake, pred=torch.tensor([[0, 0], [1, 0], [0, 0]]))
    real = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 1, 2, 2)
    tally.add_real(labels[:2], real, pred=torch.tensor([0, 0]), resynth=torch.tensor([0, 1]))
    result = tally.result(["zero", "one"], seed=0, has_context_head=False)
    assert result["conditional_accuracy"] == 3 / 6
    assert result["per_class_accuracy"] == {"zero": 1.0, "one": 0.25}
    assert result["classifier_accuracy_real"] == 0.5  # judged [0, 0] against labels [0, 1]
    assert result["classifier_accuracy_real_resynthesised"] == 1.0
    assert result["diversity_per_condition"] == pytest.approx(1 / 3)  # (1 + 0 + 0) / 3
    assert result["conditions"] == 3 and result["samples"] == 6
    assert result["context_accuracy"] is None
    assert result["conditional_accuracy_context_right"] is None


def test_gan_eval_splits_accuracy_by_whether_the_context_names_the_class():
    from mmctx.pipelines.generate import _Tally

    tally = _Tally(n=2)
    labels = torch.tensor([0, 1, 1])
    fake = torch.zeros(3, 2, 1, 2, 2, dtype=torch.uint8)
    pred = torch.tensor([[0, 1], [1, 1], [1, 1]])
    tally.add_generated(labels, fake, pred, context=torch.tensor([0, 0, 1]))  # 2nd: wrong
    real = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 1, 2, 2)
    tally.add_real(labels[1:], real, pred=labels[1:], resynth=labels[1:])
    result = tally.result(["zero", "one"], seed=0, has_context_head=True)
    assert result["conditional_accuracy"] == 5 / 6
    assert result["context_accuracy"] == 2 / 3
    assert result["conditional_accuracy_context_right"] == 3 / 4  # conditions 1 and 3 only


def test_gan_refuses_data_whose_images_differ_from_what_it_draws():
    from types import SimpleNamespace

    from mmctx.data import Preprocess
    from mmctx.errors import ConfigError

    gan = MultimodalGAN(
        {"text": TextTransformerEncoder(dim=8, depth=1, heads=2)},
        TransformerBackbone(dim=8, heads=2, depth=1),
        ["a", "b"],
        target=ImageTarget(size=16, channels=1),
    )
    fits = SimpleNamespace(datamodule=SimpleNamespace(preprocess=Preprocess(16, 1)))
    gan.trainer = fits  # noqa: B010 - setup only reads trainer.datamodule
    gan.setup("fit")
    gan.trainer = SimpleNamespace(datamodule=SimpleNamespace(preprocess=Preprocess(32, 1)))
    with pytest.raises(ConfigError, match="image_size=16, .*data.image_size=32"):
        gan.setup("fit")


@pytest.mark.slow
@pytest.mark.parametrize("command", ["infer", "compress", "index", "test"])
def test_a_gan_checkpoint_where_a_classifier_is_read_is_a_clear_stop(
    command, fitted, tmp_path, capsys
):
    """Each of these was an internal error (AttributeError, MisconfigurationException)."""
    from mmctx.cli import main

    gan = str(fitted["gan"])
    argv = {
        "infer": ["infer", "--ckpt", gan, "--text", "seven"],
        "compress": ["compress", "--ckpt", gan, "--out", str(tmp_path / "c"), "--methods", "prune"],
        "index": ["index", "build", "--ckpt", gan, "--manifest", "m.jsonl", "--out", str(tmp_path)],
        "test": ["test", "--config", str(fitted["config"]), "--ckpt_path", gan],
    }[command]
    old_argv, sys.argv = sys.argv, ["mmctx"]
    try:
        assert main(argv) == 2
    finally:
        sys.argv = old_argv
    err = capsys.readouterr().err
    assert "holds a MultimodalGAN, not a classifier" in err or "No `test_step()`" in err
