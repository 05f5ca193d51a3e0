"""Shards: `mmctx shard` round trip, disjoint coverage across ranks, mid-epoch resume."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from litdata.utilities.env import _DistributedEnv

from mmctx.data.batching import even_batch_sizes
from mmctx.data.datamodule import MultimodalDataModule
from mmctx.data.shard_writer import main as shard_main
from mmctx.data.shards import decode_value, encode_value
from mmctx.data.stream_datamodule import ShardedDataModule
from mmctx.errors import ConfigError
from tests.helpers import write_manifest

SETTINGS = {"image_size": 16, "image_channels": 3, "sample_rate": 8000}


def _rows(n: int) -> list[dict | str]:
    """n good rows with a changing set of modalities, then three bad rows."""
    kinds = [
        {"text": "both", "image": "img0.png", "audio": "a0.wav"},
        {"text_path": "doc.txt"},
        {"image": ["img0.png", "img1.png"]},
        {"audio": "a1.wav", "text": "no image"},
    ]
    rows: list[dict | str] = [
        {"id": f"s{i:03d}", "label": str(i % 3), **kinds[i % 4]} for i in range(n)
    ]
    rows += [
        {"id": "missing-file", "image": "nope.png", "label": "0"},
        "{not json",
        {"id": "nan-audio", "audio": "nan.wav", "label": "1"},
    ]
    return rows


@pytest.fixture
def sharded(media_dir: Path, tmp_path: Path):
    """(manifest, shard folder) of 11 good rows and 3 bad ones."""
    import soundfile as sf

    sf.write(media_dir / "nan.wav", np.full(400, np.nan, np.float32), 8000, subtype="FLOAT")
    manifest = write_manifest(media_dir / "train.jsonl", _rows(11))
    config = tmp_path / "cfg.yaml"
    config.write_text(json.dumps({"data": {"init_args": SETTINGS}}))
    out = tmp_path / "shards"
    code = shard_main(["--manifest", str(manifest), "--out", str(out), "--config", str(config),
                       "--chunk-bytes", "20kb"])  # fmt: skip
    assert code == 1  # some rows failed, each one reported
    return manifest, out


def _by_id(loader) -> dict[str, dict]:
    found = {}
    for batch in loader:
        for i, sample_id in enumerate(batch["ids"]):
            assert sample_id not in found, f"{sample_id} seen twice"
            found[sample_id] = {
                "pixels": batch["inputs"]["image"]["pixels"][i],
                "mask": batch["inputs"]["image"]["mask"][i],
                "text": batch["inputs"]["text"]["text"][i],
                "present": {m: bool(p[i]) for m, p in batch["present"].items()},
                "label": int(batch["label"][i]),
            }
    return found


def test_shard_then_stream_gives_the_manifest_paths_samples(sharded, capsys):
    manifest, out = sharded
    meta = json.loads((out / "mmctx_shards.json").read_text())
    assert meta["written"] == 11 and meta["skipped"] == 3
    assert any("nope.png" in p for p in meta["problems"])
    assert any("non-finite" in p for p in meta["problems"])
    assert any(":13:" in p and "JSON" in p for p in meta["problems"])  # the line is named
    assert len(list(out.glob("chunk-*.bin"))) > 1  # --chunk-bytes cut several chunks
    stream = ShardedDataModule(train_shards=str(out), batch_size=4, **SETTINGS)
    stream.setup("fit")
    manifest_path = MultimodalDataModule(
        train_manifest=str(manifest), val_fraction=0.0, batch_size=4, **SETTINGS
    )
    streamed, reference = _by_id(stream.loader("train")), _by_id(manifest_path.loader("train"))
    assert sorted(streamed) == sorted(reference) == [f"s{i:03d}" for i in range(11)]
    for sample_id, want in reference.items():
        got = streamed[sample_id]
        assert got["present"] == want["present"]
        assert got["text"] == want["text"] and got["label"] == want["label"]
        assert torch.equal(got["pixels"][got["mask"]], want["pixels"][want["mask"]])
    assert streamed["s002"]["present"] == {
        "text": False, "image": True, "audio": False, "video": False
    }  # fmt: skip
    assert stream.class_names == manifest_path.class_names


def test_shards_refuse_other_preprocessing_and_a_used_folder(sharded, capsys):
    manifest, out = sharded
    other = ShardedDataModule(train_shards=str(out), **{**SETTINGS, "image_size": 32})
    with pytest.raises(ConfigError, match="image_size: shards 16, config 32"):
        other.setup("fit")
    assert shard_main(["--manifest", str(manifest), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    nowhere = ShardedDataModule(train_shards=str(out.parent / "nowhere"), **SETTINGS)
    with pytest.raises(ConfigError, match="holds no shards written by `mmctx shard`"):
        nowhere.setup("fit")


def test_shard_command_explains_itself_and_stops_on_a_missing_manifest(tmp_path, capsys):
    from mmctx.cli import main

    with pytest.raises(SystemExit) as info:
        main(["shard", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--manifest" in out and "--chunk-bytes" in out and "exit status" in out
    assert main(["shard", "--manifest", str(tmp_path / "no.jsonl"), "--out", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err


def test_a_manifest_without_one_usable_row_stops_the_shard_run(tmp_path, capsys):
    from mmctx.cli import main

    manifest = tmp_path / "rows.jsonl"
    rows = ['{"id": "a", "audio": "gone.wav", "label": 0}', '{"id": "b", "image": "gone.png"}']
    manifest.write_text("\n".join(rows) + "\n")
    assert main(["shard", "--manifest", str(manifest), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"no row of {manifest} could be sharded" in err and "gone.wav" in err


def test_a_sample_the_shard_format_cannot_store_is_that_samples_error(tmp_path, capsys):
    """A lone surrogate is valid in a JSON id but cannot be written as UTF-8: it ended the run."""
    from mmctx.cli import main

    manifest = tmp_path / "rows.jsonl"
    rows = [
        '{"id": "a", "text": "one", "label": 0}',
        '{"id": "\\ud800", "text": "two", "label": 1}',
    ]
    rows.append('{"id": "c", "text": "three", "label": 1}')
    manifest.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    code = main(["shard", "--manifest", str(manifest), "--out", str(out)])
    assert code == 1
    assert "wrote 2 samples" in capsys.readouterr().out
    meta = json.loads((out / "mmctx_shards.json").read_text())
    assert meta["written"] == 2 and meta["skipped"] == 1
    assert meta["problems"][0].startswith("sample '\\ud800' (line 2): cannot be stored: ")


def test_stored_values_round_trip_and_damage_is_an_error():
    image = np.arange(24, dtype=np.uint8).reshape(1, 2, 3, 4)
    assert np.array_equal(decode_value(encode_value(image)), image)
    assert decode_value(memoryview(encode_value("héllo"))) == "héllo"
    with pytest.raises(ValueError, match="not a stored value"):
        decode_value(b"xyz")


@pytest.mark.parametrize(("count", "batches", "size"), [(11, 3, 4), (12, 3, 4), (3, 3, 4)])
def test_even_batch_sizes_cover_every_sample(count, batches, size):
    sizes = even_batch_sizes(count, batches, size)
    assert len(sizes) == batches and sum(sizes) == count and max(sizes) <= size
    assert min(sizes) >= 1


def _rank_batches(out: Path, world: int, monkeypatch) -> list[list[list[str]]]:
    """Each simulated rank's batches of one epoch (LitData told the world size and rank)."""
    loaders = []
    for rank in range(world):
        env = _DistributedEnv(world, rank, 1)
        monkeypatch.setattr(_DistributedEnv, "detect", classmethod(lambda cls, e=env: e))
        data = ShardedDataModule(train_shards=str(out), batch_size=2, even_batches=True, **SETTINGS)
        loaders.append(data.loader("train", shuffle=True))
    assert max(len(loader.samples) for loader in loaders) == loaders[0].most_samples
    return [[batch["ids"] for batch in loader] for loader in loaders]


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_see_disjoint_parts_and_together_every_sample(sharded, world, monkeypatch):
    _, out = sharded
    per_rank = _rank_batches(out, world, monkeypatch)
    ids = [i for batches in per_rank for batch in batches for i in batch]
    assert sorted(ids) == [f"s{i:03d}" for i in range(11)]  # 11 does not divide by 2 or 3
    assert len(set(ids)) == len(ids)
    assert len({len(batches) for batches in per_rank}) == 1  # same step count: no DDP hang


