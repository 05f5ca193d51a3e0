"""Hostile FILE CONTENT, paths and rows (tests/hostile_media.py) through inference and
validation: every line gets its own right outcome, nothing outside the root is looked at."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

import mmctx.io
from mmctx.data.paths import PathOutsideRoot, confined_path
from mmctx.data.validate import validate_manifest
from mmctx.io import read_audio
from mmctx.pipelines.inference import Predictor, rows_from_manifest
from tests.hostile_media import write_media_corpus

MODALITIES = ["text", "image", "audio", "video"]


class TinyClassifier(torch.nn.Module):
    """Reads every built-in modality, predicts one of two classes (no training needed)."""

    class_names = ["a", "b"]

    def __init__(self) -> None:
        super().__init__()
        self.encoders = torch.nn.ModuleDict({m: torch.nn.Identity() for m in MODALITIES})
        self.register_buffer("bias", torch.tensor([0.2, 0.1]))

    def forward(self, inputs: dict) -> torch.Tensor:
        return self.bias.expand(len(inputs["text"]["text"]), 2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    def on_alarm(signum, frame):
        raise TimeoutError("a read blocked: a FIFO was opened")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(240)
    yield write_media_corpus(tmp_path_factory.mktemp("media"))
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _check(outcomes: dict[int, tuple[str, str]], cases, consumer: str) -> None:
    assert sorted(outcomes) == list(range(1, len(cases) + 1)), consumer
    wrong = []
    for line, case in enumerate(cases, start=1):
        expected, (status, message) = case.expected(consumer), outcomes[line]
        if expected is not None and (status != expected[0] or expected[1] not in message):
            wrong.append((case.name, status, message[:200], expected))
        if status == "error":
            assert str(line) in message or case.name.startswith("row-as"), (case.name, message)
    assert not wrong, "\n".join(map(str, wrong))


def test_predict_rows_gives_every_corpus_line_its_outcome(corpus):
    manifest, cases = corpus
    predictor = Predictor(TinyClassifier(), {"modalities": MODALITIES}, device="cpu")
    records = list(predictor.predict_rows(rows_from_manifest(manifest), batch_size=8))
    outcomes = {r["line"]: (r["status"], r["error"] or "") for r in records}
    assert len(records) == len(outcomes)
    _check(outcomes, cases, "infer")


def test_validate_gives_every_corpus_line_its_outcome(corpus):
    manifest, cases = corpus
    report = validate_manifest(manifest)
    outcomes = {line: ("ok", "") for line in range(1, len(cases) + 1)}
    for problem in report.problems:
        line = int(problem.split(": line ", 1)[1].split(":", 1)[0])
        outcomes[line] = ("error", problem)
    _check(outcomes, cases, "validate")


def _wav(rate: int, frames: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.zeros(frames, np.int16).tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("rate", [44_101, 999_983, 1, 1_000_000])
def test_odd_sample_rates_resample_in_bounded_memory(tmp_path, monkeypatch, rate):
    """A 0.1 s WAV at 44,101 Hz made torchaudio build a 6 GB sinc kernel (32 GB for a
    prime rate near 1 MHz): the ratio is now approximated when the exact one is too big."""
    import torchaudio.functional as AF

    seen = []
    real = AF.resample

    def spy(wave_, orig, new, *args, **kwargs):
        seen.append((orig, new))
        return real(wave_, orig, new, *args, **kwargs)

    monkeypatch.setattr(AF, "resample", spy)
    path = tmp_path / "odd.wav"
    frames = max(4, rate // 10)
    path.write_bytes(_wav(rate, frames))
    out = read_audio(path, sample_rate=8000)
    assert abs(len(out) - frames * 8000 / rate) <= 1
    (orig, new), = seen  # fmt: skip
    assert orig * new <= mmctx.io.MAX_RESAMPLE_KERNEL


def test_confinement_never_looks_outside_the_root(tmp_path, monkeypatch):
    """Path.resolve() stat'ed a link's target, and realpath lstat'ed its folders, even when
    it lay outside the root: the check itself touched /etc/passwd, /dev/zero, FIFOs."""
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"x")
    (data / "ok.png").write_bytes(b"x")
    (data / "sub").mkdir()
    links = {"out.png": outside / "secret.png", "passwd.png": Path("/etc/passwd"),
             "rel.png": Path("../outside/secret.png"), "in.png": Path("sub/../ok.png"),
             "dirlink": outside}  # fmt: skip
    for name, target in links.items():
        (data / name).symlink_to(target)
    looked: list[str] = []
    for name in ("lstat", "stat"):
        real = getattr(os, name)

        def spy(path, *args, _real=real, **kwargs):
            looked.append(os.fsdecode(path))
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(os, name, spy)
    refused = ["out.png", "passwd.png", "rel.png", "dirlink/secret.png", "/etc/passwd",
               "../outside/secret.png", "../../../../dev/zero", "/proc/self/mem"]  # fmt: skip
    for value in refused:
        with pytest.raises(PathOutsideRoot):
            confined_path(value, "image", data)
    for value in ["in.png", "ok.png", "sub/../ok.png", str(data / "ok.png"), "missing/../x"]:
        confined_path(value, "image", data)
    monkeypatch.undo()
    strays = [p for p in looked if not (p.startswith(str(data)) or str(data).startswith(p))]
    assert not strays


def test_validate_checks_inline_text_like_training(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "s", "text": "a\\ud800", "label": "a"}\n', encoding="utf-8")
    (problem,) = validate_manifest(manifest).problems
    assert "line 1" in problem and "not valid Unicode" in problem


@pytest.mark.slow
def test_infer_cli_over_the_corpus(corpus, tmp_path):
    """The real ``mmctx infer`` on a real (tiny) checkpoint: exit 1, one strict JSON line
    per corpus line with the right outcome, no traceback."""
    manifest, cases = corpus
    root = Path(__file__).resolve().parents[1]
    fit = [
        sys.executable, "-m", "mmctx.cli", "fit", "--config", str(root / "configs/demo_video.yaml"),
        "--data.num_samples", "32", "--data.batch_size", "16", "--trainer.max_epochs", "1",
        "--data.cache_dir", str(tmp_path / "data"), "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    run = subprocess.run(fit, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    ckpt = next(tmp_path.rglob("last.ckpt"))
    cmd = [sys.executable, "-m", "mmctx.cli", "infer", "--ckpt", str(ckpt),
           "--manifest", str(manifest), "--no-progress"]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, timeout=600)
    stderr = run.stderr.decode("utf-8", "replace")
    assert run.returncode == 1, stderr[-3000:]
    assert "Traceback" not in stderr

    def no_constants(name):
        raise ValueError(f"{name} in a record")

    outcomes = {}
    for line in run.stdout.decode("utf-8").splitlines():
        record = json.loads(line, parse_constant=no_constants)
        outcomes[record["line"]] = (record["status"], record["error"] or "")
    _check(outcomes, cases, "infer")


def _traced_peak(func) -> int:
    """Peak bytes numpy allocated while ``func`` ran (numpy reports to tracemalloc)."""
    import tracemalloc

    tracemalloc.start()
    try:
        func()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_16_bit_images_convert_without_wide_temporaries(tmp_path):
    """A 16-bit RGBA image went through uint32 copies: a 380 KB PNG of 7000x7000 peaked at
    2.6 GB. Now the conversion writes uint8 directly."""
    import cv2

    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), np.full((1000, 1000, 4), 40_000, np.uint16))  # 8 MB decoded
    img = mmctx.io.read_image(path)
    assert img.shape == (1000, 1000, 3) and int(img[0, 0, 0]) == round(40_000 / 257)
    assert _traced_peak(lambda: mmctx.io.read_image(path)) < 20_000_000  # was 44 MB


def test_many_channel_audio_is_mixed_down_block_by_block(tmp_path):
    """Every channel was decoded at once before mixing: a 470 KB FLAC of 8-channel
    silence decoded to gigabytes. Now memory holds about the mono signal."""
    import soundfile as sf

    path = tmp_path / "silence.flac"
    sf.write(path, np.zeros((20 * 48_000, 8), np.int16), 48_000, format="FLAC")  # 31 MB as float
    assert len(read_audio(path)) == 20 * 48_000
    assert _traced_peak(lambda: read_audio(path)) < 20_000_000  # was 45 MB


def test_skipped_rows_are_logged_on_one_line(tmp_path, caplog):
    from mmctx.data.manifest import read_manifest

    caplog.set_level("WARNING", logger="mmctx.data")  # `mmctx infer` tests raise its level
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "n", "image": "ok\\n.png"}\n', encoding="utf-8")
    read_manifest(manifest)
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped")]
    assert skipped and all("\n" not in m and "ok\\n.png" in m for m in skipped)
