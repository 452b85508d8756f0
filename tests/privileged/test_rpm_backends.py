"""zypper and dnf as backends: the real tools in the snapshot's chroot, against a local repository.

The test root is Debian with zypper, dnf and rpm installed (built once, cached); the repository is
built on the host with rpmbuild and createrepo_c and lies in the shared /var/cache, so the chroot
reads it at file:///var/cache/tu-rpm-repo.  Each test drives one system through several steps
with ``--continue``.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.systems import System, make_rpm, rpm_rootfs_tar, sh
from testkit.systems import managed_system as _managed_system

pytestmark = [
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


def _spec_rpm(workdir: Path, name: str, version: str, header: str = "", files: bool = True) -> Path:
    """A noarch .rpm with extra spec *header* lines (Provides: ...), built with rpmbuild."""
    top = workdir / f"spec-{name}-{version}"
    top.mkdir(parents=True)
    body = (
        f"%install\nmkdir -p %{{buildroot}}/usr/share/{name}\n"
        f"echo {version} > %{{buildroot}}/usr/share/{name}/version\n%files\n/usr/share/{name}\n"
        if files
        else "%files\n"
    )
    (top / f"{name}.spec").write_text(
        f"Name: {name}\nVersion: {version}\nRelease: 1\nSummary: test package\nLicense: MIT\n"
        f"BuildArch: noarch\n{header}%description\ntest package\n{body}"
    )
    out = workdir / "rpms"
    sh(
        "rpmbuild", "-bb", "--quiet", "--define", f"_topdir {top}", "--define", f"_rpmdir {out}",
        "--define", "_build_name_fmt %{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}.rpm",
        str(top / f"{name}.spec"),
    )  # fmt: skip
    return out / f"{name}-{version}-1.noarch.rpm"


def _configure(system: System, manager: str) -> None:
    """Point zypper and dnf at the local repository only; for dnf, hide zypper from detect().

    rpm's database of a Debian root is empty, so nothing provides the /bin/sh that every package
    script needs; a package that provides it (and has no files) stands for the Debian base.
    """
    base = _spec_rpm(system.workdir, "tu-rpm-base", "1", "Provides: /bin/sh\n", files=False)
    with system.booted_writable() as snap:
        sh(
            "rpm", "--root", str(snap), "--dbpath", "/usr/lib/sysimage/rpm",
            "-i", "--justdb", "--nodeps", "--noscripts", str(base),
        )  # fmt: skip
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
            ["zypper", "needs-rebooting"],
        ],
        "up": [
            ["zypper", "--non-interactive", "refresh"],
            ["zypper", "--non-interactive", "update", "--dry-run"],
            ["zypper", "--non-interactive", "update"],
            ["zypper", "needs-rebooting"],
        ],
        "remove": [
            ["zypper", "--non-interactive", "remove", "--dry-run", "tu-rpm-hello"],
            ["zypper", "--non-interactive", "remove", "tu-rpm-hello"],
            ["zypper", "needs-rebooting"],
        ],
    },
    "dnf": {
        "install": [
            ["dnf", "makecache", "--refresh"],
            ["dnf", "--assumeno", "install", "tu-rpm-hello"],
            ["dnf", "-y", "install", "tu-rpm-hello"],
            ["dnf", "history", "info", "last"],
        ],
        "up": [
            ["dnf", "makecache", "--refresh"],
            ["dnf", "--assumeno", "upgrade"],
            ["dnf", "-y", "upgrade"],
            ["dnf", "history", "info", "last"],
        ],
        "remove": [
            ["dnf", "--assumeno", "remove", "tu-rpm-hello"],
            ["dnf", "-y", "remove", "tu-rpm-hello"],
            ["dnf", "history", "info", "last"],
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
    # Those ran within REFRESH_DELAY of the install's refresh, with the same repositories: none
    # refreshed (the JSON report lists what a dropped transaction ran).
    r = s.tu("--json", "--continue", "up")
    assert [c["argv"] for c in json.loads(r.stdout)["commands"]] == [STEPS[manager]["up"][1]]

    # 2.0 in the repository: `up` upgrades once the metadata is refreshed.
    _publish(s, [make_rpm(tmp_path, "tu-rpm-hello", "2.0")])
    r = s.tu("--continue", "--refresh", "up")
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


# A failed install: the message names the exit code and what it means.  zypper: 104 (no such
# package), 8 (%pre failed: rpm aborted the commit), 107 (%post failed: installed but maybe broken);
# dnf exits 1 for the first two and 0 for a failed %post, which its history reveals.
FAILED = {
    "zypper": {
        "tu-rpm-missing": "(exit 104: no package provides a named package or capability)",
        "tu-rpm-pre": "(exit 8: error installing or removing packages)",
        "tu-rpm-post": "(exit 107: a package script failed; the package may not work as installed)",
    },
    "dnf": {
        "tu-rpm-missing": "(exit 1)",
        "tu-rpm-pre": "(exit 1)",
        "tu-rpm-post": ": a package script failed: %post(tu-rpm-post-1.0-1.noarch) "
        "(dnf itself exits 0 for it)",
    },
}


@pytest.mark.parametrize("rpm_system", ["zypper", "dnf"], indirect=True)
def test_failed_install_keeps_the_default(rpm_system: System, tmp_path: Path) -> None:
    s = rpm_system
    manager = _manager(s)
    _publish(
        s,
        [
            make_rpm(tmp_path, "tu-rpm-pre", "1.0", pre="exit 1"),
            make_rpm(tmp_path, "tu-rpm-post", "1.0", post="echo post ran; exit 1"),
        ],
    )
    for i, (name, what) in enumerate(FAILED[manager].items()):
        r = s.tu("pkg", "install", name)
        assert r.returncode == 1, r.stdout + r.stderr
        failed = " failed" if what.startswith(":") else " failed "
        assert r.stderr.splitlines()[-2] == f"error: {manager} install {name}{failed}{what}"
        hint = r.stderr.splitlines()[-1]
        if i == 0 or what.startswith(":"):  # refreshed; a script check's failure says nothing more
            assert hint == "hint: the default snapshot is unchanged", r.stderr
        else:  # the first install's refresh (it succeeded) spared this one's: say so
            assert re.fullmatch(
                r"hint: the default snapshot is unchanged; if a package was not found: the "
                r"repository metadata is \d+ s old \(REFRESH_DELAY\), --refresh fetches it anew",
                hint,
            ), r.stderr
        assert s.numbers() == [1] and s.default_number() == 1
    assert "post ran" in r.stdout + r.stderr  # the %post did run; its failure was noticed


def _advisory(number: int, name: str, version: str, flag: str) -> str:
    return f"""\
  <update from="tests@example.invalid" status="stable" type="security" version="1">
    <id>TU-{number}</id>
    <title>{name} {version}</title>
    <release>tests</release>
    <issued date="2024-01-0{number} 00:00:00"/>
    <severity>Important</severity>
    <description>test advisory</description>
    <pkglist><collection short="local"><name>local</name>
      <package name="{name}" version="{version}" release="1" epoch="0" arch="noarch"
               src="{name}-{version}-1.src.rpm">
        <filename>{name}-{version}-1.noarch.rpm</filename>
        <{flag}>True</{flag}>
      </package>
    </collection></pkglist>
  </update>
