"""Inference: Predictor API, `mmctx infer` on manifests, folders and files, bad input, export."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf
import torch

from mmctx.checkpoints import CheckpointError, export_model, read_checkpoint
from mmctx.cli import main
from mmctx.pipelines.inference import (
    InputRows,
    Predictor,
    rows_from_folder,
    rows_from_manifest,
)
from tests.helpers import png_header_only, write_manifest


@pytest.fixture(scope="module")
def predictor(trained) -> Predictor:
    return Predictor.from_checkpoint(trained["ckpt"], device="cpu")


@pytest.fixture
def media(tmp_path: Path) -> Path:
    """Good files: a digit-like image, a one-second tone, a text file."""
    img = np.zeros((32, 32), np.uint8)
    cv2.putText(img, "7", (8, 26), cv2.FONT_HERSHEY_SIMPLEX, 0.9, 255, 2)
    cv2.imwrite(str(tmp_path / "seven.png"), img)
    t = np.arange(8000) / 8000
    sf.write(tmp_path / "seven.wav", 0.3 * np.sin(2 * np.pi * 440 * t), 8000, subtype="PCM_16")
    (tmp_path / "seven.txt").write_text("the number seven", encoding="utf-8")
    return tmp_path


def _infer(argv: list[str], capsys) -> tuple[int, list[dict], str]:
    code = main(["infer", "--no-progress", *argv])
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines()], captured.err


def test_manifest_records_in_order_with_line_numbers(trained, predictor, capsys):
    manifest = trained["data"] / "test.jsonl"
    code, records, err = _infer(
        ["--ckpt", str(trained["ckpt"]), "--manifest", str(manifest)], capsys
    )
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert code == 0 and len(records) == len(rows)
    assert [r["id"] for r in records] == [r["id"] for r in rows]
    assert [r["line"] for r in records] == list(range(1, len(rows) + 1))
    first = records[0]
    assert set(first) == {"line", "id", "status", "label", "top_k", "modalities", "error"}
    assert first["status"] == "ok" and first["error"] is None
    probs = [p for _, p in first["top_k"]]
    assert probs == sorted(probs, reverse=True) and first["label"] == first["top_k"][0][0]
    assert f"{len(rows)} samples, {len(rows)} ok, 0 failed" in err


def test_predictions_match_the_model_and_do_not_depend_on_batching(trained, predictor):
    manifest = trained["data"] / "test.jsonl"
    one = list(predictor.predict_rows(rows_from_manifest(manifest), batch_size=1, top_k=10))
    many = list(predictor.predict_rows(rows_from_manifest(manifest), batch_size=7, top_k=10))
    for a, b in zip(one, many, strict=True):
        assert a["label"] == b["label"]
        np.testing.assert_allclose(
            [p for _, p in a["top_k"]], [p for _, p in b["top_k"]], atol=1e-5
        )
    # the same numbers as the model's own predict_step on the data module's batches
    model = predictor.model
    from mmctx.data.datamodule import MultimodalDataModule

    dm = MultimodalDataModule(
        predict_manifest=str(manifest), image_size=32, image_channels=1, sample_rate=8000,
        batch_size=64, classes=predictor.class_names,
    )  # fmt: skip
    batch = next(iter(dm.loader("predict")))
    with torch.no_grad():
        expected = model.predict_step(batch, 0)
    for rec, exp in zip(one, expected, strict=True):
        assert rec["id"] == exp["id"] and rec["label"] == exp["label"]
        assert rec["top_k"][0][1] == pytest.approx(max(exp["probs"].values()), abs=1e-5)


def test_bad_rows_become_error_records_and_the_exit_status_says_so(trained, media, capsys):
    good = {"id": "good", "text": "seven", "image": "seven.png", "audio": "seven.wav"}
    manifest = media / "m.jsonl"
    lines = [
        json.dumps(good),
        "",  # blank: no record
        "{not json",
        json.dumps({"id": "gone", "image": "missing.png"}),
        json.dumps({"id": "sep", "text": "line\u2028separator\u0085inside"}),
        json.dumps(good),
    ]
    manifest.write_bytes(
        ("\n".join(lines) + "\n").encode() + b'{"id": "bad-utf8", "text": "\xff"}\n'
    )
    code, records, err = _infer(
        ["--ckpt", str(trained["ckpt"]), "--manifest", str(manifest)], capsys
    )
    assert code == 1
    assert [r["line"] for r in records] == [1, 3, 4, 5, 6, 7]
    assert [r["status"] for r in records] == ["ok", "error", "error", "ok", "ok", "error"]
    assert records[1]["id"] is None and "not valid JSON" in records[1]["error"]
    assert records[2]["id"] == "gone" and "missing.png" in records[2]["error"]
    assert records[3]["modalities"] == ["text"]
    assert "invalid UTF-8" in records[5]["error"] and ":7:" in records[5]["error"]
    assert "6 samples, 3 ok, 3 failed" in err and "first error:" in err


def _bad_files(folder: Path) -> dict[str, tuple[dict, str]]:
    """Bad inputs, each a row and the text its error must contain."""
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    good = cv2.imencode(".jpg", noise)[1].tobytes()  # mostly scan data: the cut lands in it
    (folder / "cut.jpg").write_bytes(good[: len(good) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "jpeg_named.wav").write_bytes(good)  # an image where audio is expected
    (folder / "text.png").write_text("not an image")
    png_header_only(folder / "bomb.png", 30000, 30000)  # 900 megapixels declared in ~80 bytes
    sf.write(folder / "long.wav", np.zeros(8000 * 3), 8000)
    (folder / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    os.mkfifo(folder / "pipe.wav")
    return {
        "truncated": ({"image": "cut.jpg"}, "cut.jpg: truncated JPEG"),
        "empty": ({"image": "empty.png"}, "empty.png: empty file"),
        "wrong-content": ({"audio": "jpeg_named.wav"}, "jpeg_named.wav: not a decodable audio"),
        "undecodable": ({"image": "text.png"}, "text.png: not a decodable image"),
        "bomb": ({"image": "bomb.png"}, "bomb.png: image declares more than"),
        "too-long": ({"audio": "long.wav"}, "long.wav: audio is 3.0 s, over max_audio_seconds=2"),
        "bad-utf8": ({"text_path": "latin1.txt"}, "latin1.txt: invalid UTF-8 at byte 3"),
        "fifo": ({"audio": "pipe.wav"}, "'audio' is not a regular file: "),
        "jpeg-as-png-ok": ({"image": "seven.png", "text": "fine"}, ""),
    }


def test_bad_files_each_get_a_clear_error_and_the_rest_go_on(trained, media, no_hang):
    cases = _bad_files(media)
    rows = [{"id": name, **row} for name, (row, _) in cases.items()]
    predictor = Predictor.from_checkpoint(trained["ckpt"], device="cpu")
    predictor.set_limits(max_image_pixels=1_000_000, max_audio_seconds=2.0)
    records = list(
        predictor.predict_rows(rows_from_manifest(write_manifest(media / "bad.jsonl", rows)))
    )
    assert [r["id"] for r in records] == list(cases)
    for record, (name, (_, expected)) in zip(records, cases.items(), strict=True):
        if not expected:
            assert record["status"] == "ok", record
        else:
            assert record["status"] == "error" and expected in record["error"], (name, record)


def test_limits_from_the_command_line(trained, media, capsys):
    sf.write(media / "long.wav", np.zeros(8000 * 3), 8000)
    argv = ["--ckpt", str(trained["ckpt"]), "--audio", str(media / "long.wav")]
    code, records, _ = _infer([*argv, "--max-audio-seconds", "2"], capsys)
    assert code == 1 and "over max_audio_seconds=2" in records[0]["error"]
    code, records, _ = _infer([*argv, "--max-audio-seconds", "2", "--crop-long-audio"], capsys)
    assert code == 0 and records[0]["modalities"] == ["audio"]
    code, records, err = _infer([*argv, "--max-audio-seconds", "-1"], capsys)
    assert code == 2 and "max_audio_seconds must be a positive number" in err


def test_paths_leaving_the_root_are_refused_before_opening(
    trained, media, tmp_path_factory, no_hang
):
    outside = tmp_path_factory.mktemp("outside")
    os.mkfifo(outside / "trap.png")  # opening it would block: the check must come first
    shutil.copy(media / "seven.png", outside / "real.png")
    (media / "link.png").symlink_to(outside / "real.png")
    data = media / "data"
    data.mkdir()
    shutil.copy(media / "seven.png", data / "ok.png")
    rows = [
        {"id": "escape", "image": "../../" + outside.name + "/trap.png"},
        {"id": "symlink", "image": "../link.png"},
        {"id": "inside", "image": "ok.png"},
    ]
    manifest = write_manifest(data / "m.jsonl", rows)
    predictor = Predictor.from_checkpoint(trained["ckpt"], device="cpu")
    records = list(predictor.predict_rows(rows_from_manifest(manifest), root=data))
    assert [r["status"] for r in records] == ["error", "error", "ok"]
    assert "leaves the data root" in records[0]["error"]
    assert "leaves the data root" in records[1]["error"]


def test_folder_groups_files_by_stem(trained, media, capsys):
    shutil.copy(media / "seven.png", media / "other.png")
    (media / "notes.csv").write_text("a,b")
    (media / ".hidden").write_text("x")
    (media / "sub").mkdir()
    inputs = rows_from_folder(media)
    rows = [row for _, row in inputs.rows]
    assert inputs.ignored == (".hidden", "sub")
    assert [r["id"] if isinstance(r, dict) else "error" for r in rows] == [
        "error",
        "other",
        "seven",
    ]
    assert rows[2] == {
        "id": "seven", "image": ["seven.png"], "audio": ["seven.wav"], "text_path": "seven.txt"
    }  # fmt: skip
    code, records, err = _infer(["--ckpt", str(trained["ckpt"]), "--folder", str(media)], capsys)
    assert code == 1 and [r["status"] for r in records] == ["error", "ok", "ok"]
    assert "notes.csv" in records[0]["error"] and records[0]["id"] == "notes"
    assert sorted(records[2]["modalities"]) == ["audio", "image", "text"]
    assert records[1]["modalities"] == ["image"]
    assert "ignored in the folder: .hidden, sub" in err


def test_command_line_sample_and_python_api_agree(trained, predictor, media, capsys, monkeypatch):
    monkeypatch.chdir(media)
    code, records, _ = _infer(
        ["--ckpt", str(trained["ckpt"]), "--text", "seven", "--image", "seven.png",
         "--audio", "seven.wav", "--id", "cli", "--top-k", "10"],
        capsys,
    )  # fmt: skip
    api = predictor.predict(text="seven", image="seven.png", audio="seven.wav", top_k=10)
    assert code == 0 and records[0]["id"] == "cli" and api["status"] == "ok"
    assert records[0]["top_k"] == api["top_k"]


def test_a_sample_with_nothing_the_model_reads_is_an_error(predictor, media):
    """The demo model has no video encoder: video alone is not silently predicted from."""
    assert [m.name for m in predictor.modalities] == ["text", "image", "audio"]
    record = predictor.predict(video=str(media / "seven.png"))
    assert record["status"] == "error"
    assert "nothing this model reads (it uses text, image, audio)" in record["error"]
    record = predictor.predict(text="seven", video=str(media / "seven.png"))
    assert record["status"] == "ok" and record["modalities"] == ["text"]


def test_concurrent_calls_give_the_sequential_answers(predictor, media):
    args = [
        {"text": "seven"},
        {"image": str(media / "seven.png")},
        {"audio": str(media / "seven.wav")},
        {"text": "one two", "image": str(media / "seven.png")},
    ] * 4
    expected = [predictor.predict(**a, top_k=10)["top_k"] for a in args]
    got: list = [None] * len(args)

    def work(i: int) -> None:
        got[i] = predictor.predict(**args[i], top_k=10)["top_k"]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(args))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose([p for _, p in a], [p for _, p in b], atol=1e-5)


def test_streaming_reads_input_only_a_batch_or_two_ahead(predictor, media):
    consumed = 0

    def rows():
        nonlocal consumed
        for i in range(1, 1001):
            consumed += 1
            yield i, {"id": str(i), "text": "seven"}

    records = predictor.predict_rows(InputRows(rows(), media), batch_size=4, workers=1)
    first = next(records)
    assert first["id"] == "1" and consumed <= 12  # not the 1000 rows
    assert sum(1 for _ in records) == 999


def test_export_round_trip_without_the_checkpoint(trained, predictor, media, tmp_path):
    paths = export_model(trained["ckpt"], tmp_path / "export")
    assert {p.name for p in paths.values()} == {"model.safetensors", "config.json"}
    config = json.loads(paths["config"].read_text())
    assert config["data"]["preprocess"]["image_size"] == 32
    exported = Predictor.from_export(tmp_path / "export", device="cpu")
    a = exported.predict(text="seven", image=str(media / "seven.png"), top_k=10)
    b = predictor.predict(text="seven", image=str(media / "seven.png"), top_k=10)
    assert a["top_k"] == b["top_k"]


def test_checkpoints_with_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": threading.Lock}, path)  # a class: needs unpickling
    with pytest.raises(CheckpointError, match="evil.ckpt: holds objects"):
        read_checkpoint(path)
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.ckpt: not a readable checkpoint"):
        read_checkpoint(tmp_path / "junk.ckpt")


def test_infer_usage_errors_exit_2(tmp_path, capsys):
    assert main(["infer", "--ckpt", str(tmp_path / "none.ckpt"), "--text", "x"]) == 2
    assert "none.ckpt: no such checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["infer", "--ckpt", "x.ckpt"])
    assert info.value.code == 2


def test_infer_help_explains_the_inputs(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["mmctx"])
    with pytest.raises(SystemExit):
        main(["infer", "--help"])
    out = capsys.readouterr().out
    for text in ("--manifest", "--folder", "stem", "Exit status", "top_k"):
        assert text in out or text.lower() in out


# ------------------------------------------------------------------ non-finite, odd names, bugs
def _strict_records(out: str) -> list[dict]:
    """Every line parsed as strict JSON: NaN/Infinity are refused, not read as floats."""

    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    out.encode("utf-8")  # raw lone surrogates would not encode
    return [json.loads(line, parse_constant=refuse) for line in out.splitlines()]


def _nan_wav(path: Path) -> Path:
    wave = np.full(800, 0.2, np.float32)
    wave[[3, 4, 9]] = [np.nan, np.inf, -np.inf]
    sf.write(str(path), wave, 8000, subtype="FLOAT")
    return path


def test_nan_audio_is_an_error_record_and_the_output_is_strict_json(trained, media, capsys):
    _nan_wav(media / "nan.wav")
    rows = [
        {"id": "nan", "audio": "nan.wav", "text": "seven"},
        {"id": "ok", "audio": "seven.wav"},
        '{"id": "sur", "text": "a \\ud800 b"}',
    ]
    manifest = write_manifest(media / "m.jsonl", rows)
    code = main(
        ["infer", "--no-progress", "--ckpt", str(trained["ckpt"]), "--manifest", str(manifest)]
    )
    captured = capsys.readouterr()
    records = _strict_records(captured.out)
    assert code == 1 and [r["status"] for r in records] == ["error", "ok", "error"]
    assert records[0]["error"] == (
        f"sample 'nan' (line 1): {media / 'nan.wav'}: audio holds 3 non-finite samples (NaN/inf)"
    )
    assert "a lone surrogate U+D800 at character 2" in records[2]["error"]
    assert all(np.isfinite(p) for _, p in records[1]["top_k"])


def test_undecodable_text_argument_is_that_samples_error(trained, capsys):
    text = os.fsdecode(b"caf\xe9 seven")  # what Python makes of latin-1 bytes in argv
    code = main(["infer", "--no-progress", "--ckpt", str(trained["ckpt"]), "--text", text])
    records = _strict_records(capsys.readouterr().out)
    assert code == 1 and len(records) == 1 and records[0]["status"] == "error"
    assert "an undecodable byte 0xe9 at character 3" in records[0]["error"]


def test_odd_file_names_give_one_line_per_record_and_valid_utf8(trained, media, capsys):
    folder = media / "odd"
    folder.mkdir()
    shutil.copy(media / "seven.wav", os.path.join(os.fsencode(folder), b"bad\xff.wav"))
    _nan_wav(folder / "nan\nline.wav")
    shutil.copy(media / "seven.wav", folder / "sep\u2028x.wav")
    code = main(["infer", "--no-progress", "--ckpt", str(trained["ckpt"]), "--folder", str(folder)])
    captured = capsys.readouterr()
    records = _strict_records(captured.out)
    assert code == 1 and len(records) == len(captured.out.splitlines()) == 3
    by_id = {r["id"]: r for r in records}
    assert set(by_id) == {"bad\\xff", "nan\nline", "sep\u2028x"}
    assert by_id["bad\\xff"]["status"] == "ok", by_id
    assert by_id["sep\u2028x"]["status"] == "ok", by_id
    assert "nan\nline.wav: audio holds 3 non-finite" in by_id["nan\nline"]["error"]
    assert "\u2028" not in captured.out and "\\u2028" in captured.out
    summary, first = captured.err.splitlines()  # one line each, the newline escaped
    assert "3 samples, 2 ok, 1 failed" in summary
    assert first.startswith("  first error: ") and "nan\\nline.wav: audio holds 3" in first


def test_non_finite_model_output_is_that_samples_error(trained, monkeypatch):
    predictor = Predictor.from_checkpoint(trained["ckpt"], device="cpu")
    classes = len(predictor.class_names)

    def forward(inputs):
        logits = torch.zeros(2, classes)
        logits[0, 1] = float("nan")
        return logits

    monkeypatch.setattr(predictor.model, "forward", forward)
    rows = InputRows([(1, {"id": "a", "text": "x"}), (2, {"id": "b", "text": "y"})], Path.cwd(), 2)
    first, second = predictor.predict_rows(rows, batch_size=2, workers=0)
    assert first["status"] == "error" and first["top_k"] is None
    assert (
        first["error"] == "sample 'a' (line 1): model output is not finite (NaN or infinite logits)"
    )
    assert second["status"] == "ok" and second["top_k"][0][1] == pytest.approx(
        1 / classes, abs=1e-6
    )


def test_video_for_a_model_without_video_names_the_file(predictor, media):
    record = predictor.predict(video=str(media / "seven.png"))
    assert record["status"] == "error"
    assert str(media / "seven.png") in record["error"]
    assert "(video: this model has no video encoder)" in record["error"]


def test_an_internal_bug_exits_3_with_one_line_and_a_log(
    trained, media, capsys, monkeypatch, tmp_path
):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("MMCTX_DEBUG", raising=False)

    def broken(self, batch, top_k):
        raise RuntimeError("simulated bug in the forward pass")

    monkeypatch.setattr(Predictor, "_classify", broken)
    code = main(["infer", "--no-progress", "--ckpt", str(trained["ckpt"]), "--text", "seven"])
    err = capsys.readouterr().err
    assert code == 3 and err.count("\n") == 1 and "internal error" in err
    assert "RuntimeError: simulated bug in the forward pass" in err
    log = Path(err.rsplit("the traceback is in ", 1)[1].strip())
    assert log.parent == tmp_path and "in broken" in log.read_text()


def test_unwritable_out_exits_2(trained, tmp_path, capsys):
    out = tmp_path / "missing" / "p.jsonl"
    code = main(
        ["infer", "--no-progress", "--ckpt", str(trained["ckpt"]), "--text", "x", "--out", str(out)]
    )
    assert code == 2 and "p.jsonl" in capsys.readouterr().err
    assert main(["infer", "--no-progress", "--ckpt", "", "--text", "x"]) == 2  # not a crash
