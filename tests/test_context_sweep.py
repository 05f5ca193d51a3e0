"""The context sweep: clues placed where asked, and reports that count a model's answers right."""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mmctx.datasets.demo import DIGIT_WORDS, DTMF
from mmctx.datasets.longctx import LongSpec, SweepSpec, make_sweep_dataset
from mmctx.pipelines.context_sweep import (
    accuracy_grid,
    format_grid,
    named_checkpoints,
    sweep_accuracy,
    training_length,
    write_sweep,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BASE = LongSpec(num_samples=10, audio_seconds=1.0, text_words=40)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[SweepSpec, dict[str, Path]]:
    spec = SweepSpec(BASE, scales=(1, 2.5), bins=4, per_cell=10, seed=3)
    return spec, make_sweep_dataset(tmp_path_factory.mktemp("sweep") / "data", spec)


def _burst_onset(clip: np.ndarray, rate: int, pair: tuple[int, int]) -> int:
    """Where the DTMF pair is loudest, found from the audio alone (10 ms steps)."""
    n, step = int(0.1 * rate), int(0.01 * rate)
    t = np.arange(n) / rate
    probes = [np.exp(-2j * np.pi * f * t) for f in pair]
    power = [
        min(abs(clip[s : s + n] @ p) for p in probes) for s in range(0, len(clip) - n + 1, step)
    ]
    return int(np.argmax(power)) * step


def test_every_clue_sits_in_the_files_where_the_grid_asks(sweep) -> None:
    spec, paths = sweep
    root = paths["manifest"].parent
    truth = {t["id"]: t for t in _rows(paths["truth"])}
    rows = _rows(paths["manifest"])
    assert len(rows) == len(truth) == 2 * 4 * 10
    cells = Counter((t["scale"], t["bin"]) for t in truth.values())
    assert cells == {(s, b): 10 for s in (1.0, 2.5) for b in range(4)}
    for row in rows:
        t = truth[row["id"]]
        assert row["label"] == t["label"]
        lo, hi = t["bin"] / 4, (t["bin"] + 1) / 4
        assert lo <= t["position"] < hi
        words = (root / row["text_path"]).read_text().split()
        assert len(words) == {1.0: 40, 2.5: 100}[t["scale"]]
        index = [i for i, w in enumerate(words) if w in DIGIT_WORDS]
        assert index == [t["word_index"]] and words[index[0]] == DIGIT_WORDS[row["label"]]
        assert abs(index[0] / (len(words) - 1) - t["position"]) <= max(4 / len(words), 0.02)
        clip, rate = sf.read(root / row["audio"])
        assert len(clip) == round(t["scale"] * 1.0 * rate)
        onset = _burst_onset(clip, rate, DTMF[row["label"]])
        burst = round(t["burst_seconds"] * rate)
        expected = round(t["position"] * (len(clip) - burst))
        assert abs(onset - expected) <= burst, (row["id"], onset, expected)
        assert abs(onset / rate - t["onset_seconds"]) <= t["burst_seconds"]
    # Labels are balanced within every cell.
    per_cell = Counter((t["scale"], t["bin"], t["label"]) for t in truth.values())
    assert set(per_cell.values()) == {1}


def test_same_spec_same_bytes_and_a_new_seed_changes_them(tmp_path: Path) -> None:
    spec = SweepSpec(BASE, scales=(1,), bins=2, per_cell=2, seed=0)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        make_sweep_dataset(tmp_path / name, SweepSpec(BASE, (1,), 2, 2, seed))
    files = {
        n: {p.relative_to(tmp_path / n): p.read_bytes() for p in (tmp_path / n).rglob("*.*")}
        for n in "abc"
    }
    assert files["a"] == files["b"]
    assert (
        files["a"][Path("audio/sweep-x1-b00-0000.wav")]
        != files["c"][Path("audio/sweep-x1-b00-0000.wav")]
    )
    with pytest.raises(ValueError, match="does not hold"):
        make_sweep_dataset(tmp_path / "a", SweepSpec(BASE, (1,), 2, 3, 0))
    assert spec.position(1, 0) == pytest.approx(0.625)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("scales", ()),
        ("scales", (1, 1)),
        ("scales", (0,)),
        ("scales", (1, 1e9)),
        ("bins", 0),
        ("per_cell", 0),
    ],  # 1e9 x: 954 GiB for one text (it was an out-of-memory crash)
)
def test_bad_grid_values_are_refused_by_name(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"SweepSpec.{field}="):
        SweepSpec(BASE, **{field: value})


