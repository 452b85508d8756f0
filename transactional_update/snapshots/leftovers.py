"""What an interrupted run leaves behind, read from the snapshot store itself.

A power cut or ``kill -9`` can stop a transaction at any point; each point leaves one of these:

* **orphan**: ``.snapshots/N`` with a subvolume (or nothing) but no ``info.xml``.  btrfs commits
  a new snapshot to disk as part of creating it, while snapper writes ``info.xml`` afterwards
  into the page cache, so a cut in between keeps the subvolume and loses the metadata.  snapper
  skips such a directory (so ``list`` and ``snapper list`` do not show it) but still counts its
  number as taken.
* **stale**: a snapshot whose ``info.xml`` still carries the in-progress mark of a transaction
  that died before its commit.
* **lost commit**: a complete snapshot whose commit did not reach the disk - the commit intent
  (:data:`INTENT`, written durably right before the default is set) names it, yet the default
  is another snapshot.  ``rollback N`` keeps it; ``cleanup`` drops it.

:func:`find` derives all three from the directories, ``info.xml`` files and the intent, never
from the lock file's notes, which a power cut may have lost.  A directory younger than
:data:`MIN_AGE` seconds without ``info.xml`` is snapper creating a snapshot right now (ours or
its own timeline's), not an orphan - unless it was made before the current boot.  Light on
purpose: ``status`` imports it.
"""

from __future__ import annotations

import contextlib
import os
import time

from transactional_update.files import write_atomic
from transactional_update.snapshots.snapinfo import FAILED, IN_PROGRESS

TYPE_CHECKING = False  # typing itself is not imported: it costs status ~3 ms
if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from transactional_update.snapshots.system import ManagedRoot

INTENT = "var/lib/transactional-update/commit"
MIN_AGE = 60.0
_MARK = IN_PROGRESS.encode()
_FAILED_MARK = FAILED.encode()


def write_intent(root: Path, number: int, base: int, subvolume_id: int) -> None:
    """Record, durably, that snapshot *number* (btrfs subvolume *subvolume_id*) is about to
    become the default.  The id, which btrfs never reuses, tells the fork from a later snapshot
    that snapper gave the same number after the fork was deleted."""
    write_atomic(root / INTENT, f"{number} {base} {subvolume_id}\n")


def clear_intent(root: Path) -> None:
    """Forget the intent; never raises (it runs after the default changed).  An intent that
    stays names the default itself, which is no lost commit."""
    with contextlib.suppress(OSError):
        (root / INTENT).unlink(missing_ok=True)


def read_intent(root: Path) -> int | None:
    """The snapshot the last commit was making the default, if its intent is still recorded."""
    found = _intent(root)
    return found[0] if found else None


def _intent(root: Path) -> tuple[int, int | None] | None:
    try:
        with open(root / INTENT, "rb") as f:
            words = f.read(128).split()
    except OSError:
        return None
    if not words or not words[0].isdigit():
        return None
    return int(words[0]), int(words[2]) if len(words) > 2 and words[2].isdigit() else None


def _same_subvolume(store: str, number: int, subvolume_id: int | None) -> bool:
    if subvolume_id is None:
        return True
    import btrfsutil  # here: only with an intent left behind, never on a healthy status

    try:
        return int(btrfsutil.subvolume_id(f"{store}/{number}/snapshot")) == subvolume_id
    except Exception:
        return False


class Leftovers:
    """Snapshot numbers by kind, each ascending.  A plain record (see :mod:`cli.status`)."""

    __slots__ = ("lost", "orphans", "stale", "young")

    def __init__(
        self, orphans: list[int], stale: list[int], lost: list[int], young: bool = False
    ) -> None:
        self.orphans = orphans
        self.stale = stale
        self.lost = lost
        self.young = young  # a directory without info.xml was too young to judge

    def __bool__(self) -> bool:
        return bool(self.orphans or self.stale or self.lost)

    def all(self) -> list[int]:
        return sorted({*self.orphans, *self.stale, *self.lost})


def numbers(snapshots_dir: Path) -> list[int]:
    """The numbered directories of the snapshot store (snapper's 0 is the live system)."""
    try:
        names = os.listdir(snapshots_dir)
    except OSError:
        return []
    return sorted(int(n) for n in names if n.isascii() and n.isdigit() and n != "0")


def _info(store: str, number: int) -> bytes | None:
    # os.open/os.read: half the time of open() for the thousand small files status may read.
    try:
        fd = os.open(f"{store}/{number}/info.xml", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 1 << 20)
    except OSError:
        return None
    finally:
        os.close(fd)


