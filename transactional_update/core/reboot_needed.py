"""openSUSE's ``/run/reboot-needed``: the reboot the running system needs, for other tools to read.

openSUSE's transactional-update writes the level, one word without a newline (``echo -n``), after
every snapshot it commits, keeping a higher level already there: ``reboot`` > ``kexec`` >
``soft-reboot`` (> ``none``).  ``zypper needs-rebooting``, Salt and monitoring read it.  A new
root snapshot here is always booted by a full reboot (there is no ``apply``), so a commit
writes ``reboot``.

The file lives in the running system's ``/run`` (a tmpfs, gone at the next boot); under
``--root`` in that root's ``/run``, written only when it is a mount point: a root that is not
running has no ``/run`` anyone reads (and a read-only snapshot's empty directory cannot take it).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from transactional_update.files import write_atomic
from transactional_update.paths import resolve_under

log = logging.getLogger(__name__)

MARKER = "/run/reboot-needed"
FULL = "reboot"
# openSUSE's REBOOT_PRIO: the higher level wins.
PRIORITY = {"none": 0, "soft-reboot": 1, "kexec": 2, "reboot": 3}


def merged(old: str | None, level: str) -> str:
    """The level to write when *old* is in the file: the higher of both (unknown text loses)."""
    if old is None or PRIORITY.get(old.strip(), -1) < PRIORITY.get(level, 0):
        return level
    return old.strip()


def mark(root: Path, level: str = FULL) -> Path | None:
    """Write *level* (merged with what is there) into ``ROOT/run/reboot-needed``.

    Returns the file written, or None when ``ROOT/run`` is not a mount (a root that is not
    running) or the write failed (a warning: the snapshot is committed all the same).
    """
    run = resolve_under(root, "/run")
    if not os.path.ismount(run):
        log.debug("%s is not a mount point; %s not written", run, MARKER)
        return None
    path = run / "reboot-needed"
    try:
        try:
            old: str | None = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            old = None
        write_atomic(path, merged(old, level))
    except OSError as exc:
        log.warning("cannot write %s: %s", path, exc.strerror or exc)
        return None
    return path
