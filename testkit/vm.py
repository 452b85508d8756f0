"""VM tests: real boots of a managed system in qemu, driven and observed from the host.

``vm-tests/run`` and ``tests/vm/test_vm.py`` use this module.  The golden image is made once by
``create-system`` (the cloud kernel, as in tests/privileged/test_grub.py, plus Debian's python3
packages this tool needs) and completed in its snapshot 1: this checkout's
``transactional_update`` package and units, apt pointed at a local repository only (the guest
has no network), noisy timers and the serial getty masked, and a tiny agent unit
(``vm-tests/guest``).  It is cached in ``/var/cache/transactional-update-tests/vm`` under a hash
of those inputs.

Every scenario boots a sparse copy of it, each boot a fresh ``qemu-system-x86_64 -no-reboot``
with its own wall-clock timeout and two small extra disks: the *step disk* (a tar: the agent
script, this boot's shell step, the local package repository) and the *results disk* onto
which the guest writes a tar of result files (``fact`` outputs, exit codes) before it powers
off.  The host unpacks that after qemu has exited and asserts on it; the image itself is never
mounted on the host while a guest runs (and not at all per test).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testkit.systems import make_deb
from transactional_update.provision import image

REPO = Path(__file__).resolve().parent.parent
GUEST = REPO / "vm-tests/guest"
CACHE = Path(os.environ.get("TU_VM_CACHE", "/var/cache/transactional-update-tests/vm"))
KERNEL = "linux-image-cloud-amd64"  # boots in qemu and is a fraction of the generic one
# Debian's packages of this tool's dependencies: the guest is offline, so no pip.
GUEST_PACKAGES = (
    "python3",
    "python3-apscheduler",
    "python3-btrfsutil",
    "python3-click",
    "python3-jeepney",
    "python3-jinja2",
)
# Timers that would run apt or snapper behind a scenario's back, and the getty that hangs up
# ttyS0 under whoever opened it before.
MASKED = (
    "serial-getty@ttyS0.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "snapper-timeline.timer",
    "snapper-cleanup.timer",
    "snapper-boot.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
)
IMAGE_VERSION = "2"  # bump when golden() changes what it writes
BOOT_TIMEOUT = float(os.environ.get("TU_VM_BOOT_TIMEOUT", "480"))
SOURCES = "deb [trusted=yes] file:/var/cache/tu-vm/repo ./\n"
PYTHON_DIR = "usr/lib/python3/dist-packages"
LAUNCHER = """#!/usr/bin/python3
# transactional-update, installed by the VM tests from a source checkout
import sys

from transactional_update.cli.entry import main

sys.exit(main())
"""
CONF = "# the VM tests (testkit/vm.py): the nightly scenario reboots with systemctl\n"
CONF += "REBOOT_METHOD=systemd\n"


class ScenarioFailed(AssertionError):
    """A scenario's check failed; the message says which, the boot's serial log shows why."""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {r.returncode}\n{r.stdout}{r.stderr}")
    return r


# --- the golden image ----------------------------------------------------------------------------


def _input_files() -> list[Path]:
    files = [
        *(REPO / "transactional_update").rglob("*"),
        *(REPO / "systemd-units").rglob("*"),
        *(REPO / "grub.d").rglob("*"),
        GUEST / "tu-vm-agent",
        GUEST / "tu-vm-agent.service",
        GUEST / "emergency-dump.conf",
    ]
    return sorted(f for f in files if f.is_file() and "__pycache__" not in f.parts)


def image_key() -> str:
    """A hash of everything the golden image holds (the tool's sources, the guest's packages)."""
    h = hashlib.sha256()
    h.update(f"{IMAGE_VERSION} {KERNEL} {' '.join(GUEST_PACKAGES)} {MASKED}\n".encode())
    for f in _input_files():
        h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@contextmanager
def attached(img: Path, read_only: bool = False) -> Iterator[str]:
    """The image as a loop device with its partitions (``DEVICEp3``: the btrfs root), only while
    no qemu runs it; *read_only* attaches it so that nothing can write to it."""
    argv = ["losetup", "--show", "-f", "-P", *(["-r"] if read_only else []), str(img)]
    device = sh(*argv).stdout.strip()
    try:
        sh("partx", "-a", device, check=False)  # this kernel makes no partition devices itself
        yield device
    finally:
        sh("partx", "-d", device, check=False)
        for _ in range(50):
            if sh("losetup", "-d", device, check=False).returncode == 0:
                break
            time.sleep(0.1)


@contextmanager
def attached_top(img: Path, where: Path) -> Iterator[Path]:
    """The btrfs top level of the image mounted at *where* (only while no qemu runs it)."""
    with attached(img) as device:
        where.mkdir(parents=True, exist_ok=True)
        sh("mount", "-o", "subvolid=5", f"{device}p3", str(where))
        try:
            yield where
        finally:
            sh("umount", str(where))


def _link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(target)


def complete_snapshot(snap: Path) -> None:
    """Install this checkout, the agent and the offline apt setup into snapshot 1."""
    ignore = shutil.ignore_patterns("__pycache__")
    pkg = snap / PYTHON_DIR / "transactional_update"
    shutil.rmtree(pkg, ignore_errors=True)
    shutil.copytree(REPO / "transactional_update", pkg, ignore=ignore)
    launcher = snap / "usr/bin/transactional-update"
    launcher.write_text(LAUNCHER)
    launcher.chmod(0o755)
    # openSUSE's path, where clients (Ansible's zypper module) look; install-units makes it too.
    _link(snap / "usr/sbin/transactional-update", "../bin/transactional-update")
    # Where units.source_dir() finds them for a wheel installed with prefix /usr; the units are
    # also in place (not enabled: the timer must not fire during a scenario).
    share = snap / "usr/share/transactional-update"
    shutil.rmtree(share / "grub.d", ignore_errors=True)
    shutil.copytree(REPO / "grub.d", share / "grub.d")
    units = share / "systemd-units"
    shutil.rmtree(units, ignore_errors=True)
    shutil.copytree(REPO / "systemd-units", units)
    for unit in units.iterdir():  # units, and drop-ins for other units (directories)
        target = snap / "usr/lib/systemd/system" / unit.name
        if unit.is_dir():
            shutil.copytree(unit, target, dirs_exist_ok=True)
        else:
            shutil.copy(unit, target)
    agent = snap / "usr/libexec/tu-vm-agent"
    agent.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(GUEST / "tu-vm-agent", agent)
    agent.chmod(0o755)
    systemd = snap / "etc/systemd/system"
    shutil.copy(GUEST / "tu-vm-agent.service", systemd / "tu-vm-agent.service")
    _link(systemd / "multi-user.target.wants/tu-vm-agent.service", "../tu-vm-agent.service")
    (systemd / "emergency.service.d").mkdir(exist_ok=True)
    shutil.copy(GUEST / "emergency-dump.conf", systemd / "emergency.service.d/tu-vm.conf")
    for masked in MASKED:
        _link(systemd / masked, "/dev/null")
    # Enabled as install-units enables it: the live /etc's changes follow every update.
    _link(
        systemd / "sysinit.target.wants/transactional-update-etc.service",
        "/usr/lib/systemd/system/transactional-update-etc.service",
    )
    # And the boot check, as install-units enables it: every boot is judged, every commit is on
    # trial until a boot of it passes.
    _link(
        systemd / "multi-user.target.wants/transactional-update-health.service",
        "/usr/lib/systemd/system/transactional-update-health.service",
    )
    (snap / "etc/apt/sources.list").write_text("")
    (snap / "etc/apt/sources.list.d").mkdir(parents=True, exist_ok=True)
    (snap / "etc/apt/sources.list.d/tu-vm.list").write_text(SOURCES)
    (snap / "etc/transactional-update.conf").write_text(CONF)
    (snap / "etc/hostname").write_text("tu-vm\n")


def golden(log: Callable[[str], None] = print) -> Path:
    """The golden image, built once per :func:`image_key` (concurrent callers wait for it)."""
    from transactional_update.snapshots import btrfs

    key = image_key()
    CACHE.mkdir(parents=True, exist_ok=True)
    img = CACHE / f"golden-{key}.img"
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if img.exists():
            return img
        for old in CACHE.glob("golden-*.img*"):
            old.unlink()
        tmp = img.with_name(img.name + ".tmp")
        log(f"building the golden image {img} (create-system)")
        started = time.monotonic()
        argv = [sys.executable, "-m", "transactional_update", "create-system", "--size", "4G"]
        argv += ["--kernel", KERNEL, "--serial-console", "--kernel-args", "quiet"]
        for p in GUEST_PACKAGES:
            argv += ["--include", p]
        r = subprocess.run([*argv, str(tmp)], capture_output=True, text=True, check=False)
        if r.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"create-system failed: {r.stdout}{r.stderr}")
        work = Path(tempfile.mkdtemp(prefix="tu-vm-golden-", dir="/var/tmp"))
        try:
            with attached_top(tmp, work / "top") as top:
                snap = top / "@/.snapshots/1/snapshot"
                btrfs.set_read_only(snap, False)
                try:
                    complete_snapshot(snap)
                finally:
                    btrfs.set_read_only(snap, True)
                sh("sync")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        tmp.rename(img)
        log(f"golden image ready in {time.monotonic() - started:.0f} s")
    return img


# --- one boot ------------------------------------------------------------------------------------


@dataclass
class Boot:
    number: int
    serial: Path
    seconds: float
    results: dict[str, str]
    rebooted: bool  # the guest asked for a reboot (qemu -no-reboot ended there)
    # The power was cut (sysrq reset, see vm-tests/guest/cut.py): *results* are what the step
    # saved before the cut, *note* what cut.py's line reader wrote just before it.
    cut: bool = False
    note: str = ""
    # Seconds from qemu's start until each watched text first appeared on the serial console.
    marks: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # measurements the runner prints

    def text(self, name: str) -> str:
        if name not in self.results:
            raise ScenarioFailed(f"boot {self.number}: no result {name!r} (the step did not run?)")
        return self.results[name]

    def rc(self, name: str) -> int:
        return int(self.text(f"{name}.rc"))

    def json(self, name: str) -> Any:
        return json.loads(self.text(name))

    def root(self) -> str:
        """The booted root's subvolume, e.g. ``/@/.snapshots/2/snapshot``."""
        source = self.text("root").split()[0]  # /dev/vda3[/@/.snapshots/2/snapshot]
        return source[source.index("[") + 1 : -1] if "[" in source else source

    def root_read_only(self) -> bool:
        """The snapshot itself is read-only (its btrfs flag; ``/`` is mounted read-write so that
        its own ``/etc`` subvolume takes writes)."""
        return self.text("root_ro").strip() == "ro=true"

    def booted(self) -> int | None:
        booted = self.json("status")["booted"]
        return None if booted is None else int(booted["number"])


