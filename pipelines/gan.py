"""MultimodalGAN: draw one modality (an image, a sound) from what the other modalities say.

The conditioning modalities go through the same encoders -> fusion -> backbone as the
classifier and are pooled into one context vector ``c``. A DCGAN-style generator
``G(z, c)`` takes ``c`` concatenated to the noise and through FiLM in every block; a
projection discriminator ``D(x, c)`` scores ``psi(phi(x)) + <embed(c), phi(x)>``. What is
drawn -- a square image, or a log-mel spectrogram made audible by Griffin-Lim -- is the
``target`` object (:mod:`mmctx.pipelines.gan_targets`).

Shape legend: b = batch, d = model width, z = noise width, c = channels, h/w = grid sides.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor, nn

from mmctx.data import Collate
from mmctx.encoders import ModalityEncoder
from mmctx.errors import ConfigError
from mmctx.nn.backbones import FusionBackbone
from mmctx.nn.fused import FusedModel

from .gan_images import contact_sheet, write_png
from .gan_targets import GanTarget, ImageTarget

log = logging.getLogger(__name__)

LOSSES = ("bce", "hinge")


class MultimodalGAN(L.LightningModule):
    """Conditional GAN whose condition is the fused context of the other modalities.

    Trained with manual optimisation: one discriminator step, then one generator step
    per batch, so Lightning's ``global_step`` (and ``trainer.max_steps``) counts two steps
    per batch. Samples missing the target are skipped and counted.

    Args:
        encoders: Encoders of the conditioning modalities (never the target).
        backbone: The fusion backbone; its ``dim`` is the context width.
        class_names: Class names (the CLI takes them from the data); used by the
            auxiliary losses and to name conditions.
        multilabel: Must be False (multi-label conditions are not supported).
        target: What is drawn: an :class:`~mmctx.pipelines.gan_targets.ImageTarget` (the
            default: 32x32 grayscale) or an :class:`~mmctx.pipelines.gan_targets.AudioTarget`
            (a fixed-length clip); in YAML ``{class_path: AudioTarget, init_args: {...}}``.
        pool: How the context sequence becomes ``c`` (see :class:`mmctx.nn.pooling.Pooling`).
        z_dim: Noise width.
        cond_dim: Width the context is projected to before it conditions G and D.
        g_width: Generator width (channels of its finest block).
        d_width: Discriminator width.
        loss: ``"bce"`` (non-saturating) or ``"hinge"``.
        lr_g: Generator learning rate (Adam).
        lr_d: Discriminator learning rate (Adam).
        lr_context: Learning rate of the encoders, fusion and backbone.
        betas: Adam betas of G and D (the usual GAN ``(0.5, 0.999)``).
        r1_gamma: Weight of the R1 gradient penalty on real targets (0: off).
        spectral_norm: Spectral normalisation in D.
        ema_decay: Decay of the moving average of G's weights used for sampling (0: off).
        aux_weight: Weight of a cross-entropy loss that teaches ``c`` the label, so the
            conditioning carries the class from the first steps (0: off).
        ac_weight: Weight of an AC-GAN loss: D also classifies real targets, and G is
            rewarded when D gives its output the intended class (0: off).
        ms_weight: Weight of a mode-seeking loss that keeps two noises for one condition
            from giving the same output (against collapse to one per class; 0: off).
        sample_every_n_steps: Save (and log) a grid of samples for fixed validation
            conditions every this many steps (0: never).
        grid_samples: Samples per condition in that grid.
    """

    def __init__(
        self,
        encoders: dict[str, ModalityEncoder],
        backbone: FusionBackbone,
        class_names: list[str],
        multilabel: bool = False,
        target: GanTarget | None = None,
        pool: str = "mean",
        z_dim: int = 64,
        cond_dim: int = 64,
        g_width: int = 32,
        d_width: int = 32,
        loss: str = "bce",
        lr_g: float = 2e-4,
        lr_d: float = 2e-4,
        lr_context: float = 1e-3,
        betas: tuple[float, float] = (0.5, 0.999),
        r1_gamma: float = 0.0,
        spectral_norm: bool = True,
        ema_decay: float = 0.999,
        aux_weight: float = 1.0,
        ac_weight: float = 0.0,
        ms_weight: float = 0.0,
        sample_every_n_steps: int = 200,
        grid_samples: int = 8,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["encoders", "backbone", "target"])
        self.automatic_optimization = False
        target = ImageTarget() if target is None else target
        if not isinstance(target, GanTarget):
            raise ValueError(
                f"target must be a GanTarget (ImageTarget, AudioTarget), got {target!r}"
            )
        if target.name in encoders:
            raise ValueError(
                f"the target modality {target.name!r} must not condition: remove "
                f"encoders.{target.name}"
            )
        if not encoders:
            raise ValueError("encoders is empty: configure at least one conditioning modality")
        if multilabel:
            raise ValueError("MultimodalGAN needs single-label data, got multilabel=True")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {list(LOSSES)}, got {loss!r}")
        for name, lr in (("lr_g", lr_g), ("lr_d", lr_d), ("lr_context", lr_context)):
            if not lr >= 0:  # also NaN
                raise ValueError(f"{name} must be >= 0, got {lr}")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        self.class_names = list(class_names)
        self.context = FusedModel(encoders, backbone, pool)
        self.cond = nn.Sequential(nn.Linear(backbone.dim, cond_dim), nn.LayerNorm(cond_dim))
        self.aux_head = nn.Linear(backbone.dim, len(class_names)) if aux_weight > 0 else None
        self.generator, self.discriminator = target.networks(
            z_dim,
            cond_dim,
            g_width,
            d_width,
            len(class_names) if ac_weight > 0 else 0,
            spectral_norm,
        )
        self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)
        self.target = target
        self.z_dim, self.loss = z_dim, loss
        self.lrs, self.betas = (lr_g, lr_d, lr_context), tuple(betas)
        self.r1_gamma, self.ema_decay = r1_gamma, ema_decay
        self.aux_weight, self.ac_weight, self.ms_weight = aux_weight, ac_weight, ms_weight
        self.sample_every_n_steps, self.grid_samples = sample_every_n_steps, grid_samples
        self.skipped_samples = 0  # samples that failed to decode
        self.missing_target: set[str] = set()  # ids of samples without the target
        self._grid_batch: dict[str, Any] | None = None

    def setup(self, stage: str) -> None:
        """Check that the data module's decoding fits the encoders and what is drawn, before
        the first batch."""
        dm = getattr(self.trainer, "datamodule", None)
        pre = getattr(dm, "preprocess", None)
        if pre is None:
            return
        loaded = getattr(dm, "modalities", None)
        if loaded is not None and self.target.name not in loaded:
            raise ConfigError(
                f"the GAN draws {self.target.name}, which the data does not load "
                f"(data.modalities: {list(loaded)})"
            )
        self.context.check_data(pre.sample_rate, pre.image_channels, pre.image_size, loaded)
        self.target.check_data(pre)

    # -- model -------------------------------------------------------------------------
    def condition(self, inputs: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Context ``(b, d)`` and condition ``(b, cond_dim)`` from a batch's ``inputs``."""
        ctx = self.context(inputs).pooled
        return ctx, self.cond(ctx)

    def forward(self, inputs: dict[str, Any], z: Tensor, ema: bool = True) -> Tensor:
        """Grids ``(b, c, h, w)`` in ``[-1, 1]`` for ``(b, z)`` noise and the batch's inputs."""
        g = self.generator_ema if ema and self.ema_decay > 0 else self.generator
        return g(z, self.condition(inputs)[1])

    @torch.no_grad()
    def sample(
        self,
        inputs: dict[str, Any],
        n: int,
        seed: int = 0,
        ema: bool = True,
        truncation: float | None = None,
    ) -> Tensor:
        """``n`` uint8 pictures per condition, ``(b, n, c, h, w)``; same seed, same pictures
        (images, or spectrograms: see the target's ``write``/``waveforms``).

        ``truncation``: draw the noise from a normal truncated to ``[-t, t]`` (the
        "truncation trick"): smaller ``t`` gives more typical, less varied samples;
        ``None`` draws from the full normal the generator was trained on.
        """
        was_training = self.training
        self.eval()
        _, cond = self.condition(inputs)
        b = cond.shape[0]
        gen = torch.Generator().manual_seed(seed)
        z = truncated_normal((b * n, self.z_dim), truncation, gen).to(cond.device)
        g = self.generator_ema if ema and self.ema_decay > 0 else self.generator
        grids = g(z, cond.repeat_interleave(n, dim=0))  # (b*n, c, h, w)
        self.train(was_training)
        return self.target.pictures(grids).view(b, n, *grids.shape[1:])

    # -- training ----------------------------------------------------------------------
    def _targets(self, batch: dict[str, Any]) -> tuple[dict[str, Any], Tensor, Tensor] | None:
        """Conditioning inputs, real targets ``(b, c, h, w)`` in [-1, 1] and labels of the
        samples that have the target; the others are counted and left out."""
        real, has = self.target.real(batch["inputs"][self.target.name])
        self.missing_target.update(
            i for i, h in zip(batch["ids"], has.tolist(), strict=True) if not h
        )
        if not has.any():
            return None
        keep = has.nonzero().flatten()
        inputs = {m: _rows(batch["inputs"][m], keep) for m in self.context.encoders}
        return inputs, real[keep], batch["label"][keep]

    def _adv(self, score: Tensor, real: bool) -> Tensor:
        if self.loss == "hinge":
            return F.relu(1 - score).mean() if real else F.relu(1 + score).mean()
        return F.softplus(-score).mean() if real else F.softplus(score).mean()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.skipped_samples += len(batch["errors"])
        got = self._targets(batch) if batch["ids"] else None
        if got is None:
            return
        inputs, real, label = got
        opt_g, opt_d = self.optimizers()
        b = real.shape[0]
        ctx, cond = self.condition(inputs)
        z = torch.randn(b, self.z_dim, device=real.device)

        # discriminator: real vs generated (G and the context held fixed)
        self.toggle_optimizer(opt_d)
        fake = self.generator(z, cond.detach()).detach()
        real.requires_grad_(self.r1_gamma > 0)
        s_real, cls_real = self.discriminator(real, cond.detach())
        s_fake, _ = self.discriminator(fake, cond.detach())
        d_loss = self._adv(s_real, True) + self._adv(s_fake, False)
        if self.r1_gamma > 0:
            (grad,) = torch.autograd.grad(s_real.sum(), real, create_graph=True)
            d_loss = d_loss + self.r1_gamma / 2 * grad.pow(2).flatten(1).sum(1).mean()
        if cls_real is not None:
            d_loss = d_loss + self.ac_weight * F.cross_entropy(cls_real, label)
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        self.untoggle_optimizer(opt_d)

        # generator (and context): fool D, plus the auxiliary class losses
        self.toggle_optimizer(opt_g)
        fake = self.generator(z, cond)
        s_fake, cls_fake = self.discriminator(fake, cond.detach())
        g_loss = self._adv(s_fake, True) if self.loss == "bce" else -s_fake.mean()
        logs = {"train/d_loss": d_loss.detach(), "train/g_loss": g_loss.detach()}
        if self.ms_weight > 0 and b > 1:
            g_loss = g_loss + self.ms_weight * self._mode_seeking(fake, z, cond)
        if cls_fake is not None:
            g_loss = g_loss + self.ac_weight * F.cross_entropy(cls_fake, label)
        if self.aux_head is not None:
            aux_logits = self.aux_head(ctx)
            g_loss = g_loss + self.aux_weight * F.cross_entropy(aux_logits, label)
            logs["train/cond_acc"] = (aux_logits.argmax(1) == label).float().mean()
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        self.untoggle_optimizer(opt_g)
        self._update_ema()
        self.log_dict(logs, prog_bar=True, batch_size=b)
        step = self.global_step // 2  # two optimizer steps per batch
        if self.sample_every_n_steps and step % self.sample_every_n_steps == 0:
            self.save_sample_grid(step)

    def _mode_seeking(self, fake: Tensor, z: Tensor, cond: Tensor) -> Tensor:
        """Mode-seeking term (Mao et al., 2019): for half the batch, a second output from new
        noise; the loss grows as the outputs' distance per unit of noise distance shrinks."""
        h = fake.shape[0] // 2
        z2 = torch.randn_like(z[:h])
        other = self.generator(z2, cond[:h])  # (h, c, h, w)
        ratio = (fake[:h] - other).abs().mean() / (z[:h] - z2).abs().mean()
        return 1 / (ratio + 1e-5)

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema_decay <= 0:
            return
        step = self.global_step // 2
        decay = min(self.ema_decay, (1 + step) / (10 + step))  # average less early on
        for p_ema, p in zip(
            self.generator_ema.parameters(), self.generator.parameters(), strict=True
        ):
            p_ema.lerp_(p, 1 - decay)
        for b_ema, b in zip(self.generator_ema.buffers(), self.generator.buffers(), strict=True):
            b_ema.copy_(b)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.skipped_samples += len(batch["errors"])
        if not batch["ids"] or self.aux_head is None:
            return
        ctx = self.context({m: batch["inputs"][m] for m in self.context.encoders}).pooled
        acc = (self.aux_head(ctx).argmax(1) == batch["label"]).float().mean()
        self.log("val/cond_acc", acc, prog_bar=True, batch_size=len(batch["ids"]))

    def on_train_end(self) -> None:
        if self.missing_target:
            log.warning(
                "%d training samples had no %s to learn from and were skipped",
                len(self.missing_target),
                self.target.name,
            )

    def configure_optimizers(self) -> Any:
        lr_g, lr_d, lr_ctx = self.lrs
        heads = [*self.cond.parameters(), *(self.aux_head.parameters() if self.aux_head else [])]
        opt_g = torch.optim.Adam(
            [
                {"params": self.generator.parameters()},
                {"params": [*self.context.parameters(), *heads], "lr": lr_ctx},
            ],
            lr=lr_g,
            betas=self.betas,
        )
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=lr_d, betas=self.betas)
        return [opt_g, opt_d]

    # -- progress pictures -------------------------------------------------------------
    def _fixed_conditions(self) -> dict[str, Any] | None:
        """One validation sample per class (the first of each), kept for every grid."""
        dm = getattr(self.trainer, "datamodule", None)
        try:
            dataset = dm.dataset("val")
        except (AttributeError, ValueError):  # not a MultimodalDataModule, or no val split
            return None
        first: dict[int, int] = {}
        for i, sample in enumerate(dataset.samples):
            if sample.label is not None:
                first.setdefault(dataset.labels.encode(sample.label), i)
        if not first:
            return None
        batch = Collate(dataset.handlers, dataset.pre, None)(
            [dataset[first[k]] for k in sorted(first)]
        )
        if batch["errors"]:
            log.warning("sample grid: %s", "; ".join(batch["errors"]))
        labels = [self.class_names[int(k)] for k in batch["label"]]
        return {"inputs": {m: batch["inputs"][m] for m in self.context.encoders}, "labels": labels}

    def save_sample_grid(self, step: int) -> None:
        """Write ``samples/step_XXXXXX.png`` under the run's log folder (and log it)."""
        if self.trainer.global_rank != 0:
            return
        if self._grid_batch is None:
            self._grid_batch = self._fixed_conditions()
            if self._grid_batch is None:
                return
        inputs = move_data_to_device(self._grid_batch["inputs"], self.device)
        sheet = contact_sheet(
            self.sample(inputs, self.grid_samples, seed=0), self._grid_batch["labels"]
        )
        folder = self.trainer.log_dir or self.trainer.default_root_dir
        path = write_png(f"{folder}/samples/step_{step:06d}.png", sheet)
        logger = self.logger
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_image"):  # TensorBoard
            experiment.add_image("samples", sheet, step, dataformats="HWC")
        elif hasattr(logger, "log_image"):  # Weights & Biases, Neptune, ...
            logger.log_image(key="samples", images=[str(path)], step=step)


