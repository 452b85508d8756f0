"""GRUB integration on real disk images made by ``create-system`` (Debian's real GRUB tools).

One image is created per module with ``create-system`` from a cached bootable Debian root (kernel,
initramfs, grub-pc-bin, systemd); each test works on its own sparse copy, attached to a free loop
device and mounted as it would boot (``/boot/grub`` = the ext4 GRUB partition).  grub-mkconfig
runs inside the image's snapshots (``grub.cfg``), never on the host's configuration; nothing here
touches the host's bootloader.  Booting the images is left to the VM tests.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from testkit.systems import IN_USE, System, _detach, _unmount_below, sh
from transactional_update.boot import bootmenu, grub, grubenv
from transactional_update.core.chroot import ChrootSession, command_env, plan_for
from transactional_update.files import checkpoint, write_atomic
from transactional_update.provision import image
from transactional_update.provision.create_system import GRUB_MKFS, CreateOptions, packages
from transactional_update.record import pkgdb
from transactional_update.snapshots import btrfs

pytestmark = [
    pytest.mark.skipif(
        not all(
            shutil.which(t) for t in ("sfdisk", "grub-script-check", "grub-editenv", "grub-fstest")
        ),
        reason="needs fdisk and grub-common (./tu-dev test installs them)",
    ),
]

HOSTILE = "it's $(reboot); } \\ ${root} `id` \"q\"\nmenuentry 'x' { echo pwned }"
KERNEL = "linux-image-cloud-amd64"  # boots in qemu and is a fraction of the generic one


def bootable_rootfs() -> Path:
    return image.cached_rootfs(include=packages(CreateOptions(kernel=KERNEL)))


def tu_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "transactional_update", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


@dataclass
class Disk(System):
    """A system made by create-system: partitions 1 BIOS boot, 2 /boot/grub (ext4), 3 btrfs."""

    top: Path = Path()

    @property
    def cfg(self) -> Path:
        return self.root / "boot/grub/grub.cfg"

    def cfg_text(self) -> str:
        return self.cfg.read_text()

    def section(self) -> str:
        body = grub.section(self.cfg_text())
        assert body is not None, self.cfg_text()
        return body

    def main_linux(self) -> str:
        m = re.search(r"--id tu-default \{.*?\n\s*linux '([^']+)'", self.section(), re.S)
        assert m, self.section()
        return m.group(1)

    def submenu_ids(self) -> list[int]:
        return [int(n) for n in re.findall(r"--id tu-snapshot-(\d+) \{", self.section())]

    def grub_paths(self) -> list[str]:
        """Every kernel and initrd path the menu names (from the btrfs top level)."""
        return re.findall(r"^\s*(?:linux|initrd) '([^']+)'", self.section(), re.M)

    def set_conf(self, text: str) -> None:
        with self.booted_writable() as snap:
            (snap / "etc/transactional-update.conf").write_text(text)


@contextmanager
def mounted_disk(workdir: Path, img: Path) -> Iterator[Disk]:
    in_use = open(workdir / IN_USE, "w")  # noqa: SIM115 - held while the system lives
    fcntl.flock(in_use, fcntl.LOCK_EX)
    device = sh("losetup", "--show", "-f", "-P", str(img)).stdout.strip()
    try:
        sh("partx", "-a", device, check=False)  # this kernel makes no partition devices itself
        root, top = workdir / "root", workdir / "top"
        image.mount_system(f"{device}p3", root)
        sh("mount", f"{device}p2", str(root / "boot/grub"))
        top.mkdir()
        sh("mount", "-o", "subvolid=5", f"{device}p3", str(top))
        yield Disk(img, device, root, workdir, top)
    finally:
        _unmount_below(workdir)
        sh("partx", "-d", device, check=False)
        _detach(device)
        in_use.close()


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One image made by create-system (through the CLI, as an admin would)."""
    d = tmp_path_factory.mktemp("golden")
    img = d / "golden.img"
    bootable_rootfs()  # built (once) in the cache create-system itself uses
    r = tu_cli(
        "create-system", "--size", "3G", "--kernel", KERNEL, "--serial-console",
        "--kernel-args", "quiet", str(img),
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith(f"created a managed system on {img} (btrfs "), r.stdout
    yield img
    img.unlink(missing_ok=True)


@pytest.fixture
def disk(golden: Path, tmp_path: Path) -> Iterator[Disk]:
    img = tmp_path / "disk.img"  # the name sweep_stale knows
    sh("cp", "--sparse=always", str(golden), str(img))
    try:
        with mounted_disk(tmp_path, img) as d:
            yield d
    finally:
        img.unlink(missing_ok=True)


def assert_paths_exist(d: Disk) -> None:
    """Every kernel and initrd of the menu, read by GRUB's own btrfs driver (grub-fstest) from
    the top level as GRUB does at boot, is that file of the snapshot."""
    paths = d.grub_paths()
    assert paths
    btrfs.sync(d.root)  # grub-fstest reads the image, not the mounted filesystem
    for p in sorted(set(paths)):
        assert (d.top / p.lstrip("/")).is_file(), p
        r = sh("grub-fstest", str(d.image), "crc", f"(loop0,gpt3){p}", check=False)
        assert r.returncode == 0, r.stderr
        assert int(r.stdout, 16) == zlib.crc32((d.top / p.lstrip("/")).read_bytes()), p


def script_check(text: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    f = tmp / "check.cfg"
    f.write_text(text)
    return sh("grub-script-check", str(f), check=False)


# --- create-system -------------------------------------------------------------------------------


def test_create_system_makes_a_disk_that_boots_with_bios_and_uefi(disk: Disk) -> None:
    table = json.loads(sh("sfdisk", "--json", str(disk.image)).stdout)["partitiontable"]
    assert table["label"] == "gpt"
    types = [p["type"] for p in table["partitions"]]
    assert types[0] == "21686148-6449-6E6F-744E-656564454649"  # BIOS boot: core.img
    assert types[3] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"  # the ESP, numbered 4
    assert len(types) == 4
    assert sh("blkid", "-s", "TYPE", "-o", "value", f"{disk.device}p4").stdout.strip() == "vfat"
    # UEFI: GRUB at the removable-media path (no NVRAM entry needed), read back from the ESP
    # with mtools (this kernel has no FAT driver); it finds grub.cfg and the environment on the
    # ext4 partition by UUID, like the BIOS GRUB, and loads its modules from there.
    efi = disk.workdir / "BOOTX64.EFI"
    mtools = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    esp = f"{disk.device}p4"
    subprocess.run(
        ["mcopy", "-i", esp, "::/EFI/BOOT/BOOTX64.EFI", str(efi)], check=True, env=mtools
    )
    grub_uuid = sh("blkid", "-s", "UUID", "-o", "value", f"{disk.device}p2").stdout.strip()
    data = efi.read_bytes()
    assert data[:2] == b"MZ" and len(data) > 100_000  # a PE image
    assert f"search.fs_uuid {grub_uuid} root\nset prefix=($root)/\n".encode() in data
    assert data == (disk.root / "boot/grub/x86_64-efi/core.efi").read_bytes()
    assert (disk.root / "boot/grub/x86_64-efi/normal.mod").is_file()
    assert sh("blkid", "-s", "TYPE", "-o", "value", f"{disk.device}p2").stdout.strip() == "ext4"
    assert sh("blkid", "-s", "TYPE", "-o", "value", f"{disk.device}p3").stdout.strip() == "btrfs"
    # GRUB's boot code in the MBR and its core image in the BIOS boot partition
    with open(disk.image, "rb") as f:
        mbr = f.read(512)
        start = table["partitions"][0]["start"] * 512
        f.seek(start)
        core = f.read(512)
    assert b"GRUB" in mbr and mbr[510:] == b"\x55\xaa"
    assert core.strip(b"\0"), "no core image in the BIOS boot partition"
    assert (disk.root / "boot/grub/i386-pc/normal.mod").is_file()
    assert (disk.root / "boot/grub/fonts/unicode.pf2").is_file()
    env = disk.root / "boot/grub/grubenv"
    assert env.stat().st_size == 1024 and grubenv.read(env) == {}
    # the MicroOS layout, snapshot 1 read-only and the default
    assert disk.default() == "@/.snapshots/1/snapshot"
    assert btrfs.is_read_only(disk.snapshot(1))
    fstab = (disk.snapshot(1) / "etc/fstab").read_text()
    uuid = btrfs.fs_uuid(disk.root)
    grub_uuid = sh("blkid", "-s", "UUID", "-o", "value", f"{disk.device}p2").stdout.strip()
    # / read-write: the snapshot's read-only flag keeps all but its own /etc unchanged
    assert f"UUID={uuid} / btrfs rw 0 0\n" in fstab
    assert btrfs.is_subvolume(disk.snapshot(1) / "etc")
    assert not btrfs.is_read_only(disk.snapshot(1) / "etc")
    # the other subvolumes wait for /var (image.fstab: racing read-write mounts on Debian 12)
    assert f"UUID={uuid} /var btrfs subvol=/@/var 0 0\n" in fstab
    assert f"UUID={uuid} /home btrfs subvol=/@/home,x-systemd.after=var.mount 0 0\n" in fstab
    assert f"UUID={grub_uuid} /boot/grub ext4 defaults,nofail 0 2\n" in fstab
    esp_uuid = sh("blkid", "-s", "UUID", "-o", "value", f"{disk.device}p4").stdout.strip()
    assert f"UUID={esp_uuid} /boot/efi vfat umask=0077,nofail 0 2\n" in fstab
    assert "tmpfs /tmp tmpfs" in fstab
    assert (disk.root / "var/lib/dpkg").is_symlink()  # into the snapshot (shared /var)
    assert (disk.snapshot(1) / "etc/snapper/configs/root").is_file()
    # Debian's 10_linux is diverted (its entries would pin a snapshot); ours is in place.
    diversions = (disk.snapshot(1) / pkgdb.DPKG_DB / "diversions").read_text()
    assert grub.LINUX_SCRIPT in diversions and grub.LINUX_DIVERTED in diversions
    assert not (disk.snapshot(1) / "etc/grub.d/10_linux").exists()
    assert os.access(disk.snapshot(1) / grub.SCRIPT_PATH.lstrip("/"), os.X_OK)
    # grub.cfg: real grub-mkconfig output with our menu, no loop device, no pinned 10_linux
    text = disk.cfg_text()
    assert "### BEGIN /etc/grub.d/00_header ###" in text
    assert "10_linux ###" not in text
    assert "/dev/loop" not in text
    assert f"search --no-floppy --fs-uuid --set=root '{uuid}'" in disk.section()
    assert disk.main_linux().startswith("/@/.snapshots/1/snapshot/boot/vmlinuz-")
    pin = "rootflags=subvol=@/.snapshots/1/snapshot"
    words = [
        "root=UUID=" + uuid,
        "ro",
        pin,
        "fsck.repair=yes",
        "console=tty0",
        "console=ttyS0,115200",
    ]
    # panic=10 last: a snapshot that panics reboots, and uses up its boot tries (BOOT_TRIES)
    args = " ".join(f"'{w}'" for w in [*words, "quiet", "panic=10"]) + "\n"
    assert f"\tlinux '{disk.main_linux()}' {args}" in disk.section()
    assert "serial --unit=0 --speed=115200\n" in text and "terminal_output console serial" in text
    assert disk.submenu_ids() == [1]
    assert_paths_exist(disk)
    assert sh("grub-script-check", str(disk.cfg), check=False).returncode == 0


def test_create_system_refuses_targets_in_use_or_holding_data(tmp_path: Path) -> None:
    missing = tmp_path / "new.img"
    r = tu_cli("create-system", str(missing))
    assert r.returncode == 2
    assert r.stderr == (
        f"error: {missing} does not exist\nhint: pass --size to create it as an image file\n"
    )
    data = tmp_path / "data.img"
    sh("truncate", "-s", "64M", str(data))
    sh("mkfs.ext4", "-q", str(data))
    before = data.read_bytes()
    r = tu_cli("create-system", str(data))
    assert r.returncode == 2
    assert r.stderr == (
        f"error: {data} holds data (ext4)\n"
        "hint: pass --force to erase it, or pick an empty device\n"
    )
    assert data.read_bytes() == before  # nothing was written
    raw = tmp_path / "raw.img"
    raw.write_bytes(b"precious" * 1000)
    r = tu_cli("create-system", str(raw))
    assert r.returncode == 2 and "holds data (the image file is not empty)" in r.stderr
    # attached and mounted: refused even with --force
    device = sh("losetup", "--show", "-f", str(data)).stdout.strip()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        sh("mount", device, str(mnt))
        r = tu_cli("create-system", "--force", device)
        assert r.returncode == 2
        assert r.stderr.startswith(f"error: {device} is in use: mounted at {mnt}\n"), r.stderr
        r = tu_cli("create-system", "--force", str(data))
        assert r.returncode == 2
        assert r.stderr.startswith(f"error: {data} is attached to {device}\n"), r.stderr
    finally:
        sh("umount", str(mnt), check=False)
        _detach(device)
    r = tu_cli("--root", str(tmp_path), "create-system", "--size", "3G", str(missing))
    assert r.returncode == 2 and "--root does not apply" in r.stderr
    assert not missing.exists()


# --- the menu follows commits, rollbacks and cleanup ---------------------------------------------


def test_menu_follows_commit_rollback_and_cleanup(disk: Disk) -> None:
    r = disk.tu("run", "--", "touch", "/etc/changed")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # the refresh is silent when it works
    assert disk.main_linux().startswith("/@/.snapshots/2/snapshot/boot/vmlinuz-")
    assert disk.submenu_ids() == [2, 1]
    assert_paths_exist(disk)
    assert "rootflags=subvol=@/.snapshots/2/snapshot" in disk.section()
    r = disk.tu("rollback", "1")
    assert r.returncode == 0, r.stderr
    assert disk.main_linux().startswith("/@/.snapshots/1/snapshot/boot/vmlinuz-")
    assert "(booted, default)" in disk.section()
    # cleanup drops removed snapshots from the menu
    with disk.booted_writable() as snap:
        conf = snap / "etc/snapper/configs/root"
        conf.write_text(conf.read_text().replace('NUMBER_LIMIT="10"', 'NUMBER_LIMIT="0"'))
    r = disk.tu("cleanup")
    assert r.returncode == 0, r.stderr
    assert disk.submenu_ids() == [1]
    assert sh("grub-script-check", str(disk.cfg), check=False).returncode == 0
    assert not list((disk.root / "boot/grub").glob(".grub.cfg.tu-*"))


def test_submenu_respects_limit_order_and_title(disk: Disk) -> None:
    disk.set_conf('BOOT_MENU_LIMIT=3\nBOOT_MENU_TITLE="Older states"\n')
    for i in range(4):
        r = disk.tu("run", "--", "touch", f"/etc/x{i}")
        assert r.returncode == 0, r.stderr
    # default (5) and booted (1) always, then the newest up to 3 in all; newest first
    assert disk.submenu_ids() == [5, 4, 1]
    assert "submenu 'Older states' --id tu-snapshots {" in disk.section()
    r = disk.tu("--json", "boot-menu")
    model = json.loads(r.stdout)
    assert [e["number"] for e in model["entries"]] == [5, 4, 1]
    assert model["main"]["number"] == 5 and model["submenu"]["limit"] == 3
    assert model["grub"] == "upstream"


def test_hostile_description_is_shown_literally(disk: Disk) -> None:
    r = disk.tu("--description", HOSTILE, "run", "--", "true")
    assert r.returncode == 0, r.stderr
    section = disk.section()
    title = next(line for line in section.splitlines() if "--id tu-snapshot-2 " in line)
    assert title.startswith("\tmenuentry 'Snapshot 2 · ")
    # every character shown as typed (the newline as a space: a title is one line)
    assert bootmenu.grub_quote(bootmenu.one_line(HOSTILE))[1:-1] in title
    assert sh("grub-script-check", str(disk.cfg), check=False).returncode == 0
    r = disk.tu("boot-menu")
    assert r.returncode == 0 and r.stdout == section


# --- grub.cfg: real grub-mkconfig in a new snapshot ----------------------------------------------


def test_grub_cfg_runs_grub_mkconfig_in_a_new_snapshot(disk: Disk) -> None:
    r = disk.tu("grub.cfg")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "snapshot 2 is the new default; reboot to use it\n"
    assert disk.default_number() == 2
    text = disk.cfg_text()
    assert "### BEGIN /etc/grub.d/00_header ###" in text and "10_linux ###" not in text
    assert disk.main_linux().startswith("/@/.snapshots/2/snapshot/boot/vmlinuz-")
    assert disk.submenu_ids() == [2, 1]
    assert_paths_exist(disk)
    assert sh("grub-script-check", str(disk.cfg), check=False).returncode == 0
    assert not list((disk.root / "boot/grub").glob(".grub.cfg.tu-*"))


def test_bootloader_reinstalls_grub_from_a_new_snapshot(disk: Disk) -> None:
    with open(disk.image, "r+b") as f:
        f.write(b"\0" * 440)  # wipe GRUB's boot code (the partition table stays)
    r = disk.tu("bootloader")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "snapshot 2 is the new default; reboot to use it\n"
    with open(disk.image, "rb") as f:
        assert b"GRUB" in f.read(512)
    assert disk.main_linux().startswith("/@/.snapshots/2/snapshot/boot/vmlinuz-")
    assert sh("grub-script-check", str(disk.cfg), check=False).returncode == 0


def test_update_grub_inside_a_transaction_keeps_a_working_menu(disk: Disk) -> None:
    # What a kernel package's postinst does (zz-update-grub): grub-mkconfig in the chroot,
    # writing the live grub.cfg; the tool is not installed in this root, so the script keeps
    # the current menu, and the commit refreshes it.
    before = disk.section()
    r = disk.tu("run", "--", "sh", "-c", "update-grub 2>&1 && cat /boot/grub/grub.cfg")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "keeping the current snapshot menu" in r.stdout
    assert grub.section(r.stdout[r.stdout.index("#\n# DO NOT EDIT") :]) == before
    assert disk.main_linux().startswith("/@/.snapshots/2/snapshot/boot/vmlinuz-")
    assert disk.submenu_ids() == [2, 1]
    assert sh("grub-script-check", str(disk.cfg), check=False).returncode == 0


def mkconfig_in(disk: Disk, number: int) -> str:
    """grub-mkconfig's output in a chroot of snapshot N (to stdout: it writes no file)."""
    snap = disk.snapshot(number)
    btrfs.set_read_only(snap, False)  # the chroot adds policy-rc.d and mount points
    try:
        with (
            ChrootSession(snap, plan_for(disk.root, ())) as session,
            tempfile.TemporaryFile() as out,
            tempfile.TemporaryFile() as err,
        ):
            res = session.run(
                ["grub-mkconfig"], command_env(os.environ), stdout=out.fileno(), stderr=err.fileno()
            )
            out.seek(0)
            err.seek(0)
            text, errors = out.read().decode(), err.read().decode()
    finally:
        btrfs.set_read_only(snap, True)
    assert res.returncode == 0, errors
    return text


def test_grub_d_script_under_real_grub_mkconfig(disk: Disk) -> None:
    # Without the tool in the root, the script keeps the menu grub.cfg has (never empty).
    r = disk.tu("--description", HOSTILE, "run", "--", "true")
    assert r.returncode == 0, r.stderr
    current = disk.section()
    out = mkconfig_in(disk, 2)
    assert grub.section(out) == current
    # With the tool installed, the section is exactly `transactional-update boot-menu`.
    menu = disk.tu("boot-menu").stdout
    with disk.booted_writable() as snap:
        (snap / "usr/share/tu-test-menu.cfg").write_text(menu)
        tool = snap / "usr/bin/transactional-update"
        tool.write_text('#!/bin/sh\n[ "$1" = boot-menu ] && exec cat /usr/share/tu-test-menu.cfg\n')
        tool.chmod(0o755)
    out = mkconfig_in(disk, 1)
    assert grub.section(out) == menu
    assert script_check(out, disk.workdir).returncode == 0


def test_failing_generation_keeps_the_previous_config(disk: Disk) -> None:
    with disk.booted_writable() as snap:
        broken = snap / "etc/grub.d/45_broken"
        broken.write_text("#!/bin/sh\necho \"menuentry 'broken' {\"\n")
        broken.chmod(0o755)
    before = disk.cfg.read_bytes()
    r = disk.tu("grub.cfg")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "error: grub-mkconfig failed (exit 1)" in r.stderr
    assert disk.cfg.read_bytes() == before
    assert disk.numbers() == [1]  # the grub.cfg snapshot was discarded
    assert disk.default_number() == 1
    assert not list((disk.root / "boot/grub").glob(".grub.cfg.tu-*"))
    # A refresh whose result fails grub-script-check (here: a broken custom section that
    # grub-mkconfig never produced) keeps the old file and only warns; the commit stands.
    disk.cfg.write_text(disk.cfg_text() + "menuentry 'unclosed' {\n")
    before = disk.cfg.read_bytes()
    r = disk.tu("run", "--", "true")
    assert r.returncode == 0
    assert "the boot menu was not refreshed, the previous grub.cfg stays" in r.stderr
    assert "failed grub-script-check" in r.stderr
    assert disk.cfg.read_bytes() == before
    assert r.stdout == f"snapshot {disk.default_number()} is the new default; reboot to use it\n"
    assert disk.default_number() == 2
    assert not list((disk.root / "boot/grub").glob(".grub.cfg.tu-*"))


# --- boot once -----------------------------------------------------------------------------------


def test_boot_once_sets_next_entry_in_the_grub_partition(disk: Disk) -> None:
    assert disk.tu("run", "--", "true").returncode == 0
    r = disk.tu("boot-once", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "snapshot 1 boots at the next boot only; later boots use the default (2)\n"
    env = disk.root / "boot/grub/grubenv"
    listed = sh("grub-editenv", str(env), "list").stdout
    # 2 went on trial (no known-good yet: nothing to fall back to); the boot-once uses no try.
    assert listed == "tu_trial=2\ntu_tries=3\nnext_entry=tu-snapshots>tu-snapshot-1\n"
    # the id it names exists in grub.cfg, inside the submenu with that id
    assert "submenu 'Snapshots' --id tu-snapshots {" in disk.section()
    assert "--id tu-snapshot-1 {" in disk.section()
    r = disk.tu("--json", "boot-once", "2")
    assert json.loads(r.stdout) == {"snapshot": 2, "next_entry": "tu-snapshots>tu-snapshot-2"}
    r = disk.tu("boot-once", "9")
    assert r.returncode == 5
    assert r.stderr.startswith("error: snapshot 9 does not exist\n")
    kept = disk.tu("--keep", "run", "--", "false")
    assert kept.returncode == 1
    r = disk.tu("boot-once", "3")
    assert r.returncode == 5
    assert r.stderr == (
        "error: snapshot 3 is not in the boot menu (a failed transaction kept for inspection)\n"
        "hint: see the bootable snapshots with: transactional-update boot-menu\n"
    )
    assert grubenv.read(env) == {
        "tu_trial": "2",
        "tu_tries": "3",
        "next_entry": "tu-snapshots>tu-snapshot-2",
    }


def test_boot_commands_on_a_system_without_grub(managed_system: System) -> None:
    r = managed_system.tu("boot-once", "1")
    assert r.returncode == 3
    assert r.stderr == (
        f"error: {managed_system.root}/boot/grub does not exist: GRUB is not installed on this "
        "system\nhint: create the system with: transactional-update create-system\n"
    )
    r = managed_system.tu("grub.cfg")
    assert r.returncode == 3 and managed_system.numbers() == [1]
    # the menu itself is still printed: snapshot 1 of the test root has no kernel
    r = managed_system.tu("boot-menu")
    assert r.returncode == 0
    assert "# snapshot 1 left out: no kernel in /boot" in r.stdout
    assert "boot menu: snapshot 1 left out: no kernel in /boot" in r.stderr


def test_boot_once_refuses_a_grub_dir_in_the_snapshot_or_on_btrfs(managed_system: System) -> None:
    s = managed_system
    with s.booted_writable() as snap:
        (snap / "boot/grub").mkdir(parents=True)
    r = s.tu("boot-once", "1")
    assert r.returncode == 3
    assert r.stderr == (
        f"error: {s.root}/boot/grub lies inside the root snapshot: deleting that snapshot would "
        "break booting\nhint: put /boot/grub on its own partition or subvolume (create-system "
        "does)\n"
    )
    top = s.workdir / "top-level"
    top.mkdir()
    sh("mount", "-o", "subvolid=5", s.device, str(top))
    btrfs.create_subvolume(top / "@/boot-grub")
    sh("mount", "-o", "subvol=/@/boot-grub", s.device, str(s.root / "boot/grub"))
    r = s.tu("boot-once", "1")
    assert r.returncode == 3
    assert r.stderr == (
        f"error: {s.root}/boot/grub/grubenv lies on btrfs, where GRUB cannot clear a one-shot "
        "choice\nhint: keep /boot/grub on a small ext4 partition (create-system does)\n"
    )
    assert not (s.root / "boot/grub/grubenv").exists()


# --- a menu that cannot follow is never silent ---------------------------------------------------


def test_an_unmounted_grub_partition_is_reported_and_caught_up(disk: Disk) -> None:
    """A failed boot-time fsck leaves /boot/grub (nofail) unmounted: every commit says so, in
    stderr, status and the changelog, until a refresh succeeds again."""
    grub_dev = f"{disk.device}p2"
    sh("umount", str(disk.root / "boot/grub"))
    r = disk.tu("run", "--", "touch", "/etc/changed")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "snapshot 2 is the new default; reboot to use it\n"
    assert r.stderr == (
        "the boot menu was not refreshed: /boot/grub is not mounted (mount it, or "
        "repair it with: transactional-update setup-boot-fs)\n"
    )
    menu = disk.status_json()["boot_menu"]
    assert menu["stale"] is True and menu["since"]
    assert menu["reason"].startswith("/boot/grub is not mounted")
    text = disk.tu("status").stdout
    assert f"boot menu: stale since {menu['since']} (/boot/grub is not mounted" in text
    log = json.loads(disk.tu("--json", "changelog", "2").stdout)
    assert log["boot_menu"].startswith("stale: /boot/grub is not mounted"), log
    # A second commit keeps the time it began.
    assert disk.tu("run", "--", "touch", "/etc/again").returncode == 0
    assert disk.status_json()["boot_menu"]["since"] == menu["since"]
    sh("mount", grub_dev, str(disk.root / "boot/grub"))
    assert disk.main_linux().startswith("/@/.snapshots/1/snapshot/")  # still the old menu
    r = disk.tu("cleanup", "--prune-only")
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("; the boot menu is current\n"), r.stdout
    assert disk.main_linux().startswith("/@/.snapshots/3/snapshot/")
    assert disk.status_json()["boot_menu"] == {"stale": False, "since": None, "reason": None}
    assert "boot menu:" not in disk.tu("status").stdout


def test_a_menu_behind_the_default_is_stale_and_reboot_catches_it_up(disk: Disk) -> None:
    """A cut between the btrfs commit and the menu's rewrite: the old menu boots the old
    snapshot whole (pinned kernel and root); status says so, and a reboot refreshes first."""
    old = disk.cfg_text()
    assert "rootflags=subvol=@/.snapshots/1/snapshot" in disk.section()
    r = disk.tu("run", "--", "touch", "/etc/changed")
    assert r.returncode == 0, r.stderr
    main = re.search(r"--id tu-default \{.*?\n\s*linux '[^']+'(.*)", disk.section(), re.S)
    assert main and "'rootflags=subvol=@/.snapshots/2/snapshot'" in main.group(1).split("\n")[0]
    disk.cfg.write_text(old)  # the rewrite that the cut prevented
    menu = disk.status_json()["boot_menu"]
    assert menu == {
        "stale": True,
        "since": None,
        "reason": "its main entry boots snapshot 1, the default is 2",
    }
    disk.set_conf("REBOOT_METHOD=none\n")
    r = disk.tu("reboot")
    assert r.returncode == 0, r.stderr
    assert disk.main_linux().startswith("/@/.snapshots/2/snapshot/")
    assert disk.status_json()["boot_menu"]["stale"] is False


# --- /boot/grub on ext4; setup-boot-fs for systems made with ext2 --------------------------------

FEATURES_OFF = ("metadata_csum_seed", "large_dir", "orphan_file")  # create_system.GRUB_MKFS


def ext_features(device: str) -> set[str]:
    out = sh("dumpe2fs", "-h", device).stdout
    line = next(x for x in out.splitlines() if x.startswith("Filesystem features:"))
    return set(line.split(":", 1)[1].split())


def umount_grub(d: Disk) -> str:
    """Unmount /boot/grub and wait until nothing holds its device any more: a mount namespace
    made meanwhile (a chroot, a private bus of another test run on this machine) keeps its own
    copy of the mount until it ends, and e2fsck refuses a device in use."""
    dev = f"{d.device}p2"
    sh("umount", str(d.root / "boot/grub"))
    for _ in range(600):
        try:
            os.close(os.open(dev, os.O_RDONLY | os.O_EXCL))
            return dev
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{dev} stays in use after its unmount")


def grub_crc(d: Disk, path: str) -> int:
    """CRC32 of /boot/grub/PATH as GRUB's ext2 driver reads it from the image (no journal)."""
    r = sh("grub-fstest", str(d.image), "crc", f"(loop0,gpt2)/{path}", check=False)
    assert r.returncode == 0, r.stderr
    return int(r.stdout, 16)


def grub_reads_its_files(d: Disk) -> None:
    """grub.cfg, a module and grubenv read through GRUB's own driver are the files Linux sees;
    grub-editenv reads the environment block."""
    for path in ("grub.cfg", "i386-pc/normal.mod", "grubenv"):
        assert grub_crc(d, path) == zlib.crc32((d.root / "boot/grub" / path).read_bytes()), path
    env = d.root / "boot/grub/grubenv"
    assert sh("grub-editenv", str(env), "list").stdout == "".join(
        f"{k}={v}\n" for k, v in grubenv.read(env).items()
    )


def fstab_line(d: Disk, number: int) -> str:
    text = (d.snapshot(number) / "etc/fstab").read_text()
    return next(x for x in text.splitlines() if " /boot/grub " in x)


def make_ext2(d: Disk) -> tuple[str, str]:
    """Make the disk what create-system made before ext4: /boot/grub on ext2 (same UUID and
    files), ``ext2`` in the fstab, no fsck.repair= in GRUB's defaults.  ``(device, uuid)``."""
    dev = f"{d.device}p2"
    uuid = sh("blkid", "-s", "UUID", "-o", "value", dev).stdout.strip()
    saved = d.workdir / "grub.tar"
    where = d.root / "boot/grub"
    sh("tar", "-C", str(where), "-cf", str(saved), ".")
    umount_grub(d)
    sh("mkfs.ext2", "-q", "-F", "-L", "tu-grub", "-U", uuid, dev)
    sh("mount", dev, str(where))
    sh("tar", "-C", str(where), "-xpf", str(saved))
    saved.unlink()
    os.sync()  # on the disk, as the files of a system made long ago are
    with d.booted_writable() as snap:
        fstab = snap / "etc/fstab"
        fstab.write_text(fstab.read_text().replace(" /boot/grub ext4 ", " /boot/grub ext2 "))
        defaults = snap / grub.DEFAULTS_PATH.lstrip("/")
        lines = defaults.read_text().splitlines(keepends=True)
        defaults.write_text("".join(x for x in lines if "fsck.repair" not in x))
    assert r_ok(d.tu("cleanup", "--prune-only"))  # the menu as it was: no fsck.repair=yes
    assert "has_journal" not in ext_features(dev)
    assert fstab_line(d, 1) == f"UUID={uuid} /boot/grub ext2 defaults,nofail 0 2"
    return dev, uuid


def r_ok(r: subprocess.CompletedProcess[str]) -> bool:
    assert r.returncode == 0, r.stdout + r.stderr
    return True


def menu_args(d: Disk, entry_id: str) -> str:
    m = re.search(rf"--id {entry_id} \{{.*?\n\s*linux '[^']+' ([^\n]*)", d.section(), re.S)
    assert m, d.section()
    return m.group(1)


def test_grub_partition_is_ext4_that_grub_reads_and_writes(disk: Disk) -> None:
    dev = f"{disk.device}p2"
    feats = ext_features(dev)
    assert {"has_journal", "extent"} <= feats
    assert not feats & set(FEATURES_OFF)
    # A commit rewrites grub.cfg, boot-once grubenv: GRUB (which never replays ext4's journal)
    # reads both at once, without a sync: they are checkpointed out of the journal.
    assert r_ok(disk.tu("run", "--", "true"))
    assert r_ok(disk.tu("boot-once", "1"))
    grub_reads_its_files(disk)
    r = sh("grub-fstest", str(disk.image), "cat", "(loop0,gpt2)/grubenv")
    assert "next_entry=tu-snapshots>tu-snapshot-1\n" in r.stdout
    # the kernel of every entry is told to repair /boot/grub (and / ...) at boot
    assert "'fsck.repair=yes'" in menu_args(disk, "tu-default")
    assert "'fsck.repair=yes'" in menu_args(disk, "tu-snapshot-1")


def test_grub_sees_a_replaced_file_on_ext4_after_the_checkpoint(tmp_path: Path) -> None:
    """Why files.checkpoint exists: GRUB's driver ignores ext4's journal, and after fsync and
    rename the new directory entry is in the journal only: grub-fstest says "not found" until
    the checkpoint, or until writeback gets to the metadata (about 30 s; at once when anything
    runs sync, so that half is not asserted: tests run in parallel)."""
    img, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    mnt.mkdir()
    sh("truncate", "-s", "64M", str(img))
    sh(*GRUB_MKFS, str(img))
    device = sh("losetup", "--show", "-f", str(img)).stdout.strip()
    try:
        sh("mount", device, str(mnt))
        data = os.urandom(30000)
        write_atomic(mnt / "grub.cfg", data)  # fsync, rename, fsync of the directory
        checkpoint(mnt)
        r = sh("grub-fstest", str(img), "crc", "(loop0)/grub.cfg")
        assert int(r.stdout, 16) == zlib.crc32(data)
    finally:
        _unmount_below(tmp_path)
        _detach(device)


def test_setup_boot_fs_migrates_a_mounted_ext2_boot_grub(disk: Disk) -> None:
    dev, uuid = make_ext2(disk)
    assert "fsck.repair" not in menu_args(disk, "tu-snapshot-1")
    r = disk.tu("setup-boot-fs")
    assert r_ok(r) and r.stderr == ""
    assert r.stdout == (
        f"/boot/grub: {dev} (UUID={uuid}, ext2, no journal), mounted\n"
        f"tune2fs -j {dev}: journal added (hidden by the next boot's fsck)\n"
        "snapshot 2: /etc/fstab mounts /boot/grub as ext4 (pass 2); "
        "/etc/default/grub.d/transactional-update.cfg adds fsck.repair=yes\n"
        "snapshot 2 is the new default; reboot to use it\n"
    )
    assert "has_journal" in ext_features(dev)
    # tune2fs on a mounted filesystem: the journal is a file until the next check hides it
    assert (disk.root / "boot/grub/.journal").is_file()
    assert disk.default_number() == 2
    assert fstab_line(disk, 2) == f"UUID={uuid} /boot/grub ext4 defaults,nofail 0 2"
    assert fstab_line(disk, 1) == f"UUID={uuid} /boot/grub ext2 defaults,nofail 0 2"  # kept
    defaults = (disk.snapshot(2) / grub.DEFAULTS_PATH.lstrip("/")).read_text()
    assert defaults.endswith('GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX fsck.repair=yes"\n')
    assert "'fsck.repair=yes'" in menu_args(disk, "tu-default")
    assert "'fsck.repair=yes'" in menu_args(disk, "tu-snapshot-2")
    assert "fsck.repair" not in menu_args(disk, "tu-snapshot-1")
    grub_reads_its_files(disk)
    assert_paths_exist(disk)
    # twice: nothing changes (the pending snapshot 2 has it all)
    before = disk.cfg.read_bytes()
    r = disk.tu("setup-boot-fs")
    assert r_ok(r)
    assert r.stdout == (
        f"/boot/grub: {dev} (UUID={uuid}, ext3, journaled), mounted\n"
        "everything is already set: the fstab mounts /boot/grub as ext4 (pass 2), "
        "fsck.repair=yes; no snapshot was made\n"
    )
    r = disk.tu("--json", "setup-boot-fs")
    assert r_ok(r)
    out = json.loads(r.stdout)
    assert len(out.pop("steps")) == 2
    assert out == {
        "mount_point": "/boot/grub",
        "source": f"UUID={uuid}",
        "device": dev,
        "fsck": None,
        "mounted": False,
        "journal": "present",
        "fstab": "current",
        "fsck_repair": "current",
        "snapshot": None,
    }
    assert disk.numbers() == [1, 2] and disk.default_number() == 2
    assert disk.cfg.read_bytes() == before
    # A rollback to snapshot 1, whose fstab says ext2: the kernel mounts the journaled
    # filesystem as ext2 (with ext4's code, journal and all).
    umount_grub(disk)
    e2fsck = sh("e2fsck", "-p", dev, check=False)  # what the boot's fsck does first
    assert e2fsck.returncode == 0, e2fsck.stdout + e2fsck.stderr
    assert "Moving journal from /.journal to hidden inode" in e2fsck.stdout
    sh("mount", "-t", "ext2", dev, str(disk.root / "boot/grub"))
    assert not (disk.root / "boot/grub/.journal").exists()
    grub_reads_its_files(disk)


def test_setup_boot_fs_repairs_and_mounts_a_damaged_ext2_boot_grub(disk: Disk) -> None:
    dev, uuid = make_ext2(disk)
    where = disk.root / "boot/grub"
    # What the power cut left: an inode whose directory entry never reached the disk, in a
    # filesystem not marked clean (it was mounted).
    (where / ".grub.cfg.tu-new").write_text(disk.cfg_text())
    umount_grub(disk)
    sh("debugfs", "-w", "-R", "unlink /.grub.cfg.tu-new", dev)
    sh("debugfs", "-w", "-R", "ssv state 0", dev)
    copy = disk.workdir / "grub-part.img"
    sh("dd", f"if={dev}", f"of={copy}", "bs=1M", "status=none")
    preen = sh("e2fsck", "-p", str(copy), check=False)  # systemd-fsck without fsck.repair=yes
    copy.unlink()
    assert preen.returncode == 4, preen.stdout + preen.stderr
    assert "Unattached inode" in preen.stdout
    assert "UNEXPECTED INCONSISTENCY; RUN fsck MANUALLY" in preen.stderr
    r = disk.tu("setup-boot-fs")
    assert r_ok(r) and r.stderr == ""
    assert r.stdout == (
        f"/boot/grub: {dev} (UUID={uuid}, ext2, no journal)\n"
        f"e2fsck -fy {dev}: repaired\n"
        f"tune2fs -j {dev}: journal added\n"
        f"mounted {dev} at {where}\n"
        "snapshot 2: /etc/fstab mounts /boot/grub as ext4 (pass 2); "
        "/etc/default/grub.d/transactional-update.cfg adds fsck.repair=yes\n"
        "snapshot 2 is the new default; reboot to use it\n"
    )
    assert sh("mountpoint", "-q", str(where), check=False).returncode == 0
    assert [p.name for p in (where / "lost+found").iterdir()]  # the unattached inode
    assert "has_journal" in ext_features(dev)
    assert not (where / ".journal").exists()  # added unmounted: a hidden inode from the start
    assert fstab_line(disk, 2) == f"UUID={uuid} /boot/grub ext4 defaults,nofail 0 2"
    grub_reads_its_files(disk)
    r = disk.tu("setup-boot-fs")
    assert r_ok(r)
    assert r.stdout.endswith("no snapshot was made\n") and r.stdout.startswith("/boot/grub: ")
    assert "everything is already set" in r.stdout
    assert disk.numbers() == [1, 2]
    umount_grub(disk)
    assert sh("e2fsck", "-fn", dev, check=False).returncode == 0  # clean


def test_setup_boot_fs_refuses_roots_without_a_grub_partition(
    managed_system: System, tmp_path: Path
) -> None:
    r = managed_system.tu("setup-boot-fs")
    assert r.returncode == 3
    assert r.stderr == (
        f"error: {managed_system.root} has no separate /boot/grub partition (nothing in its "
        "/etc/fstab)\nhint: only a /boot/grub partition can be set up; create-system makes one\n"
    )
    assert managed_system.numbers() == [1]
    plain = tmp_path / "plain"
    plain.mkdir()
    r = tu_cli("--root", str(plain), "setup-boot-fs")
    assert r.returncode == 3 and r.stdout == ""
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 2, r.stderr
    assert "Traceback" not in r.stderr


def test_a_journaled_ext2_mounts_as_ext2_once_fsck_replayed_it(tmp_path: Path) -> None:
    """What an old snapshot's fstab (type ext2) does with the converted partition, for real."""
    img, copy, mnt = tmp_path / "fs.img", tmp_path / "cut.img", tmp_path / "mnt"
    mnt.mkdir()
    sh("truncate", "-s", "64M", str(img))
    sh("mkfs.ext2", "-q", "-F", str(img))
    sh("tune2fs", "-j", str(img))
    devices = []
    try:
        devices.append(sh("losetup", "--show", "-f", str(img)).stdout.strip())
        sh("mount", "-t", "ext2", devices[0], str(mnt))
        # Debian's kernels mount ext2 with ext4's code (CONFIG_EXT4_USE_FOR_EXT2), which uses
        # the journal: jbd2 runs for the device.
        name = Path(devices[0]).name
        assert any(p.name.startswith(f"{name}-") for p in Path("/proc/fs/jbd2").iterdir())
        for i in range(20):
            (mnt / f"f{i}").write_text("x" * 5000)
        os.sync()
        (mnt / "late").write_text("y")
        # a power cut now: the image as it is while mounted, its journal needing recovery
        sh("cp", "--sparse=always", str(img), str(copy))
        sh("umount", str(mnt))
        assert "needs_recovery" in ext_features(str(copy))
        devices.append(sh("losetup", "--show", "-f", str(copy)).stdout.strip())
        r = sh("mount", "-t", "ext2", devices[1], str(mnt), check=False)
        assert r.returncode != 0  # ext2 cannot replay a journal
        assert sh("e2fsck", "-p", devices[1], check=False).returncode == 0  # the boot's fsck
        sh("mount", "-t", "ext2", devices[1], str(mnt))
        assert (mnt / "f19").read_text() == "x" * 5000
    finally:
        _unmount_below(tmp_path)
        for d in devices:
            _detach(d)


# Salt's transactional_update module (grub_cfg, bootloader): its exact command lines.
SALT = ("--non-interactive", "--drop-if-no-change", "--no-selfupdate")


def test_salt_grub_cfg_and_bootloader_command_lines(disk: Disk) -> None:
    (disk.root / "boot/grub/grub.cfg").write_text("# stale\n")
    r = disk.tu(*SALT, "grub.cfg")
    assert r.returncode == 0, r.stderr
    # grub.cfg lives on /boot/grub, not in the snapshot: the menu is rewritten whether or not
    # the fork changed, and a fork that changed nothing is dropped (--drop-if-no-change).
    assert "### BEGIN /etc/grub.d/00_header ###" in disk.cfg_text()
    assert sh("grub-script-check", str(disk.cfg), check=False).returncode == 0
    made = disk.default_number()
    assert made == 1  # the fork changed nothing: dropped, and grub.cfg still rewritten
    assert disk.main_linux().startswith(f"/@/.snapshots/{made}/snapshot/boot/vmlinuz-")
    with open(disk.image, "r+b") as f:
        f.write(b"\0" * 440)  # wipe GRUB's boot code (the partition table stays)
    r = disk.tu(*SALT, "--continue", "bootloader")
    assert r.returncode == 0, r.stderr
    with open(disk.image, "rb") as f:
        assert b"GRUB" in f.read(512)
    assert sh("grub-script-check", str(disk.cfg), check=False).returncode == 0
