"""A hostile media corpus: broken, odd and valid FILE CONTENT, odd paths and odd rows
(a helper module, not a test file).

:func:`write_media_corpus` lays out ``<folder>/data`` (the data root: the manifest and
every file it names) and ``<folder>/outside`` (files and a FIFO that must never be
opened), written with real encoders (OpenCV, soundfile, Pillow), and one manifest line
per :class:`MediaCase`. Each case says what every consumer must make of its line:
``("ok", "")`` or ``("error", <substring of the message>)``; None for "either, but cleanly".
``infer`` is ``mmctx infer`` / :meth:`Predictor.predict_rows` (labels ignored),
``validate`` is ``mmctx validate-data`` (labels checked against the label space) and
``fit`` is the training data module (a bad sample is a counted skip).

With ``heavy=True`` some cases write files that decode to hundreds of megabytes (memory
checks of the CLI runs); the fast tests leave them out.
"""

from __future__ import annotations

import io
import json
import os
import struct
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf
from PIL import Image

Outcome = tuple[str, str] | None
OK: Outcome = ("ok", "")
ANY: Outcome = None
OUTSIDE = "leaves the data root"
SAME = ("same", "")


def err(text: str) -> Outcome:
    return ("error", text)


@dataclass
class MediaCase:
    """One manifest line, the files it needs, and the outcome per consumer."""

    name: str
    line: bytes
    infer: Outcome
    validate: Outcome = SAME
    fit: Outcome = SAME

    def expected(self, consumer: str) -> Outcome:
        outcome = getattr(self, consumer)
        return self.infer if outcome == SAME else outcome


