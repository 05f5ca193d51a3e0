"""One manifest row never ends a run: hostile lines and fuzzed rows through every reader."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmctx.cli import main
from mmctx.data.manifest import LabelSpace, count_rows, read_manifest
from mmctx.data.validate import validate_manifest
from mmctx.pipelines.inference import Predictor, rows_from_manifest
from tests.hostile import OUTSIDE, write_array_manifest, write_hostile

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class TinyClassifier(torch.nn.Module):
    """Reads text and images, predicts one of two classes (no training needed)."""

    class_names = ["a", "b"]

    def __init__(self) -> None:
        super().__init__()
        self.encoders = torch.nn.ModuleDict(
            {"text": torch.nn.Identity(), "image": torch.nn.Identity()}
        )
        self.register_buffer("bias", torch.tensor([0.2, 0.1]))

    def forward(self, inputs: dict) -> torch.Tensor:
        n = len(inputs["text"]["text"]) if "text" in inputs else len(inputs["image"]["pixels"])
        return self.bias.expand(n, 2)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(TinyClassifier(), {"modalities": ["text", "image"]}, device="cpu")


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    """The hostile manifest; a read that blocks (opening the FIFO outside) fails the test."""

    def on_alarm(signum, frame):
        raise TimeoutError("a read blocked: something outside the data root was opened")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(120)
    yield write_hostile(tmp_path)
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _line_of(message: str) -> int:
    found = re.search(r"(?::(\d+):|line (\d+))", message)
    assert found, message
    return int(found.group(1) or found.group(2))


def _check(outcomes: dict[int, tuple[str, str]], cases, consumer: str) -> None:
    assert sorted(outcomes) == [2 * i + 1 for i in range(len(cases))], consumer
    for i, case in enumerate(cases):
        expected = case.expected(consumer)
        status, message = outcomes[2 * i + 1]
        if expected is None:
            continue
        assert status == expected[0], (consumer, case.name, message)
        assert expected[1] in message, (consumer, case.name, message)
        if expected[1] == OUTSIDE:
            assert "leaves the data root" in message


def test_read_manifest_gives_every_line_its_outcome(hostile):
    manifest, cases = hostile
    samples, problems = read_manifest(manifest)
    outcomes = {s.line: ("ok", "") for s in samples}
    for p in problems:
        assert p.startswith(f"{manifest}:"), p  # names the file and the line
        assert _line_of(p) not in outcomes
        outcomes[_line_of(p)] = ("error", p)
    _check(outcomes, cases, "read")
    assert count_rows(manifest) == len(cases)
    assert {s.id for s in samples} >= {"bom", "good", "last"}


def test_validate_reports_every_problem_in_one_pass(hostile):
    manifest, cases = hostile
    report = validate_manifest(manifest)
    assert report.rows == len(cases) and not report.ok
    outcomes = {2 * i + 1: ("ok", "") for i in range(len(cases))}
    for p in report.problems:
        assert p.startswith(f"{manifest}: line "), p
        assert outcomes[_line_of(p)] == ("ok", ""), f"two problems for one line: {p}"
        outcomes[_line_of(p)] = ("error", p)
    _check(outcomes, cases, "validate")
    # bad labels are reported, never counted as classes
    assert set(report.summary()["labels"]) <= {"a", "b"}


def test_predict_rows_gives_one_record_per_line(hostile, predictor):
    manifest, cases = hostile
    records = list(predictor.predict_rows(rows_from_manifest(manifest), batch_size=4, workers=1))
    outcomes = {r["line"]: (r["status"], r["error"] or "") for r in records}
    assert len(records) == len(cases)
    _check(outcomes, cases, "infer")


def test_a_named_root_widens_what_is_allowed(hostile, predictor):
    manifest, _ = hostile
    folder = manifest.parent.parent
    (folder / "outside" / "real.png").write_bytes((manifest.parent / "ok.png").read_bytes())
    (manifest.parent / "wide.jsonl").write_text(
        json.dumps({"id": "w", "image": "../outside/real.png", "label": "a"}) + "\n"
    )
    narrow = list(predictor.predict_rows(rows_from_manifest(manifest.parent / "wide.jsonl")))
    assert narrow[0]["status"] == "error" and OUTSIDE in narrow[0]["error"]
    wide = list(
        predictor.predict_rows(rows_from_manifest(manifest.parent / "wide.jsonl"), root=folder)
    )
    assert wide[0]["status"] == "ok", wide
    samples, problems = read_manifest(manifest.parent / "wide.jsonl", root=folder)
    assert len(samples) == 1 and problems == []
    assert validate_manifest(manifest.parent / "wide.jsonl", root=folder).ok


def test_validate_data_command_completes_with_root(hostile, capsys):
    manifest, cases = hostile
    code = main(["validate-data", str(manifest), "--no-progress", "--root", str(manifest.parent)])
    out = capsys.readouterr().out
    assert code == 1 and "NOT OK" in out and OUTSIDE in out
    assert f"{len(cases)} rows" in out


def test_array_manifest_is_an_error_on_every_line(tmp_path):
    path, n_lines = write_array_manifest(tmp_path)
    samples, problems = read_manifest(path)
    assert samples == [] and len(problems) == n_lines
    assert all("JSON array, not JSON Lines" in p for p in problems)


def test_one_stray_list_label_does_not_flip_the_label_space():
    errors: dict[int, str] = {}
    space = LabelSpace.infer(["a", "b", ["a", "b"], True, 7, "c"], on_error=errors.setdefault)
    assert not space.multilabel and space.classes == ["a", "b", "c"]
    assert sorted(errors) == [2, 3, 4]
    assert "multi-label" in errors[2] and "boolean" in errors[3] and "mix" in errors[4]
    multi = LabelSpace.infer([["a"], ["b", "a"], []])
    assert multi.multilabel and multi.classes == ["a", "b"]
    forced = LabelSpace.infer(["a", ["b"]], multilabel=True)
    assert forced.multilabel and forced.encode("a") == [0]


def test_data_module_skips_rows_whose_label_does_not_fit(tmp_path):
    from mmctx.data.datamodule import MultimodalDataModule

    rows = [{"id": str(i), "text": "x", "label": lab} for i, lab in
            enumerate(["a", "b", "a", ["a", "b"], -1, 1.5, 99, "b"])]  # fmt: skip
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dm = MultimodalDataModule(train_manifest=str(tmp_path / "train.jsonl"), val_fraction=0.0)
    assert dm.class_names == ["a", "b"] and dm.multilabel is False
    assert sorted(s.id for s in dm.dataset("train").samples) == ["0", "1", "2", "7"]
    assert len(dm.skipped) == 4 and all("train.jsonl:" in p for p in dm.skipped)
    forced = MultimodalDataModule(
        train_manifest=str(tmp_path / "train.jsonl"), val_fraction=0.0, multilabel=True
    )
    assert forced.multilabel and len(forced.dataset("train").samples) == 5


# ------------------------------------------------------------------------------ fuzzing
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
ROWS = JSON | st.fixed_dictionaries(
    {}, optional={k: JSON for k in ("id", "text", "text_path", "image", "audio", "video", "label")}
)


def _one_outcome(path: Path, predictor: Predictor) -> None:
    n = count_rows(path)
    samples, problems = read_manifest(path)
    assert len(samples) + len(problems) == n
    report = validate_manifest(path)
    assert report.rows == n and len(report.problems) <= n
    records = list(predictor.predict_rows(rows_from_manifest(path), workers=0))
    assert len(records) == n and all(r["status"] in ("ok", "error") for r in records)


@FUZZ
@given(line=st.binary(max_size=200))
def test_fuzz_bytes_as_a_line(tmp_path, predictor, line):
    path = tmp_path / "m.jsonl"
    path.write_bytes(line + b"\n")
    _one_outcome(path, predictor)


@FUZZ
@given(row=ROWS)
def test_fuzz_json_values_as_rows(tmp_path, predictor, row):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8", errors="surrogatepass")
    _one_outcome(path, predictor)


@FUZZ
@given(value=st.text(max_size=300) | st.lists(st.text(max_size=40), max_size=3))
def test_fuzz_strings_as_paths(tmp_path, predictor, value):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    path = data / "m.jsonl"
    path.write_text(
        json.dumps({"image": value, "text_path": value if isinstance(value, str) else "x"}) + "\n"
    )
    _one_outcome(path, predictor)
    for sample in read_manifest(path)[0]:
        for p in sample.media.get("image", []):
            assert p.resolve().is_relative_to(data.resolve())


@FUZZ
@given(labels=st.lists(JSON, max_size=6))
def test_fuzz_json_values_as_labels(tmp_path, labels):
    rows = [{"text": "x", "label": lab} for lab in ["a", *labels]]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    samples, problems = read_manifest(path)
    assert len(samples) + len(problems) == len(rows)
    errors: dict[int, str] = {}
    space = LabelSpace.infer([s.label for s in samples], on_error=errors.setdefault)
    for i, sample in enumerate(samples):
        if i not in errors and sample.label is not None:
            space.encode(sample.label)  # every label not reported fits the space
    report = validate_manifest(path)
    assert report.rows == len(rows) and len(report.problems) <= len(rows)
