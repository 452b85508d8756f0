"""``setup-boot-fs``: make an existing system's ``/boot/grub`` survive a power cut.

Systems made before ``create-system`` switched to ext4 have ``/boot/grub`` on ext2, which has no
journal: a power cut while ``grub.cfg`` is replaced can leave an unattached inode and wrong
bitmaps, the boot-time fsck (preen mode) gives up, and the partition (``nofail``) is silently not
mounted.  The steps, each only when needed:

1. ``/boot/grub`` not mounted (e.g. that fsck failed): ``e2fsck -fy`` repairs it, then it is
   mounted at ``ROOT/boot/grub``;
2. no journal: ``tune2fs -j`` adds one (also while mounted; see :func:`add_journal`);
3. in a new snapshot: the fstab mounts ``/boot/grub`` as ``ext4`` with fsck pass 2, and
   ``fsck.repair=yes`` joins the kernel command line (:data:`grub.FSCK_REPAIR`).

Older snapshots keep ``ext2`` in their fstab.  That still mounts the journaled filesystem: a
kernel without the ext2 driver (Debian's: ``CONFIG_EXT4_USE_FOR_EXT2``) mounts it with ext4's
code, journal included; only a journal that still needs recovery (right after a power cut)
makes an ``ext2`` mount fail, and the boot's fsck of pass 2 has replayed it before the mount.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from transactional_update.boot import bootmenu, grub
from transactional_update.core.lock import Lock
from transactional_update.errors import NotManagedError, SystemError_
from transactional_update.paths import resolve_under
from transactional_update.proc import run
from transactional_update.snapshots.system import CONTINUE_DEFAULT

if TYPE_CHECKING:
    from transactional_update.core.context import Context
    from transactional_update.core.transaction import Options, Result

log = logging.getLogger(__name__)

FSTYPE = "ext4"
PASSNO = "2"
EXT_TYPES = ("ext2", "ext3", "ext4")

Emit = Callable[[str], None]


@dataclass
class BootFs:
    """What ``setup-boot-fs`` found and did (``--json`` prints it)."""

    mount_point: str  # /boot/grub (or /boot/grub2)
    source: str  # as the fstab names it: UUID=...
    device: str
    fsck: str | None = None  # None: mounted, not checked; "clean" or "repaired"
    mounted: bool = False  # mounted by us
    journal: str = "present"  # or "added"
    fstab: str = "current"  # or "changed"
    fsck_repair: str = "current"  # or "added", or the admin's own value, left alone
    snapshot: int | None = None
    steps: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "mount_point": self.mount_point,
            "source": self.source,
            "device": self.device,
            "fsck": self.fsck,
            "mounted": self.mounted,
            "journal": self.journal,
            "fstab": self.fstab,
            "fsck_repair": self.fsck_repair,
            "snapshot": self.snapshot,
            "steps": self.steps,
        }


# --- the fstab -----------------------------------------------------------------------------------


def fstab_entry(text: str, where: str) -> tuple[int, list[str]] | None:
    """``(line index, fields)`` of the last fstab line mounting *where* (None: no such line)."""
    found = None
    for i, line in enumerate(text.splitlines()):
        fields = line.split()
        if len(fields) >= 3 and not fields[0].startswith("#") and fields[1] == where:
            found = (i, fields)
    return found


def fstab_wants_change(fields: list[str]) -> bool:
    return fields[2] != FSTYPE or (fields[5] if len(fields) > 5 else "0") != PASSNO


def fixed_fstab(text: str, where: str) -> str:
    """*text* with the *where* line mounting ``ext4`` with fsck pass 2; every other line kept."""
    entry = fstab_entry(text, where)
    assert entry is not None
    index, fields = entry
    fields += ["defaults", "0", "0"][len(fields) - 3 :]
    fields[2], fields[5] = FSTYPE, PASSNO
    lines = text.splitlines(keepends=True)
    lines[index] = " ".join(fields) + "\n"
    return "".join(lines)


# --- the kernel command line ---------------------------------------------------------------------


def fsck_repair_value(defaults: dict[str, str]) -> str | None:
    """The ``fsck.repair=`` value the snapshot's GRUB defaults give the kernel (the last one)."""
    value = None
    for key in bootmenu.CMDLINE_KEYS:
        for word in defaults.get(key, "").split():
            if word.startswith("fsck.repair="):
                value = word.removeprefix("fsck.repair=")
    return value


def with_fsck_repair(text: str | None) -> str:
    """Our GRUB defaults file (*text*; None: there is none) with fsck.repair=yes added."""
    if text is None:
        text = "# written by transactional-update (setup-boot-fs)\n"
    elif text and not text.endswith("\n"):
        text += "\n"
    return text + grub.cmdline_line([grub.FSCK_REPAIR]) + "\n"


# --- the device ----------------------------------------------------------------------------------


