"""The ``mmctx`` command: Lightning's fit/validate/test/predict plus the project's own tools.

``mmctx fit --config configs/demo.yaml`` and friends are Lightning's CLI (YAML configs,
``--key value`` overrides, ``class_path``/``init_args``, ``--print_config``); the class
names in configs resolve because the built-in components are imported here.
``mmctx demo-data`` and ``mmctx digits-data`` write datasets, ``mmctx validate-data``
checks one; ``mmctx infer`` and ``mmctx export`` run and ship a trained classifier,
``mmctx generate`` and ``mmctx gan-eval`` a trained GAN; ``mmctx augment-preview`` and
``mmctx robustness`` show what augmentation does and how a trained model copes with
missing or degraded modalities. Installed plugins (entry-point groups ``mmctx.encoders``
and ``mmctx.data.modalities``) are loaded first, so their classes have short names.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException

import mmctx.data.datamodule  # noqa: F401
import mmctx.data.stream_datamodule  # noqa: F401
import mmctx.datasets.modules  # noqa: F401
import mmctx.encoders  # noqa: F401

# Imported so that short class names in configs resolve.
import mmctx.nn.backbones  # noqa: F401
import mmctx.pipelines  # noqa: F401
from mmctx.allocator import reuse_freed_memory
from mmctx.checkpoints import load_weights, mismatch_cause, plain_config, read_checkpoint
from mmctx.data.modalities import ENTRY_POINT_GROUPS, load_entry_points
from mmctx.errors import EXIT_NON_FINITE, EXIT_USAGE, ConfigError, at_least, one_line, run_command
from mmctx.pipelines import JsonlPredictionWriter, NonFiniteError, NonFiniteGuard, RunCheckpoint

OVERVIEW = """\
usage: mmctx COMMAND [options]

Train and run multimodal (text + image + audio + video) models.

Lightning commands (configured by YAML, see `mmctx COMMAND --help`):
  fit           train a model:            mmctx fit --config configs/demo.yaml
  validate      evaluate on the val set:  mmctx validate --config configs/demo.yaml --ckpt_path BEST.ckpt
  test          evaluate on the test set: mmctx test --config configs/demo.yaml --ckpt_path BEST.ckpt
  predict       write predictions.jsonl:  mmctx predict --config configs/demo.yaml --ckpt_path BEST.ckpt

Inference and generation:
  infer         predict on a manifest, a folder or files, as JSON Lines:
                mmctx infer --ckpt BEST.ckpt --folder my_media/ --out predictions.jsonl
  export        safetensors + config (and --torchscript) for serving without Lightning:
                mmctx export --ckpt BEST.ckpt --out exported/ --torchscript
  compress      prune / factorise / INT8 / ONNX, one folder each, and a report comparing them:
                mmctx compress --ckpt BEST.ckpt --out small/ --val-manifest data/val.jsonl
  index         retrieval index of a corpus (build/add/remove/search), for infer --index:
                mmctx index build --ckpt BEST.ckpt --manifest corpus.jsonl --out index/
  generate      draw images (PNG) or sounds (WAV) with a trained GAN (configs/gan_*.yaml):
                mmctx generate --ckpt GAN.ckpt --text "a seven" --audio 7.wav --out gen/
  gan-eval      conditional accuracy and diversity of a GAN's images or sounds, judged by a
                classifier of that modality alone (no downloaded network):
                mmctx gan-eval --ckpt GAN.ckpt --classifier IMAGE_ONLY.ckpt

Data commands:
  demo-data     write the built-in tri-modal digits dataset to a folder
  digits-data   pair the real spoken and handwritten digits (shared/data) into manifests
  validate-data check a manifest before training: files decode, sizes, labels, duplicates
  shard         decode a manifest once into LitData shards to stream (ShardedDataModule):
                mmctx shard --manifest data/train.jsonl --out shards/train --config configs/demo.yaml

