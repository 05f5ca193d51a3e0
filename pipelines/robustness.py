"""How a trained classifier holds up when a modality is missing or degraded.

The report evaluates one split under a list of conditions: clean; each modality removed
in turn (as modality dropout removes it in training); and each noise corruption swept
from level 0 to 1 (:meth:`mmctx.transforms.Transform.at_level`). The corruptions swept are
the ones the config trains with (``data.augment``, those that have a sweep), so a user
names them once; a modality the config does not corrupt gets its default noise
(:data:`DEFAULT_CORRUPTIONS`). Results go to JSON, CSV and a PNG plot, in the spirit of
MultiBench's robustness curves.
"""

from __future__ import annotations

import copy
import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import move_data_to_device
from torch import nn
from tqdm.auto import tqdm

from mmctx.data import drop_modalities
from mmctx.data.datamodule import MultimodalDataModule
from mmctx.transforms import AddNoise, Augment, CharTypos, ImageNoise, Transform

DEFAULT_CORRUPTIONS: dict[str, Transform] = {
    "text": CharTypos(),
    "image": ImageNoise(),
    "audio": AddNoise(),
}
DEFAULT_LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class Result:
    """One evaluated condition.

    Attributes:
        condition: ``"clean"``, ``"without <modality>"`` or the corruption's name.
        modality: The modality changed (empty for clean).
        level: Corruption level in [0, 1] (1.0 for a removed modality, 0.0 for clean).
        setting: The corruption's swept parameter at that level, e.g. ``"snr_db=15"``.
        accuracy: Accuracy on the split under the condition.
        samples: Samples scored.
    """

    condition: str
    modality: str
    level: float
    setting: str
    accuracy: float
    samples: int


def corruptions_to_sweep(
    augment: Sequence[Transform], modalities: Sequence[str]
) -> list[Transform]:
    """The swept corruptions: those of ``augment`` with a sweep, plus a default noise for
    each of ``modalities`` that has none."""
    chosen = [t for t in augment if t.sweep is not None and t.modality in modalities]
    covered = {t.modality for t in chosen}
    return chosen + [
        DEFAULT_CORRUPTIONS[m] for m in modalities if m not in covered and m in DEFAULT_CORRUPTIONS
    ]


@torch.no_grad()
def accuracy(
    model: nn.Module,
    datamodule: MultimodalDataModule,
    split: str,
    *,
    augment: Augment | None = None,
    remove: str | None = None,
    seed: int = 0,
    desc: str = "",
) -> tuple[float, int]:
    """Accuracy of ``model`` (a classifier taking a batch's ``inputs``) on one split.

    Args:
        model: Module with ``forward(inputs) -> logits`` and ``val_metrics`` (as
            :class:`mmctx.pipelines.MultimodalClassifier`); evaluated in eval mode.
        datamodule: Supplies the split and its preprocessing.
        split: Split to score.
        augment: Corruption applied to every sample.
        remove: Modality removed from every sample.
        seed: Seed of the corruption's randomness.
        desc: Progress bar label.

    Returns:
        ``(accuracy, samples scored)``.
    """
    model.eval()
    device = next(model.parameters()).device
    metrics = copy.deepcopy(model.val_metrics)
    metrics.reset()
    torch.manual_seed(seed)
    count = 0
    for batch in tqdm(datamodule.loader(split, augment=augment), desc=desc, leave=False):
        if not batch["ids"]:
            continue
        if remove is not None and remove in batch["inputs"]:
            drop_modalities(batch, {remove: torch.ones(len(batch["ids"]), dtype=torch.bool)})
        batch = move_data_to_device(batch, device)
        target = batch["label"]
        metrics.update(model(batch["inputs"]), target.long() if model.multilabel else target)
        count += len(batch["ids"])
    if count == 0:
        raise ValueError(f"no sample of split {split!r} could be scored")
    scores = metrics.compute()
    return float(next(v for k, v in scores.items() if k.endswith("acc"))), count


def robustness_report(
    model: nn.Module,
    datamodule: MultimodalDataModule,
    *,
    split: str = "val",
    levels: Sequence[float] = DEFAULT_LEVELS,
    augment: Sequence[Transform] | None = None,
    seed: int = 0,
) -> list[Result]:
    """Score ``model`` clean, with each modality removed, and under each swept corruption.

    Args:
        model: A trained classifier (see :func:`accuracy`).
        datamodule: Its data.
        split: Split to score (``"val"`` or ``"test"``).
        levels: Corruption levels in [0, 1].
        augment: The training corruptions (default: the datamodule's ``augment``).
        seed: Seed of the corruptions' randomness (the same for every condition).
    """
    samples = datamodule.dataset(split).samples  # removing what no sample has measures nothing
    modalities = [m for m in datamodule.modalities if any(s.get(m) is not None for s in samples)]
    if augment is None:
        augment = datamodule.augment.transforms if datamodule.augment else []
    rate = datamodule.preprocess.sample_rate
    results = []

    def run(condition: str, modality: str, level: float, setting: str, **kw: Any) -> None:
        acc, n = accuracy(model, datamodule, split, seed=seed, desc=condition, **kw)
        results.append(Result(condition, modality, level, setting, acc, n))
        print(f"  {condition:<28} {setting:<22} acc={acc:.4f}", flush=True)

    run("clean", "", 0.0, "")
    for m in modalities:
        run(f"without {m}", m, 1.0, "removed", remove=m)
    for corruption in corruptions_to_sweep(augment, modalities):
        name, _, _ = corruption.sweep
        for level in levels:
            at = corruption.at_level(level)
            run(
                type(corruption).__name__,
                corruption.modality,
                float(level),
                f"{name}={getattr(at, name):g}",
                augment=Augment([at], rate),
            )
    return results


def write_report(
    results: Sequence[Result], out_dir: str | Path, title: str = ""
) -> dict[str, Path]:
    """Write ``robustness.json``, ``robustness.csv`` and ``robustness.png`` into ``out_dir``.

    Returns:
        The written paths, keyed ``"json"``, ``"csv"``, ``"png"``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [asdict(r) for r in results]
    paths = {
        "json": out / "robustness.json",
        "csv": out / "robustness.csv",
        "png": out / "robustness.png",
    }
    paths["json"].write_text(json.dumps(rows, indent=2) + "\n")
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    fig, (bars, curves) = plt.subplots(
        1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1, 2]}
    )
    removal = [r for r in results if r.condition == "clean" or r.setting == "removed"]
    bars.bar([r.condition for r in removal], [r.accuracy for r in removal], color="#4c72b0")
    for i, r in enumerate(removal):
        bars.text(i, r.accuracy + 0.01, f"{r.accuracy:.3f}", ha="center", fontsize=8)
    bars.set_ylim(0, 1.05)
    bars.set_ylabel("accuracy")
    bars.set_title("modality removed")
    bars.tick_params(axis="x", rotation=30)
    swept = [r for r in results if r.setting not in ("", "removed")]
    for key in dict.fromkeys((r.modality, r.condition) for r in swept):
        line = [r for r in swept if (r.modality, r.condition) == key]
        label = f"{key[0]}: {key[1]} ({line[0].setting} to {line[-1].setting})"
        curves.plot([r.level for r in line], [r.accuracy for r in line], marker="o", label=label)
    curves.set_ylim(0, 1.05)
    curves.set_xlabel("corruption level (0 = mildest setting, 1 = strongest)")
    curves.set_title("corruption swept")
    curves.legend(fontsize=8, loc="lower left")
    curves.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=110)
    plt.close(fig)
    return paths