def truncated_normal(
    shape: tuple[int, ...], truncation: float | None, gen: torch.Generator
) -> Tensor:
    """Standard normal noise, truncated to ``[-truncation, truncation]`` unless ``None``.

    Drawn by the inverse CDF of the truncated distribution: one uniform draw per value, so
    the same generator state always gives the same noise.
    """
    if truncation is None:
        return torch.randn(shape, generator=gen)
    if isinstance(truncation, bool) or not (
        isinstance(truncation, (int, float)) and 0 < truncation < math.inf
    ):
        raise ValueError(f"truncation must be a positive number, got {truncation!r}")
    lo = torch.special.ndtr(torch.tensor(-float(truncation), dtype=torch.float64))
    u = torch.rand(shape, generator=gen, dtype=torch.float64)
    z = torch.special.ndtri(lo + u * (1 - 2 * lo))
    return z.clamp_(-truncation, truncation).float()


def _rows(batch: dict[str, Any], rows: Tensor) -> dict[str, Any]:
    """The given rows of one modality's collated batch (tensors, lists and scalars)."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, Tensor) and value.dim() > 0:
            out[key] = value[rows.to(value.device)]
        elif isinstance(value, list):
            out[key] = [value[i] for i in rows.tolist()]
        else:
            out[key] = value
    return out
