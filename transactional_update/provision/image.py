"""Build a managed system: btrfs with openSUSE MicroOS's subvolume layout and a snapper config.

Used by the README's demo and by the tests (and the base of ``create-system``).  Layout on the
filesystem's top level::

    @                          container, never booted
    @/.snapshots               snapper's store, mounted at /.snapshots
    @/.snapshots/1/snapshot    the first root filesystem (read-only, the default subvolume)
    @/var @/home @/root @/opt @/srv @/usr/local   data that no snapshot owns

The dpkg database describes one snapshot, so it moves into it (``/usr/share/dpkg/database``) and
``/var/lib/dpkg`` becomes a link to it, as Debian-based OSTree systems do; a tmpfiles.d line
recreates the link in a fresh ``/var``.  rpm's database likewise lives at
``/usr/lib/sysimage/rpm`` (openSUSE's and Fedora's place) with ``/var/lib/rpm`` a link to it; a
root whose rpm looks elsewhere (Debian's uses ``~/.rpmdb``) gets a macros file saying so, and
dnf's history, which describes that database, moves to ``/usr/lib/sysimage/dnf``.
"""

from __future__ import annotations

import os
import shutil
import uuid as uuid_mod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from transactional_update.config import conffile
from transactional_update.etc import migrate
from transactional_update.proc import run
from transactional_update.record.pkgdb import DPKG_DB
from transactional_update.snapshots import btrfs, etcvol

DATA_SUBVOLUMES = ("var", "home", "root", "opt", "srv", "usr/local")
GRUB_FSTYPE = "ext4"  # /boot/grub: journaled, so a power cut leaves nothing for fsck to guess
# The subvolume mounted first at boot; the other read-write mounts wait for it (see fstab()).
FIRST_RW_MOUNT = "var"
ROOT_MOUNT_OPTIONS = "rw"
DPKG_LINK_TARGET = "../../usr/share/dpkg/database"
RPM_DB = "usr/lib/sysimage/rpm"
RPM_LINK_TARGET = "../../usr/lib/sysimage/rpm"
# Debian's rpm keeps its database in ~/.rpmdb (it is not meant to own the system); a root that
# manages itself with rpm gets it where openSUSE and Fedora keep it, inside the snapshot.
DNF_PERSISTDIR = "usr/lib/sysimage/dnf"
RPM_MACROS = "etc/rpm/macros.transactional-update"
RPM_MACROS_TEXT = (
    "# written by transactional-update: the rpm database belongs to the snapshot\n"
    "%_dbpath /usr/lib/sysimage/rpm\n"
)

# NUMBER_CLEANUP="no": snapper 0.10.4's own cleanup cannot delete a snapshot that holds its own
# /etc subvolume (snapshots.etcvol); `transactional-update cleanup` applies these NUMBER_ limits
# and deletes the nested /etc first.
SNAPPER_CONFIG = """\
# snapper config of the root filesystem, written by transactional-update
# NUMBER_CLEANUP="no": transactional-update cleanup applies the NUMBER_ limits (snapper's own
# cleanup cannot delete a snapshot holding its own /etc subvolume)
SUBVOLUME="/"
FSTYPE="btrfs"
QGROUP=""
SPACE_LIMIT="0.5"
FREE_LIMIT="0.2"
ALLOW_USERS=""
ALLOW_GROUPS=""
SYNC_ACL="no"
BACKGROUND_COMPARISON="no"
NUMBER_CLEANUP="no"
NUMBER_MIN_AGE="0"
NUMBER_LIMIT="10"
NUMBER_LIMIT_IMPORTANT="4"
TIMELINE_CREATE="no"
TIMELINE_CLEANUP="no"
EMPTY_PRE_POST_CLEANUP="no"
"""