Augmentation and robustness:
  augment-preview  picture of samples before/after the config's augmentation:
                   mmctx augment-preview --config configs/demo_augment.yaml --out preview.png
  robustness       accuracy with each modality removed and under rising noise (JSON, CSV, PNG):
                   mmctx robustness --config configs/demo.yaml --ckpt BEST.ckpt --out report/
  context-sweep    long-context accuracy by input length x where the evidence sits (heatmaps):
                   mmctx context-sweep --config configs/longctx_demo.yaml --ckpt BEST.ckpt --out sweep/

Any config value can be overridden on the command line (--trainer.max_epochs 3),
configs can be stacked (--config a.yaml --config b.yaml), and
`mmctx fit --config X --print_config` shows the full resolved config.

A killed fit resumes from the run's last.ckpt (written after every epoch, and every N
steps with LastCheckpoint's every_n_train_steps): run the same command again with
`--ckpt_path last`. A non-finite loss stops training (or, with --nonfinite.action skip,
skips the batch); checkpoints with non-finite weights are never written.

Exit status (every command): 0 done; 1 some samples failed (infer, validate-data, index,
generate, gan-eval, compress, context-sweep; each one reported); 2 the run could not start
or go on (bad arguments or config, unreadable input, a checkpoint that does not fit, an
output folder that cannot be written, `--ckpt_path last` with no checkpoint: the message
says where it looked); 3 a bug in mmctx (the traceback goes to a log file named on
stderr); 4 training stopped on a non-finite loss, gradient or weight (the message says where).
"""


def _demo_data(argv: Sequence[str]) -> int:
    from mmctx.datasets.demo import DemoSpec, make_demo_dataset

    parser = argparse.ArgumentParser(
        prog="mmctx demo-data",
        description="Write the built-in tri-modal digits dataset (PNG images, WAV clips, texts, "
        "JSON Lines manifests train/val/test.jsonl). Same seed, same files.",
    )
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument(
        "--num-samples",
        type=at_least(1),
        default=DemoSpec.num_samples,
        help="samples in all splits (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=DemoSpec.seed, help="generator seed (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    try:
        spec = DemoSpec(num_samples=args.num_samples, seed=args.seed)
    except ValueError as err:  # e.g. too few samples for three splits
        raise ConfigError(str(err)) from None
    paths = make_demo_dataset(args.out, spec, progress=True)
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0


def _digits_data(argv: Sequence[str]) -> int:
    from mmctx.datasets.digits import main as digits_main

    return digits_main(argv)


def _config_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="Any other --key value (e.g. --data.init_args.batch_size 64) overrides the config.",
    )
    parser.add_argument(
        "--config", action="append", required=True, help="YAML config (repeat to stack them)"
    )
    return parser


def _from_config(configs: list[str], overrides: list[str]) -> MMCtxCLI:
    """Model, data module and trainer built from configs as ``mmctx fit`` would, not run."""
    argv = [arg for cfg in configs for arg in ("--config", cfg)] + overrides
    return lightning_cli(argv, run=False, save_config_callback=None)


def _augment_preview(argv: Sequence[str]) -> int:
    from mmctx.pipelines.augment_preview import augment_preview

    parser = _config_parser(
        "mmctx augment-preview",
        "Draw a few training samples before and after the config's augmentation (images, "
        "log-mel spectrograms of the audio, and text) into one PNG, so you can see what the "
        "settings in data.augment (and the audio encoder's spec_augment) do.",
    )
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument(
        "--n", type=at_least(1), default=4, help="samples to show (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="augmentation seed (default: 0)")
    args, overrides = parser.parse_known_args(argv)
    cli = _from_config(args.config, overrides)
    path = augment_preview(cli.model, cli.datamodule, args.out, n=args.n, seed=args.seed)
    print(f"wrote {path}")
    return 0


def _robustness(argv: Sequence[str]) -> int:
    import torch

    from mmctx.pipelines.robustness import DEFAULT_LEVELS, robustness_report, write_report

    parser = _config_parser(
        "mmctx robustness",
        "Evaluate a trained classifier on one split clean, with each modality removed in "
        "turn, and with each modality's noise swept from level 0 to 1. The noises are the "
        "config's own data.augment corruptions (those with a sweep parameter); a modality "
        "without one gets a default (text: CharTypos, image: ImageNoise, audio: AddNoise). "
        "Writes robustness.json, robustness.csv and robustness.png.",
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint of the trained model")
    parser.add_argument("--out", required=True, help="folder for the report (created)")
    parser.add_argument(
        "--split", default="val", choices=["val", "test"], help="split (default: val)"
    )
    parser.add_argument(
        "--levels",
        type=float,
        nargs="+",
        default=list(DEFAULT_LEVELS),
        help="corruption levels in [0, 1] (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="corruption seed (default: 0)")
    args, overrides = parser.parse_known_args(argv)
    if not all(0.0 <= level <= 1.0 for level in args.levels):
        parser.error(f"--levels must lie in [0, 1], got {args.levels}")
    cli = _from_config(args.config, overrides)
    load_weights(cli.model, read_checkpoint(args.ckpt)["state_dict"], args.ckpt)
    if torch.cuda.is_available():
        cli.model.cuda()
    print(f"robustness of {args.ckpt} on the {args.split} split:")
    results = robustness_report(
        cli.model, cli.datamodule, split=args.split, levels=args.levels, seed=args.seed
    )
    paths = write_report(results, args.out, title=Path(args.ckpt).name)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _context_sweep(argv: Sequence[str]) -> int:
    from mmctx.pipelines.context_sweep import context_sweep_main

    return context_sweep_main(
        list(argv), lambda configs, overrides: _from_config(configs, overrides).datamodule
    )


def _validate_data(argv: Sequence[str]) -> int:
    from mmctx.data.validate import main as validate_main

    return validate_main(argv)


def _shard(argv: Sequence[str]) -> int:
    from mmctx.data.shard_writer import main as shard_main

    return shard_main(argv)


def _export(argv: Sequence[str]) -> int:
    from mmctx.pipelines.export import export_main

    return export_main(list(argv))


def _compress(argv: Sequence[str]) -> int:
    from mmctx.pipelines.compress import compress_main

    return compress_main(list(argv))


def _infer(argv: Sequence[str]) -> int:
    from mmctx.pipelines.inference import infer_main

    return infer_main(list(argv))


def _index(argv: Sequence[str]) -> int:
    from mmctx.pipelines.retrieval import index_main

    return index_main(list(argv))


def _generate(argv: Sequence[str]) -> int:
    from mmctx.pipelines.generate import generate_main

    return generate_main(list(argv))


def _gan_eval(argv: Sequence[str]) -> int:
    from mmctx.pipelines.generate import gan_eval_main

    return gan_eval_main(list(argv), lambda args: _from_config([], args))


OWN_COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "demo-data": _demo_data,
    "digits-data": _digits_data,
    "augment-preview": _augment_preview,
    "robustness": _robustness,
    "context-sweep": _context_sweep,
    "infer": _infer,
    "export": _export,
    "compress": _compress,
    "index": _index,
    "generate": _generate,
    "gan-eval": _gan_eval,
    "validate-data": _validate_data,
    "shard": _shard,
}


LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
LIGHTNING_EPILOG = (
    "Resuming: the shipped configs write <default_root_dir>/checkpoints/last.ckpt after every "
    "epoch (and every N steps with LastCheckpoint's every_n_train_steps: N); after a kill, "
    "run the same command with --ckpt_path last. Non-finite values: training stops at the "
    "first non-finite loss or gradient (--nonfinite.action skip skips that batch instead); "
    "non-finite weights are never saved. Exit status: 0 done; 2 bad arguments or config, or "
    "--ckpt_path last found no checkpoint; 3 a bug in mmctx (traceback in the log file "
    "named on stderr); 4 stopped on a non-finite value."
)


class CLIStop(Exception):
    """A run that cannot go on: ``main`` prints the message and exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class MMCtxCLI(LightningCLI):
    """Lightning's CLI: the data's class names go to the model, predictions to JSON Lines,
    a ``NonFiniteGuard`` on every run (``--nonfinite.action skip`` to skip such batches),
    and ``--ckpt_path last`` that fails loudly rather than start over."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # `mmctx predict ... --predictions.path out.jsonl` (default: the run's log folder)
        parser.add_lightning_class_args(JsonlPredictionWriter, "predictions")
        # `--nonfinite.action skip` (default stop), `--nonfinite.max_skipped N`
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")
        parser.link_arguments(
            "data.class_names", "model.init_args.class_names", apply_on="instantiate"
        )
        parser.link_arguments(
            "data.multilabel", "model.init_args.multilabel", apply_on="instantiate"
        )

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError, MisconfigurationException) as err:  # settings refused
            raise ConfigError(f"cannot build the configured run: {_config_cause(err)}") from err
        accumulate = self.trainer.accumulate_grad_batches  # Lightning divides by it unchecked
        if accumulate < 1:
            raise ConfigError(f"trainer.accumulate_grad_batches must be >= 1, got {accumulate!r}")
        config = self.config[self.subcommand] if self.subcommand else self.config
        record_model_config(self.model, config.model)

    def before_fit(self) -> None:
        self._resolve_last_checkpoint()

    def before_validate(self) -> None:
        self._resolve_last_checkpoint()

    def before_test(self) -> None:
        self._resolve_last_checkpoint()

    def before_predict(self) -> None:
        self._resolve_last_checkpoint()

    def _resolve_last_checkpoint(self) -> None:
        """Turn ``--ckpt_path last`` into the newest ``last*.ckpt`` of the configured
        checkpoint folders, or stop with ``EXIT_USAGE`` naming the folders."""
        config = self.config_init[self.subcommand]
        folders = checkpoint_folders(self.trainer)
        if config.get("ckpt_path") != "last":
            if self.subcommand == "fit" and config.get("ckpt_path") is None:
                found = find_last_checkpoint(folders)
                if found is not None:
                    print(f"note: starting over; to resume instead, add --ckpt_path last ({found})")
            return
        found = find_last_checkpoint(folders)
        if found is None:
            where = ", ".join(str(f) for f in folders) or (
                "nowhere: trainer.callbacks has no LastCheckpoint (nor another checkpoint "
                "callback with a dirpath), so no run of this config saved one"
            )
            raise CLIStop(
                f"--ckpt_path last: no last checkpoint (last*.ckpt) found; looked in {where}. "
                "Not starting over: drop --ckpt_path to train from scratch.",
                EXIT_USAGE,
            )
        print(f"resuming from {found}")
        config["ckpt_path"] = str(found)

    def after_fit(self) -> None:
        report_fit(self.trainer, self.datamodule)


def _config_cause(err: Exception) -> str:
    """The component's own complaint, without jsonargparse's union-type preamble."""
    lines = str(err).splitlines()
    causes = [
        line.strip()[2:]
        for line in lines
        if line.strip().startswith("- ") and "Expected a <class 'NoneType'>" not in line
    ]
    return one_line("; ".join(causes) if causes else str(err))


def record_model_config(model: L.LightningModule, config: Any) -> None:
    """Keep the model's whole config (``class_path`` and ``init_args`` of every component) in
    its hyperparameters, so that a checkpoint rebuilds the model from the file alone.

    The model saved its plain arguments itself (``save_hyperparameters`` ignoring modules and
    factories, which would be pickled objects); the components come from the config.
    """
    hparams = model.hparams
    hparams["_class_path"] = config.class_path
    for key, value in plain_config(config.init_args).items():
        try:  # a default left as a Python object (e.g. a factory function) stays the default
            json.dumps(value)
        except TypeError:
            continue
        hparams.setdefault(key, value)


def checkpoint_folders(trainer: L.Trainer) -> list[Path]:
    """The folders where this trainer's checkpoint callbacks save, where fixed before fit."""
    folders: list[Path] = []
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, RunCheckpoint):
            callback.resolve_dirpath(trainer)
        if isinstance(callback, ModelCheckpoint) and callback.dirpath is not None:
            folder = Path(callback.dirpath)
            if folder not in folders:
                folders.append(folder)
    return folders


