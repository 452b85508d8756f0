"""pkgdiff: version ordering, package database parsing and the diff (no root needed).

Version ordering is checked against the real tools where the host has them: ``dpkg
--compare-versions`` on every Debian host, ``rpm.vercmp`` when rpm is installed.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from transactional_update.config.settings import Manager
from transactional_update.errors import NotManagedError, SystemError_
from transactional_update.record import pkgdiff
from transactional_update.record.pkgdiff import (
    ChangeKind,
    Package,
    PackageChange,
    compare_installed,
    debian_compare,
    diff_packages,
    parse_dpkg_status,
    parse_rpm_query,
    rpm_compare,
    rpmvercmp,
)

# --- Debian versions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1.0", "1.0", 0),
        ("1.0", "1.0-0", 0),  # no revision is revision 0
        ("0:1.0", "1.0", 0),  # no epoch is epoch 0
        ("1.0", "1.1", -1),
        ("1.10", "1.9", 1),  # digits compare as numbers
        ("1.001", "1.1", 0),
        ("1:0.1", "2.0", 1),  # the epoch comes first
        ("1.0~rc1", "1.0", -1),  # ~ sorts before the end
        ("1.0~~", "1.0~", -1),
        ("1.0~rc1", "1.0~rc1~1", 1),
        ("1.0", "1.0a", -1),  # the end sorts before a letter
        ("1.0a", "1.0+", -1),  # letters sort before other characters
        ("1.0+b1", "1.0", 1),
        ("1.0+dfsg", "1.0.1", -1),  # '+' before '.': 43+256 < 46+256
        ("2.36-9+deb12u14", "2.36-9+deb12u4", 1),
        ("1.0-1~bpo12+1", "1.0-1", -1),
        ("1.2.3-4ubuntu1", "1.2.3-4", 1),
        ("7.88.1-10+deb12u5", "7.88.1-10+deb12u12", -1),
        ("1:2.3-1-1", "1:2.3-1-2", -1),  # the revision follows the last hyphen
        ("10", "9", 1),
        ("1.0", "1.0.0", -1),
    ],
)
def test_debian_compare_known_pairs(a: str, b: str, expected: int) -> None:
    assert debian_compare(a, b) == expected
    assert debian_compare(b, a) == -expected


def _debian_versions(rng: random.Random) -> tuple[str, str]:
    """Two valid Debian versions, often close to each other (where ordering rules bite)."""
    upstream_chars = "0123456789" * 3 + "abzAZ.+~-"
    revision_chars = "0123456789" * 3 + "abz.+~"

    def version() -> str:
        up = rng.choice("0123456789") + "".join(
            rng.choice(upstream_chars) for _ in range(rng.randint(0, 7))
        )
        if "-" in up or rng.random() < 0.5:
            up += "-" + "".join(rng.choice(revision_chars) for _ in range(rng.randint(1, 4)))
        return (f"{rng.randint(0, 2)}:" if rng.random() < 0.2 else "") + up

    a = version()
    if rng.random() < 0.4:
        return a, version()
    epoch, colon, rest = a.rpartition(":")
    at = rng.randint(1, len(rest))
    insert = rng.choice(["", "~", "0", "a", ".", "+", "1", "-1", "~~", "Z"])
    return a, epoch + colon + rest[:at] + insert + rest[at:]


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg --compare-versions")
def test_debian_compare_agrees_with_dpkg() -> None:
    rng = random.Random(20261126)  # noqa: S311 - reproducible test data
    disagreements = []
    for _ in range(300):
        a, b = _debian_versions(rng)
        ours = debian_compare(a, b)
        relation = {-1: "lt", 0: "eq", 1: "gt"}[ours]
        if (
            subprocess.run(["dpkg", "--compare-versions", a, relation, b], check=False).returncode
            != 0
        ):
            disagreements.append((a, relation, b))
    assert disagreements == []


# --- rpm versions ----------------------------------------------------------------------------

# rpm's own test suite (tests/rpmvercmp.at), caret cases included.
RPMVERCMP_CASES = [
    ("1.0", "1.0", 0),
    ("1.0", "2.0", -1),
    ("2.0.1", "2.0", 1),
    ("2.0.1a", "2.0.1", 1),
    ("5.5p1", "5.5p2", -1),
    ("5.5p10", "5.5p1", 1),
    ("10xyz", "10.1xyz", -1),
    ("xyz10", "xyz10.1", -1),
    ("xyz.4", "8", -1),
    ("xyz.4", "2", -1),
    ("5.5p2", "5.6p1", -1),
    ("5.6p1", "6.5p1", -1),
    ("6.0.rc1", "6.0", 1),
    ("10b2", "10a1", 1),
    ("10a2", "10b2", -1),
    ("1.0aa", "1.0a", 1),
    ("10.0001", "10.1", 0),
    ("10.0001", "10.0039", -1),
    ("4.999.9", "5.0", -1),
    ("20101121", "20101122", -1),
    ("2_0", "2_0", 0),
    ("2.0", "2_0", 0),
    ("a", "a", 0),
    ("a+", "a_", 0),
    ("+a", "_a", 0),
    ("_+", "+_", 0),
    ("+", "_", 0),
    ("1.0~rc1", "1.0", -1),
    ("1.0~rc1", "1.0~rc2", -1),
    ("1.0~rc1~git123", "1.0~rc1", -1),
    ("1.0^", "1.0", 1),
    ("1.0^git1", "1.0", 1),
    ("1.0^git1", "1.0^git2", -1),
    ("1.0^git1", "1.01", -1),
    ("1.0^20160101", "1.0.1", -1),
    ("1.0^20160101^git1", "1.0^20160101^git1", 0),
    ("1.0^20160102", "1.0^20160101^git1", 1),
    ("1.0~rc1^git1", "1.0~rc1", 1),
    ("1.0^git1~pre", "1.0^git1", -1),
    ("1.0^git1", "1.0^git1~pre", 1),
]


@pytest.mark.parametrize(("a", "b", "expected"), RPMVERCMP_CASES)
def test_rpmvercmp_known_pairs(a: str, b: str, expected: int) -> None:
    assert rpmvercmp(a, b) == expected
    assert rpmvercmp(b, a) == -expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1.0-1", "1.0-2", -1),
        ("1:1.0-1", "2.0-1", 1),
        ("0:1.0-1", "1.0-1", 0),
        ("6.4.0-150600.23.25.1", "6.4.0-150600.23.7.3", 1),
        ("2.0-1", "10.0-1", -1),
        ("1.0", "1.0-1", -1),
    ],
)
def test_rpm_compare_epoch_version_release(a: str, b: str, expected: int) -> None:
    assert rpm_compare(a, b) == expected


@pytest.mark.skipif(shutil.which("rpm") is None, reason="needs rpm (its lua rpm.vercmp)")
def test_rpm_compare_agrees_with_rpm() -> None:
    rng = random.Random(7)  # noqa: S311 - reproducible test data
    chars = "0123456789" * 3 + "abcz.~^_+"

    def part() -> str:
        return "".join(rng.choice(chars) for _ in range(rng.randint(1, 7)))

    pairs = []
    for _ in range(1000):
        a = f"{rng.choice(['', '1:', '2:'])}{part()}-{part()}"
        b = a[: rng.randint(1, len(a))] + part()[:3] if rng.random() < 0.5 else f"{part()}-{part()}"
        pairs.append((a, b))
    script = " ".join(f'print(rpm.vercmp("{a}", "{b}") .. " ")' for a, b in pairs)
    out = subprocess.run(
        ["rpm", "--eval", f"%{{lua: {script}}}"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(out) == len(pairs)
    assert [(a, b, rpm_compare(a, b)) for a, b in pairs] == [
        (a, b, int(o)) for (a, b), o in zip(pairs, out, strict=True)
    ]


# --- dpkg status -----------------------------------------------------------------------------

STATUS = """\
Package: hello
Status: install ok installed
Priority: optional
Architecture: amd64
Version: 2.10-3
Description: example package
 Package: not-a-field (a continuation line)
 .
 Status: neither

