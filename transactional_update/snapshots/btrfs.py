"""btrfs operations through libbtrfsutil (the ``btrfsutil`` module).

Snapper owns snapshot numbers and metadata; btrfs itself owns the two facts snapper 0.10.4 cannot
change: which subvolume boots next (the *default subvolume*) and the read-only flag.
Everything here
takes paths on the managed filesystem; no function mounts or unmounts anything.
"""

from __future__ import annotations

import errno
import os
import time
from contextlib import contextmanager
from pathlib import Path

from transactional_update.errors import NoSpaceError, NotManagedError, SystemError_, TUError

TYPE_CHECKING = False  # typing itself is not imported: it costs status ~3 ms
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any


def _lib() -> Any:
    # Imported lazily: the C extension costs start-up time that --help and list do not need.
    try:
        import btrfsutil
    except ImportError as exc:
        raise SystemError_(
            f"cannot load btrfsutil: {exc}",
            "install a btrfsutil release matching the system libbtrfsutil (./tu-dev install)",
        ) from exc
    return btrfsutil


def _fail(action: str, path: Path | str, exc: Exception) -> NoSpaceError | SystemError_:
    err = getattr(exc, "errno", None)
    if err == errno.ENOSPC:
        return NoSpaceError(
            f"{action} {path}: no space left on the btrfs filesystem",
            "free space (transactional-update cleanup), then retry",
        )
    return SystemError_(
        f"{action} {path}: {exc}", "check the btrfs filesystem (btrfs check, dmesg)"
    )


def is_btrfs(path: Path) -> bool:
    """Whether *path* lies on a btrfs filesystem.

    Asked through btrfs' own inode-lookup ioctl (what ``subvolume_id`` does, allowed without
    privileges): any other filesystem refuses it.  statfs(2) would need ctypes, whose import
    costs ``status`` more than the whole query.
    """
    try:
        _lib().subvolume_id(path)
    except SystemError_:
        raise
    except Exception:
        return False
    return True


def require_btrfs(path: Path) -> None:
    if not is_btrfs(path):
        raise NotManagedError(
            f"{path} is not on a btrfs filesystem",
            "transactional-update needs a btrfs root with snapper snapshots (see --root)",
        )


def subvolume_id(path: Path) -> int:
    try:
        return int(_lib().subvolume_id(path))
    except Exception as exc:
        raise _fail("cannot read subvolume id of", path, exc) from exc


def subvolume_path(fs_path: Path, subvol_id: int = 0) -> str:
    """The path of subvolume *subvol_id* (or of *fs_path*'s own) relative to the top level."""
    try:
        return str(_lib().subvolume_path(fs_path, subvol_id))
    except Exception as exc:
        raise _fail("cannot resolve subvolume path of", fs_path, exc) from exc


def is_subvolume(path: Path) -> bool:
    try:
        return bool(_lib().is_subvolume(path))
    except Exception:
        return False


def get_default(fs_path: Path) -> int:
    """The id of the default subvolume of the filesystem holding *fs_path*."""
    try:
        return int(_lib().get_default_subvolume(fs_path))
    except Exception as exc:
        raise _fail("cannot read the default subvolume of", fs_path, exc) from exc


def set_default(subvolume: Path) -> None:
    """Make *subvolume* the one the next boot mounts (when no ``subvol=`` is given)."""
    try:
        _lib().set_default_subvolume(subvolume)
    except Exception as exc:
        raise _fail("cannot set the default subvolume to", subvolume, exc) from exc


def is_read_only(subvolume: Path) -> bool:
    try:
        return bool(_lib().get_subvolume_read_only(subvolume))
    except Exception as exc:
        raise _fail("cannot read the read-only flag of", subvolume, exc) from exc


def set_read_only(subvolume: Path, read_only: bool = True) -> None:
    try:
        _lib().set_subvolume_read_only(subvolume, read_only)
    except Exception as exc:
        raise _fail("cannot change the read-only flag of", subvolume, exc) from exc


def create_subvolume(path: Path) -> None:
    try:
        _lib().create_subvolume(path)
    except Exception as exc:
        raise _fail("cannot create subvolume", path, exc) from exc


def delete_subvolume(path: Path) -> int:
    """Delete *path* (and nested subvolumes); returns its id for :func:`wait_cleaned`."""
    lib = _lib()
    try:
        subvol = int(lib.subvolume_id(path))
        if lib.get_subvolume_read_only(path):
            # A read-only subvolume with nested subvolumes cannot be emptied; clear the flag first.
            lib.set_subvolume_read_only(path, False)
        lib.delete_subvolume(path, recursive=True)
    except Exception as exc:
        raise _fail("cannot delete subvolume", path, exc) from exc
    return subvol