@pytest.mark.parametrize("even_batches", [False, True])
def test_stream_resumes_mid_epoch_from_its_state(sharded, even_batches):
    _, out = sharded
    settings = {**SETTINGS, "batch_size": 2, "even_batches": even_batches}
    data = ShardedDataModule(train_shards=str(out), **settings)
    full = [batch["ids"] for batch in data.loader("train", shuffle=True)]
    first = data.loader("train", shuffle=True)
    seen = []
    for batch in first:
        seen.append(batch["ids"])
        if len(seen) == 2:
            state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
            break
    resumed = ShardedDataModule(train_shards=str(out), **settings)
    loader = resumed.loader("train", shuffle=True)
    loader.load_state_dict(state)
    rest = [batch["ids"] for batch in loader]
    assert seen + rest == full


def test_token_budget_on_the_stream_keeps_every_sample_within_budget(sharded):
    _, out = sharded
    data = ShardedDataModule(
        train_shards=str(out), max_tokens_per_batch=40, shuffle_buffer=6, **SETTINGS
    )
    batches = list(data.loader("train", shuffle=True))
    ids = [i for batch in batches for i in batch["ids"]]
    assert sorted(ids) == [f"s{i:03d}" for i in range(11)]
    assert len(batches) > 1


def test_even_batches_start_every_epoch_whole_when_lightning_stops_at_len(sharded):
    """Lightning takes len() batches and leaves the iterator unfinished; the next epoch
    (the next validation run) must still have all its batches."""
    _, out = sharded
    data = ShardedDataModule(train_shards=str(out), batch_size=4, even_batches=True, **SETTINGS)
    loader = data.loader("train", shuffle=True)
    for epoch in range(3):
        batches = list(itertools.islice(iter(loader), len(loader)))
        assert len(batches) == len(loader) == 3, epoch
        assert sorted(i for b in batches for i in b["ids"]) == [f"s{i:03d}" for i in range(11)]
