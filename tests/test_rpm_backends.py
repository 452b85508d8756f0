"""zypper and dnf as backends: the real tools in the snapshot's chroot, against a local repository.

The test root is Debian with zypper, dnf and rpm installed (built once, cached); the repository is
built on the host with rpmbuild and createrepo_c and lies in the shared /var/cache, so the chroot
reads it at file:///var/cache/tu-rpm-repo.  Each test drives one system through several steps
with ``--continue``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import System, make_rpm, rpm_rootfs_tar, sh
from tests.helpers import managed_system as _managed_system

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(
        shutil.which("rpmbuild") is None or shutil.which("createrepo_c") is None,
        reason="needs rpmbuild and createrepo_c (run ./tu-dev test, which installs rpm and "
        "createrepo-c)",
    ),
]

REPO_DIR = "var/cache/tu-rpm-repo"
REPO_FILE = """\
[local]
name=local test repository
baseurl=file:///var/cache/tu-rpm-repo
enabled=1
autorefresh=1
gpgcheck=0
"""


def _publish(system: System, rpms: list[Path]) -> None:
    """Add *rpms* to the local repository and (re)write its metadata."""
    repo = system.root / REPO_DIR
    repo.mkdir(parents=True, exist_ok=True)
    for rpm in rpms:
        shutil.copy(rpm, repo)
    sh("createrepo_c", "--quiet", "--no-database", str(repo))


def _configure(system: System, manager: str) -> None:
    """Point zypper and dnf at the local repository only; for dnf, hide zypper from detect()."""
    with system.booted_writable() as snap:
        for d in ("etc/zypp/repos.d", "etc/yum.repos.d"):
            (snap / d).mkdir(parents=True, exist_ok=True)
            (snap / d / "local.repo").write_text(REPO_FILE)
        if manager == "dnf":
            (snap / "usr/bin/zypper").rename(snap / "usr/bin/zypper.hidden")


@pytest.fixture
def rpm_system(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[System]:
    manager: str = request.param
    workdir = tmp_path / "system"
    workdir.mkdir()
    with _managed_system(workdir, rootfs=rpm_rootfs_tar()) as system:
        _publish(system, [])
        _configure(system, manager)
        yield system


def _manager(system: System) -> str:
    return "dnf" if (system.snapshot(1) / "usr/bin/zypper.hidden").exists() else "zypper"


def _rpm_version(system: System, n: int, name: str) -> str | None:
    """The version of *name* in snapshot *n*'s rpm database (read from a copy: it is read-only)."""
    db = system.snapshot(n) / "usr/lib/sysimage/rpm"
    with_copy = system.workdir / "rpmdb-copy"
    shutil.rmtree(with_copy, ignore_errors=True)
    shutil.copytree(db, with_copy)
    r = sh(
        "rpm", "--dbpath", str(with_copy), "-q", "--qf", "%{VERSION}-%{RELEASE}", name, check=False
    )
    return r.stdout if r.returncode == 0 else None


def _changelog(system: System, n: int) -> dict[str, Any]:
    r = system.tu("--json", "changelog", str(n))
    assert r.returncode == 0, r.stderr
    log: dict[str, Any] = json.loads(r.stdout)
    return log


def _nothing(system: System, args: tuple[str, ...], message: str, numbers: list[int]) -> None:
    r = system.tu("--continue", *args)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == f"{message}; no snapshot was kept", r.stdout
    assert system.numbers() == numbers and system.default_number() == numbers[-1]


# Writes to the shadowed /var that the chroot does not provide for yet (see the report):
# zypper creates /var/tmp for its temporary files.
KNOWN_OUTSIDE_WRITES: dict[str, set[str]] = {"zypper": set(), "dnf": set()}


def _outside_writes(stderr: str) -> set[str]:
    prefix = "written outside the snapshot, discarded: "
    return {
        line.split(prefix, 1)[1].split(" ", 1)[0] for line in stderr.splitlines() if prefix in line
    }


# What each backend runs, as the changelog records it (argv of prepare, probe, command).
STEPS = {
    "zypper": {
        "install": [
            ["zypper", "--non-interactive", "refresh"],
            ["zypper", "--non-interactive", "install", "--dry-run", "tu-rpm-hello"],
            ["zypper", "--non-interactive", "install", "tu-rpm-hello"],
        ],
        "up": [
            ["zypper", "--non-interactive", "refresh"],
            ["zypper", "--non-interactive", "update", "--dry-run"],
            ["zypper", "--non-interactive", "update"],
        ],
        "remove": [
            ["zypper", "--non-interactive", "remove", "--dry-run", "tu-rpm-hello"],
            ["zypper", "--non-interactive", "remove", "tu-rpm-hello"],
        ],
    },
    "dnf": {
        "install": [
            ["dnf", "makecache", "--refresh"],
            ["dnf", "--assumeno", "install", "tu-rpm-hello"],
            ["dnf", "-y", "install", "tu-rpm-hello"],
        ],
        "up": [
            ["dnf", "makecache", "--refresh"],
            ["dnf", "--assumeno", "upgrade"],
            ["dnf", "-y", "upgrade"],
        ],
        "remove": [
            ["dnf", "--assumeno", "remove", "tu-rpm-hello"],
            ["dnf", "-y", "remove", "tu-rpm-hello"],
        ],
    },
}