# ----------------------------------------------------------------------------- writers
def _digit(size: int = 32, dtype=np.uint8) -> np.ndarray:
    img = np.zeros((size, size), np.uint8)
    cv2.putText(img, "7", (size // 4, size * 13 // 16), cv2.FONT_HERSHEY_SIMPLEX, size / 36, 255, 2)
    return img.astype(dtype) * (257 if dtype == np.uint16 else 1)


def _png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", img)[1].tobytes()


def _pil(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _wav(samples: np.ndarray, rate: int, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, subtype=subtype, format=fmt)
    return buf.getvalue()


def _tone(seconds: float = 0.5, rate: int = 8000, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave_ = 0.3 * np.sin(2 * np.pi * 440 * t)
    return np.repeat(wave_[:, None], channels, axis=1) if channels > 1 else wave_


def _png_header(width: int, height: int, depth: int = 8, color: int = 0) -> bytes:
    """A PNG with a valid IHDR declaring ``width`` x ``height``, one empty IDAT and IEND."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def _big_png(size: int, depth16: bool = True) -> bytes:
    """A ``size`` x ``size`` RGBA PNG of zeros (tiny on disk, big decoded)."""
    img = np.zeros((size, size, 4), np.uint16 if depth16 else np.uint8)
    return cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes()


def _video(path: Path, fourcc: str, frames: int, size: int = 32) -> bytes:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 4.0, (size, size))
    assert writer.isOpened(), fourcc
    for i in range(frames):
        frame = np.full((size, size, 3), (i * 30) % 255, np.uint8)
        writer.write(frame)
    writer.release()
    return path.read_bytes()


def _wav_header_only(declared: int, body: bytes = b"\x00" * 64) -> bytes:
    fmt = struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", min(36 + declared, 0xFFFFFFFF))
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", declared)
        + body
    )


def _wav_rate(rate: int, frames: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.zeros(frames, np.int16).tobytes())
    return buf.getvalue()


# ----------------------------------------------------------------------------- the corpus
def _files(data: Path, outside: Path, heavy: bool) -> dict[str, bytes | Callable[[Path], None]]:
    """Every file of the corpus by name (bytes, or a function that makes it)."""
    digit = _digit()
    rgb = cv2.cvtColor(digit, cv2.COLOR_GRAY2BGR)
    good_png = _png(digit)
    good_wav = _wav(_tone(), 8000)
    jpg = cv2.imencode(".jpg", rgb)[1].tobytes()
    ogg = _wav(_tone(1.0), 8000, "VORBIS", "OGG")
    flac = _wav(_tone(1.0), 8000, "PCM_16", "FLAC")
    files: dict[str, bytes | Callable[[Path], None]] = {
        # images
        "ok.png": good_png,
        "ok.jpg": jpg,
        "one.png": _png(np.full((1, 1), 200, np.uint8)),
        "deep16.png": _png(_digit(dtype=np.uint16)),
        "rgba.png": _png(cv2.cvtColor(rgb, cv2.COLOR_BGR2BGRA)),
        "palette.png": _pil(Image.fromarray(digit).convert("P"), "PNG"),
        "gray-alpha.png": _pil(Image.fromarray(digit).convert("LA"), "PNG"),
        "cmyk.jpg": _pil(Image.fromarray(rgb).convert("CMYK"), "JPEG"),
        "anim.gif": _pil(
            Image.fromarray(digit).convert("P"),
            "GIF",
            save_all=True,
            append_images=[Image.fromarray(255 - digit).convert("P")],
        ),
        "ok.bmp": cv2.imencode(".bmp", rgb)[1].tobytes(),
        "ok.webp": cv2.imencode(".webp", rgb)[1].tobytes(),
        "bogus.bmp": b"BM"
        + struct.pack("<I", 10**9)
        + b"\x00" * 4
        + struct.pack("<I", 54)
        + struct.pack("<IiiHH", 40, 2**30, 2**30, 1, 24)
        + b"\x00" * 40,
        "nan.tif": cv2.imencode(".tiff", np.full((8, 8), np.nan, np.float32))[1].tobytes(),
        "float.tif": cv2.imencode(".tiff", np.full((8, 8), 0.5, np.float32))[1].tobytes(),
        "trunc.png": good_png[: len(good_png) // 2],
        "trunc.jpg": jpg[: len(jpg) // 2],
        "empty.png": b"",
        "huge-dims.png": _png_header(30000, 30000),
        "huge-dims2.png": _png_header(2**31 - 1, 2**31 - 1),
        "wav-as.png": good_wav,
        "svg.png": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        "text.png": b"hello, I am not an image\n",
        "corrupt-idat.png": good_png[:60] + bytes(64) + good_png[124:],
        # audio
        "ok.wav": good_wav,
        "zero-frames.wav": _wav(np.zeros((0,)), 8000),
        "one-frame.wav": _wav(np.array([0.1]), 8000),
        "eight-ch.wav": _wav(_tone(channels=8), 8000),
        "pcm24.wav": _wav(_tone(), 8000, "PCM_24"),
        "f64-nan.wav": _wav(np.array([0.0, np.nan, 0.1]), 8000, "DOUBLE"),
        "f64-inf.wav": _wav(np.array([0.0, np.inf, 0.1]), 8000, "DOUBLE"),
        "alaw.wav": _wav(_tone(), 8000, "ALAW"),
        "ulaw.wav": _wav(_tone(), 8000, "ULAW"),
        "claims-4gb.wav": _wav_header_only(0xFFFFFFF0),
        "rate-1hz.wav": _wav_rate(1, 4),
        "rate-1mhz.wav": _wav_rate(1_000_000, 2000),
        "rate-odd.wav": _wav_rate(44101, 4410),
        "rate-prime.wav": _wav_rate(999_983, 2000),
        "ok.ogg": ogg,
        "trunc.ogg": ogg[: len(ogg) // 2],
        "ok.flac": flac,
        "trunc.flac": flac[: len(flac) // 2],
        "png-as.wav": good_png,
        "text.wav": b"RIFF but not really\n",
        # video
        "empty.mp4": b"",
        "text.mp4": b"not a video at all\n" * 10,
        "png-as.avi": good_png,
        # text
        "empty.txt": b"",
        "bom-only.txt": b"\xef\xbb\xbf",
        "utf16.txt": "seven".encode("utf-16"),
        "bad-utf8.txt": b"seven \xff\xfe eight",
        "huge-line.txt": b"x" * (10 * 2**20),
        "nul.txt": b"seven\x00eight",
        "rtl.txt": "\u202eseven\u200b\u200dreversed \u05e9\u05dc\u05d5\u05dd".encode(),
        "surrogate-escape.txt": b"seven \xed\xa0\x80",  # CESU/WTF-8 lone surrogate
    }

    def mp3(path: Path) -> None:
        try:
            sf.write(path, _tone(1.0, 8000), 8000, format="MP3", subtype="MPEG_LAYER_III")
        except Exception:  # noqa: BLE001 - no MP3 encoder: write something MP3-ish
            path.write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x00" * 100)

    files["ok.mp3"] = mp3
    files["ok.avi"] = lambda p: _video(p, "MJPG", 8) and None
    files["ok.mp4"] = lambda p: _video(p, "mp4v", 8) and None

    def trunc(src: str) -> Callable[[Path], None]:
        def make(path: Path) -> None:
            body = (data / src).read_bytes()
            path.write_bytes(body[: len(body) * 2 // 3])

        return make

    files["trunc.avi"] = trunc("ok.avi")
    files["trunc.mp4"] = trunc("ok.mp4")

    def no_frames(path: Path) -> None:
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 4.0, (32, 32))
        writer.release()
        if not path.exists():
            path.write_bytes(b"")

    files["zero-frames.avi"] = no_frames
    if heavy:
        files["big16-rgba.png"] = _big_png(7000)
        files["flac-bomb.flac"] = lambda p: sf.write(
            p, np.zeros((600 * 96000, 8), np.int16), 96000, format="FLAC", subtype="PCM_16"
        )
    return files


def _paths(data: Path, outside: Path) -> None:
    """Links, FIFOs and folders (the files they point at are written already)."""
    (outside / "secret.png").write_bytes((data / "ok.png").read_bytes())
    os.mkfifo(outside / "trap.png")
    os.mkfifo(data / "fifo.png")
    (data / "folder.png").mkdir()
    (data / "sub").mkdir()
    (data / "sub" / "ok.png").write_bytes((data / "ok.png").read_bytes())
    links = {
        "passwd.png": "/etc/passwd",
        "zero.png": "/dev/zero",
        "mem.png": "/proc/self/mem",
        "secret-link.png": str(outside / "secret.png"),
        "trap-link.png": str(outside / "trap.png"),
        "dangling.png": str(data / "nothing-here.png"),
        "dangling-out.png": str(outside / "nothing-there.png"),
        "loop-a.png": str(data / "loop-b.png"),
        "loop-b.png": str(data / "loop-a.png"),
        "fifo-link.png": "fifo.png",
        "good-link.png": "ok.png",
    }
    for name, target in links.items():
        (data / name).symlink_to(target)


def _line(**row: object) -> bytes:
    return json.dumps(row).encode()


def media_cases(data: Path, heavy: bool = False) -> list[MediaCase]:
    """Every case in manifest order; labels alternate ``a``/``b`` so ``fit`` has two classes."""
    n = [0]

    def case(name: str, outcome: Outcome, label: object = "auto", raw: bytes | None = None,
             **row: object) -> MediaCase:  # fmt: skip
        n[0] += 1
        if label == "auto":
            row["label"] = "ab"[n[0] % 2]
        elif label is not None:
            row["label"] = label
        line = raw if raw is not None else _line(id=name, **row)
        return MediaCase(name, line, outcome)

    undecodable = err("not a decodable")
    cases = [
        # --- images: valid ones must be ok, broken ones a clean error
        case("img-ok-png", OK, image="ok.png"),
        case("img-ok-jpg", OK, image="ok.jpg"),
        case("img-1x1", OK, image="one.png"),
        case("img-16bit", OK, image="deep16.png"),
        case("img-rgba", OK, image="rgba.png"),
        case("img-palette", OK, image="palette.png"),
        case("img-gray-alpha", OK, image="gray-alpha.png"),
        case("img-cmyk-jpeg", OK, image="cmyk.jpg"),
        case("img-animated-gif", ANY, image="anim.gif"),
        case("img-bmp", OK, image="ok.bmp"),
        case("img-webp", OK, image="ok.webp"),
        case("img-bogus-bmp", err("image"), image="bogus.bmp"),
        case("img-tiff-nan", err("non-finite"), image="nan.tif"),
        case("img-tiff-float", ANY, image="float.tif"),
        case("img-trunc-png", err("truncated PNG"), image="trunc.png"),
        case("img-trunc-jpg", err("trunc.jpg"), image="trunc.jpg"),
        case(
            "img-corrupt-idat",
            err("ok.png") if False else err("corrupt-idat.png"),
            image="corrupt-idat.png",
        ),  # fmt: skip
        case("img-empty", err("empty file"), image="empty.png"),
        case("img-huge-dims", err("max_image_pixels"), image="huge-dims.png"),
        case("img-huge-dims-2g", err("pixels"), image="huge-dims2.png"),
        case("img-wav-as-png", undecodable, image="wav-as.png"),
        case("img-svg", undecodable, image="svg.png"),
        case("img-text", undecodable, image="text.png"),
        case("img-several-one-bad", err("trunc.png"), image=["ok.png", "trunc.png"]),
        # --- audio
        case("aud-ok", OK, audio="ok.wav"),
        case("aud-zero-frames", err("no audio frames"), audio="zero-frames.wav"),
        case("aud-one-frame", OK, audio="one-frame.wav"),
        case("aud-8ch", OK, audio="eight-ch.wav"),
        case("aud-24bit", OK, audio="pcm24.wav"),
        case("aud-f64-nan", err("non-finite"), audio="f64-nan.wav"),
        case("aud-f64-inf", err("non-finite"), audio="f64-inf.wav"),
        case("aud-alaw", OK, audio="alaw.wav"),
        case("aud-ulaw", OK, audio="ulaw.wav"),
        case("aud-claims-4gb", err("truncated WAV"), audio="claims-4gb.wav"),
        case("aud-rate-1hz", OK, audio="rate-1hz.wav"),
        case("aud-rate-1mhz", OK, audio="rate-1mhz.wav"),
        case("aud-rate-odd", OK, audio="rate-odd.wav"),
        case("aud-rate-prime", OK, audio="rate-prime.wav"),
        case("aud-ogg", OK, audio="ok.ogg"),
        case("aud-trunc-ogg", ANY, audio="trunc.ogg"),
        case("aud-flac", OK, audio="ok.flac"),
        case("aud-trunc-flac", ANY, audio="trunc.flac"),
        case("aud-mp3", ANY, audio="ok.mp3"),
        case("aud-png-as-wav", undecodable, audio="png-as.wav"),
        case("aud-text-as-wav", undecodable, audio="text.wav"),
        # --- video
        case("vid-ok-avi", OK, video="ok.avi"),
        case("vid-ok-mp4", OK, video="ok.mp4"),
        case("vid-empty", err("empty file"), video="empty.mp4"),
        case("vid-trunc-avi", err("truncated AVI"), video="trunc.avi"),
        case("vid-trunc-mp4", err("trunc.mp4"), video="trunc.mp4"),
        case("vid-zero-frames", err("zero-frames.avi"), video="zero-frames.avi"),
        case("vid-text-as-mp4", err("not a decodable video"), video="text.mp4"),
        case("vid-png-as-avi", OK, video="png-as.avi"),
        # --- text files and inline text
        case("txt-empty", err("empty file"), text_path="empty.txt"),
        case("txt-bom-only", OK, text_path="bom-only.txt"),
        case("txt-utf16", err("invalid UTF-8"), text_path="utf16.txt"),
        case("txt-bad-utf8", err("invalid UTF-8 at byte 6"), text_path="bad-utf8.txt"),
        case("txt-10mb-line", err("max_text_chars"), text_path="huge-line.txt"),
        case("txt-nul", OK, text_path="nul.txt"),
        case("txt-rtl-zero-width", OK, text_path="rtl.txt"),
        case("txt-surrogate-bytes", err("invalid UTF-8"), text_path="surrogate-escape.txt"),
        case(
            "txt-inline-surrogate",
            err("not valid Unicode"),
            raw=b'{"id": "txt-inline-surrogate", "text": "a\\udc80b", "label": "a"}',
        ),
        case("txt-inline-rtl", OK, text="\u202e\u200b\u2067abc\u2069 \u2028 next"),
        case("txt-inline-empty", OK, text=""),
        case("txt-inline-nul", OK, text="a\x00b"),
        # --- paths
        case("path-symlink-passwd", err(OUTSIDE), image="passwd.png"),
        case("path-dev-zero", err(OUTSIDE), image="zero.png"),
        case("path-proc-mem", err(OUTSIDE), image="mem.png"),
        case("path-abs-dev-zero", err(OUTSIDE), image="/dev/zero"),
        case("path-abs-proc-mem", err(OUTSIDE), audio="/proc/self/mem"),
        case("path-symlink-secret", err(OUTSIDE), image="secret-link.png"),
        case("path-symlink-trap", err(OUTSIDE), image="trap-link.png"),
        case("path-symlink-loop", err("cannot be resolved"), image="loop-a.png"),
        case("path-dangling", err("file not found"), image="dangling.png"),
        case("path-dangling-out", err(OUTSIDE), image="dangling-out.png"),
        case("path-directory", err("not a regular file"), image="folder.png"),
        case("path-fifo", err("not a regular file"), image="fifo.png"),
        case("path-fifo-link", err("not a regular file"), image="fifo-link.png"),
        case("path-good-link", OK, image="good-link.png"),
        case("path-dotdot-chain", err(OUTSIDE), image="../../../../../../etc/passwd"),
        case("path-dotdot-back-in", OK, image="sub/../ok.png"),
        case("path-dotdot-out-and-in", OK, image="../data/ok.png"),
        case("path-subdir", OK, image="sub/ok.png"),
        case("path-abs-inside", OK, image=str(data / "ok.png")),
        case("path-abs-outside", err(OUTSIDE), image="/etc/passwd"),
        case("path-tilde", err("file not found"), image="~/ok.png"),
        case("path-tilde-user", err("file not found"), image="~root/.bashrc"),
        case("path-url", err("file not found"), image="http://x/y.png"),
        case("path-file-url", err("file not found"), image="file:///etc/passwd"),
        case("path-long-component", err("255"), image="a" * 300 + ".png"),
        case("path-long-total", err("'image'"), image="/".join(["d" * 200] * 30) + "/x.png"),
        case("path-trailing-slash", ANY, image="ok.png/"),
        case("path-dot", err("not a regular file"), image="."),
        case("path-newline-name", err("file not found"), image="ok\n.png"),
        case("path-text-outside", err(OUTSIDE), text_path="../outside/secret.png"),
        case("path-video-outside", err(OUTSIDE), video="/dev/zero"),
        # --- rows: every JSON type as each field
        *[
            case(f"row-{key}-{kind}", err(f"'{key}'"), **{key: value})
            for key in ("image", "audio", "video", "text_path")
            for kind, value in (
                ("int", 3),
                ("float", 1.5),
                ("bool", True),
                ("object", {"a": 1}),
                ("list-of-int", [1]),
                ("nested-list", [["ok.png"]]),
                ("empty-string", ""),
            )  # fmt: skip
        ],
        *[
            case(f"row-text-{kind}", err("'text'"), text=value)
            for kind, value in (("int", 3), ("list", ["a"]), ("object", {}), ("bool", False))
        ],
        case("row-text-null", err("'text'"), text=None),
        case("row-id-float", err("'id'"), raw=b'{"id": 1.5, "text": "x", "label": "a"}'),
        case("row-id-null", OK, raw=b'{"id": null, "text": "x", "label": "a"}'),
        case("row-id-int", OK, raw=b'{"id": 12345678901234567890, "text": "x", "label": "b"}'),
        case(
            "row-id-newline",
            OK,
            raw=b'{"id": "a\\nb\\r\\u2028\\u0085c", "text": "x", "label": "a"}',
        ),
        case(
            "row-id-control",
            OK,
            raw=b'{"id": "\\u0000\\u001b[31m\\u007f", "text": "x", "label": "b"}',
        ),
        case("row-id-surrogate", ANY, raw=b'{"id": "\\ud800", "text": "x", "label": "a"}'),
        case(
            "row-id-huge", OK, raw=b'{"id": "' + b"i" * 100_000 + b'", "text": "x", "label": "b"}'
        ),
        case("row-unknown-key", OK, text="x", extra={"deep": [1, 2, 3]}),
        case("row-both-texts", err("not both"), text="x", text_path="nul.txt"),
        case(
            "row-dup-key",
            err("duplicate key"),
            raw=b'{"id": "d", "image": "ok.png", "image": "passwd.png", "label": "a"}',
        ),
        *[
            case(f"row-as-{kind}", err("JSON object"), raw=value)
            for kind, value in (
                ("null", b"null"),
                ("true", b"true"),
                ("number", b"3"),
                ("string", b'"x"'),
                ("array", b'["ok.png"]'),
            )  # fmt: skip
        ],
        case("row-nan-number", err("'label'"), raw=b'{"id": "nn", "text": "x", "label": NaN}'),
        *[
            case(f"label-{kind}", err("'label'"), text="x", label=value)
            for kind, value in (
                ("bool", True),
                ("object", {"a": 1}),
                ("float", 0.5),
                ("negative", -3),
                ("nested", [["a"]]),
                ("empty", ""),
                ("huge", 10**30),
            )  # fmt: skip
        ],
        case("label-none", OK, label=None, text="x"),
    ]
    for c in cases:
        if c.name.startswith("label-") and c.name != "label-none":
            c.infer, c.validate, c.fit = OK, c.expected("infer"), c.expected("infer")
        if c.name == "label-none":  # unlabelled: fine to validate and infer, skipped by fit
            c.fit = err("label")
        if c.name == "row-nan-number":
            c.infer, c.validate, c.fit = OK, err("'label'"), err("'label'")
    if heavy:
        cases.append(case("heavy-png16-rgba-7000", OK, image="big16-rgba.png"))
        cases.append(case("heavy-flac-bomb", ANY, audio="flac-bomb.flac"))
    return cases


def write_media_corpus(folder: Path, *, heavy: bool = False) -> tuple[Path, list[MediaCase]]:
    """Write ``<folder>/data`` (files and ``corpus.jsonl``) and ``<folder>/outside``.

    Returns:
        The manifest and its cases; case ``i`` is on line ``i + 1``.
    """
    data, outside = folder / "data", folder / "outside"
    data.mkdir(parents=True)
    outside.mkdir()
    for name, content in _files(data, outside, heavy).items():
        path = data / name
        if callable(content):
            content(path)
        else:
            path.write_bytes(content)
    _paths(data, outside)
    cases = media_cases(data, heavy)
    manifest = data / "corpus.jsonl"
    manifest.write_bytes(b"\n".join(c.line for c in cases) + b"\n")
    return manifest, cases