@dataclass
class Machine:
    """A sparse copy of the golden image in *workdir*, booted once per :meth:`boot`."""

    workdir: Path
    image: Path
    boots: list[Boot] = field(default_factory=list)
    uefi: bool = False  # boot with OVMF's UEFI firmware instead of SeaBIOS

    @classmethod
    def from_golden(cls, golden_image: Path, workdir: Path) -> Machine:
        img = workdir / "disk.img"
        sh("cp", "--sparse=always", str(golden_image), str(img))
        return cls(workdir, img)

    def boot(
        self,
        step: str,
        repo: Path | None = None,
        timeout: float = BOOT_TIMEOUT,
        cut: bool = False,
        reboots: bool = False,
        watch: tuple[str, ...] = (),
    ) -> Boot:
        """One boot running *step*; with *cut*, the step ends in a power cut (``precut``, then
        cut.py), which must happen: a step that runs to its end fails the boot.

        With *reboots* the machine reboots by itself (a panic, a reboot the guest starts) as
        hardware would, in the same qemu, until the step powers it off: the boots until then
        are this one :class:`Boot`, their serial output one log.  *watch* lists texts whose
        first appearance on the serial console is timed (:attr:`Boot.marks`)."""
        n = len(self.boots) + 1
        d = self.workdir / f"boot-{n}"
        stage = d / "in"
        stage.mkdir(parents=True)
        shutil.copy(GUEST / "agent.sh", stage / "agent.sh")
        shutil.copy(GUEST / "cut.py", stage / "cut.py")
        (stage / "step.sh").write_text(step)
        if repo is not None:
            shutil.copytree(repo, stage / "repo")
        sh("tar", "-cf", str(d / "step.tar"), "-C", str(stage), ".")
        out = d / "results.img"
        with open(out, "wb") as f:
            f.truncate(64 << 20)
        serial = d / "serial.log"
        argv = [
            "qemu-system-x86_64", "-accel", "tcg", "-m", "1024", "-smp", "2",
            *([] if reboots else ["-no-reboot"]), "-nographic", "-monitor", "none",
            "-serial", f"file:{serial}", "-nic", "none",
            "-drive", f"file={self.image},format=raw,if=none,id=disk,cache=unsafe",
            "-device", "virtio-blk-pci,drive=disk,bootindex=0",
            "-drive", f"file={d / 'step.tar'},format=raw,if=none,id=step,readonly=on",
            "-device", "virtio-blk-pci,drive=step,serial=tu-step",
            "-drive", f"file={out},format=raw,if=none,id=out",
            "-device", "virtio-blk-pci,drive=out,serial=tu-out",
        ]  # fmt: skip
        if self.uefi:
            argv += ["-bios", OVMF]
        started = time.monotonic()
        marks: dict[str, float] = {}
        with open(d / "qemu.log", "w") as qlog:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=qlog, stderr=qlog, start_new_session=True
            )
            try:
                stuck = _wait(proc, serial, started + timeout, watch, marks, started)
                if stuck:
                    proc.kill()
                    proc.wait()
                    self.boots.append(Boot(n, serial, time.monotonic() - started, {}, False))
                    raise ScenarioFailed(f"boot {n}: {stuck}")
            finally:
                if proc.poll() is None:  # an exception while waiting (KeyboardInterrupt)
                    proc.kill()
                    proc.wait()
        seconds = time.monotonic() - started
        results = d / "results"
        results.mkdir()
        sh("tar", "-xf", str(out), "-C", str(results), check=False)
        note = _read_note(out)
        out.unlink()
        texts = {f.name: f.read_text(errors="replace") for f in results.iterdir() if f.is_file()}
        if note:
            (d / "note").write_text(note)
        log_text = serial.read_text(errors="replace") if serial.exists() else ""
        # Saved before a cut and never completed (the agent writes step.rc once the step ended),
        # and the kernel said why it stopped.
        stopped = "cut.point" in texts and "step.rc" not in texts
        was_cut = stopped and SYSRQ_RESET in log_text
        rebooted = "reboot: Restarting system" in log_text
        boot = Boot(n, serial, seconds, texts, rebooted, was_cut, note, marks)
        self.boots.append(boot)
        if proc.returncode != 0:
            raise ScenarioFailed(f"boot {n}: qemu exited {proc.returncode}: {d / 'qemu.log'}")
        if not texts:
            raise ScenarioFailed(f"boot {n}: the guest stored no results")
        if stopped and not was_cut:
            raise ScenarioFailed(
                f"boot {n}: the step stopped before its end, but the kernel logged no "
                f"{SYSRQ_RESET!r}: not the power cut it prepared"
            )
        if cut and not was_cut:
            what = texts.get("cut.point", "?").strip()
            tool = texts.get("cut_tx", "") + texts.get("cut_tx.err", "")
            raise ScenarioFailed(
                f"boot {n}: the power cut at point {what} did not happen (the step ran to its "
                f"end; the tool said: {tool.strip()!r})"
                if "step.rc" in texts
                else f"boot {n}: no power cut was prepared (the step saved no cut.point)"
            )
        if was_cut and not cut:
            raise ScenarioFailed(f"boot {n}: the power was cut where the step expected none")
        return boot


EMERGENCY = "You are in emergency mode"
SYSRQ_RESET = "sysrq: Resetting"  # the kernel's last words on a cut (cut.py: sysrq "b")
# Where cut.py's line reader writes what it read (vm-tests/guest/cut.py: NOTE_AT, NOTE_SIZE):
# on the results disk, far behind the results tar.
NOTE_AT, NOTE_SIZE = 32 << 20, 1 << 20


def _read_note(results_disk: Path) -> str:
    with open(results_disk, "rb") as f:
        f.seek(NOTE_AT)
        data = f.read(NOTE_SIZE)
    return data.split(b"\0", 1)[0].decode(errors="replace")


OVMF = "/usr/share/ovmf/OVMF.fd"  # Debian's ovmf: UEFI firmware for qemu


def _wait(
    proc: subprocess.Popen[bytes],
    serial: Path,
    deadline: float,
    watch: tuple[str, ...] = (),
    marks: dict[str, float] | None = None,
    started: float = 0.0,
) -> str | None:
    """Wait for qemu to end; why it was stuck instead (timeout, systemd's emergency mode).

    Each text of *watch* that shows up on the serial console gets its time in *marks*
    (seconds since *started*, to the poll's second)."""
    while proc.poll() is None:
        if time.monotonic() > deadline:
            return "did not end within its timeout"
        text = serial.read_text(errors="replace") if serial.exists() else ""
        if EMERGENCY in text:
            return "the guest fell into emergency mode"
        for mark in watch:
            if marks is not None and mark not in marks and mark in text:
                marks[mark] = time.monotonic() - started
        time.sleep(0.5)
    return None


def check(condition: bool, what: str, boot: Boot | None = None, detail: object = "") -> None:
    if not condition:
        where = f"boot {boot.number}: " if boot else ""
        raise ScenarioFailed(f"{where}{what}" + (f": {detail!r}" if detail != "" else ""))


def mount_times(boot: Boot) -> dict[str, tuple[int, int]]:
    """``{unit: (started, mounted)}`` (monotonic µs) of the btrfs subvolume mounts of this boot."""
    times = {}
    for block in boot.text("mounts").strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        started = int(props["InactiveExitTimestampMonotonic"])
        times[props["Id"]] = (started, int(props["ActiveEnterTimestampMonotonic"]))
    return times


def check_mount_order(boot: Boot) -> None:
    """Every read-write subvolume mount started only once /var was mounted (image.fstab says why:
    started together, two of them can fail on this kernel and the boot falls into emergency)."""
    times = mount_times(boot)
    check(len(times) == 1 + len(image.DATA_SUBVOLUMES), "all subvolumes mounted", boot, times)
    var_mounted = times[f"{image.FIRST_RW_MOUNT}.mount"][1]
    check(var_mounted > 0, "/var was mounted", boot, times)
    for unit, (started, _) in times.items():
        if unit != f"{image.FIRST_RW_MOUNT}.mount":
            check(started >= var_mounted, f"{unit} started after /var was mounted", boot, times)


def check_booted(boot: Boot, number: int, via_default: bool = True) -> None:
    """Snapshot *number* is what runs: mounted as root (read-only), and status says so."""
    check_mount_order(boot)
    check(
        boot.root() == f"/@/.snapshots/{number}/snapshot",
        f"snapshot {number} is /",
        boot,
        boot.text("root"),
    )
    check(boot.root_read_only(), "the root snapshot is read-only", boot, boot.text("root_ro"))
    check(
        boot.booted() == number,
        f"status says snapshot {number} is booted",
        boot,
        boot.text("status"),
    )
    subvol = f"rootflags=subvol=@/.snapshots/{number}/snapshot"
    if via_default:
        # The main entry boots the default snapshot: pinned to it by subvol= (so that its kernel
        # and root are one snapshot's even when the menu lags behind the default), or, in menus
        # written before the pin, without subvol= (the kernel mounts the default subvolume).
        check(
            default_number(boot) == number,
            f"snapshot {number} is the default",
            boot,
            boot.text("default"),
        )
        args = boot.text("cmdline").split()
        pins = [a for a in args if "subvol=" in a]
        check(
            pins == [] or (len(pins) == 1 and pins[0].split(",")[0] == subvol),
            f"booted by the main entry (unpinned or pinned to snapshot {number})",
            boot,
            boot.text("cmdline"),
        )
    else:
        check(
            subvol in boot.text("cmdline"),
            f"booted by the entry of snapshot {number}",
            boot,
            boot.text("cmdline"),
        )
    image = f"BOOT_IMAGE=/@/.snapshots/{number}/snapshot/boot/vmlinuz-{boot.text('kernel').strip()}"
    check(
        image in boot.text("cmdline"),
        f"the kernel of snapshot {number} runs",
        boot,
        boot.text("cmdline"),
    )


# --- the local repository ------------------------------------------------------------------------


def hello_deb(workdir: Path, version: str, postinst: str | None = None) -> Path:
    script = f"#!/bin/sh\necho hello from tu-hello {version}\n"
    return make_deb(workdir, "tu-hello", version, postinst, {"/usr/bin/tu-hello": script})


def make_repo(workdir: Path, name: str, debs: list[Path]) -> Path:
    """A flat apt repository (``deb [trusted=yes] file:DIR ./``) of *debs*."""
    repo = workdir / name
    repo.mkdir()
    for deb in debs:
        shutil.copy(deb, repo)
    scan = subprocess.run(
        ["dpkg-scanpackages", "-m", "."], cwd=repo, capture_output=True, text=True, check=True
    )
    (repo / "Packages").write_text(scan.stdout)
    return repo


INSTALL_STEP = """
fact install transactional-update --non-interactive pkg install tu-hello
fact unchanged_root findmnt -n -o SOURCE,OPTIONS /
fact unchanged_hello sh -c 'command -v tu-hello'
fact after_status transactional-update --json status
"""

VERIFY_STEP = """
fact hello tu-hello
fact dpkg dpkg-query -W -f '${Status} ${Version}' tu-hello
fact changelog transactional-update --json changelog 2
"""


def install_boot(m: Machine, repo: Path) -> Boot:
    """Boot 1 of several scenarios: `pkg install tu-hello` into snapshot 2, nothing else changes."""
    b = m.boot(INSTALL_STEP, repo)
    check_booted(b, 1)
    check(b.rc("install") == 0, "pkg install succeeds", b, b.text("install.err"))
    check(b.text("unchanged_root") == b.text("root"), "the running root is unchanged", b)
    check(b.rc("unchanged_hello") != 0, "the running system has no tu-hello yet", b)
    after = b.json("after_status")
    check(
        after["pending"] == 2 and after["booted"]["number"] == 1, "snapshot 2 is pending", b, after
    )
    return b


def verify_installed_boot(b: Boot, version: str = "1.0") -> None:
    check(
        b.rc("hello") == 0 and b.text("hello") == f"hello from tu-hello {version}\n",
        "tu-hello works",
        b,
        b.text("hello") + b.text("hello.err"),
    )
    check(
        b.text("dpkg") == f"install ok installed {version}", "dpkg has tu-hello", b, b.text("dpkg")
    )


# --- scenarios -----------------------------------------------------------------------------------


def scenario_update(m: Machine, debs: Path) -> None:
    repo = make_repo(debs, "repo-update", [hello_deb(debs, "1.0")])
    install_boot(m, repo)
    b = m.boot(VERIFY_STEP, repo)
    check_booted(b, 2)
    verify_installed_boot(b)
    status = b.json("status")
    check(status["pending"] is None and not status["reboot_needed"], "nothing pending", b, status)
    log = b.json("changelog")
    check(
        log["packages"] == [{"name": "tu-hello", "kind": "added", "old": None, "new": "1.0"}],
        "the changelog names tu-hello",
        b,
        log.get("packages"),
    )


def scenario_rollback(m: Machine, debs: Path) -> None:
    repo = make_repo(debs, "repo-rollback", [hello_deb(debs, "1.0")])
    install_boot(m, repo)
    b = m.boot(VERIFY_STEP + "fact rollback transactional-update rollback 1\n", repo)
    check_booted(b, 2)
    verify_installed_boot(b)
    check(b.rc("rollback") == 0, "rollback 1 succeeds", b, b.text("rollback.err"))
    b = m.boot(VERIFY_STEP, repo)
    check_booted(b, 1)
    check(b.rc("hello") != 0, "tu-hello is gone", b, b.text("hello"))
    check(
        b.rc("dpkg") != 0 or not b.text("dpkg").startswith("install ok installed"),
        "dpkg agrees: tu-hello is not installed",
        b,
        b.text("dpkg"),
    )
    status = b.json("status")
    check(
        status["default"]["number"] == 1 and status["pending"] is None,
        "1 is the default",
        b,
        status,
    )


STACK_STEP = """
fact install transactional-update --non-interactive pkg install tu-hello
fact install2 transactional-update --non-interactive pkg install tu-world
fact after_status transactional-update --json status
"""


def scenario_stack(m: Machine, debs: Path) -> None:
    """Two packages in two transactions, one reboot: the second builds on the first (issue 13)."""
    world = make_deb(
        debs, "tu-world", "1.0", None, {"/usr/bin/tu-world": "#!/bin/sh\necho world\n"}
    )
    repo = make_repo(debs, "repo-stack", [hello_deb(debs, "1.0"), world])
    b = m.boot(STACK_STEP, repo)
    check_booted(b, 1)
    check(
        b.rc("install") == 0 and b.rc("install2") == 0,
        "both installs succeed",
        b,
        b.text("install.err") + b.text("install2.err"),
    )
    after = b.json("after_status")
    check(
        after["pending"] == 3 and after["pending_base"] == 2 and after["booted"]["number"] == 1,
        "snapshot 3, made from the pending 2, boots next",
        b,
        after,
    )
    b = m.boot(
        VERIFY_STEP
        + "fact world tu-world\nfact changelog3 transactional-update --json changelog 3\n",
        repo,
    )
    check_booted(b, 3)
    verify_installed_boot(b)
    check(
        b.rc("world") == 0 and b.text("world") == "world\n",
        "tu-world works too",
        b,
        b.text("world.err"),
    )
    log = b.json("changelog3")
    check(
        log["base"] == 2
        and log["packages"] == [{"name": "tu-world", "kind": "added", "old": None, "new": "1.0"}],
        "changelog 3: from 2, tu-world added",
        b,
        log,
    )