class FirstPartReader:
    """Answers right only when the digit word sits in the first ``share`` of the text, wrong
    (the next digit) otherwise, and fails on the sample named ``broken``."""

    class_names = [str(d) for d in range(10)]

    def __init__(self, share: float, broken: str = "") -> None:
        self.share, self.broken = share, broken

    def predict_rows(self, inputs, **_: object):
        for line, row in inputs.rows:
            record = {"line": line, "id": row["id"], "status": "ok", "error": None}
            if row["id"] == self.broken:
                yield {**record, "status": "error", "error": "unreadable"}
                continue
            words = (inputs.base / row["text_path"]).read_text().split()
            index = next(i for i, w in enumerate(words) if w in DIGIT_WORDS)
            seen = index < self.share * len(words)
            yield {**record, "label": str(row["label"] if seen else (row["label"] + 1) % 10)}


def test_report_matches_a_model_right_only_on_the_first_half(sweep, tmp_path: Path) -> None:
    spec, paths = sweep
    model = FirstPartReader(0.5, broken="sweep-x2.5-b00-0003")
    cells = sweep_accuracy(model, paths, spec, progress=False)
    assert accuracy_grid(cells) == [[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]
    counts = {(c.scale, c.bin): (c.samples, c.correct, c.failed) for c in cells}
    assert counts[(2.5, 0)] == (9, 9, 1) and counts[(2.5, 3)] == (10, 0, 0)
    assert [(c.start, c.end) for c in cells[:4]] == [(0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1)]
    assert (cells[4].text_words, cells[4].audio_seconds) == (100, 2.5)

    written = write_sweep(cells, tmp_path / "m", name="first half", info={"bins": 4})
    report = json.loads(written["json"].read_text())
    assert report["model"] == "first half" and report["bins"] == 4
    assert report["accuracy"] == accuracy_grid(cells)
    with written["csv"].open() as f:
        table = list(csv.DictReader(f))
    assert [float(r["accuracy"]) for r in table] == [1, 1, 0, 0, 1, 1, 0, 0]
    assert written["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert format_grid(cells).splitlines()[1:] == [
        "    1x   100%  100%    0%    0%",
        "  2.5x   100%  100%    0%    0%",
    ]


def test_partial_cells_are_counted_exactly(sweep) -> None:
    spec, paths = sweep
    cells = sweep_accuracy(FirstPartReader(0.3), paths, spec, progress=False)
    truth = _rows(paths["truth"])
    for cell in cells:
        inside = [t for t in truth if (t["scale"], t["bin"]) == (cell.scale, cell.bin)]
        expected = sum(t["word_index"] < 0.3 * t["text_words"] for t in inside)
        assert cell.correct == expected and cell.samples == 10
    assert 0 < cells[1].correct < 10  # the 0.3 boundary cuts bin 1 (0.25-0.5)


def test_checkpoint_names(tmp_path: Path) -> None:
    assert named_checkpoints(["a=x.ckpt", "runs/dense/checkpoints/last.ckpt"]) == {
        "a": Path("x.ckpt"),
        "dense": Path("runs/dense/checkpoints/last.ckpt"),
    }
    with pytest.raises(ValueError, match="two checkpoints are named 'a'"):
        named_checkpoints(["a=x.ckpt", "a=y.ckpt"])


def _run(capsys, *argv: str) -> tuple[int, str]:
    from mmctx.cli import main

    code = main(["context-sweep", *argv])
    return code, capsys.readouterr().err.strip().splitlines()[-1]


def test_a_missing_checkpoint_or_wrong_data_is_one_line_and_exit_status_2(
    tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["mmctx"])
    cache = ["--data.init_args.cache_dir", str(tmp_path / "cache")]
    long = ["--config", str(CONFIGS / "longctx_demo.yaml")]
    code, err = _run(capsys, *long, "--ckpt", str(tmp_path / "no.ckpt"), "--out", "o", *cache)
    assert code == 2
    assert err.startswith("mmctx context-sweep: error: --ckpt no=") and "no.ckpt" in err
    demo = ["--config", str(CONFIGS / "demo.yaml")]
    code, err = _run(capsys, *demo, "--ckpt", "x.ckpt", "--out", "o", *cache)
    assert code == 2 and "not the long-context demo" in err
    code, err = _run(capsys, *long, "--ckpt", "x.ckpt", "--out", "o", "--lengths", "0", *cache)
    assert code == 2 and "SweepSpec.scales=(0.0,) is out of range" in err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_context_sweep_runs_end_to_end_on_trained_checkpoints(tmp_path, capsys, monkeypatch):
    from mmctx.cli import lightning_cli, main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mmctx"])
    config = ["--config", str(CONFIGS / "longctx_demo.yaml")]
    data = [
        "--data.num_samples", "20", "--data.audio_seconds", "1", "--data.text_words", "40",
        "--data.cache_dir", str(tmp_path / "data"),
    ]  # fmt: skip
    cli = lightning_cli(
        [*config, *data, "--data.batch_size", "4", "--trainer.max_epochs", "1",
         "--model.init_args.backbone.init_args.window", "8",
         "--model.init_args.encoders.text.init_args.window", "32",
         "--model.init_args.encoders.text.init_args.stride", "24",
         "--trainer.enable_progress_bar", "false"],
        run=False,
    )  # fmt: skip
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    ckpt = next(tmp_path.rglob("last.ckpt"))
    grid = ["--lengths", "1", "2", "--positions", "2", "--per-cell", "3", "--no-progress"]
    out = tmp_path / "sweep"
    argv = [*config, *data, "--ckpt", f"a={ckpt}", "--ckpt", f"b={ckpt}", "--out", str(out)]
    assert main(["context-sweep", *argv, *grid]) == 0
    printed = capsys.readouterr().out
    reports = {n: json.loads((out / n / "sweep.json").read_text()) for n in "ab"}
    assert reports["a"]["accuracy"] == reports["b"]["accuracy"]  # the same model twice
    assert len(reports["a"]["accuracy"]) == 2 and len(reports["a"]["accuracy"][0]) == 2
    assert all(c["samples"] == 3 and c["failed"] == 0 for c in reports["a"]["cells"])
    assert reports["a"]["training_length"] == {"text_words": 40, "audio_seconds": 1.0}
    assert (out / "context_sweep.png").is_file() and (out / "a" / "heatmap.png").is_file()
    assert "a: accuracy by input length" in printed
    # --reuse keeps the reports of the same checkpoint and grid instead of evaluating again.
    (out / "context_sweep.png").unlink()
    assert main(["context-sweep", *argv, *grid, "--reuse"]) == 0
    assert capsys.readouterr().out.count("(same checkpoint and grid)") == 2
    assert json.loads((out / "a" / "sweep.json").read_text()) == reports["a"]
    assert (out / "context_sweep.png").is_file()


def test_reports_name_the_training_length_and_any_range_it_was_drawn_from() -> None:
    assert training_length(BASE) == {"text_words": 40, "audio_seconds": 1.0}
    mixed = LongSpec(num_samples=10, audio_seconds=2.0, text_words=40, length_range=(0.5, 2))
    assert training_length(mixed) == {"text_words": 40, "audio_seconds": 2.0, "scales": [0.5, 2]}
    # The grid's inputs are fixed lengths of the nominal one, whatever the training mix.
    grid = SweepSpec(mixed, scales=(1, 3), bins=2, per_cell=1)
    assert grid.scaled(3) == LongSpec(num_samples=10, audio_seconds=6.0, text_words=120)
