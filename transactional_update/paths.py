"""Joining paths under a root without escaping it.

A managed root may contain absolute symlinks (``/var/lib/dpkg -> /usr/share/...``) that must be read
relative to that root, never to the host.  :func:`resolve_under` walks a path component by
component,
following symlinks as if the root were ``/``, and never leaves it.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

_MAX_LINKS = 40  # the kernel's own limit (MAXSYMLINKS)


def join_under(root: Path, path: str | PurePosixPath) -> Path:
    """``root / path`` for an absolute or relative *path*, resolved inside *root*."""
    return resolve_under(root, path)


def resolve_under(root: Path, path: str | PurePosixPath) -> Path:
    """Resolve *path* as seen from a chroot at *root*; symlinks cannot lead outside it."""
    parts = [p for p in PurePosixPath("/", path).parts[1:] if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink():
            links += 1
            if links > _MAX_LINKS:
                raise OSError(f"too many levels of symbolic links under {root}: {path}")
            target = PurePosixPath(os.readlink(candidate))
            if target.is_absolute():
                resolved = []
                parts = list(target.parts[1:]) + parts
            else:
                parts = list(target.parts) + parts
            continue
        resolved.append(part)
    return root.joinpath(*resolved)


def data_dir(name: str, probe: str) -> Path | None:
    """Where the files a distribution installs beside the tool are: the top-level folder *name*
    of a source checkout (editable install), or a wheel's data files under
    ``PREFIX/share/transactional-update/NAME``; None when *probe* is in neither."""
    import sys

    checkout = Path(__file__).resolve().parent.parent / name
    installed = Path(sys.prefix) / "share/transactional-update" / name
    return next((d for d in (checkout, installed) if (d / probe).is_file()), None)