def scenario_grub(m: Machine, debs: Path) -> None:
    repo = make_repo(debs, "repo-grub", [hello_deb(debs, "1.0")])
    b = m.boot(INSTALL_STEP + "fact once transactional-update --json boot-once 1\n", repo)
    check_booted(b, 1)
    check(
        b.rc("install") == 0 and b.rc("once") == 0,
        "install and boot-once 1 succeed",
        b,
        b.text("install.err") + b.text("once.err"),
    )
    check(b.json("once")["next_entry"] == "tu-snapshots>tu-snapshot-1", "next_entry is set", b)
    b = m.boot(VERIFY_STEP, repo)
    check_booted(b, 1, via_default=False)  # the default is 2: GRUB picked the older entry
    check(b.rc("hello") != 0, "snapshot 1 has no tu-hello", b)
    check(b.json("status")["default"]["number"] == 2, "2 stays the default", b, b.text("status"))
    # GRUB's 00_header clears it as `set next_entry=` + `save_env next_entry`: an empty value
    # The boot counting's values (tu_*) stay: 2 is on trial, and the boot-once used no try.
    env = [x for x in b.text("grubenv").split() if not x.startswith("tu_")]
    check(env in ([], ["next_entry="]), "GRUB cleared the one-shot choice", b, b.text("grubenv"))
    check("tu_tries=3" in b.text("grubenv").split(), "the boot-once used no try", b)
    b = m.boot(VERIFY_STEP, repo)
    check_booted(b, 2)
    verify_installed_boot(b)


NIGHTLY_STEP = """
fact before_status transactional-update --json status
save
NO_POWEROFF=1
# as the timer would start it (the agent's unit is ordered after multi-user.target)
fact service systemctl start transactional-update.service
fact after_service transactional-update --json status
"""


def installed_then_update(m: Machine, debs: Path, name: str, postinst: str | None = None) -> Path:
    """hello 1.0 installed and booted (snapshot 2); returns a repository that offers 2.0."""
    install_boot(m, make_repo(debs, f"repo-{name}-1", [hello_deb(debs, "1.0")]))
    new_dir = debs / "new"
    new_dir.mkdir()
    return make_repo(debs, f"repo-{name}-2", [hello_deb(new_dir, "2.0", postinst=postinst)])


def scenario_nightly(m: Machine, debs: Path) -> None:
    new = installed_then_update(m, debs, "nightly")
    b = m.boot(VERIFY_STEP + NIGHTLY_STEP, new)
    check_booted(b, 2)
    verify_installed_boot(b)
    check(b.rebooted, "the nightly service rebooted the machine", b)
    b = m.boot(VERIFY_STEP, new)
    check_booted(b, 3)
    verify_installed_boot(b, "2.0")


BROKEN_STEP = """
fact before_list transactional-update --json list
fact service systemctl start transactional-update.service
fact service_result systemctl show -p Result --value transactional-update.service
sleep 20  # a reboot the service asked for would be under way by now
fact jobs systemctl list-jobs --no-legend
fact running systemctl is-system-running
fact journal journalctl -b -u transactional-update.service --no-pager -o cat
fact after_status transactional-update --json status
fact after_list transactional-update --json list
fact shell sh -c 'echo "touch /etc/tu-vm-from-shell; exit 1" | transactional-update shell'
fact shell_list transactional-update --json list
"""


def scenario_broken(m: Machine, debs: Path) -> None:
    broken = installed_then_update(m, debs, "broken", postinst="exit 1")
    b = m.boot(VERIFY_STEP + BROKEN_STEP, broken)
    check_booted(b, 2)
    check(b.rc("service") != 0, "the update service fails", b, b.text("service.err"))
    check(
        b.text("service_result").strip() == "exit-code",
        "it failed by its exit code",
        b,
        b.text("service_result"),
    )
    check("error: apt-get " in b.text("journal"), "the service logged why", b, b.text("journal"))
    jobs = b.text("jobs")
    check(
        "reboot.target" not in jobs and "shutdown.target" not in jobs,
        "no reboot is queued",
        b,
        jobs,
    )
    # "starting": this agent's own unit is still running; a shutdown would be "stopping"
    running = b.text("running").strip()
    check(running in ("starting", "running", "degraded"), "not shutting down", b, running)
    check(not b.rebooted, "the machine did not reboot", b)
    status = b.json("after_status")
    check(
        status["default"]["number"] == 2 and status["pending"] is None,
        "default unchanged",
        b,
        status,
    )
    check(
        b.text("after_list") == b.text("before_list"),
        "no snapshot was added",
        b,
        b.text("after_list"),
    )
    check(b.rc("shell") == 1, "shell exiting 1 fails", b, b.text("shell.err"))
    check(
        b.text("shell_list") == b.text("before_list"),
        "shell left nothing behind",
        b,
        b.text("shell_list"),
    )


def scenario_uefi(m: Machine, debs: Path) -> None:
    """Scenario 1 with UEFI firmware: GRUB from the ESP, the menu and grubenv from ext4."""
    m.uefi = True
    scenario_update(m, debs)
    for b in m.boots:
        text = b.serial.read_text(errors="replace")
        check("BdsDxe: starting" in text, "the UEFI firmware started the boot loader", b)
        check("Welcome to GRUB!" in text, "GRUB for UEFI ran from the ESP", b)


# --- power cuts ----------------------------------------------------------------------------------

# Shell helpers of every powercut boot (sourced by agent.sh with the step).
POWERCUT_HELPERS = r"""
# snapdirs: "N snapshot|- info.xml|-" per numbered directory of /.snapshots: what is on disk,
# whatever the tool makes of it
snapdirs() {
    for d in /.snapshots/[0-9]*/; do
        n=${d%/}
        n=${n##*/}
        s=-
        [ -d "$d/snapshot" ] && s=snapshot
        i=-
        [ -e "$d/info.xml" ] && i=info.xml
        echo "$n $s $i"
    done
}
# the fsck unit of /boot/grub (fstab names it by UUID), and what it said this boot
grub_fsck() {
    uuid=$(awk '$2 == "/boot/grub" { sub(/^UUID=/, "", $1); print $1 }' /etc/fstab)
    systemctl show -p Id,LoadState,ActiveState,Result,ExecMainStatus \
        "systemd-fsck@$(systemd-escape -p "/dev/disk/by-uuid/$uuid").service"
}
# wait_ready: until cut.py watches (it creates the file), at most 30 s
wait_ready() {
    i=0
    while [ ! -e /run/tu-vm/ready ] && [ $i -lt 300 ]; do
        sleep 0.1
        i=$((i + 1))
    done
}
CUT="python3 /run/tu-vm/cut.py"
# from status --json: the lost commits; whether the boot menu is stale (exit code)
lost_commits() {
    transactional-update --json status |
        python3 -c 'import json, sys; print(*json.load(sys.stdin)["lost_commits"])'
}
menu_stale() {
    transactional-update --json status |
        python3 -c 'import json, sys; menu = json.load(sys.stdin)["boot_menu"] or {}
sys.exit(not menu.get("stale"))'
}
# the tool of a watched cut exited: store what it said, then let the watcher cut (cut.py DONE)
tool_done() {
    store
    : >/run/tu-vm/tool-done
}
"""

# What every boot after a cut records first.
AFTER_CUT_STEP = """
fact grubcfg cat /boot/grub/grub.cfg
fact grub_mount findmnt -n -o SOURCE,FSTYPE,OPTIONS /boot/grub
fact grub_fsck grub_fsck
fact fsck_journal journalctl -b --no-pager -o cat -u 'systemd-fsck*'
fact failed systemctl --failed --no-legend --plain
fact etc sh -c 'ls /etc | grep ^tu-vm-'
fact snapdirs snapdirs
fact list transactional-update --json list
"""

# After a cut inside the commit (6, 7), before cleanup: a lost commit is kept by rollback, a stale
# menu follows the default with cleanup --prune-only.
COMMIT_CUT_STEP = """
fact intent_dir ls -a /var/lib/transactional-update
fact status_text transactional-update status
lost=$(lost_commits)
if [ -n "$lost" ]; then
    fact rollback transactional-update rollback "${lost##* }"
    fact rolled transactional-update --json status
    fact rolled_grubcfg cat /boot/grub/grub.cfg
fi
if menu_stale; then
    fact prune transactional-update --json cleanup --prune-only
    fact pruned transactional-update --json status
    fact pruned_grubcfg cat /boot/grub/grub.cfg
fi
"""

# Then cleanup, and what it left.
CLEANUP_STEP = """
fact cleanup transactional-update --json cleanup
fact cleaned transactional-update --json status
fact cleaned_snapdirs snapdirs
"""

# A transaction after the cut (it must work), then the state the next cut starts from.
NEXT_TX_STEP = """
fact tx transactional-update --json run -- touch /etc/tu-vm-tx
fact tx_status transactional-update --json status
fact tx_grubcfg cat /boot/grub/grub.cfg
"""

PRECUT_STEP = """
fact precut_status transactional-update --json status
fact precut_snapdirs snapdirs
"""

# The cuts, by point; each stores the results first (precut) and never returns when it works.
SUCCESS_LINE = "is the new default"
CUTS = {
    # while snapper creates the fork: the moment its subvolume appears
    1: """
precut 1
$CUT snapshot /run/tu-vm/ready &
wait_ready
fact cut_tx transactional-update -v run -- touch /etc/tu-vm-cut1
sleep 5
""",
    # during the command: the chroot has its own /proc, so the command cuts the power itself
    2: """
precut 2
fact cut_tx transactional-update -v run -- \\
    sh -c 'echo x > /etc/tu-vm-cut2; sync; echo b > /proc/sysrq-trigger'
sleep 5
""",
    # right after the command, while the tool commits: the command's last act is a marker in
    # /dev/shm, which the chroot shares with the system (/dev is bound into it)
    3: """
precut 3
$CUT file /dev/shm/tu-vm-cut3 /run/tu-vm/ready &
wait_ready
fact cut_tx transactional-update -v run -- sh -c 'touch /etc/tu-vm-cut3; : > /dev/shm/tu-vm-cut3'
sleep 5
""",
    # the moment the tool says the new default is in place (-v: its log line comes first)
    4: f"""
precut 4
transactional-update -v run -- touch /etc/tu-vm-cut4 </dev/null 2>&1 |
    $CUT line '{SUCCESS_LINE}' >"$OUT/cut_tx"
sleep 5
""",
    # 3 s after the tool exited: long before btrfs commits by itself (every 30 s)
    5: """
fact cut_tx sh -c 'transactional-update --json run -- touch /etc/tu-vm-cut5; rc=$?
    cut -d" " -f1 /proc/uptime >/run/tu-vm-out/cut_tx.exited; exit $rc'
precut 5
$CUT at "$(cat "$OUT/cut_tx.exited")" 3
sleep 5
""",
    # between the commit intent (fsynced) and the btrfs commit: the moment the intent exists
    6: """
precut 6
$CUT file /var/lib/transactional-update/commit /run/tu-vm/ready /run/tu-vm/tool-done &
wait_ready
fact cut_tx transactional-update --json run -- touch /etc/tu-vm-cut6
tool_done
sleep 5
""",
    # aimed between the btrfs commit and the menu's rewrite: the moment the default subvolume
    # changes, which the watcher sees in memory, so usually before BTRFS_IOC_SYNC committed it
    7: """
precut 7
$CUT default /run/tu-vm/ready /run/tu-vm/tool-done &
wait_ready
fact cut_tx transactional-update --json run -- touch /etc/tu-vm-cut7
tool_done
sleep 5
""",
}
COMMIT_CUTS = (6, 7)  # inside the commit: checked by check_after_commit_cut


class Findings:
    """The powercut scenario's checks: each one logged, failures collected, so that one run
    shows every check that fails rather than only the first."""

    def __init__(self, log_path: Path) -> None:
        self.failed: list[str] = []
        self.log_path = log_path

    def _log(self, line: str) -> None:
        with open(self.log_path, "a") as f:
            f.write(line + "\n")

    def check(self, condition: bool, what: str, boot: Boot, detail: object = "") -> bool:
        where = f"boot {boot.number}: {what}"
        if condition:
            self._log(f"PASS {where}")
        else:
            text = where + (f": {detail!r}" if detail != "" else "")
            self._log(f"FAIL {text}")
            self.failed.append(text)
        return condition

    def run(self, what: Callable[[], None], boot: Boot, title: str) -> None:
        """A check function of the other scenarios (raising at its first failure)."""
        try:
            what()
            self._log(f"PASS boot {boot.number}: {title}")
        except ScenarioFailed as e:
            self._log(f"FAIL {e}")
            self.failed.append(str(e))

    def note(self, boot: Boot, text: str) -> None:
        self._log(f"INFO boot {boot.number}: {text}")


def snapdirs(text: str) -> dict[int, tuple[bool, bool]]:
    """``{N: (has the subvolume, has info.xml)}`` from the ``snapdirs`` helper's output."""
    dirs = {}
    for line in text.splitlines():
        n, subvol, info = line.split()
        dirs[int(n)] = (subvol == "snapshot", info == "info.xml")
    return dirs


def default_number(boot: Boot) -> int | None:
    """The default subvolume's snapshot, from ``btrfs subvolume get-default /``."""
    m = re.search(r"path @/\.snapshots/(\d+)/snapshot$", boot.text("default").strip())
    return int(m.group(1)) if m else None


