"""Test helpers: real loop-image systems, a private system bus, and running the CLI.

Nothing here touches the host's root, bootloader or default subvolume: every system is a sparse
image on a loop device taken with ``losetup --show -f``, mounted under a temporary directory, and
snapperd runs in a private mount namespace that sees test configuration only.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transactional_update.provision import image
from transactional_update.snapshots import btrfs

CACHE = Path(os.environ.get("TU_TEST_CACHE", str(image.ROOTFS_CACHE)))
REPO = Path(__file__).resolve().parent.parent


def rootfs_tar() -> Path:
    """The minimal Debian root the tests install, built once and cached."""
    return image.cached_rootfs(CACHE)


RPM_TOOLS = ("dnf", "rpm", "zypper")


def rpm_rootfs_tar() -> Path:
    """The minimal Debian root with zypper, dnf and rpm, built once and cached."""
    return image.cached_rootfs(CACHE, include=RPM_TOOLS)


def sh(*argv: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, cwd=cwd)


@dataclass
class System:
    """A managed system on a loop image: ``root`` is mounted as it would boot."""

    image: Path
    device: str
    root: Path
    workdir: Path

    def snapshot(self, n: int) -> Path:
        return self.root / ".snapshots" / str(n) / "snapshot"

    def default(self) -> str:
        """The default subvolume's path, e.g. ``@/.snapshots/1/snapshot``."""
        return btrfs.subvolume_path(self.root, btrfs.get_default(self.root))

    def default_number(self) -> int:
        return int(self.default().split("/")[-2])

    def booted_number(self) -> int:
        """The snapshot mounted at ``root``."""
        return int(btrfs.subvolume_path(self.root).split("/")[-2])

    def boot_default(self) -> None:
        """What a reboot does to the filesystem: the default subvolume is mounted at ``root``
        (with the data subvolumes below it).  Units that run at boot are the test's to run."""
        image.unmount_system(self.root)
        image.mount_system(self.device, self.root)

    def snapper_list(self) -> list[dict[str, Any]]:
        out = sh("snapper", "--no-dbus", "--root", str(self.root), "--jsonout", "list").stdout
        return [s for s in json.loads(out)["root"] if s["number"] != 0]

    def numbers(self) -> list[int]:
        return [int(s["number"]) for s in self.snapper_list()]

    @contextmanager
    def booted_writable(self) -> Iterator[Path]:
        """Edit the (read-only) booted snapshot as an admin preparing the image would."""
        snap = self.snapshot(1)
        btrfs.set_read_only(snap, False)
        try:
            yield snap
        finally:
            btrfs.set_read_only(snap, True)

    def plain_etc(self) -> None:
        """Snapshot 1 as a system made before the writable /etc: a plain /etc directory in the
        read-only snapshot, ``/`` mounted ``ro``, snapper's number cleanup on; booted again."""
        snap = self.snapshot(1)
        btrfs.set_read_only(snap, False)
        try:
            sh("cp", "-a", str(snap / "etc"), str(snap / "etc.plain"))
            sh("btrfs", "subvolume", "delete", str(snap / "etc"))
            (snap / "etc.plain").rename(snap / "etc")
            fstab = snap / "etc/fstab"
            fstab.write_text(fstab.read_text().replace(" / btrfs rw ", " / btrfs ro "))
            config = snap / "etc/snapper/configs/root"
            config.write_text(
                config.read_text().replace('NUMBER_CLEANUP="no"', 'NUMBER_CLEANUP="yes"')
            )
            wants = snap / "etc/systemd/system/sysinit.target.wants"
            (wants / "transactional-update-etc.service").unlink(missing_ok=True)
            (snap / "usr/lib/systemd/system/transactional-update-etc.service").unlink(
                missing_ok=True
            )
        finally:
            btrfs.set_read_only(snap, True)
        info = self.root / ".snapshots/1"
        for name in ("etc-booted", "etc-sync", "etc-start"):
            if btrfs.is_subvolume(info / name):
                btrfs.delete_subvolume(info / name)
        self.boot_default()

    def time_passes(self, seconds: float = 86400) -> None:
        """Date the last repository refresh *seconds* earlier, as if that time had passed (e.g.
        a night between two nightly updates that a test runs seconds apart)."""
        from transactional_update.packages import refresh

        for path in (self.root / refresh.STAMP_DIR).glob("refreshed-*"):
            stamp = refresh.parse_stamp(path.read_text())
            assert stamp is not None, path
            path.write_text(refresh.format_stamp(refresh.Stamp(stamp.time - seconds, stamp.config)))

    def in_progress_fork_cli(self) -> int:
        """A fork as a dying transaction leaves it, made with snapper's CLI (the cli backend)."""
        out = sh(
            "snapper",
            "--no-dbus",
            "--root",
            str(self.root),
            "create",
            "--from",
            "1",
            "--read-write",
            "--userdata",
            "transactional-update-in-progress=yes",
            "-p",
        ).stdout
        return int(out.strip())

    def status_json(self) -> dict[str, Any]:
        """``status --json``, which must succeed."""
        r = self.tu("--json", "status")
        assert r.returncode == 0, r.stderr
        data: dict[str, Any] = json.loads(r.stdout)
        return data

    def tu(
        self,
        *args: str,
        input_text: str | None = None,
        timeout: float = 300,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the CLI as a separate process, as an admin would."""
        return subprocess.run(
            [sys.executable, "-m", "transactional_update", "--root", str(self.root), *args],
            check=False,
            capture_output=True,
            text=True,
            input=input_text,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )


def strip_own_etc(root: Path, number: int) -> None:
    """Remove snapshot *number*'s own /etc, as a snapper with a delete hook would before it
    deletes the snapshot: snapper 0.10.4 refuses a snapshot that holds a nested subvolume."""
    from transactional_update.snapshots import etcvol

    etcvol.remove_nested(root / ".snapshots" / str(number) / "snapshot")


def _detach(device: str) -> None:
    for _ in range(50):
        if sh("losetup", "-d", device, check=False).returncode == 0:
            return
        time.sleep(0.1)


def _unmount_below(path: Path) -> None:
    for _ in range(50):
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        ours = sorted(
            (m for m in mounts if m == str(path) or m.startswith(f"{path}/")), key=len, reverse=True
        )
        if not ours:
            return
        for m in ours:
            sh("umount", m, check=False)
        time.sleep(0.1)
    sh("umount", "-R", "-l", str(path), check=False)


IN_USE = ".tu-test-in-use"  # flocked while a test system lives; a dead owner frees it


def sweep_stale() -> list[str]:
    """Remove test systems whose owner died without cleaning up (e.g. a killed test run).

    A system is stale when its image's directory has the in-use file and nobody holds its flock,
    so systems of concurrently running tests are never touched.
    """
    swept = []
    listing = json.loads(sh("losetup", "-J", "-l", check=False).stdout or '{"loopdevices": []}')
    for dev in listing.get("loopdevices", []):
        backing = Path(dev.get("back-file") or "")
        marker = backing.parent / IN_USE
        if backing.name != "disk.img" or not marker.exists():
            continue
        with open(marker) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            _unmount_below(backing.parent)
            _detach(dev["name"])
            backing.unlink(missing_ok=True)
            swept.append(str(backing))
    return swept


@contextmanager
def managed_system(workdir: Path, size: str = "3G", rootfs: Path | None = None) -> Iterator[System]:
    """Build, mount and finally remove a managed system (also when the test fails).

    *rootfs* is the root filesystem tarball (default: :func:`rootfs_tar`).
    """
    in_use = open(workdir / IN_USE, "w")  # noqa: SIM115 - held for the system's whole life
    fcntl.flock(in_use, fcntl.LOCK_EX)
    img = workdir / "disk.img"
    sh("truncate", "-s", size, str(img))
    device = sh("losetup", "--show", "-f", str(img)).stdout.strip()
    root = workdir / "root"
    try:
        uuid = image.make_filesystem(device)
        with image.mounted_top(device, workdir / "top") as top:
            image.populate(top, rootfs or rootfs_tar(), uuid)
        image.mount_system(device, root)
        yield System(img, device, root, workdir)
    finally:
        _unmount_below(workdir)
        _detach(device)
        img.unlink(missing_ok=True)
        in_use.close()


@dataclass
class Bus:
    address: str
    process: subprocess.Popen[bytes]


@contextmanager
def system_bus(system: System) -> Iterator[Bus]:
    """dbus-daemon --system + D-Bus-activated snapperd, seeing only the test system's config.

    The daemon runs in a private mount and PID namespace in which /etc/snapper and
    /etc/default/snapper are test files (SUBVOLUME = the test root), so the host's snapper
    configuration is never read or changed; killing the namespace kills snapperd too.
    """
    d = system.workdir / "bus"
    (d / "snapper/configs").mkdir(parents=True)
    config = (system.root / "etc/snapper/configs/root").read_text(encoding="utf-8")
    config = config.replace('SUBVOLUME="/"', f'SUBVOLUME="{system.root}"')
    (d / "snapper/configs/root").write_text(config, encoding="utf-8")
    (d / "default-snapper").write_text('SNAPPER_CONFIGS="root"\n', encoding="utf-8")
    Path("/run/dbus").mkdir(parents=True, exist_ok=True)
    # Activated snapperd connects to the default socket path, so the daemon must listen there:
    # our directory is bound on /run/dbus inside the namespace and read from outside as is.
    (d / "run-dbus").mkdir()
    socket_path = d / "run-dbus/system_bus_socket"
    script = (
        f"mount --bind {d}/snapper /etc/snapper && "
        f"mount --bind {d}/default-snapper /etc/default/snapper && "
        f"mount --bind {d}/run-dbus /run/dbus && "
        "exec dbus-daemon --system --nofork --nopidfile"
    )
    proc = subprocess.Popen(
        [
            "unshare",
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        for _ in range(100):
            if socket_path.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        if not socket_path.exists():
            err = proc.stderr.read().decode() if proc.stderr and proc.poll() is not None else ""
            raise RuntimeError(f"dbus-daemon did not start: {err}")
        yield Bus(f"unix:path={socket_path}", proc)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(d, ignore_errors=True)


def make_deb(
    workdir: Path,
    name: str,
    version: str,
    postinst: str | None = None,
    files: Mapping[str, str | bytes] | None = None,
    marker: bool = True,
) -> Path:
    """A tiny real .deb (/usr/share/NAME/version unless not *marker*, and *files*), optionally
    with a postinst."""
    tree = workdir / f"{name}-{version}"
    (tree / "DEBIAN").mkdir(parents=True)
    for path, content in (files or {}).items():
        (tree / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            (tree / path.lstrip("/")).write_bytes(content)
        else:
            (tree / path.lstrip("/")).write_text(content)
        (tree / path.lstrip("/")).chmod(0o755)
    if marker:
        (tree / f"usr/share/{name}").mkdir(parents=True)
        (tree / f"usr/share/{name}/version").write_text(f"{version}\n")
    (tree / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: tests <tests@example.invalid>\nDescription: test package\n"
    )
    # What debhelper does: every file under /etc is a conffile (dpkg keeps the admin's edits).
    etc = sorted(p for p in (files or {}) if p.startswith("/etc/"))
    if etc:
        (tree / "DEBIAN/conffiles").write_text("".join(f"{p}\n" for p in etc))
    if postinst is not None:
        script = tree / "DEBIAN/postinst"
        script.write_text(f"#!/bin/sh\n{postinst}\n")
        script.chmod(0o755)
    deb = workdir / f"{name}_{version}_all.deb"
    sh("dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb))
    return deb


def local_repo(system: System, debs: list[Path]) -> None:
    """An offline apt repository under the shared /var/cache, the only source of the system."""
    repo = system.root / "var/cache/tu-repo"
    repo.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        shutil.copy(deb, repo)
    index = sh("dpkg-scanpackages", "--multiversion", ".", cwd=repo).stdout
    (repo / "Packages").write_text(index)
    with system.booted_writable() as snap:
        (snap / "etc/apt/sources.list").write_text("deb [trusted=yes] file:/var/cache/tu-repo ./\n")
        for extra in (snap / "etc/apt/sources.list.d").glob("*"):
            extra.unlink()


def make_rpm(
    workdir: Path,
    name: str,
    version: str,
    post: str | None = None,
    pre: str | None = None,
) -> Path:
    """A tiny real noarch .rpm (/usr/share/NAME/version), optionally with %pre/%post scripts."""
    top = workdir / f"rpmbuild-{name}-{version}"
    spec = top / f"{name}.spec"
    spec.parent.mkdir(parents=True)
    scripts = ""
    if pre is not None:
        scripts += f"%pre\n{pre}\n"
    if post is not None:
        scripts += f"%post\n{post}\n"
    spec.write_text(
        f"Name: {name}\nVersion: {version}\nRelease: 1\nSummary: test package\n"
        "License: MIT\nBuildArch: noarch\n%description\ntest package\n"
        f"%install\nmkdir -p %{{buildroot}}/usr/share/{name}\n"
        f"echo {version} > %{{buildroot}}/usr/share/{name}/version\n"
        f"%files\n/usr/share/{name}\n{scripts}"
    )
    out = workdir / "rpms"
    sh(
        "rpmbuild",
        "-bb",
        "--quiet",
        "--define",
        f"_topdir {top}",
        "--define",
        f"_rpmdir {out}",
        "--define",
        "_build_name_fmt %{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}.rpm",
        str(spec),
    )
    return out / f"{name}-{version}-1.noarch.rpm"
