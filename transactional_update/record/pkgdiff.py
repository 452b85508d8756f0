"""Packages added, removed, upgraded and downgraded between two snapshots.

Each snapshot carries its own package database (see :mod:`.pkgdb`), so the
installed set of any snapshot can be read without booting it: dpkg's ``status`` file is parsed
here, an rpm database is queried with the host's ``rpm --dbpath``.  Versions are ordered as the
package manager orders them: :func:`debian_compare` follows Debian Policy 5.6.12 (what
``dpkg --compare-versions`` does), :func:`rpm_compare` follows rpm's ``rpmvercmp``.

A package is named by its name alone unless it is installed for several architectures at once
(``libc6:i386`` next to ``libc6:amd64``, ``glibc.i686`` next to ``glibc.x86_64``); a name installed
in several versions at once (rpm multiversion kernels) is compared version by version.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from transactional_update.config.settings import Manager
from transactional_update.errors import NotManagedError, SystemError_
from transactional_update.paths import resolve_under
from transactional_update.proc import run
from transactional_update.record.pkgdb import DATABASES, DPKG_DB

Compare = Callable[[str, str], int]


class ChangeKind(StrEnum):
    ADDED = "added"
    REMOVED = "removed"
    UPGRADED = "upgraded"
    DOWNGRADED = "downgraded"


@dataclass(frozen=True)
class PackageChange:
    name: str
    kind: ChangeKind
    old: str | None  # version before; None when added
    new: str | None  # version after; None when removed


@dataclass(frozen=True)
class Package:
    """One installed package instance as its database records it."""

    name: str
    arch: str
    version: str


def diff_packages(
    old: Mapping[str, str], new: Mapping[str, str], compare: Compare
) -> list[PackageChange]:
    """What changed from *old* to *new* (``{name: version}``), sorted by name.

    Versions that compare equal are no change, even when written differently (``1.0`` and
    ``1.0-0`` for dpkg); a reinstall of the same version is none either.
    """
    out = []
    for name in sorted(old.keys() | new.keys()):
        before, after = old.get(name), new.get(name)
        if before is None:
            out.append(PackageChange(name, ChangeKind.ADDED, None, after))
        elif after is None:
            out.append(PackageChange(name, ChangeKind.REMOVED, before, None))
        elif before != after:
            order = compare(before, after)
            if order:
                kind = ChangeKind.UPGRADED if order < 0 else ChangeKind.DOWNGRADED
                out.append(PackageChange(name, kind, before, after))
    return out


# --- Debian -----------------------------------------------------------------------------------


def _deb_order(ch: str) -> int:
    """The sort weight of a non-digit character: ``~`` first, then the end, letters, the rest."""
    if ch == "~":
        return -1
    if ch.isascii() and ch.isalpha():
        return ord(ch)
    return ord(ch) + 256


_DIGITS = frozenset("0123456789")


def _deb_part_compare(a: str, b: str) -> int:
    """dpkg's ``verrevcmp``: alternating non-digit and digit runs, compared in turn."""
    i = j = 0
    la, lb = len(a), len(b)
    while i < la or j < lb:
        # Non-digit run, character by character; the end of a run weighs 0 (after ~ only).
        while (i < la and a[i] not in _DIGITS) or (j < lb and b[j] not in _DIGITS):
            ac = _deb_order(a[i]) if i < la and a[i] not in _DIGITS else 0
            bc = _deb_order(b[j]) if j < lb and b[j] not in _DIGITS else 0
            if ac != bc:
                return -1 if ac < bc else 1
            i += 1
            j += 1
        # Digit run, numerically: skip leading zeros, then the longer run is larger.
        while i < la and a[i] == "0":
            i += 1
        while j < lb and b[j] == "0":
            j += 1
        si, sj = i, j
        while i < la and a[i] in _DIGITS:
            i += 1
        while j < lb and b[j] in _DIGITS:
            j += 1
        if i - si != j - sj:
            return -1 if i - si < j - sj else 1
        if a[si:i] != b[sj:j]:
            return -1 if a[si:i] < b[sj:j] else 1
    return 0


