"""Data modules for the built-in datasets: generated once, then read as manifests."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from mmctx.data.datamodule import MultimodalDataModule
from mmctx.errors import ConfigError

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """Where generated data is kept: ``$MMCTX_CACHE`` or ``~/.cache/mmctx``."""
    root = (
        os.environ.get("MMCTX_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mmctx"
    )
    return Path(root)


def split_manifests(folder: Path) -> dict[str, Path]:
    """Where a generated dataset keeps the manifest of each split."""
    return {split: folder / f"{split}.jsonl" for split in ("train", "val", "test")}


def _digits_by_default(data: MultimodalDataModule) -> None:
    """The built-in datasets are single-label digits: known before any file is written."""
    data.classes = data.classes or [str(d) for d in range(10)]
    if data.multilabel_setting is None:
        data.multilabel_setting = False


class DemoDataModule(MultimodalDataModule):
    """The built-in tri-modal digits data, generated once into a cache folder.

    The data is written by :func:`mmctx.datasets.demo.make_demo_dataset` and then read back
    through the ordinary manifest path, exactly like a user's dataset. ``predict`` runs
    on the test split unless ``predict_manifest`` is given.

    Args:
        num_samples: Samples in all splits together.
        seed: Seed of the generator (same seed, same files).
        cache_dir: Folder for the generated data (default: ``default_cache_dir()/demo``).
        video_frames: Add a video of this many frames to every sample (0: no video, and
            ``modalities`` defaults to text, image and audio, so that a video encoder with
            no video to read is refused rather than trained on nothing).
        **kwargs: Any other :class:`MultimodalDataModule` argument (batch size, sizes, ...);
            the manifests are set by this class.
    """

    def __init__(
        self,
        num_samples: int = 3000,
        seed: int = 0,
        cache_dir: str | None = None,
        video_frames: int = 0,
        **kwargs,
    ) -> None:
        from mmctx.datasets.demo import DemoSpec

        if not video_frames and kwargs.get("modalities") is None:  # the CLI passes None
            kwargs["modalities"] = ["text", "image", "audio"]
        super().__init__(**kwargs)
        _digits_by_default(self)
        self.spec = DemoSpec(num_samples=num_samples, seed=seed, video_frames=video_frames)
        name = f"demo-n{num_samples}-s{seed}" + (f"-v{video_frames}" if video_frames else "")
        self.folder = Path(cache_dir) if cache_dir else default_cache_dir() / name
        self.use_generated(split_manifests(self.folder))

    def prepare_data(self) -> None:
        """Write the dataset into ``folder`` unless it is there already (rank 0 only)."""
        from mmctx.datasets.demo import make_demo_dataset

        make_demo_dataset(self.folder, self.spec, progress=True)
        log.info("demo data in %s", self.folder)


class DigitsDataModule(MultimodalDataModule):
    """Real spoken digits paired with handwritten ones (see :mod:`mmctx.datasets.digits`).

    Args:
        root: Folder holding ``fsdd/`` and ``digits/`` (the project's shared data).
        val_speakers: Speakers used only for validation.
        test_speakers: Speakers used only for testing.
        seed: Seed of the image split and the pairing.
        cache_dir: Folder for the manifests (default: ``default_cache_dir()/digits-s<seed>``).
        **kwargs: Any other :class:`MultimodalDataModule` argument.
    """

    def __init__(
        self,
        root: str = "../shared/data",
        val_speakers: list[str] | None = None,
        test_speakers: list[str] | None = None,
        seed: int = 0,
        cache_dir: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        _digits_by_default(self)
        self.data_folder, self.seed = root, seed
        self.speakers = (val_speakers or ["nicolas"], test_speakers or ["theo"])
        self.folder = Path(cache_dir) if cache_dir else default_cache_dir() / f"digits-s{seed}"
        self.root = self.root or str(Path(root).resolve())  # the manifests point into root
        self.use_generated(split_manifests(self.folder))

    def prepare_data(self) -> None:
        """Pair the recordings with images into manifests in ``folder`` (rank 0 only)."""
        from mmctx.datasets.digits import make_digits_manifests

        val, test = self.speakers
        try:
            make_digits_manifests(
                self.data_folder, self.folder, val_speakers=val, test_speakers=test, seed=self.seed
            )
        except FileNotFoundError as err:  # data.root names no digits data: cannot start
            raise ConfigError(f"data.root: {err}") from err


class LongContextDataModule(MultimodalDataModule):
    """Built-in long inputs: the digit sits once, somewhere, in a long text and a long clip.

    Generated once into a cache folder by :func:`mmctx.datasets.longctx.make_longctx_dataset`
    and read back through the ordinary manifest path.

    Args:
        num_samples: Samples in all splits together.
        seed: Seed of the generator.
        audio_seconds: Length of each noise clip holding one DTMF burst.
        text_words: Length of each distractor text holding one telling sentence.
        modalities_generated: Which modalities the samples carry.
        length_range: ``[lo, hi]``: train on mixed lengths, each training sample ``s`` times
            ``text_words`` and ``audio_seconds`` long with ``s`` uniform in ``[lo, hi]``
            (validation and test stay at the nominal length). None: one length for all.
        cache_dir: Folder for the generated data (default: under ``default_cache_dir()``).
        **kwargs: Any other :class:`MultimodalDataModule` argument.
    """

    def __init__(
        self,
        num_samples: int = 600,
        seed: int = 0,
        audio_seconds: float = 30.0,
        text_words: int = 3000,
        modalities_generated: list[str] | None = None,
        length_range: list[float] | None = None,
        cache_dir: str | None = None,
        **kwargs,
    ) -> None:
        from mmctx.datasets.longctx import LongSpec

        super().__init__(**kwargs)
        _digits_by_default(self)
        generated = tuple(modalities_generated or ("text", "audio"))
        self.spec = LongSpec(
            num_samples=num_samples,
            seed=seed,
            audio_seconds=audio_seconds,
            text_words=text_words,
            modalities=generated,
            length_range=length_range,
        )
        name = f"long-n{num_samples}-s{seed}-a{audio_seconds:g}-w{text_words}-{'+'.join(generated)}"
        if length_range:
            name += "-r{:g}-{:g}".format(*length_range)
        self.folder = Path(cache_dir) if cache_dir else default_cache_dir() / name
        self.use_generated(split_manifests(self.folder))

    def prepare_data(self) -> None:
        """Write the dataset into ``folder`` unless it is there already (rank 0 only)."""
        from mmctx.datasets.longctx import make_longctx_dataset

        make_longctx_dataset(self.folder, self.spec, progress=True)


class CodeWordDataModule(MultimodalDataModule):
    """Queries whose answer lives in a corpus (see :mod:`mmctx.datasets.codewords`).

    Train and validation read ``corpus_train.jsonl``; test (and predict) read
    ``corpus_test.jsonl``, which maps every code word to a NEW digit: only a model that
    reads what it retrieves can be right there. ``corpus_manifest(stage)`` tells a
    :class:`~mmctx.pipelines.RetrievalClassifier` which corpus to use.

    Args:
        num_samples: Queries in all splits together.
        num_codes: Distinct code words (one corpus entry each).
        filler_words: Filler words around the code word in each query.
        train_worlds: Code-word mappings of the training corpus (each query names its world).
        rounds: Training epoch ``e`` reads round ``e % rounds`` (its own labels and corpus);
            with rounds > 1 set the trainer's ``reload_dataloaders_every_n_epochs: 1``.
        seed: Seed of the generator.
        cache_dir: Folder for the generated data (default: under ``default_cache_dir()``).
        **kwargs: Any other :class:`MultimodalDataModule` argument.
    """

    def __init__(
        self,
        num_samples: int = 2000,
        num_codes: int = 40,
        filler_words: int = 6,
        train_worlds: int = 10,
        rounds: int = 1,
        seed: int = 0,
        cache_dir: str | None = None,
        **kwargs,
    ) -> None:
        from mmctx.datasets.codewords import CodeWordSpec

        if kwargs.get("modalities") is None:  # the CLI passes None
            kwargs["modalities"] = ["text"]
        super().__init__(**kwargs)
        _digits_by_default(self)
        self.spec = CodeWordSpec(num_samples, num_codes, filler_words, train_worlds, rounds, seed)
        name = (
            f"codewords-v2-n{num_samples}-c{num_codes}-f{filler_words}-w{train_worlds}"
            f"-r{rounds}-s{seed}"
        )
        self.round = 0
        self._evidence: dict[str, str | None] | None = None
        self.folder = Path(cache_dir) if cache_dir else default_cache_dir() / name
        self.use_generated(split_manifests(self.folder))

    def corpus_manifest(self, stage: str) -> Path:
        """The corpus of a stage: the test corpus for ``test`` and ``predict``, the current
        round's for ``train``, round 0's for ``val``."""
        if stage in ("test", "predict"):
            return self.folder / "corpus_test.jsonl"
        suffix = f"_r{self.round}" if stage == "train" and self.round else ""
        return self.folder / f"corpus_train{suffix}.jsonl"

    def evidence(self, ids: list[str]) -> list[str | None]:
        """The corpus id that answers each query (the same in every round; None for an
        id that is no query), for :class:`~mmctx.pipelines.RetrievalClassifier`'s
        curriculum and its logged hit rate."""
        if self._evidence is None:
            self._evidence = {}
            for name in ("train.jsonl", "val.jsonl", "test.jsonl"):
                with open(self.folder / name, encoding="utf-8") as f:
                    rows = (json.loads(line) for line in f if line.strip())
                    self._evidence.update((r["id"], r.get("evidence")) for r in rows)
        return [self._evidence.get(i) for i in ids]

    def train_dataloader(self) -> Any:
        """The training queries of round ``epoch % rounds``."""
        from mmctx.data.manifest import read_manifest

        trainer = getattr(self, "trainer", None)
        epoch = trainer.current_epoch if trainer is not None else 0
        self.round = epoch % self.spec.rounds
        if self.spec.rounds > 1:
            name = f"train_r{self.round}.jsonl" if self.round else "train.jsonl"
            samples, _ = read_manifest(self.folder / name, modalities=self.modality_handlers)
            self._splits["train"] = samples
        return super().train_dataloader()

    def prepare_data(self) -> None:
        """Write the dataset into ``folder`` unless it is there already (rank 0 only)."""
        from mmctx.datasets.codewords import make_codeword_dataset

        make_codeword_dataset(self.folder, self.spec)