def main_entry(grub_cfg: str) -> str:
    """The ``linux`` line of the menu's main entry (id tu-default), "" without one."""
    m = re.search(r"^menuentry .* --id tu-default \{\n(.*?)^\}", grub_cfg, re.M | re.S)
    if m is None:
        return ""
    return next((line.strip() for line in m.group(1).splitlines() if "linux " in line), "")


def check_menu(f: Findings, b: Boot, fact: str, number: int, when: str) -> None:
    """GRUB's main entry in grub.cfg (the result *fact*) boots *number*: its kernel, pinned."""
    linux = main_entry(b.text(fact)) if b.rc(fact) == 0 else ""
    detail = linux or f"no main entry: {b.text(fact + '.err').strip() or b.text(fact)[:300]}"
    kernel = f"/@/.snapshots/{number}/snapshot/boot/vmlinuz-"
    f.check(
        kernel in linux, f"{when}: the menu's main entry has snapshot {number}'s kernel", b, detail
    )
    pin = f"rootflags=subvol=@/.snapshots/{number}/snapshot"
    f.check(
        pin in linux, f"{when}: the menu's main entry pins snapshot {number} ({pin})", b, detail
    )


LEFTOVER_KEYS = ("orphans", "stale", "lost_commits")


def status_lists(status: dict[str, Any]) -> dict[str, list[int]] | None:
    """status's lists of what interrupted transactions left; None when it has not all three."""
    if not all(k in status for k in LEFTOVER_KEYS):
        return None
    return {k: list(status[k] or []) for k in LEFTOVER_KEYS}


def menu_current(status: dict[str, Any]) -> bool:
    """status says the boot menu follows the snapshots (``boot_menu`` null or not stale)."""
    if "boot_menu" not in status:
        return False
    menu = status["boot_menu"]
    return menu is None or menu.get("stale") is False


def check_status_keys(f: Findings, b: Boot, status: dict[str, Any], when: str) -> None:
    missing = [
        k
        for k in ("orphans", "stale", "lost_commits", "boot_menu", "stale_in_progress")
        if k not in status
    ]
    f.check(not missing, f"{when}: status --json has the power-cut keys", b, missing)


def check_after_cut(f: Findings, b: Boot, prev: Boot) -> None:
    """The boot after *prev*'s power cut: what booted, what was left, cleanup, /boot/grub."""
    point = int(prev.text("cut.point"))
    before = prev.json("precut_status")
    old = before["default"]["number"]
    if point == 4:  # the fork's number, from the log the tool wrote before its success line
        m = re.search(r"working in snapshot (\d+)", prev.note)
        check(m is not None, "the tool named its fork before the cut", prev, prev.note)
        assert m is not None
        expected = int(m.group(1))
    elif point == 5:
        check(
            prev.rc("cut_tx") == 0,
            "the transaction before cut 5 succeeded",
            prev,
            prev.text("cut_tx.err"),
        )
        expected = int(prev.json("cut_tx")["snapshot"])
    else:
        expected = old
    reported = point >= 4
    f.note(b, f"after cut {point}: old default {old}, expected to boot {expected}")
    f.note(b, f"booted {b.root()}, cmdline {b.text('cmdline').strip()}")
    what = "the new default the tool reported" if reported else "the old default"
    f.run(
        lambda: check_booted(b, expected), b, f"check_booted: snapshot {expected} by the main entry"
    )
    f.check(b.booted() == expected, f"{what}, snapshot {expected}, booted", b, b.root())
    f.check(
        default_number(b) == expected,
        f"snapshot {expected} is the default subvolume",
        b,
        b.text("default"),
    )
    status = b.json("status")
    f.check(
        (status.get("default") or {}).get("number") == expected and status["pending"] is None,
        f"status: snapshot {expected} is the default, nothing pending",
        b,
        {"default": (status.get("default") or {}).get("number"), "pending": status["pending"]},
    )
    has_file = f"tu-vm-cut{point}" in b.text("etc").split()
    f.check(
        has_file == reported,
        f"/etc/tu-vm-cut{point} is {'there' if reported else 'absent'}: the cut "
        f"transaction's change {'survived' if reported else 'is not in the booted root'}",
        b,
        b.text("etc"),
    )
    check_menu(f, b, "grubcfg", expected, "after the cut")
    check_status_keys(f, b, status, "before cleanup")
    f.note(b, f"status boot_menu before cleanup: {status.get('boot_menu', 'missing')!r}")
    if reported:
        f.check(
            menu_current(status),
            "status: the boot menu is current (it was durable before the success line)",
            b,
            status.get("boot_menu", "missing"),
        )
    check_grub_fs(f, b)
    check_leftovers(f, b, prev, status, reported)


def check_grub_fs(f: Findings, b: Boot) -> None:
    """/boot/grub after a cut: mounted, ext4, checked by fsck at boot; no unit failed."""
    f.check(b.rc("grub_mount") == 0, "/boot/grub is mounted", b, b.text("grub_mount.err"))
    f.note(b, f"/boot/grub: {b.text('grub_mount').strip()}")
    fields = b.text("grub_mount").split()
    f.check(
        len(fields) > 1 and fields[1] == "ext4",
        "/boot/grub is ext4 (journaled)",
        b,
        b.text("grub_mount"),
    )
    f.check(
        "fsck.repair=yes" in b.text("cmdline").split(),
        "fsck.repair=yes on the kernel command line",
        b,
        b.text("cmdline"),
    )
    fsck = dict(line.split("=", 1) for line in b.text("grub_fsck").splitlines() if "=" in line)
    f.note(b, f"fsck of /boot/grub: {fsck}; journal: {b.text('fsck_journal').strip()!r}")
    f.check(
        fsck.get("LoadState") == "loaded" and fsck.get("Result") == "success",
        "the boot-time fsck of /boot/grub ran and succeeded",
        b,
        fsck,
    )
    f.check(b.text("failed").strip() == "", "no unit failed", b, b.text("failed"))


def check_leftovers(
    f: Findings,
    b: Boot,
    prev: Boot,
    status: dict[str, Any],
    reported: bool,
    kept: int | None = None,
) -> None:
    """What *prev*'s cut left: each new snapshot but the default listed by status in the kind
    its on-disk state says, and removed by cleanup (all but *kept*, made the default since)."""
    point = int(prev.text("cut.point"))
    expected = default_number(b)
    # what the cut left behind: on disk, and in status (classified by the on-disk facts)
    dirs = snapdirs(b.text("snapdirs"))
    left = sorted(set(dirs) - set(snapdirs(prev.text("precut_snapdirs"))))
    listed = {s["number"]: s for s in b.json("list")}
    lists = status_lists(status)
    f.note(b, f"left on disk by the cut: {[(n, dirs[n]) for n in left]}; status lists {lists}")
    if reported:
        f.check(
            left == [expected], f"only the reported snapshot {expected} is new on disk", b, left
        )
    # Anything new but the default is a leftover: the fork of a cut transaction, or with a
    # commit that did not reach the disk, the snapshot the tool reported.
    leftovers = {}
    for n in left:
        if n == default_number(b):
            continue
        subvol, info = dirs[n]
        if not (subvol and info):
            kind = "orphans"
        elif n in listed and listed[n]["in_progress"]:
            kind = "stale"
        else:
            kind = "lost_commits"
        leftovers[n] = kind
        f.note(b, f"snapshot {n} left by cut {point}: subvolume {subvol}, info.xml {info}: {kind}")
        f.check(
            lists is not None and n in lists[kind],
            f"status lists snapshot {n} in {kind!r}",
            b,
            lists,
        )
        if kind == "stale":  # the older key, kept: the newest stale fork
            stale = status.get("stale_in_progress")
            f.check(stale == n, f"status: stale_in_progress is {n}", b, stale)
    listed_all = None if lists is None else sorted(n for ns in lists.values() for n in ns)
    f.check(
        listed_all == sorted(leftovers),
        f"status lists exactly the leftovers {sorted(leftovers)}",
        b,
        lists,
    )
    # cleanup removes what was left, and then status lists nothing
    f.check(b.rc("cleanup") == 0, "cleanup succeeds", b, b.text("cleanup.err"))
    cleanup = b.json("cleanup") if b.rc("cleanup") == 0 else {}
    f.note(b, f"cleanup: {cleanup}")
    f.check(
        "orphans" in cleanup and "lost" in cleanup,
        "cleanup --json has orphans and lost",
        b,
        cleanup,
    )
    removed = {n for k in ("orphans", "stale", "lost") for n in cleanup.get(k) or []}
    after = snapdirs(b.text("cleaned_snapdirs"))
    for n in leftovers:
        if n == kept:
            f.check(n in after, f"snapshot {n}, the default since, is kept by cleanup", b, after)
            continue
        f.check(n in removed, f"cleanup reports removing snapshot {n}", b, cleanup)
        f.check(n not in after, f"snapshot {n} is gone from disk after cleanup", b, after.get(n))
    orphans = sorted(n for n, (subvol, info) in after.items() if not (subvol and info))
    f.check(not orphans, "after cleanup no orphan is on disk", b, orphans)
    cleaned = b.json("cleaned")
    check_status_keys(f, b, cleaned, "after cleanup")
    f.check(
        status_lists(cleaned) == {key: [] for key in LEFTOVER_KEYS}
        and cleaned.get("stale_in_progress") is None,
        "after cleanup status lists no leftover",
        b,
        status_lists(cleaned),
    )
    f.check(
        menu_current(cleaned),
        "after cleanup status says the boot menu is current",
        b,
        cleaned.get("boot_menu", "missing"),
    )


def check_pair(f: Findings, b: Boot, number: int) -> None:
    """Kernel and root of one snapshot run: *number*'s, whatever the default."""
    args = b.text("cmdline").split()
    pins = [a.split(",")[0] for a in args if "subvol=" in a]
    image = f"BOOT_IMAGE=/@/.snapshots/{number}/snapshot/boot/vmlinuz-{b.text('kernel').strip()}"
    f.check(
        pins == [f"rootflags=subvol=@/.snapshots/{number}/snapshot"] and image in args,
        f"kernel and rootflags=subvol= both of snapshot {number}",
        b,
        b.text("cmdline"),
    )
    f.check(
        b.root() == f"/@/.snapshots/{number}/snapshot" and b.root_read_only(),
        f"snapshot {number} is / (read-only)",
        b,
        b.text("root"),
    )
    f.check(b.booted() == number, f"status says snapshot {number} is booted", b, b.text("status"))


