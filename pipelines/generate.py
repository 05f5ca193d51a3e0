"""``mmctx generate`` (images or sounds from conditions) and ``mmctx gan-eval`` (how good).

``generate`` draws K samples per condition with a trained :class:`MultimodalGAN` and writes
one file per sample (a PNG image, or a WAV clip for an audio target) plus a contact sheet
(of the images, or of the clips' spectrograms). ``gan-eval`` measures, without any
downloaded network, the conditional accuracy (the share of generated samples that a
classifier of the target modality alone, trained on real data, assigns to the intended
class) and the diversity (mean pairwise RMS distance of the pictures -- pixels, or
spectrogram bins -- of one condition, against real samples of one class).

Shape legend: b = conditions, n = samples per condition, c/h/w = picture channels and sides.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import re
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.fabric.utilities import move_data_to_device
from torch import Tensor
from tqdm import tqdm

from mmctx.checkpoints import CheckpointError, data_settings, load_module
from mmctx.data import Collate, ManifestDataset, Preprocess, SampleError
from mmctx.data.manifest import LabelSpace, Sample, parse_row, row_cause
from mmctx.data.paths import UNCONFINED
from mmctx.errors import EXIT_STATUS_HELP, at_least, device_name, one_line

from .gan import MultimodalGAN, _rows
from .gan_images import contact_sheet, write_png
from .inference import Row, preprocess_from, row_from_arguments, rows_from_manifest

log = logging.getLogger(__name__)


def load_gan(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[MultimodalGAN, Preprocess]:
    """The GAN of a ``mmctx fit`` checkpoint (eval mode) and the preprocessing it was trained with.

    Raises:
        CheckpointError: The file is unreadable, holds another kind of model, or lacks the
            data settings.
    """
    model = load_module(path, map_location=device)
    if not isinstance(model, MultimodalGAN):
        raise CheckpointError(f"{path}: holds a {type(model).__name__}, not a MultimodalGAN")
    settings = data_settings(path)
    if "preprocess" not in settings:
        raise CheckpointError(f"{path}: records no data settings (write it with `mmctx fit`)")
    return model, preprocess_from(settings)


def _batches(
    samples: list[Sample],
    modalities: Sequence[str],
    pre: Preprocess,
    labels: LabelSpace | None,
    batch_size: int,
) -> Iterator[tuple[dict[str, Any], list[str]]]:
    """Collated batches of decodable samples; failures are logged with their cause."""
    dataset = ManifestDataset(samples, labels, tuple(modalities), pre)
    collate = Collate(dataset.handlers, pre, None)
    for start in range(0, len(dataset), batch_size):
        loaded = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        errors = [str(x) for x in loaded if isinstance(x, SampleError)]
        batch = collate(loaded)
        if batch["ids"]:
            yield batch, errors
        elif errors:
            yield {"ids": []}, errors


TRUNCATION_HELP = (
    "draw the noise from a normal truncated to [-T, T] (the truncation trick): smaller T, "
    "more typical and less varied samples (default: the full normal, as in training)"
)


def _truncation(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80] or "sample"


GENERATE_HELP = """\
Draw images or sounds with a trained conditional GAN (a checkpoint of `mmctx fit --config
configs/gan_*.yaml`). The conditions are what the GAN was trained to listen to (for
example a spoken digit and a sentence, or a picture); give them in a JSON Lines manifest
(one condition a line, paths relative to its folder) or as one condition on the command line.

