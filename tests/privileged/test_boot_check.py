"""The boot check on real disks made by ``create-system`` (GRUB's partition, grubenv, grub.cfg):
a commit puts the new default on trial, a healthy boot makes it known-good, GRUB's spent tries
are settled, an unhealthy snapshot on trial is rolled back once and only once, a fixed update
becomes known-good, the known-good snapshot only reports its own failures, and cleanup keeps it.

A "boot" here is what a reboot does to the filesystem: the default subvolume mounted at the
root, the GRUB partition below it.  What GRUB does in between (counting down, falling back) is
tested in tests/unit/test_boot_counting_unit.py and proven by the VM scenarios ``unbootable``
and ``unhealthy``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from testkit.systems import sh
from tests.privileged import test_grub
from tests.privileged.test_grub import Disk
from transactional_update.boot import grubenv
from transactional_update.provision import image
from transactional_update.snapshots import btrfs

golden = test_grub.golden  # the same disks as the GRUB tests (fixtures)
disk = test_grub.disk
CHECKS = "/etc/transactional-update/health.d/required"


def boot(d: Disk) -> None:
    """Mount the default subvolume at the root, as the next boot would."""
    sh("umount", str(d.root / "boot/grub"))
    image.unmount_system(d.root)
    image.mount_system(f"{d.device}p3", d.root)
    sh("mount", f"{d.device}p2", str(d.root / "boot/grub"))


def env(d: Disk) -> dict[str, str]:
    return grubenv.read(d.root / "boot/grub/grubenv")


def configure(d: Disk) -> tuple[Path, Path]:
    """Record reboots and notifications instead of acting (the root is not the running system)."""
    rebooted, told = d.workdir / "rebooted", d.workdir / "told"
    d.set_conf(
        f"REBOOT_METHOD=systemd\nREBOOT_COMMAND=\"sh -c 'echo reboot >> {rebooted}'\"\n"
        f'NOTIFY_COMMAND="sh -c \'echo \\"$0\\" >> {told}\'"\n'
    )
    return rebooted, told


def check(d: Disk) -> tuple[int, dict[str, object]]:
    r = d.tu("--json", "boot-check")
    assert r.returncode in (0, 9) and "Traceback" not in r.stderr, r.stderr
    data: dict[str, object] = json.loads(r.stdout)
    return r.returncode, data


def failing_check(name: str, message: str) -> list[str]:
    script = f"#!/bin/sh\\necho '{message}'\\nexit 1\\n"
    return ["run", "--", "sh", "-c", f"mkdir -p {CHECKS} && printf \"{script}\" > {CHECKS}/{name}"
            f" && chmod +x {CHECKS}/{name}"]  # fmt: skip


def test_trial_fallback_after_spent_tries_and_menu_marks(disk: Disk) -> None:
    d = disk
    rebooted, told = configure(d)
    rc, data = check(d)
    assert (rc, data["verdict"], data["known_good"]) == (0, "known-good", 1)
    assert env(d).get("tu_good") == "1" and "tu_trial" not in env(d)
    r = d.tu("run", "true")
    assert r.returncode == 0, r.stderr
    assert (env(d)["tu_trial"], env(d)["tu_tries"], env(d)["tu_good"]) == ("2", "3", "1")
    section = d.section()
    assert 'if [ "${tu_trial}" = "2" ]; then' in section
    assert "set default='tu-snapshots>tu-snapshot-1'" in section
    assert re.search(r"--id tu-default \{\n\t# one try of snapshot 2", section)
    status = d.tu("status").stdout
    assert (
        "boot:     snapshot 2 is on trial (3 boot(s) left, then known-good snapshot 1 boots)"
        in (status)
    )
    # GRUB spent the tries and booted the known-good snapshot 1 (the root stays on 1).
    sh("grub-editenv", str(d.root / "boot/grub/grubenv"), "set", "tu_tries=0")
    rc, data = check(d)
    assert (rc, data["verdict"], data["fell_back"], data["failed"]) == (0, "known-good", 2, 2)
    assert data["reason"] == "did not reach user space in 3 tries"
    assert d.default_number() == 1
    # Spent, not removed: a menu that still booted 2 would fall back at once.
    assert (env(d)["tu_trial"], env(d)["tu_tries"]) == ("2", "0")
    lines = d.tu("status").stdout.splitlines()
    assert re.fullmatch(
        r"snapshot 2 failed to boot \(did not reach user space in 3 tries\); rolled back to 1 at "
        r"\d{4}-\d\d-\d\d \d\d:\d\d",
        lines[0],
    ), lines
    assert told.read_text().startswith(
        "transactional-update: snapshot 2 failed to boot (did not reach user space in 3 tries); "
        "rolled back to 1"
    )
    assert not rebooted.exists()  # the fallback booted the right snapshot already
    # Marked in snapper's userdata (and `list`), the changelog and the boot menu.
    listed = {s["number"]: s for s in json.loads(d.tu("--json", "list").stdout)}
    assert listed[2]["userdata"]["tu-boot"] == "failed"
    assert re.search(r"^\s*2 x\s+\|", d.tu("list").stdout, re.M)
    log = json.loads(d.tu("--json", "changelog", "2").stdout)
    assert [(e["event"], e["how"], e["rolled_back_to"]) for e in log["boot"]] == [
        ("failed", "boot-counting", 1)
    ]
    assert "(failed boot)" in d.section() and "tu_trial" not in d.section()
    r = d.tu("--json", "rollback", "2")
    assert r.returncode == 0 and json.loads(r.stdout)["boot_failed"]["how"] == "boot-counting"
    assert "snapshot 2 failed to boot at" in r.stderr
    # Deleted, it leaves the boot state: the failure no longer leads the status.
    assert d.tu("rollback", "1").returncode == 0
    r = d.tu("delete", "2")
    assert r.returncode == 0, r.stderr
    boot_state = d.status_json()["boot"]
    assert (boot_state["failed"], boot_state["notice"]) == ({}, None)


def test_unhealthy_trial_is_rolled_back_once_then_a_fixed_update_is_known_good(
    disk: Disk,
) -> None:
    d = disk
    rebooted, told = configure(d)
    assert check(d)[0] == 0
    assert d.tu(*failing_check("web", "nginx: not running")).returncode == 0  # snapshot 2
    boot(d)
    assert d.booted_number() == 2
    rc, data = check(d)
    assert (rc, data["verdict"], data["failed"], data["rolled_back_to"]) == (9, "rolled-back", 2, 1)
    assert data["reason"] == "health check required/web failed: exit 1: nginx: not running"
    assert d.default_number() == 1 and rebooted.read_text() == "reboot\n"
    assert "rolled back to 1, rebooting" in told.read_text()
    boot(d)
    rc, data = check(d)
    assert (rc, data["verdict"], d.default_number()) == (0, "known-good", 1)
    first = d.tu("status").stdout.splitlines()[0]
    assert first.startswith(
        "snapshot 2 failed to boot (health check required/web failed: exit 1: nginx: not "
        "running); rolled back to 1 at "
    )
    # The admin makes it the default again: it is on trial, but never rolled back twice.
    assert d.tu("rollback", "2").returncode == 0
    assert env(d)["tu_trial"] == "2"
    boot(d)
    rc, data = check(d)
    assert (rc, data["verdict"], d.default_number()) == (9, "reported", 2)
    assert data["not_rolled_back"] == (
        "snapshot 2 was rolled back automatically once already; it is the default again by choice"
    )
    assert rebooted.read_text() == "reboot\n"  # no second reboot
    # It reached user space: GRUB counts it no more, so no fallback rolls it back later.
    assert "tu_trial" not in env(d) and d.default_number() == 2
    # A fixed update passes and becomes known-good; the failure no longer leads the status.
    r = d.tu("run", "rm", f"{CHECKS}/web")
    assert r.returncode == 0, r.stderr
    boot(d)
    assert d.booted_number() == 3
    rc, data = check(d)
    assert (rc, data["verdict"], data["known_good"]) == (0, "known-good", 3)
    status = d.tu("--json", "status")
    boot_state = json.loads(status.stdout)["boot"]
    assert (boot_state["known_good"], boot_state["notice"], boot_state["trial"]) == (3, None, None)
    assert sorted(boot_state["failed"]) == ["2"]
    assert d.tu("status").stdout.splitlines()[0].startswith("booted:")
    # A failure of the known-good snapshot itself only reports.
    live = d.root / CHECKS.lstrip("/")
    live.mkdir(parents=True, exist_ok=True)
    (live / "disk").write_text("#!/bin/sh\necho 'disk full'\nexit 1\n")
    (live / "disk").chmod(0o755)
    rc, data = check(d)
    assert (rc, data["verdict"], d.default_number()) == (9, "reported", 3)
    assert data["not_rolled_back"] == (
        "snapshot 3 is the known-good snapshot: nothing older is known to work"
    )
    (live / "disk").unlink()


def test_cleanup_keeps_the_known_good_fallback_and_a_visit_changes_nothing(disk: Disk) -> None:
    d = disk
    configure(d)
    assert check(d)[0] == 0  # 1 known-good
    for _ in range(3):
        assert d.tu("run", "true").returncode == 0  # 2, 3, 4: 4 on trial
    boot(d)
    config = d.root / "etc/snapper/configs/root"
    text = re.sub(r'NUMBER_LIMIT="[^"]*"', 'NUMBER_LIMIT="0"', config.read_text())
    config.write_text(re.sub(r'NUMBER_MIN_AGE="[^"]*"', 'NUMBER_MIN_AGE="0"', text))
    r = d.tu("cleanup")
    assert r.returncode == 0, r.stderr
    assert d.numbers() == [1, 4]  # 1 is the fallback of 4's trial
    r = d.tu("delete", "1")
    assert r.returncode == 5 and "snapshot 1 is the known-good snapshot" in r.stderr
    # A one-time boot of another snapshot: healthy, and nothing changes.
    btrfs.set_default(d.snapshot(1))
    boot(d)
    btrfs.set_default(d.snapshot(4))
    rc, data = check(d)
    assert (rc, data["verdict"], data["known_good"]) == (0, "visit", 1)
    assert env(d)["tu_trial"] == "4" and d.default_number() == 4