Package: held
Status: hold ok installed
Architecture: all
Version: 1:1.0

Package: going
Status: deinstall ok installed
Architecture: all
Version: 3

Package: unpacked
Status: install ok unpacked
Architecture: all
Version: 1

Package: removed
Status: deinstall ok config-files
Architecture: all
Version: 1

Package: broken
Status: install reinstreq half-installed
Architecture: all
Version: 1

Package: forgotten
Status: purge ok not-installed
Architecture: all

Package: libfoo1
Status: install ok installed
Multi-Arch: same
Architecture: amd64
Version: 1.2-1
Conffiles:
 /etc/foo.conf 0123456789abcdef

Package: libfoo1
Status: install ok installed
Multi-Arch: same
Architecture: i386
Version: 1.2-1"""  # no final newline: the last stanza still counts


def test_parse_dpkg_status_keeps_installed_packages_only() -> None:
    assert parse_dpkg_status(STATUS) == [
        Package("hello", "amd64", "2.10-3"),
        Package("held", "all", "1:1.0"),
        Package("going", "all", "3"),  # marked for removal, still installed
        Package("libfoo1", "amd64", "1.2-1"),
        Package("libfoo1", "i386", "1.2-1"),
    ]


def test_parse_dpkg_status_of_an_empty_database() -> None:
    assert parse_dpkg_status("") == []


@pytest.mark.skipif(
    shutil.which("dpkg-query") is None or not Path("/var/lib/dpkg/status").is_file(),
    reason="needs a Debian host's dpkg database",
)
def test_parse_dpkg_status_agrees_with_dpkg_query_on_this_host() -> None:
    query = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Status} ${Package} ${Architecture} ${Version}\n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    expected = [
        Package(*line.split()[1:]) for line in query.splitlines() if line.startswith("installed ")
    ]
    text = Path("/var/lib/dpkg/status").read_text(encoding="utf-8")
    assert sorted(parse_dpkg_status(text), key=repr) == sorted(expected, key=repr)


def _big_status(count: int) -> str:
    stanza = (
        "Package: pkg{n}\nStatus: install ok installed\nPriority: optional\nSection: libs\n"
        "Installed-Size: 1234\nMaintainer: Someone <someone@example.invalid>\n"
        "Architecture: amd64\nMulti-Arch: same\nSource: src{n}\nVersion: 1.{n}-1\n"
        "Depends: libc6 (>= 2.34), libfoo1 (>= 1.0), libbar2\n"
        "Description: package number {n}\n"
        + " A long description, as real packages have.\n"
        * 12
        + "Homepage: https://example.invalid/\n"
        "Conffiles:\n /etc/pkg{n}/a.conf 0123456789abcdef0123456789abcdef\n"
    )
    return "\n".join(stanza.format(n=n) for n in range(count))


def test_parsing_2000_packages_is_fast() -> None:
    text = _big_status(2000)
    assert len(parse_dpkg_status(text)) == 2000
    best = min(_timed(parse_dpkg_status, text) for _ in range(5))
    assert best < 0.05, f"{best * 1000:.1f} ms for {len(text)} bytes"


def _timed(function: Any, *args: Any) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


# --- rpm query output ------------------------------------------------------------------------


def test_parse_rpm_query_drops_epoch_zero_and_keeps_others() -> None:
    out = (
        "bash x86_64 0:5.2.26-150600.1.1\n"
        "shadow x86_64 2:4.8.1-150600.15.1\n"
        "gpg-pubkey (none) 0:29b700a4-62b07e22\n"
        "garbage line\n"
    )
    assert parse_rpm_query(out) == [
        Package("bash", "x86_64", "5.2.26-150600.1.1"),
        Package("shadow", "x86_64", "2:4.8.1-150600.15.1"),
        Package("gpg-pubkey", "", "29b700a4-62b07e22"),
    ]


# --- the diff --------------------------------------------------------------------------------


def test_diff_packages_kinds_and_order() -> None:
    old = {"b-removed": "1.0", "c-same": "1.0", "d-up": "1.0", "e-down": "2.0", "f-spelled": "1.0"}
    new = {"a-added": "0.1", "c-same": "1.0", "d-up": "1.1", "e-down": "1.9", "f-spelled": "1.0-0"}
    assert diff_packages(old, new, debian_compare) == [
        PackageChange("a-added", ChangeKind.ADDED, None, "0.1"),
        PackageChange("b-removed", ChangeKind.REMOVED, "1.0", None),
        PackageChange("d-up", ChangeKind.UPGRADED, "1.0", "1.1"),
        PackageChange("e-down", ChangeKind.DOWNGRADED, "2.0", "1.9"),
    ]


def test_diff_packages_uses_the_given_ordering() -> None:
    # dpkg sorts letters before symbols; rpm skips symbols, so the longer string wins
    old, new = {"x": "1.0a-1"}, {"x": "1.0+-1"}
    assert diff_packages(old, new, debian_compare)[0].kind is ChangeKind.UPGRADED
    assert diff_packages(old, new, rpm_compare)[0].kind is ChangeKind.DOWNGRADED


def test_a_second_architecture_qualifies_both_snapshots() -> None:
    old = [Package("libfoo1", "amd64", "1.2-1"), Package("bash", "amd64", "5.2-1")]
    new = [*old, Package("libfoo1", "i386", "1.2-1")]
    assert compare_installed(old, new, Manager.APT) == [
        PackageChange("libfoo1:i386", ChangeKind.ADDED, None, "1.2-1")
    ]
    upgraded = [Package("libfoo1", "amd64", "1.3-1"), Package("libfoo1", "i386", "1.3-1")]
    assert compare_installed(new, upgraded + old[1:], Manager.APT) == [
        PackageChange("libfoo1:amd64", ChangeKind.UPGRADED, "1.2-1", "1.3-1"),
        PackageChange("libfoo1:i386", ChangeKind.UPGRADED, "1.2-1", "1.3-1"),
    ]


def test_rpm_multilib_and_multiversion_kernels() -> None:
    old = [
        Package("glibc", "x86_64", "2.38-1"),
        Package("kernel-default", "x86_64", "6.4.0-1"),
        Package("kernel-default", "x86_64", "6.4.0-2"),
    ]
    new = [
        Package("glibc", "x86_64", "2.38-2"),
        Package("glibc", "i686", "2.38-2"),
        Package("kernel-default", "x86_64", "6.4.0-2"),
        Package("kernel-default", "x86_64", "6.4.0-3"),
    ]
    assert compare_installed(old, new, Manager.ZYPPER) == [
        PackageChange("glibc.i686", ChangeKind.ADDED, None, "2.38-2"),
        PackageChange("glibc.x86_64", ChangeKind.UPGRADED, "2.38-1", "2.38-2"),
        PackageChange("kernel-default", ChangeKind.ADDED, None, "6.4.0-3"),
        PackageChange("kernel-default", ChangeKind.REMOVED, "6.4.0-1", None),
    ]


# --- reading a snapshot ----------------------------------------------------------------------


def _debian_snapshot(root: Path, status: str) -> Path:
    """A snapshot laid out as managed Debian roots are: /var/lib/dpkg a symlink into /usr."""
    (root / "usr/share/dpkg/database").mkdir(parents=True)
    (root / "usr/share/dpkg/database/status").write_text(status)
    (root / "var/lib").mkdir(parents=True)
    (root / "var/lib/dpkg").symlink_to("/usr/share/dpkg/database")  # absolute: read in the root
    return root


def test_package_changes_between_debian_snapshots(tmp_path: Path) -> None:
    old = _debian_snapshot(tmp_path / "1", STATUS)
    new_status = STATUS.replace("Version: 2.10-3", "Version: 2.10-4").replace(
        "Package: held", "Package: held2"
    )
    new = _debian_snapshot(tmp_path / "2", new_status)
    assert pkgdiff.packages_of(old, Manager.APT) == {
        "hello": "2.10-3",
        "held": "1:1.0",
        "going": "3",
        "libfoo1:amd64": "1.2-1",
        "libfoo1:i386": "1.2-1",
    }
    assert pkgdiff.package_changes(old, new, Manager.APT) == [
        PackageChange("held", ChangeKind.REMOVED, "1:1.0", None),
        PackageChange("held2", ChangeKind.ADDED, None, "1:1.0"),
        PackageChange("hello", ChangeKind.UPGRADED, "2.10-3", "2.10-4"),
    ]


def test_snapshot_database_without_the_var_link(tmp_path: Path) -> None:
    # In a snapshot, /var is empty: the /var/lib/dpkg link lives in the shared /var subvolume.
    (tmp_path / "usr/share/dpkg/database").mkdir(parents=True)
    (tmp_path / "usr/share/dpkg/database/status").write_text(STATUS)
    assert pkgdiff.database(tmp_path, Manager.APT) == tmp_path / "usr/share/dpkg/database"
    assert pkgdiff.packages_of(tmp_path, Manager.APT)["hello"] == "2.10-3"


def test_snapshot_whose_var_belongs_to_it(tmp_path: Path) -> None:
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    assert pkgdiff.database(tmp_path, Manager.APT) == tmp_path / "var/lib/dpkg"
    (tmp_path / "var/lib/rpm").mkdir(parents=True)
    assert pkgdiff.database(tmp_path, Manager.ZYPPER) == tmp_path / "var/lib/rpm"


def test_packages_of_a_snapshot_without_database(tmp_path: Path) -> None:
    with pytest.raises(NotManagedError, match="no apt package database in"):
        pkgdiff.packages_of(tmp_path, Manager.APT)
    (tmp_path / "usr/share/dpkg/database").mkdir(parents=True)
    with pytest.raises(NotManagedError, match="has no status file"):
        pkgdiff.packages_of(tmp_path, Manager.APT)


def test_rpm_is_queried_on_a_copy_of_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "usr/lib/sysimage/rpm"
    db.mkdir(parents=True)
    (db / "rpmdb.sqlite").write_bytes(b"db")
    seen: list[list[str]] = []

    def fake_run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        seen.append(list(argv))
        copy = Path(argv[argv.index("--dbpath") + 1])
        assert (copy / "rpmdb.sqlite").read_bytes() == b"db"
        return subprocess.CompletedProcess(argv, 0, "kernel-default x86_64 0:6.4.0-1\n", "")

    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(pkgdiff, "run", fake_run)
    assert pkgdiff.packages_of(tmp_path, Manager.ZYPPER) == {"kernel-default": "6.4.0-1"}
    (argv,) = seen
    assert argv[:2] == ["rpm", "--dbpath"] and argv[2] != str(db)
    assert argv[3:] == ["-qa", "--qf", pkgdiff.RPM_QUERY_FORMAT]
    assert not Path(argv[2]).exists()  # the copy is gone
    assert sorted(p.name for p in db.iterdir()) == ["rpmdb.sqlite"]  # nothing left in the snapshot


def test_rpm_missing_on_the_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "var/lib/rpm").mkdir(parents=True)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SystemError_, match="rpm is not installed on this host") as info:
        pkgdiff.packages_of(tmp_path, Manager.DNF)
    assert info.value.hint.startswith("install rpm")


def test_packages_of_keeps_the_newest_of_several_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        pkgdiff,
        "installed",
        lambda root, manager: [
            Package("kernel-default", "x86_64", "6.4.0-10"),
            Package("kernel-default", "x86_64", "6.4.0-9"),
        ],
    )
    assert pkgdiff.packages_of(tmp_path, Manager.ZYPPER) == {"kernel-default": "6.4.0-10"}


def test_an_unreadable_rpm_database_is_a_tool_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "usr/lib/sysimage/rpm").mkdir(parents=True)

    def no_space(*_: Any, **__: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(shutil, "copytree", no_space)
    with pytest.raises(SystemError_, match=r"cannot read the zypper package database of .*space"):
        pkgdiff.packages_of(tmp_path, Manager.ZYPPER)
