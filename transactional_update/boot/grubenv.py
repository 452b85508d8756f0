"""GRUB's environment block (``grubenv``): read and write it as ``grub-editenv`` does.

The file is exactly 1024 bytes: a header line, ``name=value`` lines, and ``#`` padding.  GRUB
itself rewrites it in place at boot (``save_env``, e.g. to clear ``next_entry``), which upstream
GRUB cannot do on btrfs - so a managed system keeps it on a small ext4 partition (``/boot/grub``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from transactional_update.errors import SystemError_, UsageError
from transactional_update.files import checkpoint, write_atomic

log = logging.getLogger(__name__)

HEADER = "# GRUB Environment Block\n"
SIZE = 1024


def parse(data: bytes) -> dict[str, str]:
    text = data.decode("utf-8", errors="replace")
    if not text.startswith(HEADER):
        raise ValueError("not a GRUB environment block")
    values: dict[str, str] = {}
    for line in text[len(HEADER) :].split("\n"):
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if sep:
            values[name] = value
    return values


def format_block(values: dict[str, str]) -> bytes:
    """The 1024-byte block; refuses what GRUB would need escapes for (ours never does)."""
    body = HEADER
    for name, value in values.items():
        if not name or any(c in name for c in "=\n\\#") or any(c in value for c in "\n\\"):
            raise UsageError(
                f"cannot store {name!r} in the GRUB environment",
                "names and values must be one line without backslashes",
            )
        body += f"{name}={value}\n"
    data = body.encode("utf-8")
    if len(data) > SIZE:
        raise UsageError(
            "the GRUB environment block is full (1024 bytes)",
            "remove entries with: grub-editenv /boot/grub/grubenv unset NAME",
        )
    return data + b"#" * (SIZE - len(data))


def read(path: Path) -> dict[str, str]:
    try:
        return parse(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise SystemError_(
            f"cannot read the GRUB environment {path}: {exc}",
            f"recreate it with: grub-editenv {path} create",
        ) from exc


def write(path: Path, values: dict[str, str]) -> None:
    """Replace *path* atomically and durably with a block holding *values*."""
    try:
        write_atomic(path, format_block(values))
        checkpoint(path.parent)  # GRUB finds (and rewrites) the new block without the journal
    except OSError as exc:
        raise SystemError_(
            f"cannot write the GRUB environment {path}: {exc.strerror or exc}",
            f"check that {path.parent} is mounted read-write",
        ) from exc


def update(path: Path, **changes: str | None) -> dict[str, str]:
    """Set (or with None remove) entries, keeping the others; returns the new contents.

    A block that already holds them is not rewritten: GRUB's partition is written only when
    something changes."""
    old = read(path)
    values = dict(old)
    for name, value in changes.items():
        if value is None:
            values.pop(name, None)
        else:
            values[name] = value
    if values != old or not path.exists():
        write(path, values)
    return values