def resolve_source(source: str, target: Path) -> str:
    """The device an fstab source names (``UUID=``, ``LABEL=``, ``PARTUUID=``, a path).

    Copies of a disk share their UUIDs: of several devices the one mounted at *target* is meant,
    else none can be picked safely (e2fsck and tune2fs on the wrong one are no small mistake).
    """
    key, sep, value = source.partition("=")
    if not sep or source.startswith("/"):
        devices = [source] if Path(source).is_block_device() else []
    else:
        # -c /dev/null: probe the devices now, not blkid's cache (it keeps detached loop devices)
        argv = ["blkid", "-c", "/dev/null", "-o", "device", "-t", f"{key}={value}"]
        res = run(argv, check=False, what="blkid")
        devices = [d for d in res.stdout.split() if Path(d).is_block_device()]
    if not devices:
        raise SystemError_(
            f"no device has {source}, which the fstab mounts at /boot/grub",
            "attach the disk, or check the fstab entry (blkid lists the filesystems)",
        )
    if len(devices) > 1:
        mounted = [d for d in devices if str(target) in mount_points_of(d)]
        if len(mounted) != 1:
            raise SystemError_(
                f"several devices have {source}: {', '.join(devices)}",
                f"mount the right one at {target}, or detach the copies",
            )
        return mounted[0]
    return devices[0]


def mount_points_of(device: str) -> list[str]:
    """Where *device* is mounted, from this process's mount table."""
    rdev = os.stat(device).st_rdev
    want = f"{os.major(rdev)}:{os.minor(rdev)}"
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if fields[2] == want:
                points.append(fields[4].replace("\\040", " "))
    return points


def features(device: str) -> set[str]:
    """The ext2/3/4 features of *device* (``dumpe2fs -h``); refuses anything else."""
    res = run(["dumpe2fs", "-h", device], check=False, what="dumpe2fs")
    for line in res.stdout.splitlines():
        if line.startswith("Filesystem features:"):
            return set(line.split(":", 1)[1].split())
    kind = run(["blkid", "-p", "-o", "value", "-s", "TYPE", device], check=False).stdout.strip()
    raise NotManagedError(
        f"{device} holds {kind or 'no filesystem blkid knows'}, not ext2/ext3/ext4",
        "setup-boot-fs only converts an ext2 /boot/grub; create-system makes it ext4",
    )


def check(device: str) -> str:
    """``e2fsck -fy``: "clean" or "repaired"; damage it cannot repair is an error."""
    res = run(["e2fsck", "-f", "-y", device], check=False, what="e2fsck")
    log.debug("e2fsck -fy %s: exit %d\n%s%s", device, res.returncode, res.stdout, res.stderr)
    # e2fsck's exit code is a bit mask: 1 errors corrected, 2 also (reboot if it was mounted),
    # 4 errors left, 8 operational error, 16 usage, 32 cancelled, 128 library error.
    if res.returncode & 8 and "in use" in res.stdout + res.stderr:
        # Unmounted here, but mounted still in another mount namespace (a chroot, a service
        # with a private /boot) or held open exclusively.
        raise SystemError_(
            f"{device} is in use, though not mounted at /boot/grub: e2fsck cannot check it",
            "find the holder (a mount in another namespace: grep in /proc/*/mountinfo), end it, "
            "and rerun",
        )
    if res.returncode >= 4:
        last = (res.stderr or res.stdout).strip().splitlines()
        raise SystemError_(
            f"e2fsck -fy {device} could not repair it (exit {res.returncode})"
            + (f": {last[-1]}" if last else ""),
            f"run e2fsck -f {device} by hand; /boot/grub stays unmounted",
        )
    return "repaired" if res.returncode else "clean"


def add_journal(device: str) -> None:
    """``tune2fs -j``.  On a mounted filesystem the journal is the file ``.journal`` in its top
    directory until the next check (the boot's fsck) moves it into the reserved inode; the
    running mount uses it from the next mount on."""
    run(["tune2fs", "-j", device], what="tune2fs -j (add a journal)")


# --- the command ---------------------------------------------------------------------------------


def _next_boot_dir(ctx: Context, opts: Options) -> Path:
    """The snapshot that decides whether a new one is needed: the one that boots next (the
    default; a second run right after the first finds its pending snapshot), or the base
    ``--continue`` names."""
    managed = ctx.managed
    if opts.continue_from is None or opts.continue_from == CONTINUE_DEFAULT:
        number = managed.default() or managed.booted()
    else:
        number = opts.continue_from
    return managed.snapshot_dir(number) if number is not None else ctx.root


def _defaults_file(snap: Path) -> Path:
    return resolve_under(snap, grub.DEFAULTS_PATH)


def _plan(snap: Path, where: str) -> tuple[bool, str | None]:
    """Whether *snap*'s fstab needs the change, and whether (None) or which value its
    command line already gives fsck.repair."""
    text = resolve_under(snap, "/etc/fstab").read_text(encoding="utf-8")
    entry = fstab_entry(text, where)
    if entry is None:
        raise NotManagedError(
            f"{snap}/etc/fstab mounts nothing at {where}",
            f"the snapshot's fstab lost the {where} line; add it back first",
        )
    return fstab_wants_change(entry[1]), fsck_repair_value(bootmenu.read_snapshot(snap).defaults)


