"""snapper's own cleanup deletes snapshots; the command of our snapper-cleanup.service drop-in
catches up (changelog entries, GRUB's menu).

Each test runs exactly the command the installed drop-in's ``ExecStopPost=`` names (parsed from
the file ``install-units`` writes; only the binary becomes this checkout's CLI, plus ``--root``),
with the capability bounding set of Debian's snapper-cleanup.service when it is installed, as
systemd would start it.  The deletions are snapper's own (``snapper cleanup number``,
``snapper delete``), never ours.
"""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.systems import System, sh, strip_own_etc
from transactional_update.core.lock import LOCK_NAME, Lock
from transactional_update.reboot import units
from transactional_update.record import summary

DROP_IN = "snapper-cleanup.service.d/transactional-update.conf"
SNAPPER_CLEANUP = Path("/usr/lib/systemd/system/snapper-cleanup.service")


def sandbox() -> list[str]:
    """``setpriv`` with the CapabilityBoundingSet= of snapper's unit (ours runs inside it)."""
    if not SNAPPER_CLEANUP.is_file() or shutil.which("setpriv") is None:
        return []
    p = configparser.ConfigParser(strict=False, interpolation=None)
    p.optionxform = str  # type: ignore[assignment,method-assign]
    p.read_string(SNAPPER_CLEANUP.read_text())
    caps = p.get("Service", "CapabilityBoundingSet", fallback="").split()
    if not caps:
        return []
    keep = ",".join(f"+{c.lower().removeprefix('cap_')}" for c in caps)
    return ["setpriv", f"--bounding-set=-all,{keep}", "--"]


def drop_in_argv(root: Path, tmp: Path) -> list[str]:
    """What the installed drop-in's ExecStopPost= runs, for the system at *root*."""
    unit_dir = tmp / "units"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "transactional_update",
            "install-units",
            "--unit-dir",
            str(unit_dir),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    lines = [
        x.split("=", 1)[1]
        for x in (unit_dir / DROP_IN).read_text().splitlines()
        if x.startswith("ExecStopPost=")
    ]
    assert len(lines) == 1 and lines[0].startswith("-")  # "-": never fails snapper's unit
    argv = shlex.split(lines[0][1:])
    assert argv[0] == units.SHIPPED_EXEC
    return [
        *sandbox(),
        sys.executable,
        "-m",
        "transactional_update",
        "--root",
        str(root),
        *argv[1:],
    ]


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)


def entries(s: System) -> list[str]:
    return sorted(p.name for p in (s.root / summary.STORE).iterdir())


def two_transactions(s: System) -> None:
    for name in ("a", "b"):
        r = s.tu("run", "--", "touch", f"/etc/{name}")
        assert r.returncode == 0, r.stderr
    assert s.numbers() == [1, 2, 3]
    assert entries(s) == ["2.json", "3.json"]


def set_snapper_limits(s: System, limit: int) -> None:
    with s.booted_writable() as snap:
        conf = snap / "etc/snapper/configs/root"
        text = conf.read_text()
        for key, value in (("NUMBER_LIMIT", limit), ("NUMBER_MIN_AGE", 0)):
            lines = [x for x in text.splitlines() if not x.startswith(f"{key}=")]
            text = "\n".join([*lines, f'{key}="{value}"']) + "\n"
        conf.write_text(text)


def test_number_cleanup_by_snapper_then_the_drop_in_prunes_the_changelog(
    managed_system: System, tmp_path: Path
) -> None:
    s = managed_system
    two_transactions(s)
    set_snapper_limits(s, 1)
    # What snapper-cleanup.service's helper runs for a config with NUMBER_CLEANUP="yes" (the
    # image's root config has "no": snapper 0.10.4 deletes no snapshot with its own /etc, so
    # snapshot 2's goes first, as a newer snapper's delete hook would do).
    strip_own_etc(s.root, 2)
    sh("snapper", "--no-dbus", "--root", str(s.root), "cleanup", "number")
    assert s.numbers() == [1, 3]  # 3 is the default, 1 the booted: snapper keeps both
    assert entries(s) == ["2.json", "3.json"]  # the problem: the entry outlived its snapshot
    argv = drop_in_argv(s.root, tmp_path)
    r = run(argv)
    assert (r.returncode, r.stdout, r.stderr) == (
        0,
        "dropped the changelog entries of 1 deleted snapshot(s): 2\n",
        "",
    )
    assert entries(s) == ["3.json"]
    assert s.numbers() == [1, 3]  # it deletes no snapshot itself
    r = s.tu("changelog", "2")
    assert r.returncode == 5 and "snapshot 2 does not exist" in r.stderr
    # Nothing left to do: a second run (snapper's next day without deletions) changes nothing.
    r = run(argv)
    assert (r.returncode, r.stdout) == (0, "no changelog entry of a deleted snapshot\n")
    i = argv.index("cleanup")
    r = run([*argv[:i], "--json", *argv[i:]])
    assert r.returncode == 0, r.stderr
    assert r.stdout == (
        '{"pruned": [], "boot_trial": "none", "boot_menu": "none", "skipped": null}\n'
    )


