"""Putting a snapshot's ``/usr`` and ``/etc`` over the running system, and taking them away again.

Each directory is switched in one step: the snapshot's directory is bound on a staging point in
``/run``, the mounts that lie below the running directory (``/usr/local``, a subvolume of its own
in the MicroOS layout) are bound into it, and the whole tree is then bound recursively over the
running directory.  A program never sees ``/usr`` without ``/usr/local``.  ``mount --move``
would do the last step without the copy, but the kernel refuses to move a mount whose parent is
shared, and systemd makes ``/`` shared.

The booted snapshot is not touched: its ``/usr`` lies beneath, still mapped by the programs that
run from it, and comes back with the next boot (or with :func:`detach`).  A second apply stacks
on the first; the mounts go with the reboot.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from transactional_update.errors import SystemError_, TUError
from transactional_update.proc import run
from transactional_update.snapshots.system import USERSPACE

log = logging.getLogger(__name__)

STAGE = "run/transactional-update/apply-stage"


def targets(snapshot_dir: Path) -> list[str]:
    """What to bind: ``/usr``; ``/bin``, ``/sbin``, ``/lib*`` where they are directories of their
    own (no merged ``/usr``); ``/etc`` last, so that a failure before it leaves ``/etc`` alone."""
    out = ["usr"]
    for name in USERSPACE:
        if name in ("usr", "etc"):
            continue
        path = snapshot_dir / name
        if path.is_dir() and not path.is_symlink():
            out.append(name)
    return [*out, "etc"]


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def submounts(mountinfo: str, where: str) -> list[str]:
    """The mount points strictly below *where*, outermost only (a recursive bind brings the rest),
    as paths relative to it, each once (stacked mounts share a path)."""
    below = where.rstrip("/") + "/"
    points = []
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) > 4:
            point = _unescape(fields[4])
            if point.startswith(below) and point not in points:
                points.append(point)
    outer = [p for p in points if not any(p.startswith(q + "/") for q in points)]
    return [p[len(below) :] for p in outer]


def _mountinfo() -> str:
    return Path("/proc/self/mountinfo").read_text(encoding="utf-8")


def is_bound(root: Path, snapshot_dir: Path, name: str) -> bool:
    """Whether *root*'s directory *name* is already *snapshot_dir*'s (an earlier, cut apply)."""
    try:
        here, there = os.stat(root / name), os.stat(snapshot_dir / name)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def attach(
    root: Path,
    snapshot_dir: Path,
    names: Sequence[str],
    keep: Sequence[tuple[str, str]] = (),
) -> list[str]:
    """Bind *snapshot_dir*'s directories *names* over *root*'s; those attached, in order.

    *keep* lists (name, path in it) that stay the running system's, as its mounts do (the
    running kernel's module tree).  A failure takes away what this call attached (so the
    running system is as it was) and raises.
    """
    stage = root / STAGE
    attached: list[str] = []
    try:
        for name in names:
            kept = [rel for top, rel in keep if top == name]
            _attach_one(root, snapshot_dir, name, stage, kept)
            attached.append(name)
    except BaseException:
        detach(root, attached)
        raise
    return attached


def _attach_one(
    root: Path, snapshot_dir: Path, name: str, stage: Path, kept: Sequence[str]
) -> None:
    live, new = root / name, snapshot_dir / name
    if not new.is_dir() or new.is_symlink():
        raise SystemError_(f"{new} is not a directory", "inspect the snapshot")
    inner = submounts(_mountinfo(), str(live))
    # A kept path inside a mount is carried with it; one that is a mount already, once.
    inner += [k for k in kept if not any(k == i or k.startswith(i + "/") for i in inner)]
    _clear_stage(stage)
    stage.mkdir(parents=True, exist_ok=True)
    run(["mount", "--bind", str(new), str(stage)], what=f"bind the new /{name}")
    try:
        # The bind joined /.snapshots' shared peer group (systemd makes / shared): unmounting the
        # stage's submounts afterwards would propagate to the copy over the live /usr and take
        # /usr/local off it.  A private stage keeps the copy to itself.
        run(["mount", "--make-rprivate", str(stage)], what="make the staging mount private")
        for rel in inner:
            if not (stage / rel).is_dir():
                raise SystemError_(
                    f"/{name}/{rel} is a mount point of the running system, but the snapshot "
                    f"has no directory {new / rel} to mount it on",
                    f"create the directory in a transaction: run -- mkdir -p /{name}/{rel}",
                )
            run(
                ["mount", "--rbind", str(live / rel), str(stage / rel)],
                what=f"carry the mount /{name}/{rel} over",
            )
        run(["mount", "--rbind", str(stage), str(live)], what=f"put the new /{name} in place")
    finally:
        try:
            _clear_stage(stage)
        except TUError as exc:
            # The new /{name} may be in place already: a leftover stage must not fail (and so
            # undo) an apply that worked; the next apply's first step clears it, or fails then.
            log.warning("the staging mounts at %s remain: %s", stage, exc.message)


def _clear_stage(stage: Path) -> None:
    if stage.is_dir() and os.path.ismount(stage):
        run(["umount", "--recursive", str(stage)], what="remove the staging mounts")


def detach(root: Path, names: Sequence[str]) -> None:
    """Take the binds of *names* off *root* again, newest first; lazily, because the programs
    started from them meanwhile keep them busy (they go when those end)."""
    for name in reversed(names):
        run(
            ["umount", "--recursive", "--lazy", str(root / name)],
            check=False,
            what=f"take the new /{name} off the running system",
        )