def info_xml(number: int, description: str, date: datetime | None = None) -> str:
    from xml.sax.saxutils import escape

    when = (date or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S")
    return (
        '<?xml version="1.0"?>\n<snapshot>\n  <type>single</type>\n'
        f"  <num>{number}</num>\n  <date>{when}</date>\n"
        f"  <description>{escape(description)}</description>\n</snapshot>\n"
    )


def fstab(uuid: str, grub_uuid: str | None = None, esp_uuid: str | None = None) -> str:
    """The fstab of a managed system.

    ``/`` has no ``subvol=`` (the default subvolume boots) and is mounted read-write: the
    snapshot's btrfs read-only flag keeps it unchanged, and its ``/etc``, a subvolume of its own
    without that flag, takes the admin's writes (see :mod:`snapshots.etcvol`); ``/tmp`` is a
    tmpfs because nothing may write into a read-only snapshot; ``/boot/grub`` (GRUB's own
    partition, when there is one) belongs to no snapshot, nor does the EFI system partition.
    ``/boot/grub`` keeps fsck pass 2 and ``nofail``: the boot checks it (and with
    ``fsck.repair=yes`` on the kernel command line repairs it) and a failure to mount it does not
    stop the boot, since GRUB needs it only before Linux runs.

    The read-write subvolume mounts wait for ``/var`` (``x-systemd.after=``): while ``/`` is
    still mounted read-only (the kernel's ``ro``, until systemd-remount-fs) the filesystem's
    superblock is read-only, and a kernel that mounts
    through btrfs's old mount code (Debian 12's 6.1) mounts a read-write subvolume then by
    mounting it read-only and remounting the superblock read-write.  Two such mounts at once
    race: when the other's remount lands between those two steps, the read-only attempt fails
    with EBUSY.  systemd starts every fstab mount at once, so now and then one of these seven
    failed and the boot fell into emergency mode (SUSE's kernels serialize these mounts with a
    patch of their own, bsc#951844).  Once ``/var`` is mounted the superblock is read-write and
    the other mounts take the plain path, in parallel again.
    """
    after = f",x-systemd.after={FIRST_RW_MOUNT}.mount"
    lines = [
        f"UUID={uuid} / btrfs {ROOT_MOUNT_OPTIONS} 0 0",
        f"UUID={uuid} /.snapshots btrfs subvol=/@/.snapshots{after} 0 0",
    ]
    lines += [
        f"UUID={uuid} /{d} btrfs subvol=/@/{d}{'' if d == FIRST_RW_MOUNT else after} 0 0"
        for d in DATA_SUBVOLUMES
    ]
    if grub_uuid is not None:
        lines.append(f"UUID={grub_uuid} /boot/grub {GRUB_FSTYPE} defaults,nofail 0 2")
    if esp_uuid is not None:
        lines.append(f"UUID={esp_uuid} /boot/efi vfat umask=0077,nofail 0 2")
    lines.append("tmpfs /tmp tmpfs mode=1777,nosuid,nodev 0 0")
    return "\n".join(lines) + "\n"


def _move_contents(src: Path, dst: Path) -> None:
    for entry in list(src.iterdir()):
        shutil.move(str(entry), str(dst / entry.name))


def _rpm_dbpath(snap: Path) -> str | None:
    """The ``%_dbpath`` of rpm's own macros in the root at *snap* (None: not set there)."""
    macros = snap / "usr/lib/rpm/macros"
    if not macros.is_file():
        return None
    for line in macros.read_text(encoding="utf-8", errors="replace").splitlines():
        words = line.split(None, 1)
        if len(words) == 2 and words[0] == "%_dbpath":
            return words[1].strip()
    return None


def _place_rpm_database(snap: Path) -> None:
    """Put rpm's database at /usr/lib/sysimage/rpm, with /var/lib/rpm a link to it (as dpkg's)."""
    if not (snap / "usr/lib/rpm").is_dir():
        return  # no rpm in this root
    db, link = snap / RPM_DB, snap / "var/lib/rpm"
    db.mkdir(parents=True, exist_ok=True)
    if link.is_dir() and not link.is_symlink():
        _move_contents(link, db)
        link.rmdir()
    if not link.is_symlink():
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(RPM_LINK_TARGET, link)
        tmpfiles = snap / "usr/lib/tmpfiles.d/transactional-update-rpm.conf"
        tmpfiles.parent.mkdir(parents=True, exist_ok=True)
        tmpfiles.write_text(f"L /var/lib/rpm - - - - {RPM_LINK_TARGET}\n", encoding="utf-8")
    if _rpm_dbpath(snap) != f"/{RPM_DB}":
        (snap / RPM_MACROS).parent.mkdir(parents=True, exist_ok=True)
        (snap / RPM_MACROS).write_text(RPM_MACROS_TEXT, encoding="utf-8")
    _place_dnf_history(snap)


def _place_dnf_history(snap: Path) -> None:
    """dnf's history (install reasons, transactions) describes the rpm database: keep it beside it.

    dnf keeps it in ``persistdir`` (``/var/lib/dnf`` by default), which the chroot does not share
    with the live system; ``/usr/lib/sysimage/dnf`` rolls back with the snapshot.
    """
    conf = snap / "etc/dnf/dnf.conf"
    if not conf.is_file():
        return
    text = conf.read_text(encoding="utf-8")
    if any(line.split("=", 1)[0].strip() == "persistdir" for line in text.splitlines()):
        return
    persist, old = snap / DNF_PERSISTDIR, snap / "var/lib/dnf"
    persist.mkdir(parents=True, exist_ok=True)
    if old.is_dir() and not old.is_symlink():
        _move_contents(old, persist)
        old.rmdir()
    lines = text.splitlines(keepends=True)
    at = next((i + 1 for i, line in enumerate(lines) if line.strip() == "[main]"), None)
    setting = f"persistdir=/{DNF_PERSISTDIR}\n"
    if at is None:
        lines += ["[main]\n", setting]
    else:
        lines.insert(at, setting)
    conf.write_text("".join(lines), encoding="utf-8")


def _give_identity(snap: Path) -> None:
    """A machine ID of its own, as an installer writes one.

    mmdebstrap leaves ``/etc/machine-id`` empty for images.  systemd then makes up a new ID at
    every boot, because a read-only root never lets it commit one: every boot would count as the
    first (presets re-applied) and the journal would start a new directory each time.
    """
    path = snap / "etc/machine-id"
    try:
        current = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        current = ""
    if not current or current == "uninitialized":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{uuid_mod.uuid4().hex}\n", encoding="ascii")
        path.chmod(0o444)


def populate(
    top: Path,
    rootfs_tar: Path,
    uuid: str,
    grub_uuid: str | None = None,
    esp_uuid: str | None = None,
) -> Path:
    """Create the layout below the mounted top level *top*; returns snapshot 1's directory.

    *grub_uuid* names GRUB's own partition, mounted at /boot/grub, and *esp_uuid* the EFI
    system partition, mounted at /boot/efi (see :func:`fstab`).
    """
    btrfs.create_subvolume(top / "@")
    btrfs.create_subvolume(top / "@/.snapshots")
    (top / "@/.snapshots/1").mkdir()
    snap = top / "@/.snapshots/1/snapshot"
    btrfs.create_subvolume(snap)
    run(
        ["tar", "-x", "-p", "--xattrs", "--numeric-owner", "-C", str(snap), "-f", str(rootfs_tar)],
        what="unpack the root filesystem",
    )
    # The package database belongs to the snapshot; the rest of /var is shared data.
    if (snap / "var/lib/dpkg").is_dir() and not (snap / "var/lib/dpkg").is_symlink():
        (snap / DPKG_DB).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(snap / "var/lib/dpkg"), str(snap / DPKG_DB))
        os.symlink(DPKG_LINK_TARGET, snap / "var/lib/dpkg")
        tmpfiles = snap / "usr/lib/tmpfiles.d/transactional-update-dpkg.conf"
        tmpfiles.parent.mkdir(parents=True, exist_ok=True)
        tmpfiles.write_text(f"L /var/lib/dpkg - - - - {DPKG_LINK_TARGET}\n", encoding="utf-8")
    _place_rpm_database(snap)
    migrate.own_etc(snap)
    for d in DATA_SUBVOLUMES:
        (top / "@" / d).parent.mkdir(parents=True, exist_ok=True)
        btrfs.create_subvolume(top / "@" / d)
        inside = snap / d
        inside.mkdir(parents=True, exist_ok=True)
        _move_contents(inside, top / "@" / d)
    if (snap / "usr/bin/zypper").exists():
        # libzypp's shared state (AutoInstalled, AnonymousUniqueId) is bound into the chroot
        # from the live /var, so it must exist there; Debian's libzypp does not create it.
        (top / "@/var/lib/zypp").mkdir(parents=True, exist_ok=True)
    (snap / ".snapshots").mkdir(exist_ok=True)
    (snap / "etc/snapper/configs").mkdir(parents=True, exist_ok=True)
    (snap / "etc/snapper/configs/root").write_text(SNAPPER_CONFIG, encoding="utf-8")
    (snap / "etc/default").mkdir(exist_ok=True)
    # Debian's snapper apt hook would take pre/post snapshots from inside every transaction's
    # chroot (and fail there): the transaction is the snapshot.
    (snap / "etc/default/snapper").write_text(
        'SNAPPER_CONFIGS="root"\nDISABLE_APT_SNAPSHOT="yes"\n', encoding="utf-8"
    )
    (snap / "etc/fstab").write_text(fstab(uuid, grub_uuid, esp_uuid), encoding="utf-8")
    _give_identity(snap)
    if grub_uuid is not None:
        (snap / "boot/grub").mkdir(parents=True, exist_ok=True)
    if esp_uuid is not None:
        (snap / "boot/efi").mkdir(parents=True, exist_ok=True)
    (top / "@/.snapshots/1/info.xml").write_text(
        info_xml(1, "first root filesystem"), encoding="utf-8"
    )
    # The /etc snapshot 1 boots with, as sync-etc keeps it at every first boot: what the admin
    # edits live from here on is what a rollback would leave behind.
    btrfs.snapshot(snap / etcvol.ETC, top / "@/.snapshots/1" / etcvol.BOOTED, read_only=True)
    btrfs.set_read_only(snap, True)
    btrfs.set_default(snap)
    return snap