def check_after_commit_cut(f: Findings, b: Boot, prev: Boot) -> None:
    """The boot after a cut inside the commit (6: after the intent, 7: after the new default).

    The commit reached the disk, or it is a lost commit, or (cut before the fork's in-progress
    mark was dropped, which comes after the durable intent) a stale fork; either way one
    snapshot's kernel
    and root boot, and no finished snapshot is left unlisted (check_leftovers: a complete one
    that is not the default must be in lost_commits).
    """
    point = int(prev.text("cut.point"))
    old = prev.json("precut_status")["default"]["number"]
    status = b.json("status")
    default = default_number(b)
    new = sorted(set(snapdirs(b.text("snapdirs"))) - set(snapdirs(prev.text("precut_snapdirs"))))
    fork = new[-1] if new else None
    late = "cut_tx.rc" in prev.results  # the tool exited before the watcher saw its moment
    if late:
        ok = f.check(
            prev.rc("cut_tx") == 0, "the cut transaction succeeded", prev, prev.text("cut_tx.err")
        )
        fork = int(prev.json("cut_tx")["snapshot"]) if ok else fork
    booted = b.booted()
    if not f.check(fork is not None, f"cut {point} came after the fork was made", b, new):
        return
    assert fork is not None
    f.note(b, f"after cut {point}: old default {old}, fork {fork}, default now {default}")
    f.note(b, f"booted {b.root()}, cmdline {b.text('cmdline').strip()}")
    check_status_keys(f, b, status, "before cleanup")
    f.note(b, f"status boot_menu before cleanup: {status.get('boot_menu', 'missing')!r}")
    lost = list(status.get("lost_commits") or [])
    kept = None
    marked = fork in (status.get("stale") or [])  # checked against the disk: check_leftovers
    if late:
        case = "cut after the commit completed (the watcher missed the window)"
    elif default == old and marked:
        case = f"stale: snapshot {fork} was cut before its in-progress mark was dropped"
    elif default == old:
        case = f"lost commit: snapshot {fork} did not become the default"
    elif booted == default:
        case = f"committed: snapshot {fork} is the default and boots"
    else:
        case = f"committed, menu stale: snapshot {fork} is the default, {booted} boots"
    f.note(b, f"cut {point}: {case}")
    # the intent's directory: a cut between its rename and the directory's fsync may leave the
    # temporary file only
    f.note(b, f"/var/lib/transactional-update: {b.results.get('intent_dir', '?').split()}")
    print(f"INFO boot {b.number}: cut {point}: {case}", flush=True)
    f.check(default in (old, fork), f"the default is the old {old} or the fork {fork}", b, default)
    check_pair(f, b, booted if booted is not None else old)
    has_file = f"tu-vm-cut{point}" in b.text("etc").split()
    f.check(
        has_file == (booted == fork),
        f"/etc/tu-vm-cut{point} is in the booted root exactly when the fork {fork} boots",
        b,
        b.text("etc"),
    )
    if default == old and marked:
        # The intent is durable before the mark goes: a cut between them leaves a fork that
        # is still marked, listed as stale and removed by cleanup (check_leftovers).
        f.run(lambda: check_booted(b, old), b, f"check_booted: snapshot {old} by the main entry")
        f.check(lost == [], "status --json: no lost commit (the fork is stale)", b, lost)
        check_menu(f, b, "grubcfg", old, "after the cut")
    elif default == old:
        f.run(lambda: check_booted(b, old), b, f"check_booted: snapshot {old} by the main entry")
        f.check(lost == [fork], f"status --json: lost_commits == [{fork}]", b, lost)
        text = b.text("status_text")
        line = next((x for x in text.splitlines() if x.startswith("lost:")), "")
        f.check(
            f"rollback {fork}" in line and "cleanup" in line,
            f"status: a lost: line with rollback {fork} and cleanup",
            b,
            text,
        )
        check_menu(f, b, "grubcfg", old, "after the cut")
        f.check(
            menu_current(status), "status: the boot menu is current", b, status.get("boot_menu")
        )
        if f.check(
            "rollback.rc" in b.results and b.rc("rollback") == 0,
            f"rollback {fork} succeeds",
            b,
            b.results.get("rollback.err", "not run"),
        ):
            rolled = b.json("rolled")
            f.check(
                (rolled.get("default") or {}).get("number") == fork and rolled["pending"] == fork,
                f"after rollback {fork}: it is the pending default",
                b,
                {"default": rolled.get("default"), "pending": rolled["pending"]},
            )
            f.check(not rolled.get("lost_commits"), "after rollback: no lost commit", b, rolled)
            check_menu(f, b, "rolled_grubcfg", fork, f"after rollback {fork}")
            kept = fork
    else:
        f.check(lost == [], "status --json: no lost commit", b, lost)
        f.check(
            (status.get("default") or {}).get("number") == fork,
            f"status: snapshot {fork} is the default",
            b,
            status.get("default"),
        )
        if booted == fork:
            f.run(lambda: check_booted(b, fork), b, f"check_booted: snapshot {fork}")
            check_menu(f, b, "grubcfg", fork, "after the cut")
            f.check(
                menu_current(status), "status: the boot menu is current", b, status.get("boot_menu")
            )
        elif menu_current(status):
            # The boot check (transactional-update-health.service, before the agent) found the
            # menu stale and rewrote it for the default: the next boot brings up the commit.
            check_menu(f, b, "grubcfg", fork, "after the cut (menu caught up by the boot check)")
        else:
            menu = status.get("boot_menu") or {}
            reason = str(menu.get("reason"))
            f.check(
                menu.get("stale") is True
                and f"snapshot {booted}" in reason
                and f"default is {fork}" in reason,
                f"status: boot_menu stale, naming snapshots {booted} and {fork}",
                b,
                menu,
            )
            check_menu(f, b, "grubcfg", old, "after the cut (stale)")
            if f.check(
                "prune.rc" in b.results and b.rc("prune") == 0,
                "cleanup --prune-only succeeds",
                b,
                b.results.get("prune.err", "not run"),
            ):
                check_menu(f, b, "pruned_grubcfg", fork, "after cleanup --prune-only")
                pruned = b.json("pruned")
                f.check(
                    menu_current(pruned),
                    "after cleanup --prune-only status says the boot menu is current",
                    b,
                    pruned.get("boot_menu"),
                )
    check_grub_fs(f, b)
    check_leftovers(f, b, prev, status, reported=False, kept=kept)


def check_next_tx(f: Findings, b: Boot) -> None:
    """The transaction after the cut works: the new default, in status and in the menu."""
    ok = f.check(b.rc("tx") == 0, "the next transaction succeeds", b, b.text("tx.err"))
    number = b.json("tx").get("snapshot") if ok else None
    status = b.json("tx_status")
    f.check(
        number is not None
        and status["pending"] == number
        and (status.get("default") or {}).get("number") == number,
        f"its snapshot {number} is the pending default",
        b,
        status.get("pending"),
    )
    if number is not None:
        check_menu(f, b, "tx_grubcfg", number, "after the next transaction")


def image_checks(f: Findings, b: Boot, img: Path) -> None:
    """The image after the last boot, on the host: btrfs and /boot/grub's ext fs are clean."""
    with attached(img, read_only=True) as device:
        r = sh("btrfs", "check", "--readonly", f"{device}p3", check=False)
        f.check(
            r.returncode == 0,
            "btrfs check --readonly of the image is clean",
            b,
            (r.stdout + r.stderr)[-2000:],
        )
        r = sh("e2fsck", "-fn", f"{device}p2", check=False)
        f.check(
            r.returncode == 0,
            "e2fsck -fn of /boot/grub's partition is clean",
            b,
            (r.stdout + r.stderr)[-2000:],
        )


def scenario_powercut(m: Machine, debs: Path) -> None:
    """Seven power cuts, each followed by a boot that checks, cleans up and transacts again."""
    f = Findings(m.workdir / "checks.log")
    prev = m.boot(POWERCUT_HELPERS + PRECUT_STEP + CUTS[1], cut=True)
    check_booted(prev, 1)
    for point in (2, 3, 4, 5, 6, 7, None):
        inside = int(prev.text("cut.point")) in COMMIT_CUTS
        step = POWERCUT_HELPERS + AFTER_CUT_STEP + (COMMIT_CUT_STEP if inside else "")
        step += CLEANUP_STEP + NEXT_TX_STEP
        if point is not None:
            step += PRECUT_STEP + CUTS[point]
        b = m.boot(step, cut=point is not None)
        (check_after_commit_cut if inside else check_after_cut)(f, b, prev)
        check_next_tx(f, b)
        prev = b
    image_checks(f, prev, m.image)
    if f.failed:
        raise ScenarioFailed(f"{len(f.failed)} check(s) failed:\n  " + "\n  ".join(f.failed))


ETC_LIVE_STEP = r"""
fact etc_subvol btrfs subvolume show /etc
fact usr_write touch /usr/tu-vm-write
fact chpasswd sh -c 'echo root:tu-etc-secret | chpasswd'
fact shadow_root sh -c 'getent shadow root | cut -d: -f2'
fact useradd useradd -m -s /bin/sh alice
fact hostname hostnamectl set-hostname tu-etc
cat >/etc/systemd/system/tu-demo.service <<'UNIT'
[Unit]
Description=tu-vm demo
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
[Install]
WantedBy=multi-user.target
UNIT
fact enable systemctl enable tu-demo.service
fact install transactional-update --non-interactive pkg install tu-conf
fact after_commit_issue sh -c 'echo "edited live after the commit" >>/etc/issue'
fact after_commit_conf sh -c 'echo "setting=live" >/etc/tu-conf.conf'
fact after_status transactional-update --json status
"""

ETC_CHECK_STEP = r"""
fact id_alice id -u alice
fact shadow_root sh -c 'getent shadow root | cut -d: -f2'
fact hostname hostname
fact enabled systemctl is-enabled tu-demo.service
fact active systemctl is-active tu-demo.service
fact issue cat /etc/issue
fact conf cat /etc/tu-conf.conf
fact conf_live cat /etc/tu-conf.conf.live
fact dpkg dpkg-query -W -f '${Status}' tu-conf
fact etc_unit systemctl show -p ActiveState,Result transactional-update-etc.service
fact cycles sh -c 'journalctl -b -o cat | grep -i "ordering[ ]cycle"'
fact references sh -c 'ls /.snapshots/*/ | tr "
" " "'
"""

ETC_NEXT_STEP = r"""
fact install2 transactional-update --non-interactive pkg install tu-hello
fact before_cut sh -c 'echo "tu-vm-cut-edit" >/etc/tu-after-cut && sync'
fact changelog2 transactional-update --json changelog 2
precut etc
python3 /run/tu-vm/cut.py at "$(cut -d' ' -f1 /proc/uptime)" 0
sleep 60
"""

ETC_ROLLBACK_STEP = r"""
fact after_cut cat /etc/tu-after-cut
fact changelog3 transactional-update --json changelog 3
fact booted_edit sh -c 'echo made-on-3 >/etc/tu-made-on-3'
fact rollback transactional-update rollback 1
fact rollback_json transactional-update --json rollback 1
"""

ETC_FIRST_STEP = r"""
fact conf cat /etc/tu-conf.conf
fact conf_live cat /etc/tu-conf.conf.live
fact dpkg dpkg-query -W -f '${Status}' tu-conf
fact made_on_3 cat /etc/tu-made-on-3
fact hostname hostname
fact id_alice id -u alice
"""


def _live_merges(log: dict[str, Any], when: str) -> list[dict[str, Any]]:
    return [m for m in log.get("live_etc", []) if m.get("when") == when]


def scenario_etc(m: Machine, debs: Path) -> None:
    """The writable /etc (issue 14): live admin work, an update, edits after its commit carried
    at shutdown, a conflict reported with both versions on disk, edits before a power cut carried
    at the next boot, and a rollback that boots the old snapshot's own /etc."""
    conf = make_deb(debs, "tu-conf", "1.0", None, {"/etc/tu-conf.conf": "setting=1\n"})
    repo = make_repo(debs, "repo-etc", [conf, hello_deb(debs, "1.0")])
    b = m.boot(ETC_LIVE_STEP, repo)
    check_booted(b, 1)
    check(b.rc("etc_subvol") == 0, "/etc is a subvolume of its own", b, b.text("etc_subvol.err"))
    check(b.rc("usr_write") != 0, "/usr stays read-only", b, b.text("usr_write.err"))
    for fact in ("chpasswd", "useradd", "hostname", "enable"):
        check(b.rc(fact) == 0, f"{fact} works on the running system", b, b.text(f"{fact}.err"))
    root_hash = b.text("shadow_root").strip()
    check(b.rc("install") == 0, "pkg install tu-conf succeeds", b, b.text("install.err"))
    for fact in ("after_commit_issue", "after_commit_conf"):
        check(b.rc(fact) == 0, f"{fact}: the live /etc takes edits", b, b.text(f"{fact}.err"))
    after = b.json("after_status")
    check(after["pending"] == 2, "snapshot 2 is pending", b, after)

    b = m.boot(ETC_CHECK_STEP + ETC_NEXT_STEP, repo, cut=True)
    check_booted(b, 2)
    check(b.rc("id_alice") == 0, "alice, added live before the update, exists", b)
    check(b.text("shadow_root").strip() == root_hash, "root's new password is there", b)
    check(b.text("hostname").strip() == "tu-etc", "the hostname set live is there", b)
    check(b.text("enabled").strip() == "enabled", "tu-demo is enabled", b, b.text("enabled"))
    check(b.text("active").strip() == "active", "tu-demo ran", b, b.text("active"))
    check(
        "edited live after the commit" in b.text("issue"),
        "the edit after the commit (carried at shutdown) is there",
        b,
        b.text("issue"),
    )
    check(b.text("conf") == "setting=1\n", "the package's conffile is in place", b, b.text("conf"))
    check(
        b.text("conf_live") == "setting=live\n",
        "the conflicting live version is beside it as .live",
        b,
        b.text("conf_live") + b.text("conf_live.err"),
    )
    conflicts = b.json("status").get("etc_conflicts", [])
    check(
        [c["path"] for c in conflicts] == ["/etc/tu-conf.conf"] and conflicts[0]["snapshot"] == 2,
        "status reports the conflict",
        b,
        conflicts,
    )
    check(b.text("dpkg") == "install ok installed", "tu-conf is installed", b, b.text("dpkg"))
    check(
        "ActiveState=active" in b.text("etc_unit") and "Result=success" in b.text("etc_unit"),
        "the /etc unit ran at boot",
        b,
        b.text("etc_unit"),
    )
    # (the pattern's brackets keep grep from finding the agent's own log line of this fact)
    check(b.rc("cycles") != 0, "systemd found no ordering cycle", b, b.text("cycles"))
    log2 = b.json("changelog2")
    synced = _live_merges(log2, "sync")
    check(
        any("/etc/issue" in mm["taken"] or "/etc/issue" in mm["merged"] for mm in synced)
        and any(c["path"] == "/etc/tu-conf.conf" for mm in synced for c in mm["conflicts"]),
        "changelog 2 records the shutdown's merge: /etc/issue carried, the conffile conflict",
        b,
        log2.get("live_etc"),
    )
    check(b.rc("install2") == 0, "pkg install tu-hello succeeds", b, b.text("install2.err"))

    b = m.boot(ETC_ROLLBACK_STEP, repo)
    check_booted(b, 3)
    check(
        b.text("after_cut") == "tu-vm-cut-edit\n",
        "the edit made right before the power cut was carried at boot",
        b,
        b.text("after_cut") + b.text("after_cut.err"),
    )
    log3 = b.json("changelog3")
    check(
        any("/etc/tu-after-cut" in mm["taken"] for mm in _live_merges(log3, "boot")),
        "changelog 3 records the boot's merge",
        b,
        log3.get("live_etc"),
    )
    check(b.rc("rollback") == 0, "rollback 1 succeeds", b, b.text("rollback.err"))
    check(
        "/etc/tu-made-on-3" in b.text("rollback.err"),
        "rollback names the live edit it leaves behind",
        b,
        b.text("rollback.err"),
    )

    b = m.boot(ETC_FIRST_STEP, repo)
    check_booted(b, 1)
    check(
        b.text("conf") == "setting=live\n" and b.rc("conf_live") != 0,
        "snapshot 1's own /etc: the file written live on it, no package version, no .live copy",
        b,
        b.text("conf") + b.text("conf_live"),
    )
    check(not b.text("dpkg").startswith("install ok"), "tu-conf is not installed", b)
    check(b.rc("made_on_3") != 0, "snapshot 1's own /etc: no edit made on 3", b)
    check(b.text("hostname").strip() == "tu-etc", "its own live edits are there", b)
    check(b.rc("id_alice") == 0, "alice was added on snapshot 1 itself", b)


