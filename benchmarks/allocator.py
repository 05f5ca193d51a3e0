"""The malloc conditions a benchmark runs under, set the same way for every implementation.

glibc's default malloc maps each block over its (dynamic) mmap threshold fresh from the OS
and unmaps it on free, so code that allocates large temporaries on every call pays page
faults each time; "tuned" (trim threshold 2 GiB, no mmap) keeps freed memory in the heap for
reuse, as a long-running serving process would. Comparisons between implementations are
only fair when all of them run under the same mode; benchmarks record the mode and what
glibc actually holds (:func:`allocator_state`) in their JSON.
"""

from __future__ import annotations

import os
import sys

from mmctx.allocator import ENV as MMCTX_ENV
from mmctx.allocator import malloc_state as allocator_state  # noqa: F401 (benchmarks' name)

# GLIBC_TUNABLES of each mode; a process gets exactly this value (and no MALLOC_* variables)
ALLOCATORS = {
    "default": "",
    "tuned": "glibc.malloc.trim_threshold=2147483648:glibc.malloc.mmap_max=0",
}
HELP = (
    "malloc settings: 'default' (glibc as it comes: large blocks mapped and unmapped per "
    "allocation) or 'tuned' (GLIBC_TUNABLES trim threshold 2 GiB, mmap off: freed memory is "
    "reused); every implementation runs under the same one"
)


def allocator_env(mode: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with exactly the malloc settings of ``mode``."""
    env = {k: v for k, v in (os.environ if env is None else env).items()}
    env = {k: v for k, v in env.items() if not k.startswith("MALLOC_")}
    env["GLIBC_TUNABLES"] = ALLOCATORS[mode]
    env[MMCTX_ENV] = "default"  # an mmctx command in there must not change malloc itself
    return env


def run_under(mode: str) -> None:
    """Make sure this process runs with ``mode``'s malloc settings: if it does not yet,
    re-execute the same command line with them (glibc reads them only at start-up)."""
    wanted = allocator_env(mode)
    current = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    same = os.environ.get("GLIBC_TUNABLES", "") == wanted["GLIBC_TUNABLES"]
    if same and not current and os.environ.get(MMCTX_ENV) == "default":
        return
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], wanted)
