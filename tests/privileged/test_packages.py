"""Package operations with the real apt/dpkg inside the snapshot's chroot."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from testkit.systems import System, local_repo, make_deb, sh

INIT_SCRIPT = """#!/bin/sh
### BEGIN INIT INFO
# Provides:          tu-service
# Required-Start:
# Required-Stop:
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: test service
### END INIT INFO
[ "$1" = start ] && touch /etc/tu-service-started
exit 0
"""


def _dpkg_version(system: System, n: int, package: str) -> str | None:
    db = system.snapshot(n) / "usr/share/dpkg/database"
    r = sh("dpkg-query", f"--admindir={db}", "-W", "-f=${Status} ${Version}", package, check=False)
    if r.returncode != 0 or not r.stdout.startswith("install ok installed"):
        return None
    return r.stdout.split()[-1]


def _stage(system: System, deb: Path) -> str:
    """Put *deb* where the chroot sees it (/var/cache is shared); returns its chroot path."""
    target = system.root / "var/cache/tu-test"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(deb, target)
    return f"/var/cache/tu-test/{deb.name}"


def test_pkg_install_and_remove_with_apt(system: System, tmp_path: Path) -> None:
    deb = _stage(system, make_deb(tmp_path, "tu-hello", "1.0"))
    r = system.tu("pkg", "install", deb)
    assert r.returncode == 0, r.stderr
    new = system.default_number()
    assert _dpkg_version(system, new, "tu-hello") == "1.0"
    assert (system.snapshot(new) / "usr/share/tu-hello/version").read_text() == "1.0\n"
    assert _dpkg_version(system, 1, "tu-hello") is None  # the booted snapshot is untouched
    entry = next(s for s in system.snapper_list() if s["number"] == new)
    assert re.fullmatch(rf"pkg install {re.escape(deb)} · \+1 pkg, \d+ files", entry["description"])
    assert entry["userdata"]["tu-pkgs-added"] == "1"
    log = json.loads(system.tu("--json", "changelog", str(new)).stdout)
    assert log["packages"] == [{"name": "tu-hello", "kind": "added", "old": None, "new": "1.0"}]
    assert {"path": "/usr/share/tu-hello/version", "kind": "added", "dir": False} in log["files"]
    assert [c["argv"] for c in log["commands"]] == [
        ["apt-get", "update"],
        ["apt-get", "-s", "install", deb],
        ["apt-get", "-y", "install", deb],
    ]
    assert log["commands"][-1]["exit"] == 0 and log["base"] == 1
    # No warning about writes to shadowed /var: apt's state is bound from the live system.
    assert "written outside the snapshot" not in r.stderr
    r = system.tu("--continue", "pkg", "remove", "tu-hello")
    assert r.returncode == 0, r.stderr
    assert _dpkg_version(system, system.default_number(), "tu-hello") is None


def test_failing_maintainer_script_discards(managed_system: System, tmp_path: Path) -> None:
    deb = _stage(managed_system, make_deb(tmp_path, "tu-broken", "1.0", postinst="exit 1"))
    r = managed_system.tu("pkg", "install", deb)
    assert r.returncode == 1
    assert "error: apt-get install " in r.stderr and "failed (exit 100)" in r.stderr
    assert managed_system.numbers() == [1] and managed_system.default_number() == 1


def test_services_do_not_start_from_package_scripts(managed_system: System, tmp_path: Path) -> None:
    deb = _stage(
        managed_system,
        make_deb(
            tmp_path,
            "tu-service",
            "1.0",
            postinst="update-rc.d tu-service defaults; invoke-rc.d tu-service start",
            files={"/etc/init.d/tu-service": INIT_SCRIPT},
        ),
    )
    r = managed_system.tu("pkg", "install", deb)
    assert r.returncode == 0, r.stderr
    assert "policy-rc.d denied execution of start" in r.stdout + r.stderr
    new = managed_system.snapshot(managed_system.default_number())
    assert (new / "etc/init.d/tu-service").exists()
    assert not (new / "etc/tu-service-started").exists()


def test_patch_on_apt_is_refused_before_any_snapshot(managed_system: System) -> None:
    r = managed_system.tu("patch")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "error: apt has no patches (Debian ships security fixes as package updates)",
        "hint: use `transactional-update up` to install updates",
    ]
    assert managed_system.numbers() == [1]


def test_database_outside_the_snapshot_is_refused(managed_system: System) -> None:
    # The layout that breaks rollbacks: the dpkg database in the shared /var subvolume.
    link = managed_system.root / "var/lib/dpkg"
    link.unlink()
    shutil.copytree(managed_system.root / "usr/share/dpkg/database", link, symlinks=True)
    r = managed_system.tu("pkg", "install", "anything")
    assert r.returncode == 3
    assert r.stderr.splitlines()[0].startswith("error: the apt package database /var/lib/dpkg (")
    assert "is outside the root snapshot, on another subvolume" in r.stderr
    assert "hint: move it into the snapshot: /usr/share/dpkg/database" in r.stderr
    assert managed_system.numbers() == [1]


def test_reboot_refuses_a_system_mounted_elsewhere(managed_system: System) -> None:
    r = managed_system.tu("reboot")
    assert r.returncode == 2
    assert r.stderr.splitlines()[0] == (
        f"error: not rebooting: {managed_system.root} is not the running system"
    )


def test_dry_run_leaves_no_snapshot_and_up_records_the_upgrade(
    managed_system: System, tmp_path: Path
) -> None:
    s = managed_system
    local_repo(s, [make_deb(tmp_path, "tu-hello", "1.0")])
    r = s.tu("pkg", "install", "tu-hello")
    assert r.returncode == 0, r.stderr
    assert s.numbers() == [1, 2]
    # Already installed / nothing newer: the dry run ends it, no snapshot, no error.
    for args, message in (
        (("pkg", "install", "tu-hello"), "apt: already installed"),
        (("up",), "apt: nothing to update"),
    ):
        r = s.tu("--continue", *args)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[-1] == f"{message}; no snapshot was kept"
        assert s.numbers() == [1, 2] and s.default_number() == 2
    # A newer version in the repository: `up` upgrades and the changelog says 1.0 -> 2.0.
    # (--refresh: within REFRESH_DELAY of the install's refresh, `up` would not refresh.)
    local_repo(s, [make_deb(tmp_path / "v2", "tu-hello", "2.0")])
    r = s.tu("--continue", "--refresh", "up")
    assert r.returncode == 0, r.stderr
    new = s.default_number()
    assert new == 3 and _dpkg_version(s, new, "tu-hello") == "2.0"
    log = json.loads(s.tu("--json", "changelog", "3").stdout)
    assert log["packages"] == [{"name": "tu-hello", "kind": "upgraded", "old": "1.0", "new": "2.0"}]
    assert [c["argv"][:3] for c in log["commands"]] == [
        ["apt-get", "update"],
        ["apt-get", "-s", "upgrade"],
        ["apt-get", "-y", "upgrade"],
    ]
    assert "↑1 pkg" in s.snapper_list()[-1]["description"]


STAMP = "var/lib/transactional-update/refreshed-apt"


def _commands(system: System, n: int) -> list[list[str]]:
    log = json.loads(system.tu("--json", "changelog", str(n)).stdout)
    return [c["argv"] for c in log["commands"]]


def test_refresh_delay_spares_the_refresh_until_the_sources_change(
    managed_system: System, tmp_path: Path
) -> None:
    s = managed_system
    local_repo(s, [make_deb(tmp_path, n, "1.0") for n in ("tu-a", "tu-b", "tu-c", "tu-d")])
    assert s.tu("pkg", "install", "tu-a").returncode == 0
    assert _commands(s, 2)[0] == ["apt-get", "update"]
    stamp = json.loads((s.root / STAMP).read_text())
    assert set(stamp) == {"time", "config"}
    # Within the delay and with the same sources: no `apt-get update`, and -v says why.
    r = s.tu("-v", "--continue", "pkg", "install", "tu-b")
    assert r.returncode == 0, r.stderr
    assert re.search(
        r"^repository metadata refreshed \d+ s ago; not refreshing \(REFRESH_DELAY=10m\)$",
        r.stderr,
        re.MULTILINE,
    ), r.stderr
    assert _commands(s, 3) == [
        ["apt-get", "-s", "install", "tu-b"],
        ["apt-get", "-y", "install", "tu-b"],
    ]
    assert json.loads((s.root / STAMP).read_text()) == stamp  # a skip renews nothing
    # sources.list changed in a transaction: the next command, in that snapshot, refreshes...
    r = s.tu("--continue", "run", "--", "sh", "-c", "echo '# a comment' >> /etc/apt/sources.list")
    assert r.returncode == 0, r.stderr
    assert s.tu("--continue", "pkg", "install", "tu-c").returncode == 0
    assert _commands(s, 5)[0] == ["apt-get", "update"]
    # ...and the one after it does not.
    assert s.tu("--continue", "pkg", "install", "tu-d").returncode == 0
    assert ["apt-get", "update"] not in _commands(s, 6)
    # The booted snapshot's sources differ from the ones last refreshed with: refresh.
    r = s.tu("--from-booted", "pkg", "install", "tu-a", "tu-b")
    assert r.returncode == 0, r.stderr
    assert (s.default_number(), _commands(s, 7)[0]) == (7, ["apt-get", "update"])
    # Once the delay has passed, the same sources refresh again.
    s.time_passes(601)
    assert s.tu("--continue", "pkg", "remove", "tu-a").returncode == 0  # remove never refreshes
    assert ["apt-get", "update"] not in _commands(s, 8)
    assert s.tu("--continue", "pkg", "install", "tu-a").returncode == 0
    assert _commands(s, 9)[0] == ["apt-get", "update"]


def test_refresh_delay_zero_refreshes_every_time(managed_system: System, tmp_path: Path) -> None:
    s = managed_system
    local_repo(s, [make_deb(tmp_path, n, "1.0") for n in ("tu-a", "tu-b")])
    with s.booted_writable() as snap:
        (snap / "etc/transactional-update.conf").write_text("REFRESH_DELAY=0\n")
    r = s.tu("config")
    assert "REFRESH_DELAY=0 # /etc/transactional-update.conf:1" in [
        " ".join(line.split()) for line in r.stdout.splitlines()
    ]
    for n, pkg in ((2, "tu-a"), (3, "tu-b")):
        assert s.tu("--continue", "pkg", "install", pkg).returncode == 0
        assert _commands(s, n)[0] == ["apt-get", "update"]


def test_a_failed_refresh_writes_no_stamp_and_is_retried(
    managed_system: System, tmp_path: Path
) -> None:
    s = managed_system
    local_repo(s, [make_deb(tmp_path, n, "1.0") for n in ("tu-a", "tu-b")])
    assert s.tu("pkg", "install", "tu-a").returncode == 0
    assert (s.root / STAMP).is_file()
    # A source that does not exist: apt-get update fails (exit 100), and the stamp is gone.
    r = s.tu(
        "--continue",
        "run",
        "--",
        "sh",
        "-c",
        "echo 'deb [trusted=yes] file:/var/cache/tu-missing ./' > /etc/apt/sources.list.d/x.list",
    )
    assert r.returncode == 0, r.stderr
    for _ in range(2):  # the second attempt refreshes (and fails) again
        r = s.tu("--continue", "pkg", "install", "tu-b")
        assert r.returncode == 1
        assert r.stderr.splitlines()[-2:] == [
            "error: apt-get update failed (exit 100)",
            "hint: the default snapshot is unchanged",
        ]
        assert not (s.root / STAMP).exists()
        assert s.numbers() == [1, 2, 3] and s.default_number() == 3


def _archive_reachable(root: Path) -> str | None:
    """The archive host of the test root's sources, when it answers; else None."""
    import socket

    text = " ".join(p.read_text() for p in (root / "etc/apt").rglob("*.list*") if p.is_file())
    text += " ".join(p.read_text() for p in (root / "etc/apt").rglob("*.sources") if p.is_file())
    match = re.search(r"https?://([^/\s]+)", text)
    if match is None:
        return None
    try:
        socket.create_connection((match.group(1), 80), timeout=5).close()
    except OSError:
        return None
    return match.group(1)


def test_install_a_real_package_from_the_debian_archive(managed_system: System) -> None:
    host = _archive_reachable(managed_system.root)
    if host is None:
        pytest.skip("the Debian archive named in the test root's apt sources is not reachable")
    r = managed_system.tu("pkg", "install", "hello", timeout=600)
    assert r.returncode == 0, r.stderr
    new = managed_system.default_number()
    assert _dpkg_version(managed_system, new, "hello") is not None
    assert (managed_system.snapshot(new) / "usr/bin/hello").exists()
    log = json.loads(managed_system.tu("--json", "changelog", str(new)).stdout)
    assert [p["name"] for p in log["packages"]] == ["hello"]
