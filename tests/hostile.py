"""Hostile manifests for the row-robustness tests (a helper module, not a test file).

:func:`write_hostile` lays out ``<folder>/data`` (the data root, holding the manifest and a
good image) and ``<folder>/outside`` (a FIFO that blocks whoever opens it), and writes one
manifest line per :class:`Case`. Each case says what every consumer must make of its line:
``("ok", "")`` or ``("error", <substring of the message>)``; ``None`` where the outcome
belongs to another layer (e.g. text decoding).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

OUTSIDE = "leaves the data root"
HUGE_LINE_BYTES = 17 * 2**20  # over mmctx.data.manifest.MAX_LINE_BYTES
Outcome = tuple[str, str] | None


SAME = ("same", "")  # as ``read``


@dataclass
class Case:
    """One manifest line and what each consumer must make of it.

    ``read`` is :func:`~mmctx.data.manifest.read_manifest` (labels checked one by one),
    ``validate`` is ``validate-data`` (labels also checked against the label space) and
    ``infer`` is inference (labels ignored); :data:`SAME` means as ``read``, None any.
    """

    name: str
    line: bytes
    read: Outcome
    validate: Outcome = SAME
    infer: Outcome = SAME

    def expected(self, consumer: str) -> Outcome:
        outcome = getattr(self, consumer)
        return self.read if outcome == SAME else outcome


def _row(**row: object) -> bytes:
    return json.dumps(row).encode()


OK = ("ok", "")
ANY: Outcome = None
_case = Case


def hostile_cases(huge: bool = True) -> list[Case]:
    """Every hostile line, in manifest order (the first carries a UTF-8 BOM)."""
    label_error = ("error", "'label'")
    bad_labels = {
        "label-bool": b"true",
        "label-negative": b"-1",
        "label-fraction": b"1.5",
        "label-huge-int": b"1" + b"0" * 40,
        "label-object": b'{"a": 1}',
        "label-nan": b"NaN",
        "label-infinity": b"Infinity",
        "label-nested-list": b"[[0]]",
        "label-null-in-list": b'["a", null]',
        "label-empty-name": b'""',
    }
    cases = [
        _case("bom-first-line", b"\xef\xbb\xbf" + _row(id="bom", text="seven", label="a"), OK),
        _case("good", _row(id="good", text="seven", image="ok.png", label="b"), OK),
        _case("deep-nesting", b"[" * 100_000 + b"]" * 100_000, ("error", "nested too deeply")),
        _case("deep-object", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, ("error", "too deeply")),
        _case(
            "duplicate-key",
            b'{"id": "dup", "text": "a", "text": "b", "label": "a"}',
            ("error", "duplicate key 'text'"),
        ),
        _case("object-id", _row(id={"a": 1}, text="x"), ("error", "'id' must be a string")),
        _case("list-id", _row(id=[1], text="x"), ("error", "'id' must be a string")),
        _case("bool-id", _row(id=True, text="x"), ("error", "'id' must be a string")),
        _case("huge-int-id", b'{"id": ' + b"9" * 5000 + b', "text": "x"}', ("error", "JSON")),
        # the row parses; rejecting the text itself is the text decoder's job
        _case("lone-surrogate", b'{"id": "sur", "text": "\\ud800"}', OK, infer=ANY, validate=ANY),
        _case("dotdot", _row(id="dotdot", image="../../etc/passwd"), ("error", OUTSIDE)),
        _case("absolute", _row(id="abs", image="/etc/passwd"), ("error", OUTSIDE)),
        _case("dotdot-fifo", _row(id="fifo", image="../outside/trap.png"), ("error", OUTSIDE)),
        _case("symlink-out", _row(id="link", image="link.png"), ("error", OUTSIDE)),
        _case("symlink-dir-out", _row(id="dlink", audio="outdir/trap.png"), ("error", OUTSIDE)),
        _case("text-path-out", _row(id="tp", text_path="/etc/hostname"), ("error", OUTSIDE)),
        _case("symlink-loop", _row(id="loop", image="loop1"), ("error", "cannot be resolved")),
        _case("long-component", _row(id="long", image="a" * 300 + ".png"), ("error", "255")),
        _case("nul-byte", _row(id="nul", image="ok\x00.png"), ("error", "NUL")),
        _case("surrogate-path", b'{"id": "sp", "image": "\\ud800.png"}', ("error", "encoded")),
        _case("int-path", _row(id="ip", image=5), ("error", "must be a path")),
        _case("object-path", _row(id="op", video={"a": 1}), ("error", "must be a path")),
        _case("null-in-paths", _row(id="np", image=["ok.png", None]), ("error", "must be a path")),
        _case("empty-path", _row(id="ep", image=""), ("error", "must be a path")),
        _case("empty-list", _row(id="el", image=[]), ("error", "non-empty list")),
        _case("list-text-path", _row(id="lt", text_path=["a.txt"]), ("error", "one path")),
        _case("missing-file", _row(id="mf", image="nope.png"), ("error", "file not found")),
        _case("not-object", b"[1, 2]", ("error", "JSON object")),
        _case("string-row", b'"just a string"', ("error", "JSON object")),
        _case("not-json", b"{oops", ("error", "not valid JSON")),
        _case("invalid-utf8", b'{"id": "bad\xff", "text": "x"}', ("error", "invalid UTF-8")),
        _case("no-modality", _row(id="nm", label="a"), ("error", "no modality")),
        # structurally fine labels that do not fit the one label space (names a, b)
        _case(
            "stray-list-label",
            _row(id="sl", text="x", label=["a", "b"]),
            OK,
            validate=("error", "multi-label"),
            infer=OK,
        ),  # fmt: skip
        _case(
            "stray-index-label",
            _row(id="si", text="x", label=1),
            OK,
            validate=("error", "mix class names and indices"),
            infer=OK,
        ),  # fmt: skip
    ]
    for name, value in bad_labels.items():
        line = b'{"id": "' + name.encode() + b'", "text": "x", "label": ' + value + b"}"
        cases.append(_case(name, line, label_error, infer=OK))
    cases.append(_case("good-last", _row(id="last", text="eight", label="a"), OK))
    if huge:
        big = b'{"id": "huge", "text": "' + b"x" * HUGE_LINE_BYTES + b'"}'
        cases.append(_case("huge-line", big, ("error", "longer than")))
    return cases


def write_hostile(folder: Path, *, huge: bool = True) -> tuple[Path, list[Case]]:
    """Write the data root, the outside traps and ``data/hostile.jsonl`` under ``folder``.

    Returns:
        The manifest and its cases; case ``i`` is on line ``2 * i + 1`` (a blank line
        separates the rows, so line numbers are checked too).
    """
    data, outside = folder / "data", folder / "outside"
    data.mkdir(parents=True)
    outside.mkdir()
    img = np.zeros((32, 32), np.uint8)
    cv2.putText(img, "7", (8, 26), cv2.FONT_HERSHEY_SIMPLEX, 0.9, 255, 2)
    cv2.imwrite(str(data / "ok.png"), img)
    os.mkfifo(outside / "trap.png")  # opening it blocks: the check must come first
    (data / "link.png").symlink_to(outside / "trap.png")
    (data / "outdir").symlink_to(outside, target_is_directory=True)
    (data / "loop1").symlink_to(data / "loop2")
    (data / "loop2").symlink_to(data / "loop1")
    cases = hostile_cases(huge)
    manifest = data / "hostile.jsonl"
    manifest.write_bytes(b"\n\n".join(c.line for c in cases) + b"\n")
    return manifest, cases


def write_array_manifest(folder: Path) -> tuple[Path, int]:
    """A pretty-printed JSON array given as a manifest; returns it and its non-blank lines.

    Every line must be an error saying the file is a JSON array (nothing half-parsed).
    """
    rows = [{"id": "a", "text": "x", "label": "a"}, {"id": "b", "text": "y", "label": "b"}]
    path = folder / "array.jsonl"
    text = json.dumps(rows, indent=2)
    path.write_text(text + "\n", encoding="utf-8")
    return path, sum(1 for line in text.splitlines() if line.strip())
