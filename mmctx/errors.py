"""Exit statuses of the project's own subcommands, and text that is safe to print.

Every own subcommand (``mmctx infer``, ``export``, ``generate``, ``gan-eval``,
``validate-data``, ``demo-data``, ...) runs through :func:`run_command`, so they share
one table of exit statuses (:data:`EXIT_STATUS_HELP`):

====  ==========================================================================
0     everything succeeded
1     the run finished, but some samples (rows, files, conditions) failed
2     the run could not start: bad arguments, an unreadable manifest or checkpoint
3     a bug in mmctx: the full traceback is written to a log file, and one line
      naming that file is printed
====  ==========================================================================

Interrupting a command (Ctrl-C) gives 130, as shells do. Set ``MMCTX_DEBUG=1`` to let
an internal error raise with its traceback instead.

:func:`printable` and :func:`one_line` make text from the outside world (file names that
are not valid UTF-8, ids with newlines) safe to write to a UTF-8 stream.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BUG = 3
EXIT_NON_FINITE = 4  # training stopped on a non-finite loss, gradient or weight
EXIT_INTERRUPTED = 130

EXIT_STATUS_HELP = """\
exit status:
  0  everything succeeded
  1  the run finished, but some samples failed (each one is reported)
  2  the run could not start (bad arguments, unreadable manifest or checkpoint)
  3  a bug in mmctx: the traceback is written to a log file named on stderr
"""


def at_least(least: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer ``>= least`` (a count, a size), else a usage error
    naming the option (exit status 2) instead of a failure deep inside the run."""

    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be an integer >= {least}, got {value}")
        return value

    return integer


def device_name(text: str) -> str:
    """An argparse ``type`` for ``--device``: a device torch knows and this machine has
    (``cpu``, ``cuda``, ``cuda:1``, ``mps``), else a usage error naming it."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            f"not a device: {text!r} (cpu, cuda, cuda:1, ...)"
        ) from None
    available = {
        "cpu": lambda: True,
        "cuda": lambda: (
            torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
        ),
        "mps": lambda: torch.backends.mps.is_available(),
    }.get(device.type, lambda: True)
    if not available():
        raise argparse.ArgumentTypeError(f"{text!r} is not available on this machine")
    return text


class ConfigError(ValueError):
    """Settings that cannot work together (found once the run's parts meet); exit status 2."""


# Lone surrogates: U+DC80..U+DCFF are bytes that were not UTF-8, decoded with
# ``surrogateescape`` (file names, argv); any other surrogate is an unpaired JSON escape.
_SURROGATE = re.compile("[\ud800-\udfff]")
# What would break a line: C0/C1 controls and the Unicode line and paragraph separators.
_LINE_BREAKING = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    code = ord(char)
    if char in _SHORT:
        return _SHORT[char]
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte kept by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with lone surrogates escaped, so that it encodes as UTF-8.

    A byte that was not UTF-8 (``\\udcff`` from ``surrogateescape``) becomes ``\\xff``,
    any other lone surrogate ``\\ud800``; everything else is unchanged.
    """
    return _SURROGATE.sub(lambda m: _escape(m.group()), text)


def one_line(text: str) -> str:
    """``text`` as one printable line: newlines, other control characters, line
    separators and lone surrogates are escaped (``\\n``, ``\\x1b``, ``\\u2028``, ``\\xff``)."""
    return _LINE_BREAKING.sub(lambda m: _escape(m.group()), text)


def write_crash_log(command: str, argv: Sequence[str], err: BaseException) -> str:
    """Write ``err``'s traceback and the command line to a new file in the temp folder.

    Returns:
        The file's path.
    """
    fd, path = tempfile.mkstemp(prefix=f"mmctx-{command}-crash-", suffix=".log")
    with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as f:
        f.write(f"mmctx {command} {' '.join(argv)}\n")
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}, python {sys.version.split()[0]}\n\n")
        f.write("".join(traceback.format_exception(err)))
    return path


def _with_exit_help(func: Callable[[list[str]], int], argv: list[str]) -> int:
    """Run ``func`` for ``--help``; add :data:`EXIT_STATUS_HELP` when its help lacks it."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            return func(argv)
    except SystemExit as exit_:
        text = buffer.getvalue()
        if exit_.code in (0, None) and "usage:" in text and "exit status" not in text.lower():
            buffer = io.StringIO(text.rstrip("\n") + "\n\n" + EXIT_STATUS_HELP)
        raise
    finally:  # whatever the command printed goes out, help or not
        sys.stdout.write(buffer.getvalue())


def run_command(command: str, func: Callable[[list[str]], int], argv: Sequence[str]) -> int:
    """Run one own subcommand and turn what escapes it into an exit status.

    The command handles its own per-sample failures (status 1) and usage errors (status 2,
    or argparse's ``SystemExit(2)``, which passes through); a :class:`ConfigError` that
    escapes it (bad settings, an unusable checkpoint), or an ``OSError`` (an output folder
    that cannot be made), is printed as one line, status 2. Anything else that escapes is
    a bug: its traceback goes to a log file (:func:`write_crash_log`), one line naming the
    file goes to stderr, and the status is :data:`EXIT_BUG`. ``KeyboardInterrupt`` gives
    :data:`EXIT_INTERRUPTED`. ``MemoryError`` is an ``Exception`` too: samples catch their
    own (one huge file fails alone), so one that reaches here is reported like a bug.

    Args:
        command: The subcommand's name, for messages (``"infer"``).
        func: Its ``main(argv) -> int``.
        argv: Its arguments.

    Returns:
        The exit status.
    """
    argv = list(argv)
    try:
        if any(a in ("-h", "--help") for a in argv):
            return _with_exit_help(func, argv)
        return func(argv)
    except KeyboardInterrupt:
        print(f"mmctx {command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ConfigError as err:  # settings, input or checkpoint the run cannot start with
        print(f"mmctx {command}: error: {one_line(str(err))}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # the run's own input or output (a folder that cannot be made):
        # per-sample reads catch their own, so one that escapes is the run's
        print(f"mmctx {command}: error: {one_line(str(err))}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # the reader went away (`mmctx infer ... | head`): not a bug
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as err:
        if os.environ.get("MMCTX_DEBUG"):
            raise
        what = one_line(f"{type(err).__name__}: {err}")
        what = what if len(what) <= 300 else what[:297] + "..."
        try:
            log = write_crash_log(command, argv, err)
        except OSError as log_err:
            print(
                f"mmctx {command}: internal error ({what}); this is a bug in mmctx, and the "
                f"traceback could not be saved ({log_err}), so here it is:",
                file=sys.stderr,
            )
            traceback.print_exception(err, file=sys.stderr)
            return EXIT_BUG
        print(
            f"mmctx {command}: internal error ({what}); this is a bug in mmctx, "
            f"the traceback is in {one_line(log)}",
            file=sys.stderr,
        )
        return EXIT_BUG