# --- boot counting and the boot check -----------------------------------------------------------

AGENT_UP = "TU-VM boot:"  # the agent's first line: it starts once the boot check has finished
LOADING = "Loading snapshot {n}:"  # GRUB's echo in each entry (boot.templates.entry)
PANIC = "Kernel panic - not syncing"


def lines_with(log: str, text: str) -> int:
    """Lines of the serial log with *text* (GRUB writes its echo twice on one line: once per
    terminal, console and serial)."""
    return sum(text in line for line in log.splitlines())


TRIAL_STEP = """
fact grubenv_after grub-editenv /boot/grub/grubenv list
fact after_status transactional-update --json status
fact grub_cfg cat /boot/grub/grub.cfg
"""
AFTER_FAILURE_STEP = """
fact status_text transactional-update status
fact list transactional-update --json list
fact changelog2 transactional-update --json changelog 2
fact health transactional-update --json health
"""


def on_trial(b: Boot, number: int, good: int) -> None:
    """After a commit: *number* is on trial in GRUB's environment, *good* its fallback."""
    env = dict(line.split("=", 1) for line in b.text("grubenv_after").split())
    check(
        (env.get("tu_trial"), env.get("tu_tries"), env.get("tu_good"))
        == (str(number), "3", str(good)),
        f"snapshot {number} is on trial with 3 tries, {good} the fallback",
        b,
        env,
    )
    check(
        f"set default='tu-snapshots>tu-snapshot-{good}'" in b.text("grub_cfg"),
        "GRUB's menu falls back to the known-good entry",
        b,
    )
    boot = b.json("after_status")["boot"]
    check(boot["known_good"] == good, f"snapshot {good} is known-good", b, boot)


def boot_check_seconds(b: Boot) -> float:
    """How long this boot's check ran (its unit's start to exit, systemd's monotonic clock)."""
    times = dict(line.split("=", 1) for line in b.text("boot_check_time").split())
    return (
        int(times["ExecMainExitTimestampMonotonic"]) - int(times["ExecMainStartTimestampMonotonic"])
    ) / 1e6


def check_known_good(b: Boot, number: int) -> None:
    check(b.rc("boot_check") == 0, "the boot check's journal is readable", b)
    boot = b.json("status")["boot"]
    check(
        boot["known_good"] == number and boot["trial"] is None,
        f"the boot check made snapshot {number} known-good",
        b,
        boot,
    )


def check_failure_reported(b: Boot, reason: str, how: str) -> None:
    """Snapshot 2 failed for *reason*; 1 is the default again, and everything says so."""
    first = b.text("status_text").splitlines()[0]
    check(
        re.fullmatch(
            rf"snapshot 2 failed to boot \({re.escape(reason)}\); rolled back to 1 at "
            r"\d{4}-\d\d-\d\d \d\d:\d\d",
            first,
        )
        is not None,
        "status leads with the failure",
        b,
        first,
    )
    listed = {s["number"]: s for s in b.json("list")}
    check(listed[2]["userdata"].get("tu-boot") == "failed", "snapper's userdata marks 2", b)
    events = b.json("changelog2")["boot"]
    check(
        [(e["event"], e["reason"], e["how"], e["rolled_back_to"]) for e in events]
        == [("failed", reason, how, 1)],
        "the changelog of 2 says why",
        b,
        events,
    )
    check(b.json("health")["healthy"], "snapshot 1 is healthy", b, b.text("health"))


def scenario_unbootable(m: Machine, debs: Path) -> None:
    """An update whose initrd is garbage: GRUB tries it three times (each a kernel panic, which
    reboots by panic=), then boots the known-good snapshot by itself, which rolls back."""
    b = m.boot(
        "fact break transactional-update --non-interactive run sh -c "
        "'for f in /boot/initrd.img-*; do head -c 1M /dev/urandom > \"$f\"; done'\n" + TRIAL_STEP
    )
    check_booted(b, 1)
    check_known_good(b, 1)
    b.notes["boot check"] = f"{boot_check_seconds(b):.1f} s (a healthy boot, under TCG)"
    check(b.rc("break") == 0, "the breaking update commits", b, b.text("break.err"))
    on_trial(b, 2, 1)
    b = m.boot(AFTER_FAILURE_STEP, reboots=True, watch=(AGENT_UP,))
    check_booted(b, 1)
    log = ANSI.sub("", b.serial.read_text(errors="replace"))
    tries = lines_with(log, LOADING.format(n=2))
    check(tries == 3 and lines_with(log, PANIC) == 3, "GRUB tried snapshot 2 three times", b, tries)
    check(
        log.rfind(LOADING.format(n=1)) > log.rfind(LOADING.format(n=2)),
        "then GRUB booted snapshot 1",
        b,
    )
    check_failure_reported(b, "did not reach user space in 3 tries", "boot-counting")
    check(AGENT_UP in b.marks, "the healthy system came up", b)
    b.notes["recovery"] = f"{b.marks[AGENT_UP]:.0f} s from power-on to snapshot 1 up and checked"


CHECK_PATH = "/usr/lib/transactional-update/health.d/required/tu-check"


def check_deb(workdir: Path, version: str, body: str) -> Path:
    """A package shipping a required health check (as a service's package would)."""
    return make_deb(workdir, "tu-check", version, None, {CHECK_PATH: f"#!/bin/sh\n{body}\n"})


def scenario_unhealthy(m: Machine, debs: Path) -> None:
    """An update that boots but fails a required check rolls back and reboots by itself; a fixed
    update then boots, passes and becomes known-good."""
    bad = check_deb(debs, "1.0", "echo 'tu-check: the service answers 500'\nexit 1")
    fixed_dir = debs / "fixed"
    fixed_dir.mkdir()
    fixed = check_deb(fixed_dir, "2.0", "echo 'tu-check: ok'")
    b = m.boot(
        "fact install transactional-update --non-interactive pkg install tu-check\n" + TRIAL_STEP,
        make_repo(debs, "repo-bad", [bad]),
    )
    check_booted(b, 1)
    check(b.rc("install") == 0, "the update commits", b, b.text("install.err"))
    on_trial(b, 2, 1)
    step = (
        # Only the system the rollback rebooted into runs the step (the agent waits for the
        # boot check); should the unhealthy one get here, it waits for that reboot.
        "if findmnt -n -o SOURCE / | grep -q '/.snapshots/2/'; then NO_POWEROFF=1; else\n"
        + AFTER_FAILURE_STEP
        + "fact fix transactional-update --non-interactive pkg install tu-check\n"
        + "fact fixed_status transactional-update --json status\nfi\n"
    )
    b = m.boot(step, make_repo(debs, "repo-fixed", [fixed]), reboots=True, watch=(AGENT_UP,))
    check_booted(b, 1)
    log = ANSI.sub("", b.serial.read_text(errors="replace"))
    check(
        lines_with(log, LOADING.format(n=2)) == 1 and "reboot: Restarting system" in log,
        "snapshot 2 booted once, and the boot check rebooted it",
        b,
    )
    reason = "health check required/tu-check failed: exit 1: tu-check: the service answers 500"
    check_failure_reported(b, reason, "health-check")
    check(b.rc("fix") == 0, "the fixed update commits", b, b.text("fix.err"))
    check(b.json("fixed_status")["pending"] == 3, "snapshot 3 boots next", b)
    b.notes["recovery"] = f"{b.marks[AGENT_UP]:.0f} s from power-on to snapshot 1 up and checked"
    b = m.boot(
        "fact changelog3 transactional-update --json changelog 3\n"
        # The built-in check of required units, on the running system: one active, one absent.
        "echo 'HEALTH_REQUIRED_UNITS=\"systemd-journald tu-absent.service\"' "
        ">> /etc/transactional-update.conf\n"
        "fact units transactional-update --json health\n"
    )
    check_booted(b, 3)
    units = {c["check"]: c for c in b.json("units")["checks"]}["required/builtin.units"]
    check(
        b.rc("units") == 9
        and units["reason"] == "tu-absent.service is inactive (HEALTH_REQUIRED_UNITS)"
        and "systemd-journald.service is active" in units["output"],
        "a required unit that is not active fails the check",
        b,
        units,
    )
    check_known_good(b, 3)
    check(b.json("status")["boot"]["notice"] is None, "the failure no longer leads", b)
    events = [e["event"] for e in b.json("changelog3")["boot"]]
    check(events == ["known-good"], "the changelog of 3 says known-good", b, events)


# --- apply: a committed change made live without a reboot ---------------------------------------

HELLO_DAEMON = "/usr/lib/tu-hello/tu-hello-daemon"
HELLO_UNIT = "tu-hello.service"
HELLO_SERVED = "/run/tu-hello.served"
# The service serves what `tu-hello` said when it started; its daemon is an ELF binary (a copy of
# sleep), so that the process maps the package's file (a script maps only its interpreter).
HELLO_SERVICE = f"""[Unit]
Description=tu-hello, a service of the VM tests (testkit/vm.py)

[Service]
ExecStartPre=/bin/sh -c 'tu-hello > {HELLO_SERVED}'
ExecStart={HELLO_DAEMON} infinity

[Install]
WantedBy=multi-user.target
"""