def _deb_split(version: str) -> tuple[int, str, str]:
    version = version.strip()
    epoch = 0
    head, colon, rest = version.partition(":")
    if colon and head.isascii() and head.isdigit():
        epoch, version = int(head), rest
    upstream, hyphen, revision = version.rpartition("-")
    if not hyphen:
        upstream, revision = version, ""
    return epoch, upstream, revision


def _compare_evr(
    a: str,
    b: str,
    split: Callable[[str], tuple[int, str, str]],
    part_compare: Compare,
) -> int:
    """Epoch, then version, then revision/release: how dpkg and rpm both order versions."""
    if a == b:
        return 0
    ea, va, ra = split(a)
    eb, vb, rb = split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return part_compare(va, vb) or part_compare(ra, rb)


def debian_compare(a: str, b: str) -> int:
    """-1, 0 or 1 as Debian version *a* sorts before, with or after *b* (Policy 5.6.12)."""
    return _compare_evr(a, b, _deb_split, _deb_part_compare)


# One pass over the whole file: a field used (dpkg writes them spelled so at the start of a line),
# or an empty line, which ends a stanza.  Description and Conffiles lines are skipped unparsed.
_STATUS_TOKEN = re.compile(r"\n(?:(Package|Status|Version|Architecture):[ \t]*([^\n]*)|(?=\n))")


def _installed_stanza(fields: dict[str, str]) -> Package | None:
    status = fields.get("Status", "").split()
    name, version = fields.get("Package"), fields.get("Version")
    if len(status) == 3 and status[1:] == ["ok", "installed"] and name and version:
        return Package(name, fields.get("Architecture", ""), version)
    return None


def parse_dpkg_status(text: str) -> list[Package]:
    """The installed packages in the text of a dpkg ``status`` file.

    A package counts when its state is ``installed`` with no error flag, whatever the selection:
    ``install``, ``hold``, and also ``deinstall``/``purge`` marks not acted upon yet.  Packages
    only unpacked, half-configured or merely known (``not-installed``, ``config-files``) do not.
    """
    out = []
    fields: dict[str, str] = {}
    for key, value in _STATUS_TOKEN.findall("\n" + text + "\n\n"):
        if key:
            fields[key] = value.strip()
        elif fields:
            package = _installed_stanza(fields)
            if package is not None:
                out.append(package)
            fields = {}
    return out


# --- rpm -------------------------------------------------------------------------------------


def rpmvercmp(a: str, b: str) -> int:
    """-1, 0 or 1 as rpm's ``rpmvercmp`` orders version (or release) strings *a* and *b*.

    Both are cut into runs of digits and runs of letters; anything else only separates runs.
    """
    if a == b:
        return 0
    i = j = 0
    la, lb = len(a), len(b)

    def separator(ch: str) -> bool:
        return not (ch.isascii() and ch.isalnum()) and ch not in "~^"

    while i < la or j < lb:
        while i < la and separator(a[i]):
            i += 1
        while j < lb and separator(b[j]):
            j += 1
        # ~ sorts before anything, even the end: 1.0~rc1 < 1.0
        a_tilde, b_tilde = i < la and a[i] == "~", j < lb and b[j] == "~"
        if a_tilde or b_tilde:
            if not a_tilde:
                return 1
            if not b_tilde:
                return -1
            i += 1
            j += 1
            continue
        # ^ sorts after the end but before anything else: 1.0 < 1.0^git1 < 1.0.1
        a_caret, b_caret = i < la and a[i] == "^", j < lb and b[j] == "^"
        if a_caret or b_caret:
            if i >= la:
                return -1
            if j >= lb:
                return 1
            if not a_caret:
                return 1
            if not b_caret:
                return -1
            i += 1
            j += 1
            continue
        if i >= la or j >= lb:
            break
        numeric = a[i].isdigit()
        si, sj = i, j
        if numeric:
            while i < la and a[i].isascii() and a[i].isdigit():
                i += 1
            while j < lb and b[j].isascii() and b[j].isdigit():
                j += 1
        else:
            while i < la and a[i].isascii() and a[i].isalpha():
                i += 1
            while j < lb and b[j].isascii() and b[j].isalpha():
                j += 1
        if sj == j:
            # Segments of different types: a number is newer than letters.
            return 1 if numeric else -1
        sa, sb = a[si:i], b[sj:j]
        if numeric:
            sa, sb = sa.lstrip("0"), sb.lstrip("0")
            if len(sa) != len(sb):
                return -1 if len(sa) < len(sb) else 1
        if sa != sb:
            return -1 if sa < sb else 1
    if i >= la and j >= lb:
        return 0
    return -1 if i >= la else 1


