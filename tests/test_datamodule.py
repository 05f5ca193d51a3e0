import pytest

from mmctx.data import estimate_length
from mmctx.data.datamodule import MultimodalDataModule
from tests.helpers import write_manifest


def test_labels_split_and_loaders(demo_dir):
    dm = MultimodalDataModule(
        train_manifest=str(demo_dir / "train.jsonl"),
        val_fraction=0.25,
        batch_size=16,
        image_channels=1,
        sample_rate=8000,
    )
    assert dm.class_names == [str(d) for d in range(10)] and not dm.multilabel
    train, val = dm.dataset("train"), dm.dataset("val")
    assert len(val) == round(0.25 * (len(train) + len(val)))
    assert not {s.id for s in train.samples} & {s.id for s in val.samples}
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["ids"]) == 16 and batch["label"].shape == (16,)
    with pytest.raises(ValueError, match="no data for split 'test': set data.test_manifest"):
        dm.dataset("test")


def test_token_budget_batches(demo_dir):
    dm = MultimodalDataModule(
        train_manifest=str(demo_dir / "train.jsonl"),
        max_tokens_per_batch=300,
        tokens_per_audio_second=50,
        tokens_per_image=16,
        image_channels=1,
        sample_rate=8000,
    )
    samples = dm.dataset("train").samples
    lengths = {s.id: estimate_length(s, 50, 16) for s in samples}
    sizes = []
    for batch in dm.train_dataloader():
        longest = max(lengths[i] for i in batch["ids"])
        assert longest * len(batch["ids"]) <= 300
        sizes.append(len(batch["ids"]))
    assert sum(sizes) == len(samples) and len(set(sizes)) > 1  # short samples pack more per batch


def test_bad_rows_are_counted_and_unknown_modalities_refused(tmp_path):
    path = write_manifest(
        tmp_path / "m.jsonl",
        [{"id": "a", "text": "x", "label": "p"}, {"id": "b", "text": "y", "label": "q"}, "{broken"],
    )
    dm = MultimodalDataModule(train_manifest=str(path), val_fraction=0.0)
    assert dm.class_names == ["p", "q"]
    assert len(dm.skipped) == 1 and "m.jsonl:3" in dm.skipped[0]
    with pytest.raises(ValueError, match="modalities \\['smell'\\] are not known"):
        MultimodalDataModule(modalities=["text", "smell"])


@pytest.mark.parametrize(
    "setting",
    [
        {"batch_size": 0},
        {"batch_size": -3},
        {"batch_size": 2.5},
        {"batch_size": True},
        {"num_workers": -1},
        {"image_size": 0},
        {"max_tokens_per_batch": 0},
    ],
)
def test_sizes_out_of_range_are_refused_when_the_module_is_built(setting):
    """They used to pass until a DataLoader or the first batch failed (exit 3, no setting named)."""
    ((name, value),) = setting.items()
    with pytest.raises(ValueError, match=rf"{name} must be an integer >= \d, got {value!r}"):
        MultimodalDataModule(**setting)


def test_modality_dropout_of_a_modality_the_data_does_not_read_is_refused():
    """A typo ("txt") used to drop nothing, silently."""
    MultimodalDataModule(modalities=["text", "image"], modality_dropout={"text": 0.3})
    with pytest.raises(ValueError, match=r"modality_dropout names \['txt'\], which the data"):
        MultimodalDataModule(modalities=["text", "image"], modality_dropout={"txt": 0.3})
