import json

import pytest

from mmctx.data.manifest import LabelSpace, ManifestError, read_manifest
from tests.helpers import write_manifest


def test_rows_resolve_paths_and_keep_absent_modalities(media_dir):
    path = write_manifest(
        media_dir / "m.jsonl",
        [
            {
                "id": "a",
                "text": "hi",
                "image": "img0.png",
                "audio": ["a0.wav", "a1.wav"],
                "label": "x",
            },
            {"id": "b", "text_path": "doc.txt", "label": "y"},
            "",
            {"image": ["img0.png", "img1.png"], "label": "x"},
        ],
    )
    samples, problems = read_manifest(path)
    assert problems == []
    assert [s.id for s in samples] == ["a", "b", "line-4"]
    assert samples[0].media["audio"] == [media_dir / "a0.wav", media_dir / "a1.wav"]
    assert samples[0].modalities == ["audio", "image", "text"]
    assert samples[1].text_path == media_dir / "doc.txt" and samples[1].modalities == ["text"]
    assert samples[2].modalities == ["image"] and samples[2].line == 4


def test_bad_rows_are_reported_with_line_and_cause(media_dir):
    path = media_dir / "m.jsonl"
    good = json.dumps({"id": "ok", "text": "fine", "label": 1})
    path.write_bytes(
        b"\n".join(
            [
                good.encode(),
                b"{not json",
                json.dumps({"id": "nofile", "image": "missing.png"}).encode(),
                json.dumps({"id": "empty", "label": 0}).encode(),
                b'{"id": "bad\xff"}',
                json.dumps([1, 2]).encode(),
                json.dumps({"id": "both", "text": "a", "text_path": "doc.txt"}).encode(),
            ]
        )
        + b"\n"
    )
    samples, problems = read_manifest(path)
    assert [s.id for s in samples] == ["ok"]
    assert len(problems) == 6
    assert "m.jsonl:2: not valid JSON" in problems[0]
    assert "m.jsonl:3:" in problems[1] and "missing.png" in problems[1]
    assert "no modality" in problems[2]
    assert "invalid UTF-8 at byte" in problems[3]
    assert "JSON object" in problems[4]
    assert "not both" in problems[5]


def test_strict_stops_at_first_bad_row(media_dir):
    path = write_manifest(media_dir / "m.jsonl", [{"id": "a", "text": "x"}, "{oops"])
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: not valid JSON"):
        read_manifest(path, strict=True)


def test_line_separator_inside_a_json_string_is_not_a_line_break(media_dir):
    path = write_manifest(
        media_dir / "m.jsonl",
        [json.dumps({"id": "a", "text": "one\u2028two\x85three"}, ensure_ascii=False)],
    )
    samples, problems = read_manifest(path)
    assert problems == [] and samples[0].text == "one\u2028two\x85three"


def test_missing_manifest_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_manifest(tmp_path / "nope.jsonl")


def test_label_space_inference():
    assert LabelSpace.infer([2, 0, None]).classes == ["0", "1", "2"]
    names = LabelSpace.infer(["dog", "cat", "dog"])
    assert names.classes == ["cat", "dog"] and names.encode("dog") == 1
    multi = LabelSpace.infer([["cat", "dog"], ["cat"], []])
    assert multi.multilabel and multi.encode(["dog", "cat", "dog"]) == [0, 1]
    assert LabelSpace.infer([2.0, 1]).classes == ["0", "1", "2"]  # a whole float is an index
    given = LabelSpace.infer(["b"], classes=["b", "a"])
    assert given.encode("a") == 1 and given.encode(0) == 0


def test_label_space_errors_name_the_value():
    space = LabelSpace(["a", "b"])
    with pytest.raises(ValueError, match="unknown label 'c'"):
        space.encode("c")
    with pytest.raises(ValueError, match="label index 5 is outside 0..1"):
        space.encode(5)
    with pytest.raises(ValueError, match="needs a multi-label"):
        space.encode(["a"])
    with pytest.raises(ValueError, match="mix class names and indices"):
        LabelSpace.infer(["a", 1])
    with pytest.raises(ValueError, match="no labels"):
        LabelSpace.infer([None])
