"""The nightly update end to end on a real loop-image system, and reboot requests through the CLI.

The reboot command is a recording script (REBOOT_COMMAND in the system's configuration), so the
test machine never reboots; "booting" the new default is remounting the image as it would boot.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from testkit.systems import System, make_deb, sh
from transactional_update.provision import image
from transactional_update.reboot import manager as reboot_manager
from transactional_update.reboot import units
from transactional_update.snapshots import btrfs


def _repo(system: System, debs: list[Path]) -> None:
    """A local apt repository in the shared /var/cache (what the snapshot's sources name)."""
    repo = system.root / "var/cache/tu-repo"
    repo.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        shutil.copy(deb, repo)
    (repo / "Packages").write_text(sh("dpkg-scanpackages", "--multiversion", ".", cwd=repo).stdout)


def _prepare(system: System, tmp_path: Path, settings: str) -> Path:
    """Configure the booted snapshot: a local repository only, and *settings*; returns the log."""
    log = tmp_path / "reboots"
    recorder = tmp_path / "reboot-recorder"
    recorder.write_text(f'#!/bin/sh\nprintf "%s\\n" "reboot $*" >> {shlex.quote(str(log))}\n')
    recorder.chmod(0o755)
    with system.booted_writable() as snap:
        (snap / "etc/apt/sources.list").write_text("deb [trusted=yes] file:/var/cache/tu-repo ./\n")
        for extra in (snap / "etc/apt/sources.list.d").glob("*"):
            extra.unlink()
        (snap / "etc/transactional-update.conf").write_text(
            f"REBOOT_COMMAND='{recorder} --recorded'\n{settings}"
        )
    return log


def _boot_default(system: System) -> None:
    """What a reboot does to the filesystem: the default subvolume is mounted at /."""
    image.unmount_system(system.root)
    image.mount_system(system.device, system.root)


def _booted(system: System) -> int:
    return int(btrfs.subvolume_path(system.root).split("/")[-2])


def _exec_start(system: System) -> list[str]:
    """The arguments the installed nightly service gives transactional-update."""
    unit = system.root / "usr/lib/systemd/system/transactional-update.service"
    line = next(x for x in unit.read_text().splitlines() if x.startswith("ExecStart="))
    argv = shlex.split(line.removeprefix("ExecStart="))
    assert argv[0] == units.SHIPPED_EXEC
    return argv[1:]


def test_nightly_service_updates_commits_and_requests_the_reboot(
    managed_system: System, tmp_path: Path
) -> None:
    s = managed_system
    log = _prepare(s, tmp_path, "REBOOT_METHOD=systemd\nUPDATE_METHOD=dup\n")
    _repo(s, [make_deb(tmp_path, "tu-hello", "1.0")])

    # The units go into a new snapshot, enabled as `systemctl enable` would.
    r = s.tu("install-units")
    assert r.returncode == 0, r.stderr
    assert s.default_number() == 2
    snap = s.snapshot(2)
    for name in units.UNITS:
        assert (snap / "usr/lib/systemd/system" / name).is_file()
    wants = snap / "etc/systemd/system/timers.target.wants/transactional-update.timer"
    assert os.readlink(wants) == "/usr/lib/systemd/system/transactional-update.timer"
    assert not (s.snapshot(1) / "usr/lib/systemd/system/transactional-update.timer").exists()
    assert s.tu("--continue", "pkg", "install", "tu-hello").returncode == 0
    _boot_default(s)
    assert _booted(s) == 3
    r = s.tu("install-units")
    assert (r.returncode, r.stdout) == (
        0,
        "the units are installed and up to date; no snapshot was made\n",
    )
    argv = _exec_start(s)
    assert argv == ["--non-interactive", "cleanup", "auto-update", "reboot"]

    # Night 1: nothing new in the repository - no snapshot, no reboot.
    r = s.tu(*argv)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-2:] == [
        "apt: nothing to upgrade; no snapshot was kept",
        "no reboot needed: snapshot 3 is booted and the default",
    ]
    assert not log.exists() and s.default_number() == 3

    # Night 2: a newer version - a new default from the configured method, and one reboot.
    _repo(s, [make_deb(tmp_path / "v2", "tu-hello", "2.0")])
    s.time_passes()  # a day later: REFRESH_DELAY no longer spares the refresh
    r = s.tu(*argv)
    assert r.returncode == 0, r.stderr
    assert s.default_number() == 4
    assert r.stdout.splitlines()[-2:] == [
        "snapshot 4 is the new default; reboot to use it",
        "rebooting into snapshot 4",
    ]
    assert log.read_text() == "reboot --recorded\n"
    entry = json.loads(s.tu("--json", "changelog", "4").stdout)
    assert entry["packages"] == [
        {"name": "tu-hello", "kind": "upgraded", "old": "1.0", "new": "2.0"}
    ]
    assert entry["commands"][-1]["argv"][:3] == ["apt-get", "-y", "dist-upgrade"]

    # After the reboot nothing is pending: `reboot` does nothing.
    _boot_default(s)
    r = s.tu("--json", "reboot")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["reboot_needed"] is False
    assert log.read_text() == "reboot --recorded\n"


def test_a_failed_update_requests_no_reboot(managed_system: System, tmp_path: Path) -> None:
    s = managed_system
    log = _prepare(s, tmp_path, "REBOOT_METHOD=systemd\n")
    _repo(s, [make_deb(tmp_path, "tu-hello", "1.0")])
    assert s.tu("pkg", "install", "tu-hello").returncode == 0
    _boot_default(s)
    _repo(s, [make_deb(tmp_path / "v2", "tu-hello", "2.0", postinst="exit 1")])
    s.time_passes()
    r = s.tu("cleanup", "auto-update", "reboot")
    assert r.returncode == 1
    assert s.default_number() == 2 and not log.exists()