"""


def _publish_advisories(system: System, advisories: list[str]) -> None:
    """Add an updateinfo.xml (what zypper calls patches, dnf advisories) to the repository.

    The metadata is rewritten first: modifyrepo_c keeps repomd.xml's revision, and libzypp takes
    a repository whose revision did not change for up to date (and then misses the new file).
    """
    _publish(system, [])
    xml = system.workdir / "updateinfo.xml"
    xml.write_text(
        f'<?xml version="1.0" encoding="UTF-8"?>\n<updates>\n{"".join(advisories)}</updates>\n'
    )
    sh("modifyrepo_c", "--mdtype=updateinfo", str(xml), str(system.root / REPO_DIR / "repodata"))


@pytest.mark.parametrize("rpm_system", ["zypper", "dnf"], indirect=True)
def test_patch(rpm_system: System, tmp_path: Path) -> None:
    s = rpm_system
    manager = _manager(s)
    _publish(s, [make_rpm(tmp_path, n, "1.0") for n in ("tu-rpm-stack", "tu-rpm-hello")])
    r = s.tu("pkg", "install", "tu-rpm-stack", "tu-rpm-hello")
    assert r.returncode == 0, r.stdout + r.stderr
    assert s.numbers() == [1, 2]

    # Newer versions, no advisory yet: `up` would take them, `patch` has nothing to install.
    _publish(s, [make_rpm(tmp_path, n, "2.0") for n in ("tu-rpm-stack", "tu-rpm-hello")])
    _nothing(s, ("patch",), f"{manager}: no patches to install", [1, 2])

    # Two advisories: one updates the package stack (zypper installs it alone, exits 103 and
    # installs the other when run again), one asks for a reboot (zypper exits 102).
    _publish_advisories(
        s,
        [
            _advisory(1, "tu-rpm-stack", "2.0", "restart_suggested"),
            _advisory(2, "tu-rpm-hello", "2.0", "reboot_suggested"),
        ],
    )
    r = s.tu("--continue", "--refresh", "patch")
    assert r.returncode == 0, r.stdout + r.stderr
    assert s.numbers() == [1, 2, 3] and s.default_number() == 3
    log = _changelog(s, 3)
    assert log["packages"] == [
        {"name": "tu-rpm-hello", "kind": "upgraded", "old": "1.0-1", "new": "2.0-1"},
        {"name": "tu-rpm-stack", "kind": "upgraded", "old": "1.0-1", "new": "2.0-1"},
    ]
    commands = [(c["argv"], c["exit"]) for c in log["commands"]]
    info = {i["number"]: i for i in s.snapper_list()}
    status = json.loads(s.tu("--json", "status").stdout)
    if manager == "zypper":
        patch = ["zypper", "--non-interactive", "--non-interactive-include-reboot-patches", "patch"]
        assert commands == [
            (["zypper", "--non-interactive", "refresh"], 0),
            ([*patch, "--dry-run"], 103),
            (patch, 103),  # the stack patch alone
            (patch, 102),  # then the rest, with a patch that asks for a reboot
            (["zypper", "needs-rebooting"], 0),
        ]
        assert log["reboot"] == "reboot"
        assert info[3]["userdata"]["tu-reboot"] == "reboot"
        assert status["reboot_level"] == "reboot"
        assert "a full reboot (its packages ask for one) to use it" in s.tu("status").stdout
        assert "needs: a full reboot" in s.tu("changelog", "3").stdout
        assert "zypper: an installed patch or package requires a reboot" in r.stderr
        assert r.stdout.splitlines()[-1] == (
            "snapshot 3 is the new default; a full reboot (its packages ask for one) to use it"
        )
    else:
        assert r.stdout.splitlines()[-1] == "snapshot 3 is the new default; reboot to use it"
        assert commands == [
            (["dnf", "makecache", "--refresh"], 0),
            (["dnf", "--assumeno", "upgrade-minimal"], 1),
            (["dnf", "-y", "upgrade-minimal"], 0),
            (["dnf", "history", "info", "last"], 0),
        ]
        assert log["reboot"] is None  # dnf 4 has no reboot flag
        assert "tu-reboot" not in info[3]["userdata"]
        assert status["reboot_level"] is None
    _nothing(s, ("patch",), f"{manager}: no patches to install", [1, 2, 3])


@pytest.mark.parametrize("rpm_system", ["zypper"], indirect=True)
def test_zypper_package_that_needs_a_reboot(rpm_system: System, tmp_path: Path) -> None:
    # libzypp flags a package providing installhint(reboot-needed) in /run/reboot-needed (exit
    # code 0); `zypper needs-rebooting` reports it with 102.
    s = rpm_system
    _publish(
        s,
        [
            _spec_rpm(tmp_path, "tu-rpm-kernel", "1.0", "Provides: installhint(reboot-needed)\n"),
            make_rpm(tmp_path, "tu-rpm-hello", "1.0"),
        ],
    )
    r = s.tu("pkg", "install", "tu-rpm-hello")
    assert r.returncode == 0, r.stdout + r.stderr
    assert _changelog(s, 2)["reboot"] is None
    assert "tu-reboot" not in {i["number"]: i for i in s.snapper_list()}[2]["userdata"]
    r = s.tu("--continue", "pkg", "install", "tu-rpm-kernel")
    assert r.returncode == 0, r.stdout + r.stderr
    log = _changelog(s, 3)
    assert [(c["argv"][-1], c["exit"]) for c in log["commands"]][-2:] == [
        ("tu-rpm-kernel", 0),
        ("needs-rebooting", 102),
    ]
    assert log["reboot"] == "reboot"
    assert {i["number"]: i for i in s.snapper_list()}[3]["userdata"]["tu-reboot"] == "reboot"
