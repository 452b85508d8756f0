"""Durable file replacement: a crash leaves the old file or the new one, never half of one.

Every state file the tool keeps (changelog entries, the state file, the reboot manager's plan,
GRUB's environment block) is written the same way: a temporary file beside the target, fsync,
rename over the target, then fsync of the directory so that the rename itself survives a power
cut (ext2/ext4 and btrfs both need it for the new name to be durable).
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Replace *path* with *data* atomically and durably (text is written as UTF-8).

    The new file gets *mode* from its creation on (never wider for a moment).  The temporary
    file is removed when anything fails, and the exception propagates.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tu-new")
    try:
        tmp.unlink(missing_ok=True)  # a leftover of a cut would keep its own mode
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with open(fd, "wb") as f:
            os.fchmod(fd, mode)  # the umask narrowed it, or a wider one was asked for
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make the names in directory *path* (a rename, a new or removed file) durable."""
    dirfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def unlink_durable(path: Path) -> None:
    """Remove *path* so that a power cut cannot bring it back."""
    path.unlink(missing_ok=True)
    fsync_dir(path.parent)
