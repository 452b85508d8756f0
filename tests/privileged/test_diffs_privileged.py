"""File and package changes between real snapshots of a managed system (btrfs send, dpkg, rpm)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from testkit.systems import System, make_deb, sh
from tests.privileged.test_packages import _stage
from transactional_update.config.settings import Manager
from transactional_update.record.filediff import FileChange, FileChangeKind, file_changes
from transactional_update.record.pkgdiff import (
    ChangeKind,
    PackageChange,
    package_changes,
    packages_of,
)

A, M, D = FileChangeKind.ADDED, FileChangeKind.MODIFIED, FileChangeKind.DELETED

# One transaction touching /etc in every way the send stream has a quirk for.
SCRIPT = """
set -e
echo hi > /etc/new-file
echo newhost > /etc/hostname
rm /etc/issue.net
mv /etc/motd /etc/motd.renamed
mkdir /etc/newdir
echo x > /etc/newdir/inner
ln -s /etc/hostname /etc/newlink
chmod 600 /etc/debian_version
mv /etc/default /etc/default.old
sed -i 's/^/# /' /etc/host.conf
rm -r /etc/cron.daily
ln /etc/issue /etc/issue.hardlink
touch /etc/shells
"""


def test_file_changes_of_a_transaction(managed_system: System) -> None:
    r = managed_system.tu("run", "--", "sh", "-c", SCRIPT)
    assert r.returncode == 0, r.stderr
    assert managed_system.default_number() == 2
    assert file_changes(managed_system.snapshot(1), managed_system.snapshot(2)) == [
        FileChange("/etc/cron.daily", D, True),
        FileChange("/etc/cron.daily/apt-compat", D, False),
        FileChange("/etc/cron.daily/dpkg", D, False),
        FileChange("/etc/debian_version", M, False),
        FileChange("/etc/default", D, True),
        FileChange("/etc/default.old", A, True, source="/etc/default"),
        FileChange("/etc/host.conf", M, False),  # sed -i: a new inode renamed over it
        FileChange("/etc/hostname", M, False),
        FileChange("/etc/issue.hardlink", A, False, source="/etc/issue"),
        FileChange("/etc/issue.net", D, False),
        FileChange("/etc/motd", D, False),
        FileChange("/etc/motd.renamed", A, False, source="/etc/motd"),
        FileChange("/etc/new-file", A, False),
        FileChange("/etc/newdir", A, True),
        FileChange("/etc/newdir/inner", A, False),
        FileChange("/etc/newlink", A, False),
    ]
    # Comparing needs both read-only; the child's flag is restored afterwards.
    assert sh("btrfs", "property", "get", str(managed_system.snapshot(2)), "ro").stdout == (
        "ro=true\n"
    )


def test_file_changes_survive_the_end_of_stream_race(managed_system: System) -> None:
    # Through a pipe, btrfs send died of SIGPIPE in about one run in five once `receive --dump`
    # had read the end command and exited; a small stream made it likelier.
    r = managed_system.tu("run", "--", "sh", "-c", "echo b > /etc/hostname")
    assert r.returncode == 0, r.stderr
    results = [
        file_changes(managed_system.snapshot(1), managed_system.snapshot(2)) for _ in range(30)
    ]
    assert results == [[FileChange("/etc/hostname", M, False)]] * 30


def test_no_change_no_entries(managed_system: System) -> None:
    r = managed_system.tu("run", "--", "true")
    assert r.returncode == 0, r.stderr
    assert file_changes(managed_system.snapshot(1), managed_system.snapshot(2)) == []


def test_package_changes_install_upgrade_downgrade_remove(
    managed_system: System, tmp_path: Path
) -> None:
    system = managed_system
    v1, v2, v15 = (
        _stage(system, make_deb(tmp_path, "tu-pkg", v, files={"/etc/tu-pkg.conf": f"v={v}\n"}))
        for v in ("1.0", "2.0", "1.5")
    )
    gone = _stage(system, make_deb(tmp_path, "tu-gone", "1.0"))
    steps = [
        ("pkg", "install", v1, gone),  # 2
        ("--continue", "pkg", "install", v2),  # 3
        # apt-get -y refuses downgrades; dpkg -i makes one with a warning
        ("--continue", "run", "--", "dpkg", "-i", v15),  # 4
        ("--continue", "pkg", "remove", "tu-gone"),  # 5
    ]
    for args in steps:
        r = system.tu(*args)
        assert r.returncode == 0, r.stderr
    assert system.numbers() == [1, 2, 3, 4, 5]

    def changes(a: int, b: int) -> list[PackageChange]:
        return package_changes(system.snapshot(a), system.snapshot(b), Manager.APT)

    assert changes(1, 2) == [
        PackageChange("tu-gone", ChangeKind.ADDED, None, "1.0"),
        PackageChange("tu-pkg", ChangeKind.ADDED, None, "1.0"),
    ]
    assert changes(2, 3) == [PackageChange("tu-pkg", ChangeKind.UPGRADED, "1.0", "2.0")]
    assert changes(3, 4) == [PackageChange("tu-pkg", ChangeKind.DOWNGRADED, "2.0", "1.5")]
    assert changes(4, 5) == [PackageChange("tu-gone", ChangeKind.REMOVED, "1.0", None)]
    assert changes(1, 5) == [PackageChange("tu-pkg", ChangeKind.ADDED, None, "1.5")]
    assert changes(5, 1) == [PackageChange("tu-pkg", ChangeKind.REMOVED, "1.5", None)]
    assert changes(3, 3) == []
    assert packages_of(system.snapshot(5), Manager.APT)["tu-pkg"] == "1.5"

    # The same upgrade, file by file: the package's files and dpkg's own records.
    assert file_changes(system.snapshot(2), system.snapshot(3)) == [
        FileChange("/etc/tu-pkg.conf", M, False),
        FileChange("/usr/share/dpkg/database/info/tu-pkg.conffiles", M, False),
        FileChange("/usr/share/dpkg/database/info/tu-pkg.list", M, False),
        FileChange("/usr/share/dpkg/database/info/tu-pkg.md5sums", M, False),
        FileChange("/usr/share/dpkg/database/status", M, False),
        FileChange("/usr/share/dpkg/database/status-old", M, False),
        FileChange("/usr/share/tu-pkg/version", M, False),
    ]


# --- rpm: a real database in a real read-only snapshot -----------------------------------------

SPEC = """\
Name: %{pkg}
Version: %{ver}
Release: %{rel}
Epoch: %{ep}
Summary: test package
License: MIT
BuildArch: noarch
%description
test package
%files
"""


def _rpm(tmp_path: Path, name: str, version: str, release: str, epoch: int) -> Path:
    spec = tmp_path / "tu.spec"
    spec.write_text(SPEC)
    top = tmp_path / "rpmbuild"
    sh(
        "rpmbuild", "-bb", "--quiet",
        "--define", f"_topdir {top}", "--define", f"pkg {name}", "--define", f"ver {version}",
        "--define", f"rel {release}", "--define", f"ep {epoch}",
        str(spec),
    )  # fmt: skip
    return next((top / "RPMS/noarch").glob(f"{name}-{version}-{release}.noarch.rpm"))


def _rpm_database(tmp_path: Path, name: str, rpms: list[Path]) -> Path:
    """A fresh rpm database holding *rpms*, closed cleanly (no -shm/-wal files left)."""
    db = tmp_path / name
    db.mkdir()
    sh("rpm", "--dbpath", str(db), "--initdb")
    sh("rpm", "--dbpath", str(db), "-i", "--justdb", "--nodeps", *map(str, rpms))
    for leftover in ("rpmdb.sqlite-shm", "rpmdb.sqlite-wal", ".rpm.lock"):
        (db / leftover).unlink(missing_ok=True)
    return db


@pytest.mark.skipif(shutil.which("rpmbuild") is None, reason="needs rpm and rpmbuild on the host")
def test_rpm_package_changes_in_read_only_snapshots(managed_system: System, tmp_path: Path) -> None:
    system = managed_system
    x1 = _rpm(tmp_path, "tu-x", "1.0", "1", 0)
    x2 = _rpm(tmp_path, "tu-x", "1.0", "2", 0)
    y = _rpm(tmp_path, "tu-y", "3.1", "1", 2)
    staged = system.root / "var/cache/tu-test"
    staged.mkdir(parents=True)
    shutil.copytree(_rpm_database(tmp_path, "a", [x1]), staged / "a")
    shutil.copytree(_rpm_database(tmp_path, "b", [x2, y]), staged / "b")
    for step, db in ((("run",), "a"), (("--continue", "run"), "b")):
        install = (
            f"rm -rf /usr/lib/sysimage/rpm && cp -a /var/cache/tu-test/{db} /usr/lib/sysimage/rpm"
        )
        r = system.tu(*step, "--", "sh", "-c", f"mkdir -p /usr/lib/sysimage && {install}")
        assert r.returncode == 0, r.stderr
    old, new = system.snapshot(2), system.snapshot(3)
    assert sh("btrfs", "property", "get", str(old), "ro").stdout == "ro=true\n"
    before = sorted(p.name for p in (new / "usr/lib/sysimage/rpm").iterdir())

    assert packages_of(new, Manager.ZYPPER) == {"tu-x": "1.0-2", "tu-y": "2:3.1-1"}
    assert package_changes(old, new, Manager.DNF) == [
        PackageChange("tu-x", ChangeKind.UPGRADED, "1.0-1", "1.0-2"),
        PackageChange("tu-y", ChangeKind.ADDED, None, "2:3.1-1"),
    ]
    # rpm read a copy: nothing (lock, -shm, -wal) was left in the snapshot
    assert sorted(p.name for p in (new / "usr/lib/sysimage/rpm").iterdir()) == before
