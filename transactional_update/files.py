"""Durable file replacement: a crash leaves the old file or the new one, never half of one.

Every state file the tool keeps (changelog entries, the state file, the reboot manager's plan,
GRUB's environment block) is written the same way: a temporary file beside the target, fsync,
rename over the target, then fsync of the directory so that the rename itself survives a power
cut (ext2/ext4 and btrfs both need it for the new name to be durable).

GRUB's files on ext4 need one step more, :func:`checkpoint`.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger(__name__)

# _IOW('f', 43, __u32) of linux/ext4.h (Linux 5.13 and later).
EXT4_IOC_CHECKPOINT = 0x4004662B


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


def checkpoint(directory: Path) -> None:
    """Write ext4's journal out to the filesystem's own blocks (for GRUB's sake); best effort.

    After fsync and rename a change is durable in the journal only: the directory entry and the
    inode reach their places in the filesystem later, when the journal is checkpointed.  Linux
    replays the journal when it mounts, GRUB never does: after a power cut GRUB would read the
    previous grub.cfg's inode, whose blocks the new file may have reused (seen with
    grub-fstest, which reads as GRUB does: the new file is not there yet), or write ``grubenv``
    into blocks that are no longer it.  The checkpoint leaves nothing in the journal.
    Elsewhere (ext2, vfat, btrfs, kernels before 5.13) the ioctl fails and there is nothing to do.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        log.debug("no journal checkpoint of %s: %s", directory, exc)
        return
    try:
        import fcntl

        fcntl.ioctl(fd, EXT4_IOC_CHECKPOINT, struct.pack("I", 0))
    except OSError as exc:
        log.debug("no journal checkpoint of %s: %s", directory, exc)
    finally:
        os.close(fd)


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in *path*; None when it is missing, unreadable, garbled or not an object.

    json is imported only when the file exists: ``status`` reads several such state files, and
    on most systems most of them are absent.
    """
    if not path.exists():
        return None
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