def test_while_a_transaction_runs_it_skips_or_waits_lock_wait(
    managed_system: System, tmp_path: Path
) -> None:
    s = managed_system
    two_transactions(s)
    strip_own_etc(s.root, 2)
    sh("snapper", "--no-dbus", "--root", str(s.root), "delete", "2")
    argv = drop_in_argv(s.root, tmp_path)
    lock = Lock(s.root / ".snapshots")
    lock.acquire()  # a transaction in this process
    try:
        r = run(argv)
    finally:
        lock.release()
    assert r.returncode == 0, r.stderr  # snapper's unit must not see a failure
    assert r.stdout.startswith(f"skipped: another transaction is running (pid {os.getpid()} since ")
    assert r.stdout.endswith("; the next transaction or cleanup catches up\n")
    assert entries(s) == ["2.json", "3.json"]  # nothing was touched under a live transaction
    # With LOCK_WAIT it waits for the transaction and then prunes.
    with s.booted_writable() as snap:
        (snap / "etc/transactional-update.conf").write_text("LOCK_WAIT=30\n")
    lock.acquire()
    threading.Timer(1.5, lock.release).start()
    start = time.monotonic()
    r = run(argv)
    assert time.monotonic() - start >= 1.5
    assert (r.returncode, r.stdout) == (
        0,
        "dropped the changelog entries of 1 deleted snapshot(s): 2\n",
    ), r.stderr
    assert entries(s) == ["3.json"]


def test_a_planted_lock_link_is_an_error_not_a_skip(managed_system: System, tmp_path: Path) -> None:
    s = managed_system
    lock_path = s.root / ".snapshots" / LOCK_NAME
    lock_path.unlink(missing_ok=True)
    lock_path.symlink_to("/etc/shadow")
    r = run(drop_in_argv(s.root, tmp_path))
    assert r.returncode == 4
    assert r.stderr.splitlines()[0] == (
        f"error: lock file {lock_path} is a symbolic link; refusing to follow it"
    )


def test_install_units_puts_the_drop_in_into_a_new_snapshot(
    managed_system: System, tmp_path: Path
) -> None:
    s = managed_system
    r = s.tu("install-units")
    assert r.returncode == 0, r.stderr
    assert s.default_number() == 2
    vendor = s.snapshot(2) / "usr/lib/systemd/system"
    installed = vendor / DROP_IN
    assert installed.read_text() == (units.source_dir() / DROP_IN).read_text()
    assert installed.stat().st_mode & 0o7777 == 0o644
    assert installed.parent.stat().st_mode & 0o7777 == 0o755
    assert not (s.snapshot(1) / "usr/lib/systemd/system" / DROP_IN).exists()
    # A drop-in is not enabled: no link anywhere names it or snapper's unit.
    etc = s.snapshot(2) / "etc/systemd/system"
    assert not [p for p in etc.rglob("*") if "snapper" in p.name]
    # The command it names is the one the tests above run.
    assert drop_in_argv(s.root, tmp_path)[-3:] == ["--non-interactive", "cleanup", "--prune-only"]
    assert f"ExecStopPost=-{units.SHIPPED_EXEC} --non-interactive cleanup --prune-only\n" in (
        installed.read_text()
    )


# --- with GRUB: an image made by create-system (only when test_grub's tools are there) ----------


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not all(shutil.which(t) for t in ("sfdisk", "grub-script-check", "grub-editenv")):
        pytest.skip("needs fdisk and grub-common (./tu-dev test installs them)")
    from tests.privileged.test_grub import KERNEL, bootable_rootfs, tu_cli

    img = tmp_path_factory.mktemp("golden") / "golden.img"
    bootable_rootfs()
    r = tu_cli("create-system", "--size", "3G", "--kernel", KERNEL, str(img))
    assert r.returncode == 0, r.stdout + r.stderr
    yield img
    img.unlink(missing_ok=True)


def test_the_menu_drops_what_snappers_cleanup_deleted(golden: Path, tmp_path: Path) -> None:
    from tests.privileged.test_grub import mounted_disk

    img = tmp_path / "disk.img"  # the name sweep_stale knows
    sh("cp", "--sparse=always", str(golden), str(img))
    try:
        with mounted_disk(tmp_path, img) as d:
            two_transactions(d)
            assert d.submenu_ids() == [3, 2, 1]
            strip_own_etc(d.root, 2)
            sh("snapper", "--no-dbus", "--root", str(d.root), "delete", "2")
            assert d.submenu_ids() == [3, 2, 1]  # the problem: GRUB would offer a deleted snapshot
            r = run(drop_in_argv(d.root, tmp_path))
            assert (r.returncode, r.stdout, r.stderr) == (
                0,
                "dropped the changelog entries of 1 deleted snapshot(s): 2; "
                "boot counting is current; the boot menu is current\n",
                "",
            )
            assert d.submenu_ids() == [3, 1]
            assert "/@/.snapshots/2/" not in d.section()
            assert sh("grub-script-check", str(d.cfg), check=False).returncode == 0
            assert not list((d.root / "boot/grub").glob(".grub.cfg.tu-*"))
    finally:
        img.unlink(missing_ok=True)
