"""DistillationClassifier: train a (smaller) student classifier on a trained teacher's soft
targets as well as the labels, optionally matching the teacher's pooled fused vector.

    mmctx fit --config configs/demo.yaml --model.class_path DistillationClassifier \
        --model.init_args.teacher_ckpt runs/demo/checkpoints/best-epoch=09.ckpt \
        --model.init_args.backbone.init_args.dim 32 ...

The student is an ordinary :class:`MultimodalClassifier` (any encoders and backbone); the
teacher is read from its checkpoint when training starts, kept frozen and out of the
student's checkpoint, so the student loads like any other model (``Predictor``,
``mmctx infer``, ``mmctx compress``) without the teacher file.

Loss: ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(labels)
+ feature_weight * MSE(proj(student pooled), teacher pooled)``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmctx.checkpoints import load_module

from .classifier import MultimodalClassifier


class DistillationClassifier(MultimodalClassifier):
    """A :class:`MultimodalClassifier` trained against a teacher.

    Args:
        teacher_ckpt: Checkpoint of the trained teacher (a classifier with the same classes);
            read at the start of training. ``None``: call :meth:`set_teacher`.
        temperature: Softening temperature ``T`` of both distributions.
        alpha: Weight of the soft-target term (``1 - alpha`` goes to the labels).
        feature_weight: Weight of matching the pooled fused vectors (0: off); a linear
            projection maps the student's width to the teacher's.
        teacher_dim: The teacher's fused width (needed with ``feature_weight > 0``).
        **kwargs: The student's :class:`MultimodalClassifier` arguments.
    """

    def __init__(
        self,
        *,
        teacher_ckpt: str | None = None,
        temperature: float = 2.0,
        alpha: float = 0.7,
        feature_weight: float = 0.0,
        teacher_dim: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if temperature <= 0 or not 0 <= alpha <= 1 or feature_weight < 0:
            raise ValueError(
                "need temperature > 0, 0 <= alpha <= 1, feature_weight >= 0; got "
                f"temperature={temperature}, alpha={alpha}, feature_weight={feature_weight}"
            )
        if feature_weight > 0 and teacher_dim is None:
            raise ValueError("feature_weight > 0 needs teacher_dim (the teacher's fused width)")
        self.teacher_ckpt = teacher_ckpt
        self.temperature, self.alpha, self.feature_weight = temperature, alpha, feature_weight
        self.feature_proj = (
            nn.Linear(self.fused.dim, teacher_dim) if feature_weight > 0 and teacher_dim else None
        )
        self._teacher: list[nn.Module] = []  # a list: not a submodule, not in the checkpoint

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0] if self._teacher else None

    def set_teacher(self, teacher: nn.Module) -> None:
        """Use ``teacher`` (frozen, eval mode) instead of reading ``teacher_ckpt``."""
        names = list(getattr(teacher, "class_names", []))
        if names != self.class_names:
            raise ValueError(
                f"teacher classes {names} differ from the student's {self.class_names}"
            )
        self._teacher = [teacher.eval().requires_grad_(False).to(self.device)]

    def on_fit_start(self) -> None:
        if self.teacher is None:
            if self.teacher_ckpt is None:
                raise ValueError("DistillationClassifier needs teacher_ckpt (or set_teacher)")
            self.set_teacher(load_module(self.teacher_ckpt))
        self._teacher[0].to(self.device)

    def distillation_loss(
        self,
        logits: Tensor,
        teacher_logits: Tensor,
        target: Tensor,
        pooled: Tensor | None = None,
        teacher_pooled: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The loss terms and their weighted sum (``"loss"``) for one batch."""
        t = self.temperature
        if self.multilabel:
            soft = F.binary_cross_entropy_with_logits(logits / t, (teacher_logits / t).sigmoid())
        else:
            soft = F.kl_div(
                F.log_softmax(logits / t, -1), F.log_softmax(teacher_logits / t, -1),
                reduction="batchmean", log_target=True,
            )  # fmt: skip
        terms = {"kd": soft * t * t, "ce": self._loss(logits, target)}
        loss = self.alpha * terms["kd"] + (1 - self.alpha) * terms["ce"]
        if self.feature_proj is not None and pooled is not None and teacher_pooled is not None:
            terms["feature"] = F.mse_loss(self.feature_proj(pooled), teacher_pooled)
            loss = loss + self.feature_weight * terms["feature"]
        return {**terms, "loss": loss}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        self.skipped_samples += len(batch["errors"])
        if not batch["ids"] or self.teacher is None:
            return self._empty_batch_loss()
        out = self.fused(batch["inputs"])
        logits = self.head(out.pooled)
        with torch.no_grad():
            t_out = self.teacher.fused(batch["inputs"])
            t_logits = self.teacher.head(t_out.pooled)
        target = batch["label"]
        terms = self.distillation_loss(logits, t_logits, target, out.pooled, t_out.pooled)
        self.train_metrics.update(logits, target.long() if self.multilabel else target)
        bs = len(batch["ids"])
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, batch_size=bs, prog_bar=True)
        self.log_dict(self.train_metrics, batch_size=bs, on_epoch=True, on_step=False)
        return terms["loss"]
