"""The mmctx command keeps freed memory for reuse (glibc): large blocks are no longer
mmapped per allocation, and MMCTX_MALLOC=default leaves malloc as it comes."""

import json
import os
import subprocess
import sys

import pytest

from mmctx.allocator import malloc_state

PROBE = """
import json, torch
from mmctx.allocator import malloc_state, reuse_freed_memory
applied = reuse_freed_memory()
before = malloc_state()["mmapped_bytes"]
block = torch.empty(64 << 20, dtype=torch.uint8)
print(json.dumps({"applied": applied, "mmapped": malloc_state()["mmapped_bytes"] - before}))
"""


def probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    clean.pop("MMCTX_MALLOC", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.skipif(malloc_state()["glibc"] is None, reason="glibc's malloc only")
def test_freed_memory_is_kept_unless_switched_off():
    tuned, default = probe(), probe(MMCTX_MALLOC="default")
    assert tuned == {"applied": True, "mmapped": 0}  # the 64 MiB block came from the heap
    assert default["applied"] is False
    assert default["mmapped"] >= 64 << 20  # glibc as it comes maps a block this large