def hello_service_deb(workdir: Path, version: str) -> Path:
    """tu-hello *version* with a service: the ``tu-hello`` script, a unit, and the unit's daemon,
    the host's ``sleep`` (Debian 12, as the guest) with trailing bytes that differ per version
    (an ELF runs with them): an upgrade replaces a file the running service maps."""
    tree = workdir / f"tu-hello-service-{version}"
    daemon = Path("/bin/sleep").read_bytes() + f"\ntu-hello-daemon {version}\n".encode()
    files = {
        "usr/bin/tu-hello": (f"#!/bin/sh\necho hello from tu-hello {version}\n".encode(), 0o755),
        HELLO_DAEMON.lstrip("/"): (daemon, 0o755),
        f"usr/lib/systemd/system/{HELLO_UNIT}": (HELLO_SERVICE.encode(), 0o644),
        "usr/share/tu-hello/version": (f"{version}\n".encode(), 0o644),
    }
    for path, (data, mode) in files.items():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_bytes(data)
        (tree / path).chmod(mode)
    (tree / "DEBIAN").mkdir()
    (tree / "DEBIAN/control").write_text(
        f"Package: tu-hello\nVersion: {version}\nArchitecture: amd64\n"
        "Maintainer: tests <tests@example.invalid>\nDescription: test package with a service\n"
    )
    deb = workdir / f"tu-hello_{version}_amd64.deb"
    sh("dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb))
    return deb


# Boot 1, on snapshot 1 all along: 1.0 installed and applied at once, its service started; the
# 2.0 upgrade committed, refused as it is (it replaces files), applied with the service restarted.
APPLY_STEP = f"""
fact t_start date +%s.%N
fact install transactional-update --non-interactive pkg install tu-hello=1.0 apply
fact hello tu-hello
fact t_hello date +%s.%N
fact applied_root findmnt -n -o SOURCE,OPTIONS /
fact snap1_hello test -e /.snapshots/1/snapshot/usr/bin/tu-hello
fact applied_status transactional-update --json status
fact changelog2 transactional-update --json changelog 2
fact enable systemctl enable --now {HELLO_UNIT}
fact served1 cat {HELLO_SERVED}
fact pid1 systemctl show -p MainPID --value {HELLO_UNIT}
fact t_upgrade date +%s.%N
fact upgrade transactional-update --non-interactive pkg install tu-hello
fact t_upgraded date +%s.%N
fact refused transactional-update apply
fact refused_hello tu-hello
fact refused_status transactional-update --json status
fact refused_pid systemctl show -p MainPID --value {HELLO_UNIT}
fact t_apply2 date +%s.%N
fact apply2 transactional-update --json apply --allow-replacement --restart-services
fact t_applied2 date +%s.%N
fact served2 cat {HELLO_SERVED}
fact active2 systemctl is-active {HELLO_UNIT}
fact pid2 systemctl show -p MainPID --value {HELLO_UNIT}
fact hello2 tu-hello
fact applied2_status transactional-update --json status
fact applied2_root findmnt -n -o SOURCE,OPTIONS /
"""

# Boot 2: the reboot; the default snapshot 3 boots as it was committed, its service enabled.
APPLY_REBOOT_STEP = f"""
fact hello tu-hello
fact dpkg dpkg-query -W -f '${{Status}} ${{Version}}' tu-hello
fact enabled systemctl is-enabled {HELLO_UNIT}
fact active systemctl is-active {HELLO_UNIT}
fact served cat {HELLO_SERVED}
fact changelog2 transactional-update --json changelog 2
fact changelog3 transactional-update --json changelog 3
"""
POWERING_OFF = "TU-VM done: powering off"  # agent.sh's last line before systemctl poweroff


def seconds_between(b: Boot, start: str, end: str) -> float:
    """Seconds between two ``date +%s.%N`` facts of the guest."""
    return float(b.text(end)) - float(b.text(start))


def check_live(b: Boot, fact: str, live: int, came_from: int) -> None:
    """``status --json`` (the result *fact*): 1 booted, *live*'s userspace applied over it."""
    st = b.json(fact)
    applied = st.get("applied") or {}
    check(
        st["booted"]["number"] == 1
        and st.get("live") == live
        and applied.get("snapshot") == live
        and applied.get("from") == came_from
        and applied.get("kernel_pending") is False,
        f"status: snapshot 1 booted, {live} live (applied from {came_from}, no kernel pending)",
        b,
        {k: st.get(k) for k in ("booted", "default", "pending", "live", "applied")},
    )


def check_hello(b: Boot, fact: str, version: str, what: str) -> None:
    check(
        b.rc(fact) == 0 and b.text(fact) == f"hello from tu-hello {version}\n",
        what,
        b,
        b.text(fact) + b.text(f"{fact}.err"),
    )


def applied_records(b: Boot, fact: str) -> list[dict[str, Any]]:
    records = b.json(fact).get("applied")
    check(isinstance(records, list) and records != [], f"{fact} has applied records", b, records)
    return list(records)


def scenario_apply(m: Machine, debs: Path) -> None:
    """`pkg install tu-hello apply`: tu-hello runs at once, without a reboot; the upgrade of
    tu-hello under its running service is refused as it is, and applied with
    --allow-replacement --restart-services the service restarts and serves the new version; the
    reboot then boots the same snapshot, unchanged.  The apply path is timed against the reboot
    it replaces (boot 1's shutdown and boot 2's power-on to the agent)."""
    repo = make_repo(
        debs, "repo-apply", [hello_service_deb(debs, "1.0"), hello_service_deb(debs, "2.0")]
    )
    b = m.boot(APPLY_STEP, repo, watch=(POWERING_OFF,))
    check_booted(b, 1)
    check(b.rc("install") == 0, "pkg install tu-hello=1.0 apply succeeds", b, b.text("install.err"))
    check_hello(b, "hello", "1.0", "tu-hello runs at once, without a reboot")
    check(b.text("applied_root") == b.text("root"), "snapshot 1 is still /", b)
    check(b.rc("snap1_hello") != 0, "the booted snapshot on disk is untouched (no tu-hello)", b)
    check_live(b, "applied_status", 2, 1)
    first = applied_records(b, "changelog2")[-1]
    check(
        first.get("class") == "additions" and first.get("from") == 1,
        "changelog 2 records the apply: additions, from 1",
        b,
        first,
    )
    check(b.rc("enable") == 0, f"{HELLO_UNIT} starts", b, b.text("enable.err"))
    check(
        b.text("served1") == "hello from tu-hello 1.0\n",
        "the service serves 1.0",
        b,
        b.text("served1") + b.text("served1.err"),
    )
    pid = int(b.text("pid1").strip() or 0)
    check(pid > 0, "the service's daemon runs", b, b.text("pid1"))
    check(b.rc("upgrade") == 0, "pkg install tu-hello (2.0) commits", b, b.text("upgrade.err"))
    # Refused as it is: the upgrade replaces files (the running daemon's among them).
    check(
        b.rc("refused") == 2,
        "apply of a replacing change without --allow-replacement exits 2",
        b,
        f"exit {b.rc('refused')}: {b.text('refused')}{b.text('refused.err')}",
    )
    check_hello(b, "refused_hello", "1.0", "after the refusal the running system still has 1.0")
    check_live(b, "refused_status", 2, 1)
    check(b.text("refused_pid").strip() == str(pid), "the service was left running", b)
    # Applied with --allow-replacement --restart-services: the service restarts on 2.0.
    check(b.rc("apply2") == 0, "apply --allow-replacement succeeds", b, b.text("apply2.err"))
    out = b.json("apply2")
    check(
        (out.get("snapshot"), out.get("from"), out.get("class"), out.get("kernel_pending"))
        == (3, 2, "replacement", False),
        "apply --json: snapshot 3 from 2, a replacement, no kernel pending",
        b,
        out,
    )
    daemon = [p for p in out.get("processes", []) if p.get("pid") == pid]
    check(
        len(daemon) == 1
        and daemon[0].get("unit") == HELLO_UNIT
        and any(f.endswith(HELLO_DAEMON) for f in daemon[0].get("files", [])),
        f"apply lists the daemon (pid {pid}) of {HELLO_UNIT} mapping the replaced {HELLO_DAEMON}",
        b,
        out.get("processes"),
    )
    check(
        HELLO_UNIT in out.get("restarted", []) and "tu-vm-agent.service" not in out["restarted"],
        f"apply restarted {HELLO_UNIT} (and not the agent's unit)",
        b,
        {k: out.get(k) for k in ("restarted", "not_restarted")},
    )
    check(b.text("active2").strip() == "active", f"{HELLO_UNIT} is active", b, b.text("active2"))
    check(b.text("pid2").strip() not in ("", "0", str(pid)), "it is a new process", b)
    check(
        b.text("served2") == "hello from tu-hello 2.0\n",
        "the restarted service serves 2.0",
        b,
        b.text("served2") + b.text("served2.err"),
    )
    check_hello(b, "hello2", "2.0", "tu-hello is 2.0 on the running system")
    check_live(b, "applied2_status", 3, 2)
    check(b.text("applied2_root") == b.text("root"), "snapshot 1 is still / after both", b)
    b.notes["apply path"] = (
        f"{seconds_between(b, 't_start', 't_hello'):.1f} s from `pkg install tu-hello apply` "
        "to tu-hello run, no reboot"
    )
    b.notes["install alone"] = (
        f"{seconds_between(b, 't_upgrade', 't_upgraded'):.1f} s for `pkg install tu-hello` "
        "(the 2.0 upgrade, not applied)"
    )
    b.notes["apply --allow-replacement --restart-services"] = (
        f"{seconds_between(b, 't_apply2', 't_applied2'):.1f} s"
    )
    check(POWERING_OFF in b.marks, "the agent powered off", b)
    shutdown = b.seconds - b.marks[POWERING_OFF]

    b = m.boot(APPLY_REBOOT_STEP, repo, watch=(AGENT_UP,))
    check_booted(b, 3)
    status = b.json("status")
    check(
        status.get("live") == 3 and status.get("applied", "missing") is None,
        "status: snapshot 3 booted and live, nothing applied",
        b,
        {k: status.get(k, "missing") for k in ("booted", "live", "applied")},
    )
    check_hello(b, "hello", "2.0", "tu-hello is 2.0 after the reboot")
    check(b.text("dpkg") == "install ok installed 2.0", "dpkg has tu-hello 2.0", b, b.text("dpkg"))
    check(
        b.text("enabled").strip() == "enabled" and b.text("active").strip() == "active",
        f"{HELLO_UNIT}, enabled live on the applied system, started at boot",
        b,
        b.text("enabled") + b.text("active"),
    )
    check(
        b.text("served") == "hello from tu-hello 2.0\n",
        "the service serves 2.0",
        b,
        b.text("served") + b.text("served.err"),
    )
    first = applied_records(b, "changelog2")[-1]
    check(first.get("class") == "additions", "changelog 2 still has its apply", b, first)
    last = applied_records(b, "changelog3")[-1]
    check(
        last.get("class") == "replacement"
        and last.get("from") == 2
        and HELLO_UNIT in last.get("restarted", [])
        and last.get("kernel_pending") is False
        and bool(last.get("at"))
        and bool(last.get("who")),
        f"changelog 3 records the apply: a replacement from 2, {HELLO_UNIT} restarted",
        b,
        last,
    )
    check(AGENT_UP in b.marks, "the agent came up", b)
    up = b.marks[AGENT_UP]
    b.notes["reboot"] = (
        f"{shutdown + up:.0f} s: boot 1's shutdown {shutdown:.0f} s, then {up:.0f} s from "
        "power-on to the agent up (after the boot check)"
    )


# --- fleetlock: a reboot that waits for a slot of the fleet -------------------------------------

FLEET_DIR = "/var/lib/tu-fleet"  # /var: shared by every snapshot, the server's state survives
FLEET_STATE = f"{FLEET_DIR}/state.json"
FLEET_PORT = 3333
FLEET_UNIT = "tu-fleetlock.service"
OTHER_MACHINE = "other-machine"  # the fleet's other member, holding the only slot at first
APP_ID = "b4c7e1d2a9f04e3c8d6b5a4f3e2d1c0b"  # transactional-update's key for the fleet ID
SLOT_FILE = "/var/lib/transactional-update/reboot-slot.json"
MANAGER_LOCK = "/var/lib/transactional-update/reboot-manager.lock"
RELEASING = "TU-VM fleetlock: releasing the slot of other-machine"  # on the serial console
# The FleetLock server as the guest runs it (testkit/fleetlock_server.py's __main__), before the
# boot check (which gives the slot back) and, Type=notify, only once it listens.
FLEET_SERVICE = f"""[Unit]
Description=FleetLock server of the VM tests (testkit/fleetlock_server.py)
Before=transactional-update-health.service
RequiresMountsFor={FLEET_DIR}

[Service]
Type=notify
ExecStart=/usr/bin/python3 -I {FLEET_DIR}/server.py {FLEET_PORT} 1 {FLEET_STATE}

[Install]
WantedBy=multi-user.target
"""
# The step's helper (stdlib only): the other machine's requests, and waits on this machine's
# slot record.  post ENDPOINT ID; manager TIMEOUT: until the reboot manager runs (holds its
# lock, seen in /proc/locks: probing the lock could make a starting manager fail);
# waiting N TIMEOUT: until it was refused N times in a row; gap SECONDS TIMEOUT: until its next
# ask is at least SECONDS away (a release just after a refusal lets the step store its results
# before the reboot the release brings).
FLEET_HELPER = f"""import json, os, sys, time, urllib.error, urllib.request
from datetime import datetime, timezone


def post(endpoint, node):
    body = json.dumps({{"client_params": {{"id": node, "group": "default"}}}}).encode()
    request = urllib.request.Request(
        "http://127.0.0.1:{FLEET_PORT}/v1/" + endpoint, data=body, method="POST",
        headers={{"fleet-lock-protocol": "true", "content-type": "application/json"}})
    try:
        with urllib.request.urlopen(request, timeout=15) as answer:
            print(answer.status, answer.read().decode())
            return 0
    except urllib.error.HTTPError as exc:
        print(exc.code, exc.read().decode())
        return 1


def slot():
    try:
        with open("{SLOT_FILE}") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def wait(until, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if until(slot()):
            print(json.dumps(slot()))
            return 0
        time.sleep(0.5)
    print("timed out; the slot record:", json.dumps(slot()))
    return 1


def manager_runs(_):
    try:
        inode = os.stat("{MANAGER_LOCK}").st_ino
        with open("/proc/locks") as f:
            locks = [line.split() for line in f]
    except OSError:
        return False
    return any(w[1] == "FLOCK" and w[3] == "WRITE" and w[5].endswith(f":{{inode}}")
               for w in locks if len(w) > 5)


def next_try(s):
    return datetime.fromisoformat(s["next_try"]) - datetime.now(timezone.utc)


def gap(seconds, timeout):
    s = slot()
    if s is None or s.get("state") != "waiting" or next_try(s).total_seconds() >= seconds:
        print(json.dumps(s))
        return 0
    asked = s.get("attempts")
    return wait(lambda t: t is not None and t.get("attempts") != asked, timeout)


if sys.argv[1] == "post":
    sys.exit(post(sys.argv[2], sys.argv[3]))
if sys.argv[1] == "manager":
    sys.exit(wait(manager_runs, float(sys.argv[2])))
if sys.argv[1] == "waiting":
    n = int(sys.argv[2])
    sys.exit(wait(lambda s: s is not None and s.get("state") == "waiting"
                  and s.get("attempts", 0) >= n, float(sys.argv[3])))
sys.exit(gap(float(sys.argv[2]), float(sys.argv[3])))
"""
FLEET_CONF = f"""REBOOT_METHOD=fleetlock
FLEETLOCK_URL=http://127.0.0.1:{FLEET_PORT}
MAINTENANCE_WINDOW_START=00:00
MAINTENANCE_WINDOW_DURATION=24h
"""


def fleet_step() -> str:
    """Boot 1 (snapshot 1): the server (this checkout's source) with the other machine holding
    the only slot, fleetlock configured, snapshot 2 committed, the reboot planned; refused, the
    machine keeps running and asks again; the other machine's release lets it reboot."""
    server = (REPO / "testkit/fleetlock_server.py").read_text()
    helper = f"python3 -I {FLEET_DIR}/fleet.py"
    return f"""
passed() {{ [ "$(cat "$OUT/$1.rc")" = 0 ]; }}  # the fact succeeded: without it, stop here
mkdir -p {FLEET_DIR}
cat > {FLEET_DIR}/server.py <<'TU_FLEET_SERVER_EOF'
{server}TU_FLEET_SERVER_EOF
cat > {FLEET_DIR}/fleet.py <<'TU_FLEET_HELPER_EOF'
{FLEET_HELPER}TU_FLEET_HELPER_EOF
cat > /etc/systemd/system/{FLEET_UNIT} <<'TU_FLEET_UNIT_EOF'
{FLEET_SERVICE}TU_FLEET_UNIT_EOF
fact fleet_start systemctl enable --now {FLEET_UNIT}
fact seed {helper} post pre-reboot {OTHER_MACHINE}
cat >> /etc/transactional-update.conf <<'TU_FLEET_CONF_EOF'
{FLEET_CONF}TU_FLEET_CONF_EOF
fact conf cat /etc/transactional-update.conf
fact install transactional-update --non-interactive pkg install tu-hello
passed install || return 0
fact manager_start systemctl start transactional-update-reboot-manager.service
fact manager_up {helper} manager 120
passed manager_up || return 0
fact reboot transactional-update reboot
passed reboot || return 0
fact t_planned date +%s.%N
# The manager looks for new plans once a minute, asks at once, and again 15 s after a refusal.
fact refused {helper} waiting 2 180
fact t_refused date +%s.%N
fact still_root findmnt -n -o SOURCE,OPTIONS /
fact jobs systemctl list-jobs --no-legend
fact waiting_status transactional-update --json status
fact manager_status transactional-update reboot-manager --json status
fact manager_journal journalctl -b -u transactional-update-reboot-manager.service -o cat \\
    --no-pager
fact held_before cat {FLEET_STATE}
fact app_id systemd-id128 --app-specific={APP_ID} machine-id
passed refused || return 0  # the host fails the boot with the facts above
fact gap {helper} gap 12 120
save
fact t_release date +%s.%N
say "{RELEASING.removeprefix("TU-VM ")}"
fact release {helper} post steady-state {OTHER_MACHINE}
save
# The reboot the release brings ends this boot (qemu -no-reboot); should it not come, the
# agent stores what the manager says and powers off, and the host fails the boot.
sleep 150
fact late_manager_status transactional-update reboot-manager --json status
fact late_journal journalctl -b -u transactional-update-reboot-manager.service -o cat --no-pager
"""


# Boot 2 (snapshot 2): the boot check gave the slot back; the server and this machine agree.
FLEET_AFTER_STEP = f"""
fact hello tu-hello
fact fleet_active systemctl is-active {FLEET_UNIT}
fact server_state cat {FLEET_STATE}
fact slot_file test -e {SLOT_FILE}
fact app_id systemd-id128 --app-specific={APP_ID} machine-id
fact manager_status transactional-update reboot-manager --json status
fact fleet_journal journalctl -u {FLEET_UNIT} -o short-unix --no-pager
"""


def scenario_fleetlock(m: Machine, debs: Path) -> None:
    """REBOOT_METHOD=fleetlock on a real boot: a FleetLock server in the guest (the testkit's,
    persistent, 127.0.0.1) whose only slot another machine holds; the reboot into snapshot 2 is
    planned, refused (no reboot, asked again), and happens once the other machine gives its
    slot back; the boot of snapshot 2 gives the slot back after its boot check."""
    repo = make_repo(debs, "repo-fleet", [hello_deb(debs, "1.0")])
    b = m.boot(fleet_step(), repo, timeout=max(BOOT_TIMEOUT, 720), watch=(AGENT_UP, RELEASING))
    check_booted(b, 1)
    check(b.rc("fleet_start") == 0, f"{FLEET_UNIT} starts", b, b.text("fleet_start.err"))
    check(b.rc("seed") == 0, f"{OTHER_MACHINE} takes the only slot", b, b.text("seed"))
    check(b.rc("install") == 0, "pkg install tu-hello commits", b, b.text("install.err"))
    check(
        b.rc("manager_start") == 0 and b.rc("manager_up") == 0,
        "the reboot manager starts and runs",
        b,
        b.text("manager_start.err") + b.text("manager_up"),
    )
    said = b.text("reboot") + b.text("reboot.err")
    check(
        b.rc("reboot") == 0
        and "reboot into snapshot 2 (with a fleetlock reboot slot)" in said
        and "the reboot manager is not running" not in said,
        "transactional-update reboot plans the reboot for the running reboot manager",
        b,
        said,
    )
    check(
        b.rc("refused") == 0,
        "the manager was refused twice (asked again after 15 s)",
        b,
        b.text("refused") + b.text("manager_journal"),
    )
    check(b.text("still_root") == b.text("root"), "refused, the machine did not reboot", b)
    check("reboot.target" not in b.text("jobs"), "no reboot is under way", b, b.text("jobs"))
    me = b.text("app_id").strip()
    check(b.rc("app_id") == 0 and len(me) == 32, "systemd-id128 gives the fleet ID", b, me)
    slot = (b.json("waiting_status").get("boot") or {}).get("reboot_slot") or {}
    check(
        slot.get("state") == "waiting"
        and slot.get("method") == "fleetlock"
        and slot.get("group") == "default"
        and slot.get("node") == me
        and slot.get("snapshot") == 2
        and slot.get("attempts", 0) >= 2
        and "failed_lock: all reboot slots of default are taken" in (slot.get("last_error") or ""),
        "status --json: boot.reboot_slot waits, refused with failed_lock, for this machine's ID",
        b,
        slot,
    )
    st = b.json("manager_status")
    check(
        st.get("running") is True
        and (st.get("plan") or {}).get("snapshot") == 2
        and (st.get("reboot_slot") or {}).get("state") == "waiting",
        "reboot-manager --json status: running, reboot into 2 planned, waiting for a slot",
        b,
        st,
    )
    check(
        "no reboot slot from FleetLock server" in b.text("manager_journal")
        and "rebooting into snapshot" not in b.text("manager_journal"),
        "the manager's journal says why it does not reboot, and does not say it reboots",
        b,
        b.text("manager_journal"),
    )
    held = json.loads(b.text("held_before"))
    check(held["holders"]["default"] == [OTHER_MACHINE], "the server: the slot is taken", b, held)
    check(b.rc("release") == 0, f"{OTHER_MACHINE} gives its slot back", b, b.text("release"))
    check(
        b.rebooted and "late_manager_status" not in b.results,
        "the machine rebooted within 150 s of the release",
        b,
        b.results.get("late_manager_status", "") + b.results.get("late_journal", ""),
    )
    check(RELEASING in b.marks, "the release was seen on the console", b)
    b.notes["refused"] = (
        f"{seconds_between(b, 't_planned', 't_refused'):.0f} s from the plan to the second "
        "refusal (the manager polls for plans once a minute)"
    )
    release_to_reboot = b.seconds - b.marks[RELEASING]
    b.notes["release to reboot"] = (
        f"{release_to_reboot:.0f} s from the other machine's release to the reset (host clock)"
    )

    b = m.boot(FLEET_AFTER_STEP, repo, watch=(AGENT_UP,))
    check_booted(b, 2)
    check_known_good(b, 2)
    check_hello(b, "hello", "1.0", "tu-hello runs on snapshot 2")
    check(
        "reboot slot of group default given back" in b.text("boot_check"),
        "the boot check gave the slot back",
        b,
        b.text("boot_check"),
    )
    check(b.text("fleet_active").strip() == "active", f"{FLEET_UNIT} runs", b)
    check(b.rc("slot_file") != 0, f"{SLOT_FILE} is gone", b)
    boot = b.json("status")["boot"]
    check(boot.get("reboot_slot", "missing") is None, "status: no reboot slot", b, boot)
    check(b.text("app_id").strip() == me, "the fleet ID is stable across the reboot", b)
    server = json.loads(b.text("server_state"))
    check(server["holders"].get("default") == [], "the server: no holders", b, server)
    events = [(e["event"], e["id"]) for e in server["history"]]
    check(
        events
        == [
            ("granted", OTHER_MACHINE),
            ("released", OTHER_MACHINE),
            ("granted", me),
            ("released", me),
        ],
        "the server granted the slot to this machine's fleet ID after the release, and got it back",
        b,
        events,
    )
    at = {(e["event"], e["id"]): float(e["at"]) for e in server["history"]}
    grant = at[("granted", me)] - at[("released", OTHER_MACHINE)]
    b.notes["release to grant"] = f"{grant:.0f} s (the server's clock)"
    held_for = at[("released", me)] - at[("granted", me)]
    b.notes["slot held"] = f"{held_for:.0f} s from the grant to the give-back after the reboot"
    b.notes["power-on to agent up"] = f"{b.marks.get(AGENT_UP, -1):.0f} s (after the boot check)"


SCENARIOS: dict[str, Callable[[Machine, Path], None]] = {
    "update": scenario_update,
    "rollback": scenario_rollback,
    "grub": scenario_grub,
    "nightly": scenario_nightly,
    "broken": scenario_broken,
    "uefi": scenario_uefi,
    "powercut": scenario_powercut,
    "stack": scenario_stack,
    "etc": scenario_etc,
    "unbootable": scenario_unbootable,
    "unhealthy": scenario_unhealthy,
    "apply": scenario_apply,
    "fleetlock": scenario_fleetlock,
}


# --- the runner ----------------------------------------------------------------------------------


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # GRUB's and systemd's terminal control


def serial_tail(path: Path, lines: int = 60) -> str:
    if not path.exists():
        return "(no serial log)"
    text = ANSI.sub("", path.read_text(errors="replace").replace("\r", ""))
    printable = "".join(c for c in text if c == "\n" or c.isprintable())
    kept = [line for line in printable.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


@dataclass
class Outcome:
    name: str
    passed: bool
    seconds: float
    boots: list[Boot]
    error: str = ""


def run_scenario(name: str, golden_image: Path, keep: bool = False) -> Outcome:
    workdir = Path(tempfile.mkdtemp(prefix=f"tu-vm-{name}-", dir="/var/tmp"))
    started = time.monotonic()
    m = Machine.from_golden(golden_image, workdir)
    debs = workdir / "debs"
    debs.mkdir()
    try:
        SCENARIOS[name](m, debs)
        return Outcome(name, True, time.monotonic() - started, m.boots)
    except ScenarioFailed as e:
        return Outcome(name, False, time.monotonic() - started, m.boots, str(e))
    except Exception as e:  # the harness itself broke (qemu, tar, disk space): still a FAIL
        return Outcome(name, False, time.monotonic() - started, m.boots, f"{type(e).__name__}: {e}")
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def resolve(names: list[str]) -> list[str]:
    order = list(SCENARIOS)
    picked = []
    for n in names or order:
        name = order[int(n) - 1] if n.isdigit() and 0 < int(n) <= len(order) else n
        if name not in SCENARIOS:
            raise ValueError(f"no scenario {n!r}")
        picked.append(name)
    return picked


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vm-tests/run", description=__doc__.split("\n")[0])
    parser.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help=f"{', '.join(SCENARIOS)} or 1-{len(SCENARIOS)} (default: all)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep work dirs (serial logs, results, the disk image)"
    )
    args = parser.parse_args(argv)
    try:
        names = resolve(args.scenarios)
    except ValueError as e:
        choices = f"{', '.join(SCENARIOS)} (or 1-{len(SCENARIOS)})"
        print(f"error: {e}\nhint: pick from {choices}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("error: vm-tests need root (loop devices, mounts)", file=sys.stderr)
        return 2
    if shutil.which("qemu-system-x86_64") is None:
        print("error: qemu-system-x86_64 is missing\nhint: ./tu-dev install", file=sys.stderr)
        return 2
    started = time.monotonic()
    img = golden(lambda s: print(s, flush=True))
    outcomes = []
    for name in names:
        print(f"--- {name}", flush=True)
        o = run_scenario(name, img, args.keep)
        outcomes.append(o)
        boots = ", ".join(f"{b.seconds:.0f}" for b in o.boots)
        if o.passed:
            print(f"PASS {name} in {o.seconds:.0f} s (boots: {boots} s)", flush=True)
            for b in o.boots:
                for key, text in b.notes.items():
                    print(f"  boot {b.number} {key}: {text}", flush=True)
        else:
            print(f"FAIL {name} in {o.seconds:.0f} s (boots: {boots} s): {o.error}", flush=True)
            if o.boots:
                last = o.boots[-1]
                print(f"--- serial log of boot {last.number} (tail) ---")
                print(serial_tail(last.serial), flush=True)
    failed = [o.name for o in outcomes if not o.passed]
    print(
        f"{len(outcomes) - len(failed)} passed, {len(failed)} failed"
        f"{' (' + ', '.join(failed) + ')' if failed else ''} in {time.monotonic() - started:.0f} s"
    )
    return 1 if failed else 0