def wait_cleaned(fs_path: Path, ids: set[int], timeout: float = 60.0) -> bool:
    """Wait until btrfs' cleaner has freed the space of the deleted subvolumes *ids*.

    btrfs frees a deleted subvolume asynchronously: right after deleting a snapshot that filled the
    disk, the next snapshot still fails with ENOSPC until the cleaner has run.  Committing the
    transaction wakes the cleaner; then poll its queue (what ``btrfs subvolume sync`` does).
    """
    lib = _lib()
    deadline = time.monotonic() + timeout
    while True:
        try:
            lib.sync(fs_path)
            pending = set(lib.deleted_subvolumes(fs_path)) & ids
        except Exception as exc:
            raise _fail("cannot wait for the btrfs cleaner on", fs_path, exc) from exc
        if not pending:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


# BTRFS_IOC_FS_INFO = _IOR(0x94, 31, struct btrfs_ioctl_fs_info_args): 1024 bytes, fsid at 16.
_IOC_FS_INFO = (2 << 30) | (1024 << 16) | (0x94 << 8) | 31


def fs_uuid(fs_path: Path) -> str:
    """The filesystem UUID (what ``blkid`` and ``root=UUID=`` name) of the btrfs at *fs_path*.

    One ioctl, no subprocess: the boot menu needs it on every refresh, also inside chroots
    that have no ``/dev`` or ``blkid``.
    """
    import fcntl
    import uuid

    try:
        fd = os.open(fs_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            buf = fcntl.ioctl(fd, _IOC_FS_INFO, bytes(1024))
        finally:
            os.close(fd)
    except OSError as exc:
        raise _fail("cannot read the filesystem UUID of", fs_path, exc) from exc
    return str(uuid.UUID(bytes=bytes(buf[16:32])))


def sync(fs_path: Path) -> None:
    try:
        _lib().sync(fs_path)
    except Exception as exc:
        raise _fail("cannot sync", fs_path, exc) from exc


def start_sync(path: Path) -> int:
    """Start committing the filesystem's current transaction, without waiting; returns its id.

    Everything changed before the call is in that transaction or an earlier one; everything
    changed after it goes into a later one.
    """
    try:
        return int(_lib().start_sync(path))
    except Exception as exc:
        raise _fail("cannot start a sync of", path, exc) from exc


def committed_generation(subvolume: Path) -> int:
    """The transaction that last changed *subvolume*'s tree, after committing pending changes.

    btrfs updates a subvolume's root item only when a transaction commits, so the sync comes
    first; two equal values mean nothing in the subvolume changed in between (time stamps
    included: an access time update is a change too).
    """
    try:
        lib = _lib()
        lib.sync(subvolume)
        return int(lib.subvolume_info(subvolume).generation)
    except TUError:
        raise
    except Exception as exc:
        raise _fail("cannot read the generation of", subvolume, exc) from exc


@contextmanager
def read_only(subvolume: Path) -> Iterator[None]:
    """Make *subvolume* read-only for the duration (btrfs send needs it), restoring its flag."""
    was = is_read_only(subvolume)
    if not was:
        set_read_only(subvolume, True)
    try:
        yield
    finally:
        if not was:
            set_read_only(subvolume, False)


def snapshot(source: Path, dest: Path, read_only: bool = False) -> None:
    """A snapshot of subvolume *source* at *dest* (nested subvolumes of *source* not included)."""
    try:
        _lib().create_snapshot(source, dest, read_only=read_only)
    except Exception as exc:
        raise _fail("cannot snapshot", f"{source} to {dest}", exc) from exc


def generation(subvolume: Path) -> int:
    """The generation of *subvolume*'s root as of the last commit (no sync; see
    :func:`committed_generation`)."""
    try:
        return int(_lib().subvolume_info(subvolume).generation)
    except Exception as exc:
        raise _fail("cannot read the generation of", subvolume, exc) from exc


def transids(subvolume: Path) -> tuple[int, int]:
    """``(ctransid, otransid)`` of *subvolume*: the btrfs transaction that last changed it and
    the one that created it, as committed (call :func:`sync` first for changes still pending:
    the subvolume's root item on disk is updated only by a commit)."""
    try:
        info = _lib().subvolume_info(subvolume)
        return int(info.ctransid), int(info.otransid)
    except Exception as exc:
        raise _fail("cannot read the transaction ids of", subvolume, exc) from exc
