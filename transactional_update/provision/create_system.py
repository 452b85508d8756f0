"""``create-system TARGET``: a bootable managed system on a block device or an image file.

The disk (GPT; boots with BIOS and with UEFI), in disk order::

    1  1 MiB    BIOS boot partition     GRUB's core image for BIOS (grub-install writes it)
    4  64 MiB   FAT32 ESP "tu-esp"      /boot/efi: GRUB's UEFI image, EFI/BOOT/BOOTX64.EFI
    2  128 MiB  ext4 "tu-grub"          /boot/grub: grub.cfg, modules, fonts, grubenv
    3  the rest btrfs "tu-root"         the MicroOS layout of :mod:`.image`, snapshot 1 = the root

Both GRUBs read the one ``/boot/grub`` (the UEFI image searches it by UUID), so ``grub.cfg``
and the environment block are shared, and GRUB can write that environment with either firmware
(``boot-once``).  The ESP is numbered 4 although it lies second, so that the partitions of a
BIOS-only layout keep their numbers.  The UEFI image is installed as the removable-media path
``EFI/BOOT/BOOTX64.EFI``: firmware boots it without an NVRAM entry, which an image file cannot
carry.

GRUB's directory is a partition of its own so that no snapshot owns the boot configuration
and GRUB can write its environment (upstream GRUB cannot write to btrfs; ``boot-once`` needs
it).  It is ext4, journaled: a power cut while grub.cfg is replaced leaves an ext2 partition
inconsistent (unattached inodes, wrong bitmaps) beyond what the boot-time fsck may repair in
preen mode, while ext4 replays its journal.  GRUB reads ext4 with its ``ext2`` driver and
writes ``grubenv`` in place (raw sectors of the file's blocks), as on ext2.  Kernels and
initrds stay inside the snapshots.  Snapshot 1 gets the GRUB integration
(:func:`grub.install_integration`), GRUB is installed to the disk from inside it, and the first
grub.cfg is generated there by grub-mkconfig and completed with the boot menu.

A target that is mounted, used as swap or held by another device is always refused; one that
holds data (a filesystem or partition table signature, or any written block of an image file)
only with ``--force``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from transactional_update.boot import grub, grubenv
from transactional_update.errors import SystemError_, UsageError
from transactional_update.log import step
from transactional_update.proc import run
from transactional_update.provision import image
from transactional_update.snapshots import btrfs

if TYPE_CHECKING:
    from transactional_update.core.chroot import ChrootSession

log = logging.getLogger(__name__)

BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
LINUX_DATA = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
ROOT_X86_64 = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
GRUB_PART_MIB = 128
ESP_MIB = 64
# mke2fs for /boot/grub.  Off explicitly, whatever the building host's mke2fs.conf enables:
# metadata_csum_seed and large_dir are incompat features that GRUB 2.06 as released refuses
# ("unknown filesystem"; Debian patched its 2.06 to ignore the newer ext4 flags in 2.06-8,
# #1030846, so Debian 12's reads them, another build of 2.06 may not), and e2fsprogs' own
# defaults since 1.47 turn metadata_csum_seed on (Debian 12's mke2fs.conf does not).
# orphan_file (also an upstream 1.47 default) GRUB ignores, but an e2fsck older than 1.47 (a
# rescue system) refuses to check a filesystem that has it, and a check is what repairs this
# partition after a power cut.  None of the three helps a directory of a few hundred files.
GRUB_MKFS = (
    "mkfs.ext4",
    "-q",
    "-F",
    "-L",
    "tu-grub",
    "-O",
    "^metadata_csum_seed,^large_dir,^orphan_file",
)
# What a bootable root needs besides minbase: an init, a kernel with an initrd that can mount
# btrfs, GRUB for BIOS, and what the tool itself calls on the running system.
BASE_PACKAGES = (
    "systemd-sysv",
    "udev",
    "initramfs-tools",
    "btrfs-progs",
    "e2fsprogs",
    "grub-pc-bin",
    "grub-efi-amd64-bin",
    "grub2-common",
    "snapper",
    "dbus",
)
DEFAULT_KERNEL = "linux-image-amd64"


@dataclass(frozen=True)
class CreateOptions:
    size: int | None = None  # bytes of a new image file
    rootfs: Path | None = None  # a root filesystem tarball; None: built with mmdebstrap
    suite: str | None = None
    kernel: str = DEFAULT_KERNEL
    include: tuple[str, ...] = ()
    serial_console: bool = False
    kernel_args: str = ""
    force: bool = False


@dataclass(frozen=True)
class Created:
    target: str
    root_uuid: str
    grub_uuid: str
    esp_uuid: str
    kernel: str | None  # the kernel version snapshot 1 boots; None: the image cannot boot


def partition_script(device: str, grub_mib: int = GRUB_PART_MIB) -> str:
    """sfdisk input for the layout above (lines named by partition, for the ESP's number)."""
    part = f"{device}p" if device[-1:].isdigit() else device
    return (
        "label: gpt\n"
        f'{part}1 : size=1MiB, type={BIOS_BOOT}, name="bios-boot"\n'
        f'{part}4 : size={ESP_MIB}MiB, type={ESP}, name="tu-esp"\n'
        f'{part}2 : size={grub_mib}MiB, type={LINUX_DATA}, name="tu-grub"\n'
        f'{part}3 : type={ROOT_X86_64}, name="tu-root"\n'
    )


_SIZE = re.compile(r"(\d+)([KMGT]?)(?:i?B)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise UsageError(f"size {text!r} is not a size", "write it like 8G, 4096M or 10000000000")
    factor: int = 1024 ** "_KMGT".index(m.group(2).upper() or "_")
    size = int(m.group(1)) * factor
    if size < 2 << 30:
        raise UsageError(f"size {text} is too small", "a managed system needs at least 2G")
    return size


def packages(opts: CreateOptions) -> list[str]:
    return sorted({*BASE_PACKAGES, opts.kernel, *opts.include})


# --- refusing targets in use or holding data -----------------------------------------------------


def _mounts_of(device: str) -> list[str]:
    """Mount points (and ``[SWAP]``) of *device* and of its partitions."""
    out = run(["lsblk", "-J", "-p", "-o", "NAME,MOUNTPOINTS", device], what="lsblk").stdout
    found: list[str] = []

    def walk(nodes: list[dict[str, object]]) -> None:
        for node in nodes:
            points = node.get("mountpoints") or []
            found.extend(str(p) for p in points if p)  # type: ignore[attr-defined]
            walk(node.get("children") or [])  # type: ignore[arg-type]

    walk(json.loads(out).get("blockdevices", []))
    return found


def _holders(device: str) -> list[str]:
    name = os.path.basename(os.path.realpath(device))
    try:
        return sorted(os.listdir(f"/sys/class/block/{name}/holders"))
    except OSError:
        return []


def _loops_of(image_file: Path) -> list[str]:
    out = run(["losetup", "-J", "-l", "-j", str(image_file)], what="losetup").stdout
    return [str(d["name"]) for d in json.loads(out or '{"loopdevices": []}')["loopdevices"]]


def _signatures(target: Path) -> list[str]:
    out = run(["wipefs", "--no-act", "--json", str(target)], what="wipefs").stdout
    return [
        str(s.get("type") or s.get("usage") or "signature")
        for s in json.loads(out or '{"signatures": []}').get("signatures", [])
    ]


def _has_written_blocks(path: Path) -> bool:
    with open(path, "rb") as f:
        try:
            os.lseek(f.fileno(), 0, os.SEEK_DATA)
        except OSError:  # ENXIO: no data at all (a fresh sparse file)
            return False
    return True


def check_target(target: Path, force: bool) -> None:
    """Refuse a target in use (always) or holding data (unless *force*)."""
    if target.is_block_device():
        devices = [str(target)]
    elif target.is_file():
        devices = _loops_of(target)
        if devices:
            raise UsageError(
                f"{target} is attached to {', '.join(devices)}",
                f"detach it first: losetup -d {devices[0]}",
            )
    else:
        raise UsageError(
            f"{target} is neither a block device nor an image file",
            "name a disk (/dev/vdb) or an image file (created with --size)",
        )
    for dev in devices:
        mounted = _mounts_of(dev)
        if mounted:
            raise UsageError(
                f"{target} is in use: mounted at {', '.join(mounted)}",
                "unmount it (and swapoff) first; create-system never touches a device in use",
            )
        held = _holders(dev)
        if held:
            raise UsageError(
                f"{target} is in use by {', '.join(held)}",
                "stop what holds it (device mapper, RAID) first",
            )
    if force:
        return
    found = _signatures(target)
    if found:
        raise UsageError(
            f"{target} holds data ({', '.join(found)})",
            "pass --force to erase it, or pick an empty device",
        )
    if target.is_file() and _has_written_blocks(target):
        raise UsageError(
            f"{target} holds data (the image file is not empty)",
            "pass --force to overwrite it, or name a new file with --size",
        )


# --- building ------------------------------------------------------------------------------------


def partitions(device: str) -> dict[int, str]:
    """``{number: /dev/...}`` of *device*'s partitions, from sysfs."""
    name = os.path.basename(os.path.realpath(device))
    base = Path("/sys/class/block") / name
    found = {}
    for sub in base.iterdir():
        number = sub / "partition"
        if number.is_file():
            found[int(number.read_text().strip())] = f"/dev/{sub.name}"
    return found


@contextmanager
def attached(target: Path) -> Iterator[str]:
    """The block device of *target*: itself, or a free loop device for an image file."""
    if target.is_block_device():
        yield str(target)
        return
    device = run(
        ["losetup", "--show", "-f", "-P", str(target)], what="attach the image"
    ).stdout.strip()
    try:
        yield device
    finally:
        run(["partx", "-d", device], check=False)
        run(["losetup", "-d", device], check=False, what="detach the image")


def _remove_empty(work: Path) -> None:
    for d in (work / "root", work / "top", work):
        with contextlib.suppress(OSError):
            d.rmdir()


def _unmount_all(where: Path) -> None:
    run(["umount", "-R", str(where)], check=False, what="unmount the new system")


def _runner(session: ChrootSession) -> grub.Runner:
    from transactional_update.core.chroot import command_env

    def capture(argv: Sequence[str]) -> tuple[int, str]:
        with tempfile.TemporaryFile() as out:
            res = session.run(
                argv, command_env(os.environ), stdout=out.fileno(), stderr=out.fileno()
            )
            out.seek(0)
            text = out.read().decode(errors="replace")
        log.debug("in the new system: %s: exit %d\n%s", " ".join(argv), res.returncode, text)
        return res.returncode, text

    return capture


EFI_MODULES = "/usr/lib/grub/x86_64-efi"
EFI_BOOT = "::/EFI/BOOT/BOOTX64.EFI"  # the removable-media path: no NVRAM entry needed


def uefi_load_cfg(grub_uuid: str) -> str:
    """The config built into GRUB's UEFI image: find /boot/grub (the ext4 partition) by UUID."""
    return f"search.fs_uuid {grub_uuid} root\nset prefix=($root)/\n"


def mkimage_argv(grub_dir: str) -> list[str]:
    """grub-mkimage for the UEFI image, run inside the new system (its own GRUB's modules)."""
    return [
        "grub-mkimage",
        "-O",
        "x86_64-efi",
        "-d",
        EFI_MODULES,
        "-c",
        f"/{grub_dir}/x86_64-efi/load.cfg",
        "-p",
        "",
        "-o",
        f"/{grub_dir}/x86_64-efi/core.efi",
        "part_gpt",
        "part_msdos",
        "ext2",  # GRUB's one driver for ext2, ext3 and ext4
        "search_fs_uuid",
    ]


def install_uefi(runner: grub.Runner, root: Path, rel: str, grub_uuid: str, esp: str) -> None:
    """GRUB for UEFI on the ESP *esp*, which is written with mtools, never mounted.

    What grub-install does for UEFI, by hand: it needs the ESP mounted, and the machine that
    builds an image may have no FAT driver in its kernel (this project's CI has none).  The
    modules go to /boot/grub/x86_64-efi like the BIOS ones; the image keeps a copy there too.
    """
    grub_dir = root / rel  # rel: boot/grub, seen the same inside the chroot
    rc, out = runner(["cp", "-r", EFI_MODULES, f"/{rel}/"])
    if rc != 0:
        raise SystemError_(f"cannot copy GRUB's UEFI modules: {out.strip()}", _EFI_HINT)
    (grub_dir / "x86_64-efi/load.cfg").write_text(uefi_load_cfg(grub_uuid), encoding="utf-8")
    rc, out = runner(mkimage_argv(rel))
    if rc != 0:
        raise SystemError_(f"grub-mkimage for UEFI failed: {out.strip()}", _EFI_HINT)
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}  # a partition, not a floppy geometry
    run(["mmd", "-i", esp, "::/EFI", "::/EFI/BOOT"], env=env, what="create EFI/BOOT on the ESP")
    core = str(grub_dir / "x86_64-efi/core.efi")
    run(["mcopy", "-i", esp, core, EFI_BOOT], env=env, what="copy GRUB onto the ESP")
    log.info("GRUB for UEFI installed on %s (%s)", esp, EFI_BOOT.removeprefix("::"))


_EFI_HINT = "the new system needs grub-efi-amd64-bin (see create-system --include)"


def create_system(target: Path, opts: CreateOptions) -> Created:
    """*target* partitioned, with a managed system on it that boots with BIOS and with UEFI.

    Whatever step fails, the loop device and the mounts are removed, and so is an image file
    this call created.
    """
    with _image_file(target, opts.size):
        _refuse(target, opts)
        rootfs = opts.rootfs or image.cached_rootfs(suite=opts.suite, include=packages(opts))
        with ExitStack() as stack:
            device = stack.enter_context(attached(target))
            disk = _make_filesystems(_partition(target, device))
            work = _unpack(stack, disk, rootfs)
            root = _mount(stack, disk, work)
            tools = _install_grub(root, disk, opts)
            kernel = _complete_boot_menu(root, tools, target)
            run(["sync"], check=False)
        return Created(str(target), disk.root_uuid, disk.grub_uuid, disk.esp_uuid, kernel)


@dataclass(frozen=True)
class _Disk:
    """The partitions of the new disk, with their filesystems made."""

    grub: str  # partition 2, ext4: /boot/grub
    root: str  # partition 3, btrfs: the system
    esp: str  # partition 4, FAT32: GRUB's UEFI image
    grub_uuid: str
    root_uuid: str
    esp_uuid: str


@contextmanager
def _image_file(target: Path, size: int | None) -> Iterator[None]:
    """*target* exists: a missing one is made an image file of *size* bytes, removed on failure."""
    new_file = not target.exists()
    if new_file:
        if size is None:
            raise UsageError(
                f"{target} does not exist", "pass --size to create it as an image file"
            )
        with open(target, "xb") as f:
            f.truncate(size)
    elif size is not None and target.is_block_device():
        raise UsageError("--size applies to image files only", "leave out --size for a disk")
    try:
        yield
    except BaseException:
        if new_file:
            target.unlink(missing_ok=True)
        raise


def _refuse(target: Path, opts: CreateOptions) -> None:
    """Nothing is written unless *target* is free to take and GRUB's arguments are valid."""
    check_target(target, opts.force)
    grub.defaults_text(opts.serial_console, opts.kernel_args)


def _partition(target: Path, device: str) -> dict[int, str]:
    """*device* holds :func:`partition_script`'s layout, each partition known to the kernel."""
    with step(f"partitioning {target}"):
        run(["wipefs", "-q", "-a", device], what="wipefs")
        run(["sfdisk", "-q", device], input_text=partition_script(device), what="sfdisk")
        run(["partx", "-u", device], check=False)
        if len(partitions(device)) < 4:
            run(["partx", "-a", device], what="partx")
        return partitions(device)


def _uuid(partition: str) -> str:
    return run(["blkid", "-s", "UUID", "-o", "value", partition], what="blkid").stdout.strip()


def _make_filesystems(parts: dict[int, str]) -> _Disk:
    """ext4 for /boot/grub, FAT32 on the ESP and btrfs for the system, with their UUIDs."""
    run([*GRUB_MKFS, parts[2]], what="mkfs.ext4")
    grub_uuid = _uuid(parts[2])
    run(["mkfs.vfat", "-F", "32", "-n", "TU-ESP", parts[4]], what="mkfs.vfat")
    esp_uuid = _uuid(parts[4])
    root_uuid = image.make_filesystem(parts[3])
    return _Disk(parts[2], parts[3], parts[4], grub_uuid, root_uuid, esp_uuid)


def _unpack(stack: ExitStack, disk: _Disk, rootfs: Path) -> Path:
    """The btrfs layout of :mod:`image` holds *rootfs* as snapshot 1; returns a work directory.

    *stack* removes the work directory once it is empty.
    """
    work = Path(tempfile.mkdtemp(prefix="tu-create-"))
    # Empty directories only: a recursive delete after a failed unmount would reach into the
    # mounted system.
    stack.callback(_remove_empty, work)
    with (
        step("unpacking the root filesystem"),
        image.mounted_top(disk.root, work / "top") as top,
    ):
        image.populate(top, rootfs, disk.root_uuid, disk.grub_uuid, disk.esp_uuid)
    return work


def _mount(stack: ExitStack, disk: _Disk, work: Path) -> Path:
    """The new system mounted as it boots, /boot/grub included; *stack* unmounts it all."""
    root = work / "root"
    stack.callback(_unmount_all, root)  # before mounting: a half-done mount is undone too
    image.mount_system(disk.root, root)
    run(["mount", disk.grub, str(root / "boot/grub")], what="mount /boot/grub")
    return root


def _install_grub(root: Path, disk: _Disk, opts: CreateOptions) -> grub.Tools:
    """GRUB for BIOS and UEFI on the disk, set up and installed from inside snapshot 1.

    Snapshot 1 gets GRUB's defaults and the integration, /boot/grub an empty environment and
    the grub.cfg of grub-mkconfig; the snapshot is read-only again afterwards, also on failure.
    """
    from transactional_update.core.chroot import ChrootSession, plan_for

    snap = root / ".snapshots/1/snapshot"
    tools = grub.detect(snap)
    with _writable(snap):
        defaults = snap / grub.DEFAULTS_PATH.lstrip("/")
        defaults.parent.mkdir(parents=True, exist_ok=True)
        defaults.write_text(
            grub.defaults_text(opts.serial_console, opts.kernel_args), encoding="utf-8"
        )
        with ChrootSession(snap, plan_for(root, ())) as session, step("setting up GRUB"):
            runner = _runner(session)
            for change in grub.install_integration(snap, runner):
                log.info("%s", change)
            grub.bootloader(tools, runner)
            install_uefi(runner, root, tools.grub_dir, disk.grub_uuid, disk.esp)
            grubenv.write(tools.env(root), {})
            grub.mkconfig(tools, runner)
    return tools


@contextmanager
def _writable(snap: Path) -> Iterator[None]:
    """Snapshot *snap* writable inside the block, read-only again after it (also on failure)."""
    btrfs.set_read_only(snap, False)
    try:
        yield
    finally:
        btrfs.set_read_only(snap, True)


def _complete_boot_menu(root: Path, tools: grub.Tools, target: Path) -> str | None:
    """grub.cfg holds the boot menu; returns the kernel snapshot 1 boots (None: none found)."""
    from transactional_update.boot.bootmenu import menu_for
    from transactional_update.core.context import open_context

    ctx = open_context(root)
    grub.install_generated(ctx, tools)
    menu = menu_for(ctx.managed, ctx.config)
    kernel = menu.main.kernel.version if menu.main else None
    if kernel is None:
        log.warning("snapshot 1 has no kernel in /boot: %s will not boot", target)
    return kernel
