"""RetrievalClassifier: a classifier that reads the nearest corpus items with each sample.

For each sample, the ``k`` nearest items of a corpus (any manifest; never the sample itself:
its id is excluded) are encoded by the same fused model, tagged with a learned "retrieved"
type embedding plus their retrieval score, and appended to the sample's fused sequence; the
backbone reads query and neighbours together.

- ``mode="frozen"``: the retriever is a frozen copy of the fused model as it was built (or
  loaded); queries and corpus are embedded by it once per stage. One backbone pass reads
  the sample with all ``k`` neighbours.
- ``mode="realm"``: the retriever is trained. As in REALM, it is a fused model of its own
  (a copy of the reader's as built), so what the reader learns never moves the retrieval
  space under it (sharing one encoder, the reader's first steps scattered the queries away
  from their entries: the evidence hit rate fell from 0.78 to 0.03). The prediction
  marginalises over the neighbours, ``p(y|x) = sum_z softmax(s(x, z) / T)_z p(y|x, z)``
  (one backbone pass per neighbour), so gradients reach the query encoder through the
  retrieval scores. The corpus embeddings go stale as the retriever learns; they are
  recomputed every ``refresh_every_n_steps`` optimizer steps (cost: one forward pass over the
  whole corpus, no gradient, each refresh).

A retriever that starts from random weights rarely puts the right item among the ``k``
it returns, and then the reader learns to ignore its neighbours (REALM's cold start).
``warm_start_steps`` pre-trains the retriever before the first step by the inverse cloze
task (Lee et al. 2019, REALM's warm start): a corrupted view of each corpus item (half its
words deleted; with several modalities, a random non-empty subset of them) must find its
own item among the others of a batch of corpus items (in-batch softmax, contrastive). It
uses the corpus alone, no labels; cost: ``warm_start_steps`` forward and backward passes
over two batches of corpus items, once per fit.

A curriculum (``curriculum_steps``, REALM-style "gold document" training): when the data
module names each training sample's evidence, the corpus item that answers it
(``evidence(ids)``), then for the first ``curriculum_steps`` optimizer steps that item is put
among the sample's neighbours whenever retrieval missed it (it replaces the last one), and
the retriever is held fixed, so the reader learns to read before the retriever learns from
the reader. Afterwards retrieval alone decides. With evidence known, training logs
``train/evidence_retrieved`` (the share of samples whose evidence was among the ``k``
retrieved, before any insertion) and ``train/evidence_weight`` (its mean retrieval weight).

In training, neighbours are found by exact inner product over the corpus embeddings held in
memory (the corpus is decoded once per stage and kept). At inference, ``mmctx infer
--index`` uses a faiss index built by ``mmctx index build`` from the same checkpoint.

Which corpus: the data module's ``corpus_manifest(stage)`` when it has one (the code-word
demo switches to a new corpus for testing), else ``corpus`` (``"train"``: the data module's
own training manifest).

Shape legend: b = batch, k = neighbours, c = corpus items, d = model width.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmctx.data import Collate, ManifestDataset, SampleError
from mmctx.data.manifest import iter_rows, parse_row
from mmctx.encoders import ModalityEncoder
from mmctx.errors import ConfigError
from mmctx.features import FeatureSequence
from mmctx.nn.backbones import FusionBackbone
from mmctx.transforms.text import WordDeletion

from .classifier import MultimodalClassifier

log = logging.getLogger(__name__)
MODES = ("frozen", "realm")


class RetrievalClassifier(MultimodalClassifier):
    """A :class:`MultimodalClassifier` whose backbone also reads retrieved corpus items.

    Args:
        encoders: As for :class:`MultimodalClassifier`.
        backbone: As for :class:`MultimodalClassifier`.
        class_names: As for :class:`MultimodalClassifier`.
        corpus: Manifest of the corpus (used when the data module names none); ``"train"``:
            the data module's training manifest, the training set as the memory.
        k: Neighbours per sample.
        mode: ``"frozen"`` (fixed retriever) or ``"realm"`` (trained retriever, marginal
            likelihood over neighbours).
        refresh_every_n_steps: REALM: re-embed the corpus with the current encoder every N
            optimizer steps (0: only at the start of each stage).
        temperature: REALM: retrieval scores (cosines) are divided by it in the softmax.
        retrieval_index: Index folder ``mmctx infer`` uses by default (``mmctx index build``).
        neighbour_tokens: What of a neighbour the backbone reads: ``"pooled"`` (its pooled
            vector, one token) or ``"sequence"`` (its whole fused sequence, before the
            backbone).
        warm_start_steps: Inverse-cloze pre-training steps of the retriever on the corpus
            before the first training step (0: none).
        warm_start_lr: Learning rate (AdamW) of that pre-training.
        min_weight: REALM, inference only: neighbours whose retrieval weight is below it
            are not read (:meth:`worth_reading`; 0: read all ``k``).
        curriculum_steps: Training steps during which each sample's evidence item (the
            data module's ``evidence(ids)``) is guaranteed among its neighbours and the
            retriever is held fixed (0: none).
        **kwargs: Any other :class:`MultimodalClassifier` argument.
    """

    def __init__(
        self,
        encoders: dict[str, ModalityEncoder],
        backbone: FusionBackbone,
        class_names: list[str],
        corpus: str | None = None,
        k: int = 4,
        mode: str = "frozen",
        refresh_every_n_steps: int = 100,
        temperature: float = 0.1,
        retrieval_index: str | None = None,
        neighbour_tokens: str = "pooled",
        warm_start_steps: int = 0,
        warm_start_lr: float = 1e-3,
        min_weight: float = 1e-3,
        curriculum_steps: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(encoders, backbone, class_names, **kwargs)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if min(k - 1, refresh_every_n_steps, warm_start_steps, curriculum_steps) < 0 or (
            temperature <= 0
        ):
            raise ValueError(
                "need k >= 1, refresh_every_n_steps >= 0, temperature > 0, warm_start_steps "
                f">= 0, curriculum_steps >= 0; got {k}, {refresh_every_n_steps}, "
                f"{temperature}, {warm_start_steps}, {curriculum_steps}"
            )
        self.curriculum_steps = curriculum_steps
        self.warm_start_steps, self.warm_start_lr = warm_start_steps, warm_start_lr
        self.min_weight = min_weight
        self.corpus, self.mode, self.retrieval_k = corpus, mode, k
        self.refresh_every_n_steps, self.temperature = refresh_every_n_steps, temperature
        self.retrieval_index = retrieval_index
        if neighbour_tokens not in ("pooled", "sequence"):
            raise ValueError(
                f"neighbour_tokens must be 'pooled' or 'sequence', got {neighbour_tokens!r}"
            )
        self.neighbour_tokens = neighbour_tokens
        self.retriever = copy.deepcopy(self.fused)  # REALM: trained; frozen: fixed
        if mode == "frozen":
            self.retriever.requires_grad_(False)
        dim = backbone.dim
        self.retrieved_type = nn.Parameter(torch.randn(dim) * 0.02)
        self.score_embed = nn.Parameter(torch.randn(dim) * 0.02)
        self._corpus: dict[str, Any] | None = None  # ids, items, vectors (c, d); per stage
        self.register_load_state_dict_pre_hook(_retriever_from_reader)

    # -- the corpus ------------------------------------------------------------------------

    def _data_side(self) -> tuple[Any, Any]:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            raise ValueError("RetrievalClassifier needs a data module (for decoding the corpus)")
        return dm, dm.preprocess

    def load_corpus(
        self, manifest: str | Path, modalities: Any, preprocess: Any, root: Path | None = None
    ) -> None:
        """Decode every row of ``manifest`` (kept in memory) and embed it; bad rows are
        logged with their line and cause and left out. ``root``: the folder every path must
        stay inside (default: the manifest's), as the data module's ``root``."""
        path = Path(manifest)
        items, ids = [], []
        samples = []
        for line, row in iter_rows(path):
            try:
                if isinstance(row, Exception):
                    raise row
                samples.append(
                    parse_row(
                        row,
                        line,
                        path.parent,
                        modalities=modalities,
                        data_root=root,
                        check_labels=False,
                    )
                )
            except Exception as err:  # noqa: BLE001 - one bad row never ends the run
                log.warning("corpus %s line %d skipped: %s", path, line, err)
        dataset = ManifestDataset(samples, None, modalities, preprocess)
        for i in range(len(dataset)):
            item = dataset[i]
            if isinstance(item, SampleError) or not item["inputs"]:
                log.warning("corpus %s: skipped %s", path, item)
                continue
            items.append(item)
            ids.append(item["id"])
        if not items:
            raise ValueError(f"{path}: the corpus has no usable item")
        self._corpus = {
            "ids": ids,
            "items": items,
            "collate": Collate(modalities, preprocess, None),
            "source": str(path),
        }
        self.refresh_corpus()

    def _collated(self, rows: list[int]) -> dict[str, Any]:
        corpus = self._corpus
        return self._to_device(corpus["collate"]([corpus["items"][i] for i in rows]))

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        from lightning.fabric.utilities import move_data_to_device

        return move_data_to_device(batch["inputs"], self.device)

    @torch.no_grad()
    def refresh_corpus(self, batch_size: int = 64) -> None:
        """Embed the whole corpus with the current retriever (no gradient, eval mode)."""
        retriever = self.retriever
        was = retriever.training
        retriever.eval()
        chunks = []
        n = len(self._corpus["items"])
        for lo in range(0, n, batch_size):
            pooled = retriever(self._collated(list(range(lo, min(n, lo + batch_size))))).pooled
            chunks.append(F.normalize(pooled.float(), dim=-1))
        retriever.train(was)
        self._corpus["vectors"] = torch.cat(chunks)  # (c, d)

    def _use_corpus(self, stage: str) -> None:
        """Load the corpus of ``stage`` (``train``, ``val``, ``test``, ``predict``) unless it
        is loaded already: the data module's ``corpus_manifest(stage)``, else ``corpus``."""
        dm, pre = self._data_side()
        manifest = dm.corpus_manifest(stage) if hasattr(dm, "corpus_manifest") else self.corpus
        if manifest == "train":  # the training set as the memory
            manifest = dm.manifests.get("train")
        if manifest is None:
            raise ValueError("RetrievalClassifier: no corpus (set model corpus: PATH)")
        if self._corpus is None or self._corpus["source"] != str(manifest):
            root = getattr(dm, "root", None)
            root = Path(root).expanduser() if root is not None else None
            self.load_corpus(manifest, dm.modality_handlers, pre, root)

    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if self.curriculum_steps and not hasattr(dm, "evidence"):
            raise ConfigError(
                f"model curriculum_steps: {self.curriculum_steps} needs a data module that "
                "names each sample's evidence (evidence(ids), e.g. CodeWordDataModule); "
                f"{type(dm).__name__} does not: set curriculum_steps: 0"
            )
        if self.warm_start_steps and self.global_step == 0:  # not again when resuming
            self._use_corpus("train")
            self.warm_start_retriever(self.warm_start_steps, lr=self.warm_start_lr)

    def on_train_epoch_start(self) -> None:
        self._use_corpus("train")

    def on_validation_start(self) -> None:
        self._use_corpus("val")

    def on_validation_end(self) -> None:
        if self.trainer.training:  # back to the training corpus for the rest of the epoch
            self._use_corpus("train")

    def on_test_start(self) -> None:
        self._use_corpus("test")

    def on_predict_start(self) -> None:
        self._use_corpus("predict")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        n = self.refresh_every_n_steps
        if self.mode == "realm" and n and self.global_step and self.global_step % n == 0:
            self.refresh_corpus()

    # -- the retriever's warm start ----------------------------------------------------------

    def warm_start_retriever(
        self, steps: int, batch_size: int = 64, lr: float = 1e-3, seed: int = 0
    ) -> float:
        """Inverse-cloze pre-training of the retriever on the loaded corpus; returns the
        fraction of the last step's views that found their own item first.

        Each step draws ``batch_size`` corpus items; a corrupted view of each
        (:meth:`cloze_view`) is embedded as a query and must score its own item above the
        batch's other items (cross-entropy over ``view @ items.T / temperature``).
        """
        self._ensure_corpus_loaded()
        retriever = self.retriever
        trainable = {p: p.requires_grad for p in retriever.parameters()}
        retriever.requires_grad_(True)
        optimizer = torch.optim.AdamW(retriever.parameters(), lr=lr)
        rng = np.random.default_rng(seed)
        items, was = self._corpus["items"], retriever.training
        retriever.train()
        found = math.nan
        for step in range(steps):
            rows = rng.choice(len(items), size=min(batch_size, len(items)), replace=False)
            views = self._to_device(
                self._corpus["collate"]([self.cloze_view(items[i], rng) for i in rows])
            )
            query = F.normalize(retriever(views).pooled.float(), dim=-1)  # (b, d)
            keys = F.normalize(retriever(self._collated(rows.tolist())).pooled.float(), dim=-1)
            scores = query @ keys.T / self.temperature  # (b, b)
            target = torch.arange(len(rows), device=scores.device)
            loss = F.cross_entropy(scores, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            found = float((scores.argmax(-1) == target).float().mean())
            if step % 50 == 0 or step == steps - 1:
                log.info("retriever warm start %d/%d: loss %.3f, found %.2f", step + 1,
                         steps, loss.item(), found)  # fmt: skip
        retriever.train(was)
        for p, flag in trainable.items():
            p.requires_grad_(flag)
        self.refresh_corpus()
        return found

    @staticmethod
    def cloze_view(item: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """A corrupted copy of a decoded corpus item: half its text's words deleted and,
        when it has several modalities, only a random non-empty subset of them."""
        inputs = dict(item["inputs"])
        if len(inputs) > 1:
            names = list(inputs)
            keep = [n for n in names if rng.random() < 0.5] or [str(rng.choice(names))]
            inputs = {n: inputs[n] for n in keep}
        if isinstance(inputs.get("text"), str):
            inputs["text"] = WordDeletion(rate=0.5, p=1.0)(inputs["text"], rng)
        return {**item, "inputs": inputs}

    # -- retrieval and reading -------------------------------------------------------------

    def _query(self, inputs: dict[str, Any], trained: bool = True) -> Tensor:
        """Normalised query vectors ``(b, d)``; with gradient in REALM mode when ``trained``."""
        with torch.set_grad_enabled(trained and self.mode == "realm" and torch.is_grad_enabled()):
            return F.normalize(self.retriever(inputs).pooled.float(), dim=-1)

    def retrieve(self, query: Tensor, exclude: list[str] | None = None) -> tuple[Tensor, Tensor]:
        """Indices ``(b, k)`` of the nearest corpus items and their scores ``(b, k)``;
        ``exclude[i]``, sample i's own id, is never among its neighbours."""
        corpus = self._corpus
        scores = query @ corpus["vectors"].to(query.device).T  # (b, c)
        if exclude is not None:
            own = self._corpus_rows(exclude, scores.device)  # (b,), -1: not in the corpus
            hit = own >= 0
            scores[hit.nonzero().squeeze(1), own[hit]] = float("-inf")
        k = min(self.retrieval_k, len(corpus["ids"]) - (1 if exclude else 0))
        top, idx = scores.topk(k, dim=-1)  # (b, k)
        return idx, top

    def read_neighbours(
        self,
        inputs: dict[str, Any],
        neighbours: dict[str, Any] | FeatureSequence,
        scores: Tensor,
        present: Tensor | None = None,
    ) -> Tensor:
        """Logits ``(b, classes)`` (REALM: marginal log-probabilities) of the samples read
        with their neighbours.

        Args:
            inputs: The samples' collated inputs.
            neighbours: Collated inputs of the present neighbours, sample-major (all
                ``b * k`` when ``present`` is None), or their :meth:`encode_neighbours`
                (e.g. cached by ``mmctx infer``).
            scores: Retrieval scores ``(b, k)`` (REALM: with gradient to the query encoder).
            present: ``(b, k)``, False where a sample has no neighbour to read (a
                retrieved item that could not be read, or one not worth reading, see
                :meth:`worth_reading`): it gets no weight and is not read. Each sample
                needs at least one present neighbour.
        """
        b, k = scores.shape
        if present is None:
            present = torch.ones(b, k, dtype=torch.bool, device=scores.device)
        if not isinstance(neighbours, FeatureSequence):
            neighbours = self.encode_neighbours(neighbours)
        feats, mask = neighbours.features, neighbours.mask  # (p, m, d), p present neighbours
        tag = self.retrieved_type + scores.detach()[present].reshape(-1, 1, 1) * self.score_embed
        feats = feats + tag
        flat = present.flatten()
        fused = self.fused.fuse(inputs)
        if self.mode == "frozen":  # one read of the sample with all k neighbours
            m = feats.shape[1]
            slots = feats.new_zeros(b * k, m, feats.shape[-1])
            slots[flat] = feats
            slot_mask = mask.new_zeros(b * k, m)
            slot_mask[flat] = mask
            extra = FeatureSequence(slots.reshape(b, k * m, -1), slot_mask.reshape(b, k * m))
            return self.head(self.fused.read(fused, extra).pooled)
        # REALM: one read per present (sample, neighbour) pair.
        owner = flat.nonzero().squeeze(1) // k  # (p,) the sample each pair belongs to
        rep = FeatureSequence(*(t[owner] if t is not None else None for t in fused))
        read = self.fused.read(rep, FeatureSequence(feats, mask))
        log_py = self.head(read.pooled).log_softmax(-1)  # (p, classes)
        slots = log_py.new_zeros(b * k, log_py.shape[-1])
        slots[flat] = log_py
        log_pz = (scores / self.temperature).masked_fill(~present, float("-inf"))
        log_pz = log_pz.log_softmax(-1)  # (b, k)
        return torch.logsumexp(log_pz[..., None] + slots.view(b, k, -1), dim=1)  # (b, classes)

    def encode_neighbours(self, neighbours: dict[str, Any]) -> FeatureSequence:
        """What the backbone reads of each neighbour ``(p, m, d)``, with its mask ``(p, m)``."""
        if self.neighbour_tokens == "sequence":  # every fused position of each neighbour
            seq = self.fused.fuse(neighbours)
            return FeatureSequence(seq.features, seq.mask)
        feats = self.fused(neighbours).pooled[:, None]  # one token: its pooled vector
        return FeatureSequence(
            feats, torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)
        )

    def worth_reading(self, scores: Tensor) -> Tensor:
        """``(b, k)``: the neighbours inference reads. REALM: those whose retrieval weight
        (softmax of ``scores / temperature``) is at least ``min_weight``, and always the
        first; dropping the others moves no class probability by more than their total
        weight (at most ``k * min_weight``). Frozen: all (one read takes them together)."""
        keep = torch.ones_like(scores, dtype=torch.bool)
        if self.mode == "realm" and self.min_weight > 0:
            keep = (scores / self.temperature).softmax(-1) >= self.min_weight
            keep[:, 0] = True
        return keep

    def forward(
        self,
        inputs: dict[str, Any],
        exclude: list[str] | None = None,
        evidence: list[str | None] | None = None,
    ) -> Tensor:
        """Logits ``(b, classes)`` of the samples read with their ``k`` nearest corpus items.

        ``evidence[i]``: the corpus id that answers sample i, or None (training only: its
        hit rate is logged, and within the first ``curriculum_steps`` steps it is put among
        the neighbours while the retriever is held fixed).
        """
        self._ensure_corpus_loaded()
        guided = evidence is not None and self.global_step < self.curriculum_steps
        query = self._query(inputs, trained=not guided)
        idx, scores = self.retrieve(query, exclude)
        if evidence is not None:
            rows = self._corpus_rows(evidence, query.device)
            self._log_evidence(idx, scores, rows)
            if guided:
                idx, scores = self.include_evidence(query, idx, rows)
        neighbours = self._collated(idx.flatten().tolist())
        return self.read_neighbours(inputs, neighbours, scores)

    def include_evidence(self, query: Tensor, idx: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        """``idx`` with each sample's evidence row (``rows``, -1: none) in its last place
        where retrieval missed it, and the scores ``(b, k)`` of the neighbours now read."""
        missing = (rows >= 0) & ~(idx == rows[:, None]).any(1)
        idx = idx.clone()
        idx[missing, -1] = rows[missing]
        vectors = self._corpus["vectors"].to(query.device)[idx]  # (b, k, d)
        return idx, (query[:, None, :] * vectors).sum(-1)

    def _corpus_rows(self, ids: list[str | None], device: torch.device) -> Tensor:
        """The corpus row of each id ``(b,)``; -1 for None or an id not in the corpus."""
        where = self._corpus.setdefault(
            "rows", {key: i for i, key in enumerate(self._corpus["ids"])}
        )
        return torch.tensor([where.get(i, -1) for i in ids], device=device)

    def _log_evidence(self, idx: Tensor, scores: Tensor, rows: Tensor) -> None:
        known = rows >= 0
        if self._trainer is None or not known.any():  # logged in training only
            return
        found = (idx == rows[:, None])[known].float()  # (n, k)
        weight = (scores[known].detach() / self.temperature).softmax(-1)
        n = int(known.sum())
        self.log("train/evidence_retrieved", found.any(1).float().mean(), batch_size=n)
        self.log("train/evidence_weight", (weight * found).sum(1).mean(), batch_size=n)

    def _evidence(self, ids: list[str]) -> list[str | None] | None:
        """The evidence ids the data module names for a training batch, else None."""
        if not self.training or self._trainer is None:
            return None
        dm = getattr(self.trainer, "datamodule", None)
        return dm.evidence(ids) if hasattr(dm, "evidence") else None

    def _ensure_corpus_loaded(self) -> None:
        if self._corpus is None:
            raise ValueError(
                "RetrievalClassifier has no corpus loaded: run it under a Trainer with a data "
                "module, or use mmctx infer --index (built by mmctx index build)"
            )

    def _logits(self, batch: dict[str, Any]) -> Tensor:
        ids = list(batch["ids"])
        return self(batch["inputs"], exclude=ids, evidence=self._evidence(ids))


def _retriever_from_reader(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any
) -> None:
    """A checkpoint from before REALM mode had a retriever of its own (it retrieved with the
    reader's fused model) gets that fused model as its retriever (a load_state_dict
    pre-hook), so it loads and retrieves as it did."""
    if any(key.startswith(prefix + "retriever.") for key in state_dict):
        return
    for key in [k for k in state_dict if k.startswith(prefix + "fused.")]:
        state_dict[prefix + "retriever." + key[len(prefix + "fused.") :]] = state_dict[key]
