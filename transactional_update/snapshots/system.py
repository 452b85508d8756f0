"""The managed system: its root, snapshot store, and which snapshots are booted, default, pending.

Booted and default are read from btrfs, not from snapper: the booted snapshot is the subvolume
mounted
at the root, the default is what the next boot mounts.  Both are snapper snapshots
``.snapshots/N/snapshot``; a default that is not one (a plain subvolume) is reported as foreign.
"""

from __future__ import annotations

from pathlib import Path

from transactional_update.errors import NotManagedError, SnapshotError
from transactional_update.snapshots import btrfs
from transactional_update.snapshots.snapinfo import FAILED, IN_PROGRESS, snapshot_number

TYPE_CHECKING = False  # typing itself is not imported: it costs status ~3 ms
if TYPE_CHECKING:
    from transactional_update.snapshots.snapinfo import Snapshot

__all__ = [
    "CONTINUE_DEFAULT",
    "FAILED",
    "IN_PROGRESS",
    "USERSPACE",
    "ManagedRoot",
    "open_root",
    "snapshot_number",
]

# A root snapshot's own top-level directories that hold userspace: what ``apply`` binds over the
# running system (/bin, /sbin, /lib* only where they are not links into /usr).
USERSPACE = ("usr", "etc", "bin", "sbin", "lib", "lib32", "lib64", "libx32")

CONTINUE_DEFAULT = -1  # --continue without a number: build on the pending default


def require_finished(info: Snapshot, hint: str) -> None:
    """Refuse a snapshot that may be half-changed: an unfinished or a failed (kept) transaction.

    Neither may boot (rollback) nor be built on (--continue N).
    """
    if IN_PROGRESS in info.userdata:
        raise SnapshotError(f"snapshot {info.number} is an unfinished transaction", hint)
    if FAILED in info.userdata:
        raise SnapshotError(
            f"snapshot {info.number} is a failed transaction kept for inspection", hint
        )


class ManagedRoot:
    """A checked managed root (see :func:`open_root`).

    A plain class, not a dataclass: ``status`` builds one, and importing dataclasses would cost
    it a third of its run time.
    """

    __slots__ = ("root", "snapper_config")

    def __init__(self, root: Path, snapper_config: str) -> None:
        self.root = root
        self.snapper_config = snapper_config

    def __repr__(self) -> str:
        return f"ManagedRoot(root={self.root!r}, snapper_config={self.snapper_config!r})"

    @property
    def snapshots_dir(self) -> Path:
        return self.root / ".snapshots"

    def snapshot_dir(self, number: int) -> Path:
        return self.snapshots_dir / str(number) / "snapshot"

    def booted(self) -> int | None:
        return snapshot_number(btrfs.subvolume_path(self.root))

    def live(self) -> int | None:
        """The snapshot whose userspace runs: the one ``apply`` bound over ``/usr``, else the
        booted one.  Read from ``/usr`` as openSUSE's tool does: after an apply, ``/`` is still
        the booted snapshot, ``/usr`` and ``/etc`` are the applied one's."""
        usr = self.root / "usr"
        if not usr.is_dir():
            return self.booted()
        return snapshot_number(btrfs.subvolume_path(self.root, btrfs.subvolume_id(usr)))

    def default_subvolume(self) -> str:
        """The default subvolume's path from the top level (``""`` for the top level itself)."""
        return btrfs.subvolume_path(self.root, btrfs.get_default(self.root))

    def default(self) -> int | None:
        return snapshot_number(self.default_subvolume())

    def require_snapshot_dir(self, number: int) -> Path:
        """The subvolume of snapshot *number*; refuses numbers that are not root snapshots here."""
        if number <= 0:
            raise SnapshotError(
                f"snapshot {number} is not a root snapshot",
                "pick a number from: transactional-update list",
            )
        path = self.snapshot_dir(number)
        if not btrfs.is_subvolume(path):
            raise SnapshotError(
                f"snapshot {number} does not exist", "pick a number from: transactional-update list"
            )
        if not (self.snapshots_dir / str(number) / "info.xml").is_file():
            raise SnapshotError(
                f"snapshot {number} is not managed by snapper (no info.xml)",
                "only snapper's snapshots can be used; see: transactional-update list",
            )
        return path


def open_root(root: Path, snapper_config: str = "root") -> ManagedRoot:
    """Check that *root* is a system this tool can manage and describe it."""
    if not root.is_dir():
        raise NotManagedError(
            f"root {root} is not a directory", "pass the mounted system with --root PATH"
        )
    btrfs.require_btrfs(root)
    snapshots = root / ".snapshots"
    if not snapshots.is_dir() or not btrfs.is_subvolume(snapshots):
        raise NotManagedError(
            f"{snapshots} is not a btrfs subvolume",
            "create the snapper layout first (snapper create-config, or create-system)",
        )
    if not (root / "etc/snapper/configs" / snapper_config).is_file():
        raise NotManagedError(
            f"no snapper config {snapper_config!r} in {root}/etc/snapper/configs",
            f"create it with: snapper -c {snapper_config} create-config /",
        )
    managed = ManagedRoot(root=root, snapper_config=snapper_config)
    if managed.booted() is None:
        raise NotManagedError(
            f"{root} is not a snapper snapshot (mounted subvolume: {btrfs.subvolume_path(root)})",
            "boot (or mount at --root) a snapshot .snapshots/N/snapshot",
        )
    return managed