def find_last_checkpoint(folders: Sequence[Path]) -> Path | None:
    """The newest ``last.ckpt`` (or ``last-v<N>.ckpt``) in ``folders``, or None."""
    found = [p for f in folders if f.is_dir() for p in f.glob("last*.ckpt")]
    found = [p for p in found if p.stem == "last" or p.stem.startswith("last-v")]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def load_plugins() -> None:
    """Import the encoders and modalities that installed packages declare in the entry-point
    groups ``mmctx.encoders`` and ``mmctx.data.modalities``, so configs can name them shortly."""
    for group in ENTRY_POINT_GROUPS:
        load_entry_points(group)


def lightning_cli(argv: Sequence[str] | None, **kwargs: Any) -> MMCtxCLI:
    """Run (or, with ``run=False``, only build) the Lightning part of the CLI."""
    load_plugins()
    # reruns (validate/test/predict with --trainer.logger false, a resumed fit) write the
    # config where the first run did
    kwargs.setdefault("save_config_kwargs", {"overwrite": True})
    kwargs.setdefault(
        "parser_kwargs", {c: {"epilog": LIGHTNING_EPILOG} for c in LIGHTNING_COMMANDS}
    )
    return MMCtxCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=argv,
        **kwargs,
    )


def fit_and_evaluate(argv: Sequence[str]) -> dict[str, float]:
    """Fit from CLI arguments, then score the best checkpoint on validation and test.

    Returns:
        ``{"val_acc", "test_acc", "fit_seconds"}``.
    """
    cli = lightning_cli(list(argv), run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = time.perf_counter() - start
    scores = {}
    for split, evaluate in (("val", cli.trainer.validate), ("test", cli.trainer.test)):
        result = evaluate(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)[0]
        scores[f"{split}_acc"] = result[f"{split}/acc"]
    return {**scores, "fit_seconds": round(seconds, 1)}


def report_fit(trainer, datamodule) -> None:
    """Print the best validation score, the checkpoint, and the skipped-sample count."""
    if trainer.global_rank != 0:
        return
    ckpt = trainer.checkpoint_callback
    lines = ["", "fit finished"]
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if metrics:
        lines.append(
            "  last epoch: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
        )
    if ckpt is not None and getattr(ckpt, "best_model_path", ""):
        score = ckpt.best_model_score
        best = f"{ckpt.monitor}={float(score):.4f}" if score is not None else ""
        lines.append(f"  best checkpoint: {ckpt.best_model_path} {best}".rstrip())
    skipped = len(getattr(datamodule, "skipped", [])) + getattr(
        trainer.lightning_module, "skipped_samples", 0
    )
    lines.append(f"  skipped samples: {skipped}" + (" (see warnings above)" if skipped else ""))
    print("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(OVERVIEW)
        return 0
    reuse_freed_memory()  # MMCTX_MALLOC=default: glibc as it comes
    if args[0] in OWN_COMMANDS:
        load_plugins()
        return run_command(args[0], OWN_COMMANDS[args[0]], args[1:])  # exit 3 on a bug
    return run_command(
        args[0], lambda rest: _lightning(args[0], None if argv is None else rest), args
    )


def _lightning(command: str, argv: list[str] | None) -> int:
    """Run one of Lightning's commands; a stop the user can act on becomes its exit status."""
    try:
        lightning_cli(argv)  # None: Lightning reads sys.argv itself
    except (CLIStop, ConfigError) as stop:
        print(f"mmctx {command}: {stop}", file=sys.stderr)
        return getattr(stop, "exit_code", EXIT_USAGE)
    except MisconfigurationException as error:  # e.g. `test` of a checkpoint with no test step
        print(f"mmctx {command}: error: {one_line(str(error))}", file=sys.stderr)
        return EXIT_USAGE
    except NonFiniteError as error:
        print(f"mmctx {command}: {error}", file=sys.stderr)
        return EXIT_NON_FINITE
    except UnicodeDecodeError as error:  # a --config file that is not text
        print(f"mmctx {command}: error: a config file is not UTF-8 text ({error})", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as error:  # --ckpt_path of another model, or other classes
        cause = mismatch_cause(error)
        if cause is None:
            raise
        print(
            f"mmctx {command}: error: the checkpoint's weights do not fit the model the config "
            f"builds ({cause})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