def setup_boot_fs(ctx: Context, opts: Options, emit: Emit) -> BootFs:
    """Run the steps of the module docstring; *emit* gets one line per step as it is done."""
    tools = grub.detect(ctx.root)
    where = f"/{tools.grub_dir}"
    fstab = resolve_under(ctx.root, "/etc/fstab")
    try:
        text = fstab.read_text(encoding="utf-8")
    except OSError as exc:
        raise NotManagedError(f"cannot read {fstab}: {exc.strerror}", "is ROOT a system?") from exc
    entry = fstab_entry(text, where)
    if entry is None:
        raise NotManagedError(
            f"{ctx.root} has no separate {where} partition (nothing in its /etc/fstab)",
            "only a /boot/grub partition can be set up; create-system makes one",
        )
    source = entry[1][0]
    target = Path(os.path.realpath(ctx.root)) / tools.grub_dir  # as the mount table names it
    device = resolve_source(source, target)
    out = BootFs(where, source, device)

    def say(line: str) -> None:
        out.steps.append(line)
        emit(line)

    with Lock(ctx.managed.snapshots_dir, ctx.config.lock_wait):
        feats = features(device)
        kind = "ext4" if "extent" in feats else "ext3" if "has_journal" in feats else "ext2"
        kind += ", journaled" if "has_journal" in feats else ", no journal"
        points = mount_points_of(device)
        mounted = str(target) in points
        say(f"{where}: {device} ({source}, {kind}){', mounted' if mounted else ''}")
        if not mounted:
            if points:
                raise SystemError_(
                    f"{device} is mounted at {points[0]}, not at {target}",
                    f"unmount it there, or mount it at {target}",
                )
            if os.path.ismount(target):
                raise SystemError_(
                    f"{target} is mounted from another device than {device} ({source})",
                    f"unmount {target}, or correct the fstab entry",
                )
            out.fsck = check(device)
            say(f"e2fsck -fy {device}: {out.fsck}")
            if "has_journal" not in feats:
                # Before mounting: the journal goes straight into its reserved inode.
                add_journal(device)
                out.journal = "added"
                say(f"tune2fs -j {device}: journal added")
            if not target.is_dir():
                raise SystemError_(
                    f"{target} does not exist: nothing to mount {device} on",
                    f"create {where} in the snapshot (transactional-update run mkdir {where})",
                )
            run(["mount", device, str(target)], what=f"mount {where}")
            out.mounted = True
            say(f"mounted {device} at {target}")
        elif "has_journal" not in feats:
            add_journal(device)
            out.journal = "added"
            say(f"tune2fs -j {device}: journal added (hidden by the next boot's fsck)")

    fstab_change, repair = _plan(_next_boot_dir(ctx, opts), where)
    if repair is not None and repair != "yes":
        out.fsck_repair = f"fsck.repair={repair}"
        say(f"kernel command line: fsck.repair={repair} is set there; left as it is")
    if not fstab_change and repair is not None:
        untouched = out.fsck is None and out.journal == "present"
        say(
            ("everything is already set: " if untouched else "")
            + f"the fstab mounts {where} as {FSTYPE} (pass {PASSNO}), "
            + f"fsck.repair={repair}; no snapshot was made"
        )
        return out
    out.snapshot = _commit(ctx, opts, where, out, say)
    return out


def _commit(ctx: Context, opts: Options, where: str, out: BootFs, say: Emit) -> int | None:
    from transactional_update.core.transaction import NothingToDo, Transaction

    tx = Transaction(ctx, opts)
    with tx:
        assert tx.number is not None
        snap = ctx.managed.snapshot_dir(tx.number)
        done = []
        fstab_change, repair = _plan(snap, where)  # the fork: its base may have moved
        if fstab_change:
            path = resolve_under(snap, "/etc/fstab")
            path.write_text(fixed_fstab(path.read_text(encoding="utf-8"), where), "utf-8")
            out.fstab = "changed"
            done.append(f"/etc/fstab mounts {where} as {FSTYPE} (pass {PASSNO})")
        if repair is None:
            path = _defaults_file(snap)
            old = path.read_text(encoding="utf-8") if path.is_file() else None
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(with_fsck_repair(old), encoding="utf-8")
            out.fsck_repair = "added"
            done.append(f"{grub.DEFAULTS_PATH} adds {grub.FSCK_REPAIR}")
        if not done:
            raise NothingToDo("everything is already set")
        say(f"snapshot {tx.number}: {'; '.join(done)}")
    result: Result = tx.result
    if result.dropped:
        say(f"{result.reason}; no snapshot was made")
        return None
    say(f"snapshot {result.number} is the new default; reboot to use it")
    return result.number