ROOTFS_CACHE = Path("/var/cache/transactional-update")


def host_suite() -> str:
    """The Debian suite of the running system (bookworm, trixie, ...)."""
    text = Path("/etc/os-release").read_text(encoding="utf-8")
    return (
        conffile.values(text, "/etc/os-release", conffile.Lines.LENIENT).get("VERSION_CODENAME")
        or "bookworm"
    )


def rootfs_name(suite: str, extra: Sequence[str]) -> str:
    """The cache file of a root with the *extra* packages: readable while it fits a file name
    (255 bytes; mmdebstrap also needs room for its ``.tmp``), else named by a digest."""
    name = f"debian-{suite}-minbase{''.join('+' + p for p in extra)}.tar"
    if len(name) <= 200:
        return name
    import hashlib

    digest = hashlib.sha256(",".join(extra).encode()).hexdigest()[:16]
    return f"debian-{suite}-minbase+{len(extra)}pkgs-{digest}.tar"


def cached_rootfs(
    cache: Path = ROOTFS_CACHE, suite: str | None = None, include: Sequence[str] = ()
) -> Path:
    """A minimal Debian root as a tarball: built once with mmdebstrap, then reused.

    *include* names extra packages (e.g. ``zypper``, ``dnf``, ``rpm``); each set gets its own
    tarball, ``debian-bookworm-minbase+dnf+rpm+zypper.tar``.
    """
    import fcntl

    suite = suite or host_suite()
    extra = sorted(set(include))
    cache.mkdir(parents=True, exist_ok=True)
    tar = cache / rootfs_name(suite, extra)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent builders wait and reuse the result
        if not tar.exists():
            tmp = tar.with_name(tar.name + ".tmp")
            argv = ["mmdebstrap", "--quiet", "--variant=minbase", "--format=tar"]
            if extra:
                argv.append("--include=" + ",".join(extra))
            run(
                [*argv, suite, str(tmp)],
                what="build the minimal Debian root (mmdebstrap)",
            )
            tmp.rename(tar)
    return tar


def make_filesystem(device: str, label: str = "tu-root") -> str:
    """mkfs.btrfs on *device*; returns the filesystem UUID."""
    run(["mkfs.btrfs", "-q", "-f", "-L", label, device], what="mkfs.btrfs")
    return run(["blkid", "-s", "UUID", "-o", "value", device], what="blkid").stdout.strip()


@contextmanager
def mounted_top(device: str, where: Path) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    run(["mount", "-o", "subvolid=5", device, str(where)], what="mount top level")
    try:
        yield where
    finally:
        run(["umount", str(where)], what="unmount top level")


def mount_system(device: str, where: Path) -> None:
    """Mount the system as it boots: the default subvolume at /, data subvolumes below."""
    where.mkdir(parents=True, exist_ok=True)
    run(["mount", device, str(where)], what="mount root")
    for d in (".snapshots", *DATA_SUBVOLUMES):
        run(["mount", "-o", f"subvol=/@/{d}", device, str(where / d)], what=f"mount /{d}")


def unmount_system(where: Path) -> None:
    run(["umount", "-R", str(where)], what="unmount system")
