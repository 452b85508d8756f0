"""``apply``'s pure logic: the plan (composition, classes), the process scan's parsers, the restart
policy, the mount points it carries, and how the apply is shown (status, changelog)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from transactional_update.cli.status import Status, status_json, status_text
from transactional_update.config import settings
from transactional_update.errors import ConfigError
from transactional_update.live import binds, procs
from transactional_update.live.flow import describe
from transactional_update.live.plan import ChangeClass, classify, compose_files, compose_packages
from transactional_update.record.changelog import render_apply_event

RELEASE = "6.1.0-28-amd64"


def f(path: str, kind: str, is_dir: bool = False) -> dict[str, Any]:
    return {"path": path, "kind": kind, "dir": is_dir}


def p(name: str, kind: str, old: str | None, new: str | None) -> dict[str, Any]:
    return {"name": name, "kind": kind, "old": old, "new": new}


def test_file_changes_compose_over_a_chain_of_transactions() -> None:
    steps = [
        [f("/usr/bin/a", "added"), f("/usr/bin/b", "modified"), f("/usr/bin/c", "deleted")],
        [f("/usr/bin/a", "modified"), f("/usr/bin/b", "deleted"), f("/usr/bin/c", "added")],
        [f("/usr/bin/d", "added")],
        [f("/usr/bin/d", "deleted")],
    ]
    assert compose_files(steps) == [
        f("/usr/bin/a", "added"),
        f("/usr/bin/b", "deleted"),
        f("/usr/bin/c", "modified"),
    ]


def test_package_changes_compose_first_old_last_new() -> None:
    steps = [
        [p("a", "added", None, "1"), p("b", "upgraded", "1", "2"), p("c", "removed", "1", None)],
        [p("a", "upgraded", "1", "2"), p("b", "removed", "2", None), p("c", "added", None, "1")],
        [p("d", "downgraded", "3", "2")],
    ]
    assert compose_packages(steps) == [
        p("a", "added", None, "2"),
        p("b", "removed", "1", None),
        p("d", "downgraded", "3", "2"),
    ]  # c was removed and installed again at the same version: no change


def test_additions_stay_additions_despite_the_bookkeeping_of_an_install() -> None:
    files = [
        f("/usr/bin/htop", "added"),
        f("/usr/share/doc/htop", "added", is_dir=True),
        f("/usr/bin", "modified", is_dir=True),
        f("/usr/share/dpkg/database/status", "modified"),
        f("/usr/share/dpkg/database/info/htop.list", "added"),
        f("/etc/ld.so.cache", "modified"),
        f("/etc/shells", "modified"),
        f("/usr/share/icons/hicolor/icon-theme.cache", "modified"),
        f("/usr/lib/sysimage/rpm/rpmdb.sqlite-shm", "modified"),
    ]
    plan = classify(1, 2, (2,), "changelog", [p("htop", "added", None, "3")], files, RELEASE)
    assert plan.change_class is ChangeClass.ADDITIONS
    assert plan.added == ("/usr/bin/htop", "/usr/share/doc/htop")
    assert plan.replaced == () and plan.bookkeeping == 6 and not plan.kernel_pending
    assert plan.summary() == "1 package(s): 1 added; 2 file(s) added, 0 replaced or deleted"


@pytest.mark.parametrize(
    ("files", "packages", "expected"),
    [
        ([f("/usr/lib/x/libssl.so.3", "modified")], [], ChangeClass.REPLACEMENT),
        ([f("/usr/bin/tool", "deleted")], [], ChangeClass.REPLACEMENT),
        ([f("/usr/share/doc/x", "deleted", is_dir=True)], [], ChangeClass.ADDITIONS),
        ([f("/usr/share/man/man1/x.1.gz", "modified")], [], ChangeClass.ADDITIONS),
        ([f("/usr/share/locale/de/LC_MESSAGES/x.mo", "modified")], [], ChangeClass.REPLACEMENT),
        ([], [p("zlib", "upgraded", "1", "2")], ChangeClass.REPLACEMENT),
        ([], [p("zlib", "removed", "1", None)], ChangeClass.REPLACEMENT),
        (
            [f("/usr/lib/modules/6.1.0-28-amd64/kernel/x.ko", "modified")],
            [],
            ChangeClass.NONE,
        ),
        ([f("/usr/lib/modules/6.1.0-28-amd64", "deleted")], [], ChangeClass.REPLACEMENT),
        ([], [p("linux-image-amd64", "upgraded", "1", "2")], ChangeClass.ADDITIONS),
        ([], [p("linux-image-amd64", "removed", "1", None)], ChangeClass.ADDITIONS),
        ([f("/usr/lib/modules/6.1.0-29-amd64/kernel/x.ko", "added")], [], ChangeClass.NONE),
        ([f("/etc/motd", "modified")], [], ChangeClass.ADDITIONS),
        ([], [], ChangeClass.NONE),
    ],
)
def test_change_classes(
    files: list[dict[str, Any]], packages: list[dict[str, Any]], expected: ChangeClass
) -> None:
    assert classify(1, 2, (2,), "changelog", packages, files, RELEASE).change_class is expected


def test_the_kernel_and_paths_outside_usr_and_etc_wait_for_the_reboot() -> None:
    files = [
        f("/boot/vmlinuz-6.1.0-29-amd64", "added"),
        f("/boot/initrd.img-6.1.0-29-amd64", "added"),
        f("/usr/lib/modules/6.1.0-29-amd64/modules.dep", "added"),
        f("/srv/www/index.html", "added"),
        f("/usr/bin/new", "added"),
    ]
    packages = [p("linux-image-6.1.0-29-amd64", "added", None, "6.1.123-1")]
    plan = classify(3, 5, (4, 5), "snapshots", packages, files, RELEASE)
    assert plan.kernel_pending and plan.change_class is ChangeClass.ADDITIONS
    assert plan.kernel == (
        "/boot/vmlinuz-6.1.0-29-amd64",
        "/boot/initrd.img-6.1.0-29-amd64",
        "/usr/lib/modules/6.1.0-29-amd64/modules.dep",
    )
    assert plan.elsewhere == ("/srv/www/index.html",) and plan.added == ("/usr/bin/new",)
    assert describe(plan) == (
        "applying snapshot 5 over snapshot 3 via 4, 5: additions; 1 package(s): 1 added; "
        "1 file(s) added, 0 replaced or deleted; the new kernel starts only with the next "
        "reboot (kexec or full); 1 path(s) outside /usr and /etc wait for the reboot"
    )
    assert plan.keep == ()
    headers = [p("linux-headers-6.1.0-29-amd64", "added", None, "1")]
    assert not classify(3, 5, (5,), "changelog", headers, [], RELEASE).kernel_pending


MAPS = """\
55d0c8a00000-55d0c8a02000 r--p 00000000 00:2a 262 /usr/bin/sleep
55d0c8a02000-55d0c8a06000 r-xp 00002000 00:2a 262 /usr/bin/sleep
55d0c9cd1000-55d0c9cf2000 rw-p 00000000 00:00 0 [heap]
7f1e2a000000-7f1e2a022000 r--p 00000000 00:2a 1201 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1e2a400000-7f1e2a401000 r--p 00000000 00:2b 77 /etc/my data (deleted)
7f1e2a500000-7f1e2a501000 rw-s 00000000 00:01 5 /memfd:x (deleted)
7ffd1d3fe000-7ffd1d400000 r-xp 00000000 00:00 0 [vdso]
00400000-00452000 r-xp 00000000 00:2a 300 /usr/bin/old-style
"""


def test_maps_give_each_mapped_file_once_with_its_device_and_inode() -> None:
    found = procs.parse_maps(MAPS)
    assert [(m.path, m.device, m.inode, m.deleted) for m in found] == [
        ("/usr/bin/sleep", (0, 0x2A), 262, False),
        ("/usr/lib/x86_64-linux-gnu/libc.so.6", (0, 0x2A), 1201, False),
        ("/etc/my data", (0, 0x2B), 77, True),
        ("/memfd:x", (0, 1), 5, True),
        ("/usr/bin/old-style", (0, 0x2A), 300, False),
    ]
    # Every range of each file, named as /proc/PID/map_files names them (unpadded).
    assert found[0].spans == ("55d0c8a00000-55d0c8a02000", "55d0c8a02000-55d0c8a06000")
    assert found[4].spans == ("400000-452000",)


@pytest.mark.parametrize(
    ("cgroup", "unit"),
    [
        ("0::/system.slice/nginx.service\n", "nginx.service"),
        ("0::/init.scope\n", "init.scope"),
        ("0::/user.slice/user-0.slice/session-3.scope\n", "session-3.scope"),
        (
            "0::/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service\n",
            "user@1000.service",
        ),
        ("12:pids:/system.slice/x.service\n1:name=systemd:/system.slice/ssh.service\n0::/\n", None),
        ("12:pids:/\n1:name=systemd:/system.slice/ssh.service\n", "ssh.service"),
        ("0::/\n", None),
        ("", None),
    ],
)
def test_the_unit_of_a_process_from_its_cgroup(cgroup: str, unit: str | None) -> None:
    assert procs.unit_of(cgroup) == unit


def stale(pid: int, unit: str | None, command: str = "prog") -> procs.Stale:
    return procs.Stale(pid, command, unit, ("/usr/lib/libx.so",))


def test_restarts_skip_systemd_the_bus_sessions_the_own_unit_and_the_configured_units() -> None:
    found = [
        stale(1, "init.scope", "systemd"),
        stale(300, "dbus.service"),
        stale(310, "nginx.service"),
        stale(311, "nginx.service"),
        stale(320, "session-3.scope"),
        stale(330, "user@1000.service"),
        stale(340, "getty@tty1.service"),
        stale(350, "postgresql@15-main.service"),
        stale(360, "transactional-update.service"),
        stale(370, None, "orphan"),
        stale(380, "ssh.service"),
    ]
    restart, skipped = procs.restart_plan(
        found, ("postgresql*",), own_unit="transactional-update.service"
    )
    assert restart == ["nginx.service", "ssh.service"]
    why = dict(skipped)
    assert why["init.scope"] == "systemd itself (re-executed instead)"
    assert why["dbus.service"].startswith("the D-Bus daemon")
    assert why["session-3.scope"].startswith("a login session or scope")
    assert why["user@1000.service"].startswith("a user's service manager")
    assert why["getty@tty1.service"].startswith("a login console")
    assert why["postgresql@15-main.service"] == "listed in APPLY_NO_RESTART (postgresql*)"
    assert why["transactional-update.service"] == "this command runs in it"
    assert why["orphan (PID 370)"] == "not started by systemd"
    assert procs.restart_plan([stale(5, "nginx.service")], ("nginx",), None)[0] == []
    kept = procs.restart_plan(
        [stale(6, "systemd-logind.service"), stale(7, "NetworkManager.service")], (), None
    )
    assert kept[0] == [] and [u for u, _ in kept[1]] == [
        "systemd-logind.service",
        "NetworkManager.service",
    ]


def test_apply_no_restart_takes_unit_names_and_patterns(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    conf = tmp_path / "etc/transactional-update.conf"
    conf.write_text('APPLY_NO_RESTART="postgresql* nginx getty@tty[12].service"\n')
    assert settings.load(tmp_path).apply_no_restart == (
        "postgresql*",
        "nginx",
        "getty@tty[12].service",
    )
    conf.write_text('APPLY_NO_RESTART="nginx;reboot"\n')
    with pytest.raises(ConfigError, match="'nginx;reboot' is not a unit name or pattern"):
        settings.load(tmp_path)


MOUNTINFO = """\
22 1 0:31 /@/.snapshots/1/snapshot / rw shared:1 - btrfs /dev/vda2 rw
30 22 0:31 /@/usr/local /usr/local rw shared:9 - btrfs /dev/vda2 rw
31 30 0:48 / /usr/local/share/big\\040disk rw shared:10 - ext4 /dev/vdb1 rw
40 22 0:31 /@/.snapshots/2/snapshot/usr /usr rw shared:20 - btrfs /dev/vda2 rw
41 40 0:31 /@/usr/local /usr/local rw shared:21 - btrfs /dev/vda2 rw
42 22 0:31 /@/var /var rw shared:5 - btrfs /dev/vda2 rw
43 22 0:31 /@/.snapshots/2/snapshot/usrx /usrx rw shared:5 - btrfs /dev/vda2 rw
"""


def test_the_mounts_below_a_directory_are_carried_outermost_first_once() -> None:
    assert binds.submounts(MOUNTINFO, "/usr") == ["local"]
    assert binds.submounts(MOUNTINFO, "/usr/local") == ["share/big disk"]
    assert binds.submounts(MOUNTINFO, "/etc") == []


def test_bin_sbin_and_lib_are_bound_only_where_they_are_not_links(tmp_path: Path) -> None:
    merged, split = tmp_path / "merged", tmp_path / "split"
    for snap in (merged, split):
        (snap / "usr/lib").mkdir(parents=True)
        (snap / "etc").mkdir()
    for name in ("bin", "sbin", "lib", "lib64"):
        (merged / name).symlink_to(f"usr/{name}")
        (split / name).mkdir()
    assert binds.targets(merged) == ["usr", "etc"]
    assert binds.targets(split) == ["usr", "bin", "sbin", "lib", "lib64", "etc"]


def test_the_changelog_shows_each_apply() -> None:
    event = {
        "at": "2026-12-01T10:00:00+00:00",
        "who": {"uid": 0, "user": "root", "sudo_user": "alice"},
        "from": 2,
        "class": "replacement",
        "kernel_pending": True,
        "processes": [
            {"pid": 10, "command": "nginx", "unit": "nginx.service", "files": []},
            {"pid": 11, "command": "bash", "unit": "session-1.scope", "files": []},
        ],
        "restarted": ["nginx.service"],
        "restart_failed": [{"unit": "x.service", "error": "exit 1"}],
    }
    assert render_apply_event(event) == [
        "  applied live at 2026-12-01T10:00:00+00:00 by root (sudo by alice) "
        "(over snapshot 2, replacement)",
        "    the new kernel starts with the next reboot",
        "    restarted nginx.service",
        "    RESTART FAILED x.service: exit 1",
        "    still uses replaced files: bash (PID 11, session-1.scope)",
    ]


def test_status_shows_the_live_snapshot_and_needs_no_reboot_for_it() -> None:
    record = {"snapshot": 3, "from": 1, "at": "2026-12-01T10:00:00+00:00", "kernel_pending": False}
    st = Status(1, 3, 3, None, None, {}, live=3, applied=record)
    text = status_text(st)
    assert (
        "live:     3 (applied live at 2026-12-01 10:00: its /usr and /etc run; the kernel is "
        "snapshot 1's until the reboot)" in text
    )
    assert "pending:  snapshot 3 boots next; it is live already (applied)" in text
    data = status_json(st)
    assert (data["live"], data["reboot_needed"], data["applied"]) == (3, False, record)
    kernel = Status(1, 3, 3, None, None, {}, live=3, applied={**record, "kernel_pending": True})
    assert status_json(kernel)["reboot_needed"] is True
    plain = Status(1, 3, 3, None, None, {})
    assert status_json(plain)["live"] == 1 and status_json(plain)["reboot_needed"] is True
    assert "live:" not in status_text(plain)


def test_apply_after_pkg_names_is_the_next_command_with_its_own_flags() -> None:
    from transactional_update.cli.commands import Change, pkg_steps
    from transactional_update.errors import UsageError

    steps = pkg_steps("install", ["htop", "apply"])
    assert [type(s) is Change for s in steps] == [True, False]
    steps = pkg_steps("install", ["htop", "apply", "--allow-replacement", "run", "htop", "-v"])
    assert [s.name if isinstance(s, Change) else "apply" for s in steps] == ["pkg", "run", "apply"]
    with pytest.raises(UsageError, match="apply after pkg takes no '--yes'"):
        pkg_steps("install", ["htop", "apply", "--yes"])
    # A run before it takes the rest (apply is run's argument); alone, apply is a package name.
    assert [type(s) is Change for s in pkg_steps("install", ["htop", "run", "apply"])] == [
        True,
        True,
    ]
    assert len(pkg_steps("install", ["apply"])) == 1


class _Managed:
    """What pending_snapshot asks of a managed root (pure logic: the numbers and /run's record)."""

    def __init__(self, root: Path, booted: int, default: int, live: int) -> None:
        self.root, self._b, self._d, self._l = root, booted, default, live

    def booted(self) -> int:
        return self._b

    def default(self) -> int:
        return self._d

    def live(self) -> int:
        return self._l


def test_a_default_made_live_by_apply_needs_no_reboot_unless_for_its_kernel(tmp_path: Path) -> None:
    from transactional_update.reboot.methods import pending_snapshot
    from transactional_update.record import applied

    def pending(booted: int, default: int, live: int) -> int | None:
        return pending_snapshot(_Managed(tmp_path, booted, default, live))  # type: ignore[arg-type]

    assert pending(1, 2, 1) == 2
    assert pending(1, 2, 2) == 2, "live without /run's record of an apply: reboot"
    applied.save(tmp_path, {"snapshot": 2, "from": 1, "kernel_pending": False})
    assert pending(1, 2, 2) is None
    assert pending(1, 3, 2) == 3, "a newer default still boots by a reboot"
    applied.save(tmp_path, {"snapshot": 2, "from": 1, "kernel_pending": True})
    assert pending(1, 2, 2) == 2
    assert pending(2, 2, 2) is None


def test_the_running_kernels_own_module_tree_is_kept_until_the_reboot() -> None:
    """Debian rebuilds a kernel under the same release: the running kernel keeps its modules
    (they must match its build); only a tree removed from the target cannot be kept."""
    running = f"/usr/lib/modules/{RELEASE}"
    files = [
        f(f"{running}/kernel/x.ko", "modified"),
        f(f"{running}/modules.dep", "modified"),
        f(f"/lib/modules/{RELEASE}/extra/y.ko", "deleted"),
    ]
    upgrade = [p("linux-image-6.1.0-28-amd64", "upgraded", "6.1.119-1", "6.1.123-1")]
    plan = classify(1, 2, (2,), "changelog", upgrade, files, RELEASE)
    assert plan.kernel_pending and plan.replaced == ()
    assert plan.keep == (("usr", f"lib/modules/{RELEASE}"), ("lib", f"modules/{RELEASE}"))
    assert describe(plan).endswith(
        f"the running kernel keeps its modules ({running}) until then; the running kernel "
        f"keeps its modules (/lib/modules/{RELEASE}) until then"
    )
    gone = classify(
        1, 2, (2,), "changelog", [], [*files[:1], f(running, "deleted", is_dir=True)], RELEASE
    )
    assert gone.replaced == (running,) and gone.keep == ()
    # DKMS builds a module for the running kernel: it loads live, depmod's indexes follow.
    dkms = [
        f(f"{running}/updates/dkms/zfs.ko", "added"),
        f(f"{running}/modules.dep", "modified"),
        f(f"{running}/modules.alias.bin", "modified"),
    ]
    plan = classify(1, 2, (2,), "changelog", [p("zfs-dkms", "added", None, "2")], dkms, RELEASE)
    assert plan.change_class is ChangeClass.ADDITIONS and not plan.kernel_pending
    assert plan.added == (f"{running}/updates/dkms/zfs.ko",) and plan.keep == ()