def _rpm_split(evr: str) -> tuple[int, str, str]:
    epoch = 0
    head, colon, rest = evr.partition(":")
    if colon and head.isascii() and head.isdigit():
        epoch, evr = int(head), rest
    version, _, release = evr.rpartition("-")
    if not version:  # no release
        return epoch, evr, ""
    return epoch, version, release


def rpm_compare(a: str, b: str) -> int:
    """-1, 0 or 1 comparing rpm ``[EPOCH:]VERSION-RELEASE`` strings (no epoch means 0)."""
    return _compare_evr(a, b, _rpm_split, rpmvercmp)


# EPOCHNUM is 0 where the package has none; rpm's own display leaves such an epoch out.
RPM_QUERY_FORMAT = r"%{NAME} %{ARCH} %{EPOCHNUM}:%{VERSION}-%{RELEASE}\n"


def parse_rpm_query(text: str) -> list[Package]:
    """Packages from ``rpm -qa --qf RPM_QUERY_FORMAT`` output."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        name, arch, evr = parts
        if evr.startswith("0:"):
            evr = evr[2:]
        out.append(Package(name, "" if arch == "(none)" else arch, evr))
    return out


# --- both --------------------------------------------------------------------------------------

_COMPARE: dict[Manager, Compare] = {
    Manager.APT: debian_compare,
    Manager.ZYPPER: rpm_compare,
    Manager.DNF: rpm_compare,
}
# How a name is qualified by its architecture: dpkg's libc6:i386, rpm's glibc.i686.
_ARCH_SEPARATOR = {Manager.APT: ":", Manager.ZYPPER: ".", Manager.DNF: "."}


def _keyed(
    packages: Iterable[Package], multiarch: set[str], separator: str
) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for p in packages:
        key = f"{p.name}{separator}{p.arch}" if p.name in multiarch else p.name
        out[key].append(p.version)
    return out


def _multiarch(*snapshots: Iterable[Package]) -> set[str]:
    """Names installed for more than one architecture in any of *snapshots*."""
    out: set[str] = set()
    for packages in snapshots:
        archs: dict[str, set[str]] = defaultdict(set)
        for p in packages:
            archs[p.name].add(p.arch)
        out.update(name for name, seen in archs.items() if len(seen) > 1)
    return out


def compare_installed(
    old: list[Package], new: list[Package], manager: Manager
) -> list[PackageChange]:
    """What changed between two installed sets (pure), sorted by name then version."""
    compare = _COMPARE[manager]
    multiarch = _multiarch(old, new)
    before = _keyed(old, multiarch, _ARCH_SEPARATOR[manager])
    after = _keyed(new, multiarch, _ARCH_SEPARATOR[manager])
    single_old: dict[str, str] = {}
    single_new: dict[str, str] = {}
    out = []
    for key in before.keys() | after.keys():
        was, now = before.get(key, []), after.get(key, [])
        if len(was) <= 1 and len(now) <= 1:
            if was:
                single_old[key] = was[0]
            if now:
                single_new[key] = now[0]
            continue
        # Several versions side by side: each one comes or goes on its own.
        out += [PackageChange(key, ChangeKind.REMOVED, v, None) for v in was if v not in now]
        out += [PackageChange(key, ChangeKind.ADDED, None, v) for v in now if v not in was]
    out += diff_packages(single_old, single_new, compare)
    out.sort(key=lambda c: (c.name, c.old or "", c.new or ""))
    return out


# Where a snapshot keeps its database, in the order looked for.  The /var/lib links of
# packages.DATABASES live in the shared /var subvolume, not in the snapshot: the snapshot's own
# copy is reached at the link's target (image.DPKG_DB for dpkg, /usr/lib/sysimage/rpm for rpm).
# /var/lib/* still counts for roots whose /var belongs to the snapshot.
SNAPSHOT_DATABASES = {
    Manager.APT: (f"/{DPKG_DB}", *DATABASES[Manager.APT]),
    Manager.ZYPPER: DATABASES[Manager.ZYPPER],
    Manager.DNF: DATABASES[Manager.DNF],
}


def database(snapshot_dir: Path, manager: Manager) -> Path:
    """The package database directory of the snapshot at *snapshot_dir*."""
    for candidate in SNAPSHOT_DATABASES[manager]:
        real = resolve_under(snapshot_dir, candidate)
        if real.is_dir():
            return real
    raise NotManagedError(
        f"no {manager} package database in {snapshot_dir} "
        f"(looked for {', '.join(SNAPSHOT_DATABASES[manager])})",
        "the snapshot's package list cannot be read without its database",
    )


def installed(snapshot_dir: Path, manager: Manager) -> list[Package]:
    """The packages installed in the snapshot at *snapshot_dir*, as its database records them."""
    db = database(snapshot_dir, manager)
    try:
        if manager is Manager.APT:
            return _dpkg_installed(db)
        return _rpm_installed(db, snapshot_dir)
    except OSError as exc:
        raise SystemError_(
            f"cannot read the {manager} package database of {snapshot_dir}: {exc}",
            "check the snapshot and the space in $TMPDIR",
        ) from exc


def _dpkg_installed(db: Path) -> list[Package]:
    status = db / "status"
    if not status.is_file():
        raise NotManagedError(
            f"the dpkg database {db} has no status file",
            "the snapshot's package list cannot be read without it",
        )
    return parse_dpkg_status(status.read_text(encoding="utf-8", errors="replace"))


def _rpm_installed(db: Path, snapshot_dir: Path) -> list[Package]:
    if shutil.which("rpm") is None:
        raise SystemError_(
            f"cannot read the rpm database of {snapshot_dir}: rpm is not installed on this host",
            "install rpm (it reads the snapshot's database with rpm --dbpath)",
        )
    # rpm is given a private copy: its sqlite database, closed cleanly, is in WAL mode without
    # -shm/-wal files and cannot be opened on a read-only snapshot, and on a writable one rpm
    # would leave lock and journal files behind in the snapshot.
    with tempfile.TemporaryDirectory(prefix="tu-rpmdb-") as tmp:
        copy = Path(tmp) / "rpm"
        shutil.copytree(db, copy, symlinks=True)
        query = run(
            ["rpm", "--dbpath", str(copy), "-qa", "--qf", RPM_QUERY_FORMAT],
            what=f"rpm -qa in {snapshot_dir}",
        )
    return parse_rpm_query(query.stdout)


def packages_of(snapshot_dir: Path, manager: Manager) -> dict[str, str]:
    """``{name: version}`` of the snapshot's packages (for a name installed in several versions,
    the newest; names installed for several architectures carry the architecture)."""
    packages = installed(snapshot_dir, manager)
    compare = _COMPARE[manager]
    out: dict[str, str] = {}
    for key, versions in _keyed(packages, _multiarch(packages), _ARCH_SEPARATOR[manager]).items():
        newest = versions[0]
        for v in versions[1:]:
            if compare(v, newest) > 0:
                newest = v
        out[key] = newest
    return out


def package_changes(old_dir: Path, new_dir: Path, manager: Manager) -> list[PackageChange]:
    """The packages added, removed, upgraded and downgraded from snapshot *old_dir* to *new_dir*."""
    return compare_installed(installed(old_dir, manager), installed(new_dir, manager), manager)
