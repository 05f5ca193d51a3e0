"""Keep freed memory for reuse instead of handing it back to the OS (glibc's malloc).

glibc maps each block over its mmap threshold fresh from the kernel and unmaps it on free,
so a training step that allocates the same large activations on every step pays page
faults for all of them each time (about a tenth of a long-context demo step on 2 cores).
:func:`reuse_freed_memory` turns mmap off and raises the trim threshold (``mallopt``), the
same settings as ``GLIBC_TUNABLES=glibc.malloc.trim_threshold=...:glibc.malloc.mmap_max=0``:
freed blocks stay in the heap and the next step reuses them. The cost is a resident size
that stays at its peak. The ``mmctx`` command calls it at start-up unless
``MMCTX_MALLOC=default``; other C libraries are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_MAX = -4
_MALLINFO2 = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
ENV = "MMCTX_MALLOC"


class _MallInfo2(ctypes.Structure):  # glibc's struct mallinfo2: ten size_t fields
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2.split()]  # noqa: SIM905


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (raises AttributeError outside glibc)
    except (OSError, AttributeError):
        return None
    return libc


def reuse_freed_memory() -> bool:
    """Switch glibc's malloc to keep freed blocks (mmap off, trim threshold 2 GiB).

    Returns:
        Whether the settings were applied: False outside glibc or with ``MMCTX_MALLOC=default``.
    """
    libc = _glibc()
    if libc is None or os.environ.get(ENV, "") == "default":
        return False
    return bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)) and bool(libc.mallopt(_M_MMAP_MAX, 0))


def malloc_state() -> dict:
    """What glibc holds right now: bytes in mmapped blocks (0 with mmap off) and in the heap,
    with the glibc version and the malloc settings from the environment."""
    libc = _glibc()
    if libc is None:
        return {"glibc": None}
    libc.mallinfo2.restype = _MallInfo2
    libc.gnu_get_libc_version.restype = ctypes.c_char_p
    info = libc.mallinfo2()
    return {
        "glibc": libc.gnu_get_libc_version().decode(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "mmapped_bytes": info.hblkhd,
        "heap_bytes": info.arena,
    }