def _young(store: str, number: int, now: float) -> bool:
    """Whether the directory may be one that snapper is creating right now: made during this
    boot, less than :data:`MIN_AGE` ago (one from before the boot, like a cut's, never is)."""
    try:
        made = os.stat(f"{store}/{number}").st_mtime
    except OSError:
        return True  # gone while looking: nothing to report
    return made >= boot_time() and now - made < MIN_AGE


def boot_time() -> float:
    """When the running kernel booted (``btime`` of /proc/stat), 0 when unknown."""
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def find(
    managed: ManagedRoot,
    booted: int | None,
    default: int | None,
    *,
    candidates: Iterable[int] | None = None,
    live: Iterable[int] = (),
) -> Leftovers:
    """The leftovers among *candidates* (default: every numbered directory).

    Never the *booted* or the *default* snapshot, nor the forks in *live* (a running
    transaction's).
    """
    store = str(managed.snapshots_dir)
    skip = {booted, default, *live}
    now = time.time()
    intent = _intent(managed.root)
    orphans, stale, lost = [], [], []
    young = False
    for n in sorted(set(numbers(managed.snapshots_dir) if candidates is None else candidates)):
        if n in skip or n <= 0:
            continue
        data = _info(store, n)
        if data is None:
            if not os.path.isdir(f"{store}/{n}"):
                continue
            if _young(store, n, now):
                young = True
            else:
                orphans.append(n)
        elif _MARK in data:
            stale.append(n)
        elif (
            intent is not None
            and n == intent[0]
            and _FAILED_MARK not in data
            and _same_subvolume(store, n, intent[1])
        ):
            lost.append(n)
    return Leftovers(orphans, stale, lost, young)


def status_candidates(managed: ManagedRoot, booted: int | None, default: int | None) -> list[int]:
    """Where ``status`` looks: every snapshot newer than the older of booted and default.

    A fork is numbered above everything that existed when it was made, the booted and default
    snapshots included, so leftovers of transactions run since the last boot (or since the
    default was set) are all there; older ones need a rollback to a newer snapshot in between,
    and ``list`` (``!``) and ``cleanup`` still find those.  With a thousand snapshots mostly
    older than the booted one, status reads a handful of files instead of a thousand.
    """
    known = [n for n in (booted, default) if n is not None]
    low = min(known) if known else 0
    found = [n for n in numbers(managed.snapshots_dir) if n > low]
    intent = read_intent(managed.root)
    if intent is not None and intent not in found:
        found.append(intent)
    return found


CACHE = "var/cache/transactional-update/leftovers"


def for_status(
    managed: ManagedRoot, booted: int | None, default: int | None, live: list[int] | None
) -> Leftovers:
    """The leftovers ``status`` reports; *live* is None unless a transaction runs.

    What :func:`find` saw is kept in :data:`CACHE` under the store's modification time (and
    booted and default, which choose the candidates): orphans and stale forks only come or go
    with a directory of the store created or removed, which changes that time - except while a
    transaction runs (its own fork turns from in progress to done: never cached then) or while
    a directory without info.xml is too young to judge (not cached either).  A lost commit
    depends on the intent, read every time.  With a thousand snapshots this saves reading a
    thousand files per ``status``; a missing, garbled or outdated cache is a plain rescan.
    """
    if live is not None:
        candidates = status_candidates(managed, booted, default)
        return find(managed, booted, default, candidates=candidates, live=live)
    try:
        key = f"{os.stat(managed.snapshots_dir).st_mtime_ns} {booted} {default}"
    except OSError:
        key = ""
    cached = _load_cache(managed.root, key) if key else None
    if cached is not None:
        intent = read_intent(managed.root)
        lost = [] if intent is None else find(managed, booted, default, candidates=[intent]).lost
        return Leftovers(cached[0], cached[1], lost)
    found = find(managed, booted, default, candidates=status_candidates(managed, booted, default))
    if key and not found.young:
        _save_cache(managed.root, key, found)
    return found


def _load_cache(root: Path, key: str) -> tuple[list[int], list[int]] | None:
    try:
        fd = os.open(root / CACHE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        lines = os.read(fd, 1 << 16).decode("ascii", errors="replace").split("\n")
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(lines) < 3 or lines[0] != key:
        return None
    try:
        return [int(n) for n in lines[1].split()], [int(n) for n in lines[2].split()]
    except ValueError:
        return None


def _save_cache(root: Path, key: str, found: Leftovers) -> None:
    """Best effort and not fsynced: a cache lost in a cut or not writable is a rescan."""
    path = root / CACHE
    tmp = path.with_name(f".{path.name}.tmp")
    text = f"{key}\n{' '.join(map(str, found.orphans))}\n{' '.join(map(str, found.stale))}\n"
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="ascii")
        os.replace(tmp, path)
