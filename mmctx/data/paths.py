"""Keep manifest paths inside the data root: the one place paths from data are checked.

A path in a manifest is confined to a *data root*: the manifest's folder unless the user
names a wider one (``--root`` of ``mmctx infer`` / ``mmctx validate-data``, ``data.root``
of the data module). The check looks only at the string and at what it resolves to
(symlinks followed), so nothing is stat'ed or opened before it passes:

1. the value is a non-empty string without NUL bytes, every component fits the file
   system's name limit (255 bytes) and it encodes to bytes for the OS;
2. ``base / value`` resolves (a symlink loop or an over-long path is that row's error);
3. the resolved path lies inside the resolved root (``../..``, absolute paths and links
   that point outside are refused). It is resolved one component at a time, and nothing
   outside the root is ever stat'ed, not even a link's target: the check itself leaks
   nothing about files outside.

Paths the user typed on the command line are not data: they use :data:`UNCONFINED`.
"""

from __future__ import annotations

import os
import reprlib
import stat
from pathlib import Path
from typing import Any

__all__ = ["NAME_MAX", "UNCONFINED", "PathOutsideRoot", "confined_path", "short_repr"]

NAME_MAX = 255  # bytes in one path component (ext4, xfs, btrfs, apfs, ntfs in UTF-16 units)
UNCONFINED = Path(os.path.abspath(os.sep))  # every path resolves inside the file-system root

_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80
_repr.maxlevel = 3


def short_repr(value: Any) -> str:
    """A bounded ``repr`` for messages (safe on huge or deeply nested JSON values)."""
    try:
        return _repr.repr(value)
    except Exception:  # a repr must never fail the message that carries it
        return f"<{type(value).__name__}>"


class PathOutsideRoot(ValueError):
    """A manifest path that resolves outside the data root."""


def confined_path(value: str, key: str, base: Path, root: Path | None = None) -> Path:
    """``base / value``, refused unless it resolves (symlinks followed) inside ``root``.

    Args:
        value: The path as written in the manifest.
        key: The manifest key, for messages.
        base: Folder that relative paths start from.
        root: The data root (default ``base``); :data:`UNCONFINED` allows any path.

    Returns:
        ``base / value`` (checked, not yet stat'ed).

    Raises:
        ValueError: The string is not a usable path, it cannot be resolved, or it leaves
            the root (:class:`PathOutsideRoot`).
    """
    if not isinstance(value, str) or not value:
        raise ValueError(f"'{key}' must be a non-empty path string, got {short_repr(value)}")
    if "\x00" in value:
        raise ValueError(f"'{key}' path {short_repr(value)} contains a NUL byte")
    try:
        encoded = os.fsencode(value)
    except UnicodeError:
        raise ValueError(
            f"'{key}' path {short_repr(value)} cannot be encoded for the file system"
        ) from None
    if any(len(part) > NAME_MAX for part in encoded.split(b"/")):
        raise ValueError(
            f"'{key}' path {short_repr(value)} has a component longer than {NAME_MAX} bytes"
        )
    root = (base if root is None else root).absolute()
    try:  # the root and the base are the user's own folders: resolving them is fine
        real_root = os.path.realpath(root)
        start = os.path.realpath(base.absolute())
        inside = _resolve_inside(os.path.join(start, value), real_root)
    except (OSError, RuntimeError, ValueError) as err:  # RuntimeError: a symlink loop
        raise ValueError(f"'{key}' path {short_repr(value)} cannot be resolved ({err})") from None
    if not inside:
        raise PathOutsideRoot(
            f"'{key}' path {short_repr(value)} leaves the data root {real_root} "
            "(name a wider root with --root or data.root to allow it)"
        )
    return base / value


MAX_SYMLINKS = 40  # as Linux's ELOOP limit


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _resolve_inside(path: str, root: str) -> bool:
    """Whether absolute ``path`` resolves (symlinks followed) inside the resolved ``root``.

    Components are resolved one at a time, and nothing is looked at (``lstat``,
    ``readlink``) unless it lies inside ``root`` or on the way to it: a ``..`` chain, an
    absolute path or a link that points outside is refused without touching its target.
    A missing component ends the walk (the rest is taken as written).

    Raises:
        RuntimeError: More than :data:`MAX_SYMLINKS` links (a loop).
        OSError: A component cannot be examined (too long, no permission).
    """
    pending = [p for p in path.split(os.sep) if p][::-1]  # a stack, next component last
    current, hops = os.sep, 0
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            current = os.path.dirname(current)  # ``current`` holds no link: this is exact
            continue
        candidate = os.path.join(current, part)
        if not (_within(candidate, root) or _within(root, candidate)):
            return False  # outside, and not on the way to the root: never looked at
        try:
            st = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):  # missing: nothing more to follow
            rest = os.path.normpath(os.path.join(candidate, *pending[::-1]))
            return _within(rest, root)
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > MAX_SYMLINKS:
                raise RuntimeError(f"more than {MAX_SYMLINKS} symbolic links (a loop?)")
            target = os.readlink(candidate)
            if os.path.isabs(target):
                current = os.sep
            pending.extend(p for p in target.split(os.sep)[::-1] if p)
            continue
        current = candidate
    return _within(current, root)