Writes OUT/<id>_<k>.png (an image target) or OUT/<id>_<k>.wav (an audio target: 16-bit
mono WAV of the GAN's duration and sample rate) for each of the N samples of each
condition, and OUT/contact_sheet.png with one row per condition (for audio, the log-mel
spectrograms: time to the right, pitch upwards). The same --seed gives the same files.

examples:
  mmctx generate --ckpt runs/gan_demo/logs/version_0/checkpoints/last.ckpt \\
      --text "please bring the seven cups" --audio seven.wav --out gen/ --n 8
  mmctx generate --ckpt runs/gan_audio_digits/checkpoints/last.ckpt \\
      --image ../shared/data/digits/images/7_0007.png --out gen/   # a spoken seven, as WAV
  mmctx generate --ckpt last.ckpt --manifest conditions.jsonl --out gen/
"""


def generate_main(argv: Sequence[str]) -> int:
    """``mmctx generate``: see :data:`GENERATE_HELP`. Exit 0 (all ok), 1 (some failed), 2
    (could not start); see :data:`mmctx.errors.EXIT_STATUS_HELP`."""
    parser = argparse.ArgumentParser(
        prog="mmctx generate",
        description=GENERATE_HELP,
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ckpt", required=True, help="GAN checkpoint written by `mmctx fit`")
    parser.add_argument("--manifest", help="JSON Lines file of conditions (one a line)")
    parser.add_argument("--text", help="inline text of a single condition")
    for key in ("audio", "image", "video"):
        parser.add_argument(f"--{key}", action="append", help=f"{key} file (repeatable)")
    parser.add_argument("--id", default="sample", help="name of a command-line condition")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--n", type=int, default=8, help="samples per condition (default: 8)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    parser.add_argument("--truncation", type=_truncation, metavar="T", help=TRUNCATION_HELP)
    parser.add_argument("--batch-size", type=at_least(1), default=32, help="conditions per batch")
    parser.add_argument(
        "--device", type=device_name, default="cpu", help="cpu, cuda, ... (default: cpu)"
    )
    args = parser.parse_args(argv)
    single = [args.text, args.audio, args.image, args.video]
    if args.manifest and any(v is not None for v in single):
        parser.error("give --manifest or --text/--audio/..., not both")
    if not args.manifest and all(v is None for v in single):
        parser.error("no condition: give --manifest FILE or --text/--audio/--image/--video")
    if args.n < 1:
        parser.error(f"--n must be >= 1, got {args.n}")
    try:
        model, pre = load_gan(args.ckpt, args.device)
        if args.manifest:
            source = rows_from_manifest(args.manifest)
            rows, base, data_root = list(source.rows), source.base, source.base
        else:
            row = row_from_arguments(args.text, args.image, args.audio, args.video, args.id)
            rows, base, data_root = [(1, row)], Path.cwd(), UNCONFINED  # the user's own paths
    except (OSError, CheckpointError, ValueError) as err:
        print(f"mmctx generate: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    samples, errors = _conditions(rows, base, data_root)
    written, failed = generate_samples(
        model, samples, pre, Path(args.out), n=args.n, seed=args.seed,
        batch_size=args.batch_size, device=args.device, truncation=args.truncation,
    )  # fmt: skip
    errors += failed
    for err in errors:
        print(f"  skipped {one_line(err)}", file=sys.stderr)
    print(f"mmctx generate: {written} conditions ok, {len(errors)} failed", file=sys.stderr)
    return 1 if errors else 0


def _conditions(
    rows: Iterable[Row], base: Path, data_root: Any, check_labels: bool = False
) -> tuple[list[Sample], list[str]]:
    """Parsed condition rows, and one message per row that could not be parsed."""
    samples, errors = [], []
    for line, row in rows:
        try:
            if isinstance(row, Exception):
                raise row
            samples.append(
                parse_row(row, line, base, data_root=data_root, check_labels=check_labels)
            )
        except Exception as err:  # noqa: BLE001 - one row never ends the run
            errors.append(f"line {line}: {row_cause(err)}")
    return samples, errors


def generate_samples(
    model: MultimodalGAN,
    samples: list[Sample],
    pre: Preprocess,
    out: Path,
    *,
    n: int = 8,
    seed: int = 0,
    batch_size: int = 32,
    device: str = "cpu",
    truncation: float | None = None,
) -> tuple[int, list[str]]:
    """Draw ``n`` samples per condition into ``out/<id>_<k>.png`` (or ``.wav`` for an audio
    target) and ``out/contact_sheet.png``.

    Returns:
        ``(conditions drawn, one message per condition that failed to decode)``.
    """
    sheet_rows: list[Tensor] = []
    names: list[str] = []
    errors: list[str] = []
    written = 0
    bar = tqdm(total=len(samples), unit="condition", file=sys.stderr)
    for batch, failed in _batches(samples, list(model.context.encoders), pre, None, batch_size):
        errors += failed
        bar.update(len(batch["ids"]) + len(failed))
        if not batch["ids"]:
            continue
        inputs = move_data_to_device(batch["inputs"], device)
        pictures = model.sample(inputs, n, seed=seed + written, truncation=truncation).cpu()
        for sample_id, per in zip(batch["ids"], pictures, strict=True):
            for k, picture in enumerate(per):
                model.target.write(out / f"{_safe(sample_id)}_{k:02d}", picture)
            sheet_rows.append(per)
            names.append(sample_id[:12])
        written += len(batch["ids"])
    bar.close()
    if sheet_rows:
        sheet = write_png(out / "contact_sheet.png", contact_sheet(torch.stack(sheet_rows), names))
        kind = f"{model.target.name} samples"
        print(f"wrote {written * n} {kind} of {written} conditions to {out}/ and {sheet}")
    return written, errors


def _pairwise(images: Tensor) -> Tensor:
    """Mean pairwise RMS distance of ``(m, c, h, w)`` uint8 pictures, values scaled to [0, 1]."""
    flat = images.flatten(1).float() / 255
    if len(flat) < 2:
        return torch.tensor(float("nan"))
    dist = torch.cdist(flat, flat) / flat.shape[1] ** 0.5  # (m, m)
    m = len(flat)
    return dist.sum() / (m * (m - 1))


def _classify(classifier: Any, inputs: dict[str, Any], device: str) -> Tensor:
    """Predicted class indices of a classifier for a batch's ``inputs``."""
    with torch.no_grad():
        return classifier(move_data_to_device(inputs, device)).argmax(-1).cpu()


class _Tally:
    """Running figures of :func:`evaluate_gan` (see its Returns)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.correct = self.counted = self.no_condition = 0
        self.real_correct = self.real_counted = self.ctx_correct = self.resynth_correct = 0
        self.ctx_right_correct = 0  # generated samples judged right, of conditions ...
        self.ctx_right_counted = 0  # ... whose context names the class
        self.per_class: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        self.cond_div: list[float] = []
        self.fake_by_class: dict[int, list[Tensor]] = defaultdict(list)
        self.real_by_class: dict[int, list[Tensor]] = defaultdict(list)
        self.sheet: dict[int, Tensor] = {}

    def add_real(self, labels: Tensor, pictures: Tensor, pred: Tensor, resynth: Tensor) -> None:
        """Real samples of ``labels``: their ``(b, c, h, w)`` pictures (for diversity) and the
        judge's predictions on them as they are (``pred``) and rebuilt from their pictures
        as generated ones are (``resynth``; the same as ``pred`` for images)."""
        for label, picture in zip(labels.tolist(), pictures, strict=True):
            self.real_by_class[label].append(picture)
        self.real_correct += int((pred == labels).sum())
        self.resynth_correct += int((resynth == labels).sum())
        self.real_counted += len(labels)

    def add_generated(
        self, labels: Tensor, fake: Tensor, pred: Tensor, context: Tensor | None = None
    ) -> None:
        """``(b, n, c, h, w)`` pictures drawn for conditions of ``labels``, judged ``pred``
        ``(b, n)``; ``context`` ``(b,)``: the class the GAN's context head names, if it has one."""
        hits = pred == labels[:, None]  # (b, n)
        self.correct += int(hits.sum())
        self.counted += len(labels)
        if context is not None:
            right = context == labels
            self.ctx_correct += int(right.sum())
            self.ctx_right_correct += int(hits[right].sum())
            self.ctx_right_counted += int(right.sum()) * self.n
        for label, images, row_hits in zip(labels.tolist(), fake, hits, strict=True):
            self.per_class[label][0] += int(row_hits.sum())
            self.per_class[label][1] += self.n
            self.cond_div.append(float(_pairwise(images)))
            self.fake_by_class[label].append(images)
            self.sheet.setdefault(label, images)

    def result(self, names: list[str], seed: int, has_context_head: bool) -> dict[str, Any]:
        gen = torch.Generator().manual_seed(seed)
        real_div = _class_diversity(self.real_by_class, gen)
        cond = sum(self.cond_div) / len(self.cond_div)
        return {
            "conditions": self.counted,
            "samples": self.counted * self.n,
            "conditional_accuracy": self.correct / (self.counted * self.n),
            "per_class_accuracy": {names[k]: c / t for k, (c, t) in sorted(self.per_class.items())},
            "context_accuracy": self.ctx_correct / self.counted if has_context_head else None,
            # what the generator makes of a condition that names the class
            "conditional_accuracy_context_right": (
                self.ctx_right_correct / self.ctx_right_counted if self.ctx_right_counted else None
            ),
            "classifier_accuracy_real": (
                self.real_correct / self.real_counted if self.real_counted else None
            ),
            "classifier_accuracy_real_resynthesised": (
                self.resynth_correct / self.real_counted if self.real_counted else None
            ),
            "diversity_per_condition": cond,
            "diversity_per_class_generated": _class_diversity(self.fake_by_class, gen),
            "diversity_per_class_real": real_div,
            "diversity_ratio": cond / real_div,
            "conditions_without_any_conditioning_modality": self.no_condition,
            "sheet": torch.stack([self.sheet[k] for k in sorted(self.sheet)]),
            "sheet_labels": [names[k] for k in sorted(self.sheet)],
        }


def _class_diversity(
    by_class: dict[int, list[Tensor]], gen: torch.Generator, cap: int = 200
) -> float:
    """Mean over classes of the pairwise distance of (at most ``cap``) pictures of one class."""
    values = []
    for images in by_class.values():
        stack = torch.cat([x.reshape(-1, *x.shape[-3:]) for x in images])
        if len(stack) > 1:  # a class with one image has no pair
            stack = stack[torch.randperm(len(stack), generator=gen)[:cap]]
            values.append(float(_pairwise(stack)))
    return sum(values) / len(values) if values else float("nan")


def evaluate_gan(
    model: MultimodalGAN,
    classifier: Any,
    classifier_pre: Preprocess,
    batches: Iterator[tuple[dict[str, Any], list[str]]],
    *,
    n: int = 8,
    seed: int = 0,
    device: str = "cpu",
    total: int | None = None,
    truncation: float | None = None,
) -> dict[str, Any]:
    """Conditional accuracy and diversity of a GAN over labelled conditions.

    Args:
        model: The GAN (eval mode).
        classifier: A classifier of the target modality alone, trained on real data
            (``MultimodalClassifier``); anything mapping a batch's inputs to class scores.
        classifier_pre: The preprocessing the classifier was trained with (image side).
        batches: Collated labelled batches holding the conditioning modalities and the target.
        n: Samples drawn per condition.
        seed: Noise seed.
        device: Where the models run.
        total: Number of conditions, for the progress bar.
        truncation: Noise truncation of the generated samples (see ``MultimodalGAN.sample``).

    Returns:
        The figures (see ``gan_eval_main``) and per-class accuracies, plus one row of
        ``n`` generated pictures per class (``sheet``, ``(classes, n, c, h, w)`` uint8).
    """
    tally, errors, target = _Tally(n), [], model.target

    def judge(pictures: Tensor) -> Tensor:
        return _classify(classifier, target.judge_inputs(pictures, classifier_pre), device)

    bar = tqdm(total=total, unit="condition", file=sys.stderr)
    for batch, failed in batches:
        errors += failed
        bar.update(len(batch["ids"]) + len(failed))
        if not batch["ids"]:
            continue
        labels = batch["label"]
        real = batch["inputs"][target.name]
        grids, has = target.real(real)
        if has.any():
            real_pictures = target.pictures(grids[has])
            rows = _rows(real, has.nonzero()[:, 0])
            pred = _classify(
                classifier, target.judge_real(rows, real_pictures, classifier_pre), device
            )
            tally.add_real(labels[has], real_pictures, pred, judge(real_pictures))
        conditioned = torch.stack([batch["present"][m] for m in model.context.encoders]).any(0)
        tally.no_condition += int((~conditioned).sum())
        if not conditioned.any():
            continue
        keep = conditioned.nonzero().flatten()
        inputs = {m: _rows(batch["inputs"][m], keep) for m in model.context.encoders}
        inputs, labels = move_data_to_device(inputs, device), labels[keep]
        fake = model.sample(inputs, n, seed=seed + tally.counted, truncation=truncation).cpu()
        ctx = None
        if model.aux_head is not None:
            with torch.no_grad():
                ctx = model.aux_head(model.condition(inputs)[0]).argmax(-1).cpu()
        tally.add_generated(labels, fake, judge(fake.flatten(0, 1)).view(-1, n), ctx)
    bar.close()
    if not tally.counted:
        raise NothingToEvaluate(errors, tally.no_condition)
    result = tally.result(model.class_names, seed, model.aux_head is not None)
    return {**result, "failed_samples": errors}


class NothingToEvaluate(ValueError):
    """Not one condition could be evaluated; ``failed`` holds each sample's failure."""

    def __init__(self, failed: list[str], without_condition: int) -> None:
        self.failed = failed
        why = [f"{len(failed)} samples failed"] if failed else []
        if without_condition:
            why.append(f"{without_condition} carry none of the conditioning modalities")
        super().__init__(f"no condition to evaluate ({'; '.join(why) or 'no samples'})")


GAN_EVAL_HELP = """\
Measure a trained conditional GAN without any downloaded network:

  conditional accuracy  share of generated samples that a classifier of the target modality
                        alone, trained by this project on real data (configs/image_only_*.yaml
                        for images, configs/audio_only_*.yaml for sounds), assigns to the
                        intended class (the label of the condition they were drawn for);
                        generated sounds are judged as waveforms (Griffin-Lim)
  diversity             mean pairwise RMS distance (values in [0, 1]) of the pictures of the
                        N samples of one condition -- the pixels of images, the log-mel
                        spectrograms of sounds -- against the same figure for real samples
                        of one class; a ratio near 0 means collapse to one sample per condition

The conditions are the labelled samples of a split of the GAN's data (from the config the
fit wrote beside its checkpoint, or --config) or of a --manifest. Samples that carry none
of the conditioning modalities are left out and counted. Also reported: the classifier's
accuracy on the real samples (as they are and, for sounds, rebuilt from their spectrograms
the way generated ones are), the GAN context's own accuracy (the share of conditions
that say enough to name the class at all) and the conditional accuracy over just those
conditions (what the generator makes of a condition that names the class).

examples:
  mmctx gan-eval --ckpt runs/gan_digits/logs/version_0/checkpoints/last.ckpt \\
      --classifier runs/image_only_digits/logs/version_0/checkpoints/best-*.ckpt --out eval/
  mmctx gan-eval --ckpt runs/gan_audio_digits/checkpoints/last.ckpt \\
      --classifier runs/audio_only_digits/checkpoints/best-*.ckpt --out eval/
"""


def _find_config(ckpt: Path) -> Path | None:
    """The ``config.yaml`` Lightning's CLI wrote in the run folder above ``checkpoints/``."""
    for folder in (ckpt.parent, ckpt.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    return None


def gan_eval_main(argv: Sequence[str], build_from_config: Callable[[list[str]], Any]) -> int:
    """``mmctx gan-eval``: see :data:`GAN_EVAL_HELP`. Exit 0 (all ok), 1 (some conditions
    failed and were skipped), 2 (could not start); see :data:`mmctx.errors.EXIT_STATUS_HELP`.

    Args:
        argv: The command's arguments.
        build_from_config: Builds (not runs) the CLI's model, data and trainer from
            ``mmctx fit``-style arguments; the conditions come from its data module.
    """
    parser = argparse.ArgumentParser(
        prog="mmctx gan-eval",
        description=GAN_EVAL_HELP,
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ckpt", required=True, help="GAN checkpoint written by `mmctx fit`")
    parser.add_argument(
        "--classifier", required=True, help="checkpoint of a classifier of the target modality only"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", action="append", help="the GAN's YAML config(s), for its data")
    source.add_argument("--manifest", help="labelled JSON Lines manifest of conditions")
    parser.add_argument("--split", default="test", choices=["val", "test"], help="default: test")
    parser.add_argument("--n", type=int, default=8, help="samples per condition (default: 8)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    parser.add_argument("--truncation", type=_truncation, metavar="T", help=TRUNCATION_HELP)
    parser.add_argument("--batch-size", type=at_least(1), default=64, help="conditions per batch")
    parser.add_argument("--out", help="folder for gan_eval.json and contact_sheet.png")
    parser.add_argument(
        "--device", type=device_name, default="cpu", help="cpu, cuda, ... (default: cpu)"
    )
    args, overrides = parser.parse_known_args(argv)
    if args.n < 2:
        parser.error(f"--n must be >= 2 (diversity needs pairs), got {args.n}")
    try:
        model, pre = load_gan(args.ckpt, args.device)
        classifier = load_module(args.classifier, map_location=args.device)
        clf_pre = preprocess_from(data_settings(args.classifier))
        if list(getattr(classifier, "encoders", {})) != [model.target.name]:
            raise CheckpointError(
                f"{args.classifier}: not a classifier of the GAN's target ({model.target.name}) only"
            )
        model.target.check_judge(clf_pre, str(args.classifier))
        batches, total = _eval_batches(args, overrides, model, pre, build_from_config)
    except (OSError, CheckpointError, ValueError) as err:
        print(f"mmctx gan-eval: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    try:
        result = evaluate_gan(
            model, classifier, clf_pre, batches, n=args.n, seed=args.seed,
            device=args.device, total=total, truncation=args.truncation,
        )  # fmt: skip
    except NothingToEvaluate as err:
        for failure in err.failed:
            print(f"  skipped {one_line(failure)}", file=sys.stderr)
        print(f"mmctx gan-eval: error: {err}", file=sys.stderr)
        return 1 if err.failed else 2
    sheet, labels = result.pop("sheet"), result.pop("sheet_labels")
    result.update(
        gan=str(args.ckpt), classifier=str(args.classifier), n=args.n, seed=args.seed,
        truncation=args.truncation,
    )  # fmt: skip
    print(format_result(result))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gan_eval.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
        write_png(out / "contact_sheet.png", contact_sheet(sheet, labels))
        print(f"wrote {out / 'gan_eval.json'} and {out / 'contact_sheet.png'}")
    for err in result["failed_samples"]:
        print(f"  skipped {one_line(err)}", file=sys.stderr)
    return 1 if result["failed_samples"] else 0


def _eval_batches(
    args: argparse.Namespace,
    overrides: list[str],
    model: MultimodalGAN,
    pre: Preprocess,
    build_from_config: Callable[[list[str]], Any],
) -> tuple[Iterator[tuple[dict[str, Any], list[str]]], int]:
    """Labelled batches of the chosen conditions, with the conditioning modalities and target;
    rows that cannot be used (unparsable, unlabelled) come first, as an empty batch's errors.

    Raises:
        ValueError: Not one usable labelled condition.
    """
    modalities = [*model.context.encoders, model.target.name]
    labels = LabelSpace(model.class_names)
    errors: list[str] = []
    if args.manifest:
        source = rows_from_manifest(args.manifest)
        samples, errors = _conditions(source.rows, source.base, source.base, check_labels=True)
    else:
        configs = args.config or [_find_config(Path(args.ckpt))]
        if configs[0] is None:
            raise ValueError(
                f"no config.yaml beside {args.ckpt}: give --config (the GAN's YAML) or --manifest"
            )
        if not args.config:  # the fit's config.yaml also records `fit` arguments (ckpt_path, ...)
            saved = yaml.safe_load(configs[0].read_text(encoding="utf-8"))
            keep = ("seed_everything", "trainer", "model", "data", "optimizer", "lr_scheduler")
            configs = [yaml.safe_dump({k: v for k, v in saved.items() if k in keep})]
        argv = [a for c in configs for a in ("--config", str(c))] + overrides
        samples = build_from_config(argv).datamodule.dataset(args.split).samples
    errors += [
        f"line {s.line}: sample {s.id!r} has no label (gan-eval needs each condition's class)"
        for s in samples
        if s.label is None
    ]
    samples = [s for s in samples if s.label is not None]
    if not samples:
        first = f" (first: {errors[0]})" if errors else ""
        raise ValueError(f"no labelled condition to evaluate: {len(errors)} rows failed{first}")
    batches = _batches(samples, modalities, pre, labels, args.batch_size)
    return itertools.chain([({"ids": []}, errors)], batches), len(samples) + len(errors)


def format_result(result: dict[str, Any]) -> str:
    """The figures of :func:`evaluate_gan` as a few readable lines."""
    trunc = result.get("truncation")
    lines = [
        f"conditional accuracy: {result['conditional_accuracy']:.3f} "
        f"({result['samples']} samples of {result['conditions']} conditions"
        + (f", noise truncated to [-{trunc:g}, {trunc:g}])" if trunc else ")"),
        f"diversity per condition: {result['diversity_per_condition']:.4f}  "
        f"real samples per class: {result['diversity_per_class_real']:.4f}  "
        f"ratio: {result['diversity_ratio']:.2f}",
        f"diversity per class, generated: {result['diversity_per_class_generated']:.4f}",
    ]
    if result["classifier_accuracy_real"] is not None:
        lines.append(
            f"classifier accuracy on the real samples: {result['classifier_accuracy_real']:.3f}"
            f" (rebuilt from their pictures: {result['classifier_accuracy_real_resynthesised']:.3f})"
        )
    if result["context_accuracy"] is not None:
        lines.append(
            f"context accuracy (the condition names the class): {result['context_accuracy']:.3f}"
        )
    if result["conditional_accuracy_context_right"] is not None:
        lines.append(
            "conditional accuracy where the context names the class: "
            f"{result['conditional_accuracy_context_right']:.3f}"
        )
    lines.append(
        "per class: " + ", ".join(f"{k}={v:.2f}" for k, v in result["per_class_accuracy"].items())
    )
    if result["conditions_without_any_conditioning_modality"]:
        lines.append(
            f"left out: {result['conditions_without_any_conditioning_modality']} samples "
            "without any conditioning modality"
        )
    if result["failed_samples"]:
        lines.append(
            f"failed to decode: {len(result['failed_samples'])} (first: {result['failed_samples'][0]})"
        )
    return "\n".join(lines)