@pytest.mark.parametrize("rpm_system", ["zypper", "dnf"], indirect=True)
def test_install_up_remove(rpm_system: System, tmp_path: Path) -> None:
    s = rpm_system
    manager = _manager(s)
    _publish(s, [make_rpm(tmp_path, "tu-rpm-hello", "1.0")])

    r = s.tu("pkg", "install", "tu-rpm-hello")
    assert r.returncode == 0, r.stdout + r.stderr
    assert s.numbers() == [1, 2] and s.default_number() == 2
    assert _rpm_version(s, 2, "tu-rpm-hello") == "1.0-1"
    assert (s.snapshot(2) / "usr/share/tu-rpm-hello/version").read_text() == "1.0\n"
    assert _rpm_version(s, 1, "tu-rpm-hello") is None  # the booted snapshot is untouched
    log = _changelog(s, 2)
    assert log["packages"] == [
        {"name": "tu-rpm-hello", "kind": "added", "old": None, "new": "1.0-1"}
    ]
    assert [c["argv"] for c in log["commands"]] == STEPS[manager]["install"]
    assert _outside_writes(r.stderr) <= KNOWN_OUTSIDE_WRITES[manager], r.stderr
    if manager == "dnf":  # dnf's history lives beside the rpm database, in the snapshot
        assert (s.snapshot(2) / "usr/lib/sysimage/dnf/history.sqlite").is_file()

    # Already installed, nothing newer, no patches: the dry run ends it without a snapshot.
    _nothing(s, ("pkg", "install", "tu-rpm-hello"), f"{manager}: already installed", [1, 2])
    _nothing(s, ("up",), f"{manager}: nothing to update", [1, 2])
    _nothing(s, ("patch",), f"{manager}: no patches to install", [1, 2])

    # 2.0 in the repository: `up` upgrades.
    _publish(s, [make_rpm(tmp_path, "tu-rpm-hello", "2.0")])
    r = s.tu("--continue", "up")
    assert r.returncode == 0, r.stdout + r.stderr
    assert s.numbers() == [1, 2, 3] and s.default_number() == 3
    assert _rpm_version(s, 3, "tu-rpm-hello") == "2.0-1"
    log = _changelog(s, 3)
    assert log["packages"] == [
        {"name": "tu-rpm-hello", "kind": "upgraded", "old": "1.0-1", "new": "2.0-1"}
    ]
    assert [c["argv"] for c in log["commands"]] == STEPS[manager]["up"]
    assert log["base"] == 2

    r = s.tu("--continue", "pkg", "remove", "tu-rpm-hello")
    assert r.returncode == 0, r.stdout + r.stderr
    assert s.numbers() == [1, 2, 3, 4] and s.default_number() == 4
    assert _rpm_version(s, 4, "tu-rpm-hello") is None
    assert not (s.snapshot(4) / "usr/share/tu-rpm-hello").exists()
    log = _changelog(s, 4)
    assert log["packages"] == [
        {"name": "tu-rpm-hello", "kind": "removed", "old": "2.0-1", "new": None}
    ]
    assert [c["argv"] for c in log["commands"]] == STEPS[manager]["remove"]
    _nothing(s, ("pkg", "remove", "tu-rpm-hello"), f"{manager}: not installed", [1, 2, 3, 4])


# Exit codes of a failed install: zypper 104 (no such package) and 4 (a package script failed),
# dnf 1 for both.
FAILED_EXIT = {"zypper": {"missing": 104, "script": 4}, "dnf": {"missing": 1, "script": 1}}


@pytest.mark.parametrize("rpm_system", ["zypper", "dnf"], indirect=True)
def test_failed_install_keeps_the_default(rpm_system: System, tmp_path: Path) -> None:
    s = rpm_system
    manager = _manager(s)
    _publish(
        s,
        [
            make_rpm(tmp_path, "tu-rpm-pre", "1.0", pre="exit 1"),
            make_rpm(tmp_path, "tu-rpm-post", "1.0", post="exit 1"),
        ],
    )
    codes = FAILED_EXIT[manager]
    for name, rc in (
        ("tu-rpm-missing", codes["missing"]),
        ("tu-rpm-pre", codes["script"]),
        ("tu-rpm-post", codes["script"]),
    ):
        r = s.tu("pkg", "install", name)
        assert r.returncode == 1, r.stdout + r.stderr
        assert r.stderr.splitlines()[-2:] == [
            f"error: {manager} install {name} failed (exit {rc})",
            "hint: the default snapshot is unchanged",
        ], r.stderr
        assert s.numbers() == [1] and s.default_number() == 1