def test_marker_methods_and_the_refusal_for_another_root(
    managed_system: System, tmp_path: Path
) -> None:
    s = managed_system
    with s.booted_writable() as snap:
        (snap / "etc/transactional-update.conf").write_text("REBOOT_METHOD=kured\n")
    r = s.tu("reboot")
    assert (r.returncode, r.stdout) == (
        0,
        "no reboot needed: snapshot 1 is booted and the default\n",
    )
    assert s.tu("run", "--", "touch", "/etc/changed").returncode == 0
    # /run of the read-only root is no place for the marker: refused, with the reason.
    r = s.tu("reboot")
    assert r.returncode == 7
    assert r.stderr.splitlines()[0] == (
        "error: cannot write /var/run/reboot-required: Read-only file system"
    )
    # As on a running system, /run is a tmpfs (the fixture unmounts it with the system).
    sh("mount", "-t", "tmpfs", "tmpfs", str(s.root / "run"))
    r = s.tu("reboot")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "/var/run/reboot-required created; kured reboots into snapshot 2\n"
    assert (s.root / "run/reboot-required").read_text() == "*** System restart required ***\n"
    # systemd's default command would reboot this machine, not the one at --root.
    with s.booted_writable() as snap:
        (snap / "etc/transactional-update.conf").write_text("REBOOT_METHOD=systemd\n")
    r = s.tu("reboot")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"error: not rebooting: {s.root} is not the running system",
        f"hint: set REBOOT_COMMAND in {s.root}/etc/transactional-update.conf to what reboots "
        "that system, or boot it to use its new default snapshot",
    ]


def _daemon(system: System, log: Path) -> subprocess.Popen[bytes]:
    """The reboot manager as its service runs it, polling fast; output to *log*, not a pipe
    nobody reads while it runs (a full pipe would block it)."""
    argv = ["--root", str(system.root), "reboot-manager", "--poll", "0.3"]
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "transactional_update", *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_reboot_manager_plans_in_the_window_and_reboots_there(
    managed_system: System, tmp_path: Path
) -> None:
    s = managed_system
    now = datetime.now(UTC)
    # The window opened this minute (UTC) and lasts 5 minutes: the daemon may reboot at once.
    log = _prepare(
        s,
        tmp_path,
        "REBOOT_METHOD=rebootmgr\nMAINTENANCE_WINDOW_TIMEZONE=UTC\n"
        f"MAINTENANCE_WINDOW_START={now:%H:%M}\nMAINTENANCE_WINDOW_DURATION=5m\n",
    )
    assert s.tu("run", "--", "touch", "/etc/changed").returncode == 0
    r = s.tu("reboot")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("reboot into snapshot 2 planned for ")
    assert "the reboot manager is not running" in r.stderr
    st = json.loads(s.tu("--json", "reboot-manager", "status").stdout)
    assert st["pending_snapshot"] == 2 and st["plan"]["snapshot"] == 2
    assert st["running"] is False and st["window"]["open"] is True
    assert st["window"]["start"] == f"{now:%H:%M}" and st["window"]["duration_minutes"] == 5
    r = s.tu("reboot-manager", "cancel")
    assert r.stdout.startswith("cancelled the reboot into snapshot 2 planned for ")
    assert s.tu("reboot-manager", "status").stdout.splitlines()[-1] == (
        "planned:  no reboot planned"
    )
    assert s.tu("reboot").returncode == 0  # planned again

    # The daemon, as its service runs it; it reboots inside the window, exactly once.
    daemon = _daemon(s, tmp_path / "daemon.log")
    try:
        deadline = time.monotonic() + 30
        while not log.exists() and time.monotonic() < deadline and daemon.poll() is None:
            time.sleep(0.1)
        assert log.exists(), (tmp_path / "daemon.log").read_text()
        assert reboot_manager.is_running(s.root)
        second = s.tu("reboot-manager")
        assert second.returncode == 4
        assert second.stderr.splitlines()[0] == (
            "error: the reboot manager already runs for this system"
        )
        time.sleep(1)
        assert log.read_text() == "reboot --recorded\n"
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
            raise
    assert daemon.returncode == 0, (tmp_path / "daemon.log").read_text()
    st = json.loads(s.tu("--json", "reboot-manager", "status").stdout)
    assert st["running"] is False and st["plan"]["attempts"] == 1
    # The machine "came up" in snapshot 2: the manager drops the plan at its next look.
    _boot_default(s)
    plan = reboot_manager.load(s.root)
    assert plan.snapshot == 2
    again = _daemon(s, tmp_path / "daemon2.log")
    try:
        deadline = time.monotonic() + 30
        while reboot_manager.load(s.root).snapshot is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert reboot_manager.load(s.root).snapshot is None
    finally:
        again.send_signal(signal.SIGTERM)
        try:
            again.wait(timeout=30)
        except subprocess.TimeoutExpired:
            again.kill()
            again.wait()
            raise
    assert again.returncode == 0, (tmp_path / "daemon2.log").read_text()
    assert log.read_text() == "reboot --recorded\n"


def test_reboot_manager_needs_a_configured_command_for_another_root(
    managed_system: System,
) -> None:
    r = managed_system.tu("reboot-manager")
    assert r.returncode == 2
    assert r.stderr.splitlines()[0] == (
        f"error: not rebooting: {managed_system.root} is not the running system"
    )
