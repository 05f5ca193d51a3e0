"""MultimodalClassifier: encoders -> fusion -> backbone -> pooled head, as a LightningModule."""

from __future__ import annotations

import math
import warnings
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import Accuracy, F1Score

from mmctx.encoders import ModalityEncoder
from mmctx.features import FeatureSequence
from mmctx.nn.backbones import FusionBackbone
from mmctx.nn.fused import FusedModel

# State-dict keys of checkpoints written before the fused model existed -> today's keys.
_OLD_KEYS = {
    "encoders.": "fused.encoders.",
    "fusion.": "fused.fusion.",
    "backbone.": "fused.backbone.",
    "pool_score.": "fused.pool.score.",
}


def _upgrade_state_dict(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any
) -> None:
    """Rename the keys of an older checkpoint in place (a ``load_state_dict`` pre-hook)."""
    for key in list(state_dict):
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        for old, new in _OLD_KEYS.items():
            if rest.startswith(old):
                state_dict[prefix + new + rest[len(old) :]] = state_dict.pop(key)
                break


def _adamw(params: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)


def _dry_run(optimizer: OptimizerCallable, lr_scheduler: LRSchedulerCallable | None) -> None:
    """Build the optimizer (and step the scheduler once) on a dummy parameter, so that bad
    settings (``lr: -1``, a ``StepLR`` with ``step_size: 0``) fail when the model is built,
    as a ValueError naming them, rather than as an internal error once fitting started."""
    opt = optimizer([nn.Parameter(torch.zeros(1))])
    if lr_scheduler is None:
        return
    scheduler = lr_scheduler(opt)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
            scheduler.step()
    except ArithmeticError as err:
        raise ValueError(f"lr_scheduler fails on its first step: {err}") from err
    except TypeError:  # a step that needs arguments (ReduceLROnPlateau: the metric)
        pass


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup: float = 0.05) -> Any:
    """Linear warm-up over ``warmup`` of the steps, then cosine decay to zero."""
    warm = max(1, int(total_steps * warmup))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total_steps - warm))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class MultimodalClassifier(L.LightningModule):
    """Classify a sample from whatever modalities it carries.

    Args:
        encoders: One encoder per modality, keyed by modality name (``"text"``, ...).
        backbone: The fusion backbone; its ``dim`` is the fused width.
        class_names: Class names in index order (the CLI takes them from the data).
        multilabel: Sigmoid outputs and one binary decision per class instead of softmax.
        pool: How the fused sequence becomes one vector: ``"mean"``, ``"max"``,
            ``"summary"`` or ``"attention"`` (see :class:`mmctx.nn.pooling.Pooling`).
        dropout: Dropout before the output layer.
        share_frame_cnn: The video encoder runs its frames through the image encoder's CNN
            (one set of weights, trained by both) instead of a CNN of its own.
        optimizer: Optimizer factory (default AdamW, lr 1e-3, weight decay 0.01).
        lr_scheduler: Scheduler factory stepped every step; default linear warm-up then cosine.
    """

    def __init__(
        self,
        encoders: dict[str, ModalityEncoder],
        backbone: FusionBackbone,
        class_names: list[str],
        multilabel: bool = False,
        pool: str = "mean",
        dropout: float = 0.1,
        share_frame_cnn: bool = False,
        optimizer: OptimizerCallable = _adamw,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["encoders", "backbone", "optimizer", "lr_scheduler"])
        if len(class_names) < 2 and not multilabel:
            raise ValueError(f"need at least 2 classes, got class_names={class_names}")
        if share_frame_cnn:
            if not {"image", "video"} <= set(encoders):
                raise ValueError("share_frame_cnn needs both an image and a video encoder")
            encoders["video"].share_frame_cnn(encoders["image"])
        self.fused = FusedModel(encoders, backbone, pool)
        self.head = nn.Sequential(
            nn.LayerNorm(backbone.dim),
            nn.Dropout(dropout),
            nn.Linear(backbone.dim, len(class_names)),
        )
        self.register_load_state_dict_pre_hook(_upgrade_state_dict)
        self.class_names = list(class_names)
        self.multilabel = multilabel
        _dry_run(optimizer, lr_scheduler)
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        task: dict[str, Any] = (
            {"task": "multilabel", "num_labels": len(class_names)}
            if multilabel
            else {"task": "multiclass", "num_classes": len(class_names)}
        )
        metrics = MetricCollection(
            {"acc": Accuracy(**task), "f1": F1Score(average="macro", **task)}
        )
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.skipped_samples = 0

    def setup(self, stage: str) -> None:
        """Check that the data module's decoding fits the encoders, before the first batch."""
        dm = getattr(self.trainer, "datamodule", None)
        pre = getattr(dm, "preprocess", None)
        if pre is not None:
            loaded = getattr(dm, "modalities", None)
            self.fused.check_data(pre.sample_rate, pre.image_channels, pre.image_size, loaded)

    @property
    def encoders(self) -> nn.ModuleDict:
        """The per-modality encoders (of the fused model)."""
        return self.fused.encoders

    def forward(self, inputs: dict[str, Any]) -> Tensor:
        """Logits ``(b, classes)`` from the collated ``inputs`` of a batch."""
        return self.head(self.fused(inputs).pooled)

    def embed(self, inputs: dict[str, Any]) -> FeatureSequence:
        """The backbone's output sequence ``(b, n, d)`` (for heads other than this one)."""
        return self.fused.sequence(inputs)

    def _logits(self, batch: dict[str, Any]) -> Tensor:
        """Logits of a collated batch (a subclass may use more of the batch than its inputs)."""
        return self(batch["inputs"])

    def _loss(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits, target)
        return F.cross_entropy(logits, target)

    def _step(self, batch: dict[str, Any], metrics: MetricCollection, stage: str) -> Tensor | None:
        self.skipped_samples += len(batch["errors"])
        if not batch["ids"]:  # every sample failed to decode (reported already)
            return self._empty_batch_loss() if stage == "train" else None
        logits = self._logits(batch)
        target = batch["label"]
        loss = self._loss(logits, target)
        metrics.update(logits, target.long() if self.multilabel else target)
        bs = len(batch["ids"])
        self.log(
            f"{stage}/loss",
            loss,
            batch_size=bs,
            prog_bar=stage != "test",
            sync_dist=stage != "train",
        )
        self.log_dict(metrics, batch_size=bs, prog_bar=True, on_epoch=True, on_step=False)
        return loss

    def _empty_batch_loss(self) -> Tensor | None:
        """What a training step returns for a batch without a usable sample: None (no
        optimizer step) in one process. Under DDP the other processes wait for this one in
        the gradient all-reduce, so it returns a zero loss over every trained parameter: it
        joins with zero gradients and their samples move the weights."""
        if self._trainer is None or self._trainer.world_size == 1:
            return None
        return torch.stack([p.sum() for p in self.parameters() if p.requires_grad]).sum() * 0.0

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        return self._step(batch, self.train_metrics, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, self.val_metrics, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, self.test_metrics, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """One record per sample: id, predicted label(s), class probabilities, modalities used."""
        self.skipped_samples += len(batch["errors"])
        if not batch["ids"]:
            return []
        logits = self._logits(batch)
        probs = logits.sigmoid() if self.multilabel else logits.softmax(-1)
        records = []
        for row, sample_id in enumerate(batch["ids"]):
            p = probs[row].tolist()
            if self.multilabel:
                label: Any = [c for c, q in zip(self.class_names, p, strict=True) if q >= 0.5]
            else:
                label = self.class_names[int(probs[row].argmax())]
            used = [m for m, flags in batch["present"].items() if bool(flags[row])]
            records.append(
                {
                    "id": sample_id,
                    "label": label,
                    "probs": dict(zip(self.class_names, p, strict=True)),
                    "modalities": used,
                }
            )
        return records

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is not None:
            scheduler = self.scheduler_factory(optimizer)
        else:
            scheduler = warmup_cosine(optimizer, int(self.trainer.estimated_stepping_batches))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
