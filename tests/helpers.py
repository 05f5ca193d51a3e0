"""Helpers shared by the tests (import them from here, not from conftest)."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Shipped configs meant to be stacked on another (which may itself be an overlay).
CONFIG_OVERLAYS = {
    "demo_augment.yaml": "demo.yaml",
    "longctx_truncated.yaml": "longctx_demo.yaml",
    "longctx_small.yaml": "longctx_demo.yaml",
    "longctx_dense.yaml": "longctx_demo.yaml",
    "longctx_segment.yaml": "longctx_demo.yaml",
    "longctx_small_truncated.yaml": "longctx_small.yaml",
    "longctx_mixed.yaml": "longctx_small.yaml",
    "ddp.yaml": "demo_shards.yaml",
    "fsdp.yaml": "demo_shards.yaml",
}


def config_bases(config: Path) -> list[Path]:
    """The configs ``config`` is stacked on, outermost first (none for a complete config)."""
    if config.name not in CONFIG_OVERLAYS:
        return []
    base = config.parent / CONFIG_OVERLAYS[config.name]
    return [*config_bases(base), base]


def write_manifest(path: Path, rows: list[dict | str]) -> Path:
    """Write rows (dicts as JSON, strings verbatim) one per line."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """Write a tiny PNG whose header declares width x height but holds almost no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path
