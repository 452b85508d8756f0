#!/usr/bin/env python3
"""What the changelog costs: file diffs against root size, and a transaction around apt-get.

Run as root from the repository root::

    .venv/bin/python bench/changelog_bench.py [--repeat 10] [--warmup 1] [--json]
        [--baseline-ref REF] [--sizes 10000,100000]

Two sections, each measured round-robin on a real managed system (a sparse btrfs image on a loop
device built by :func:`testkit.systems.managed_system`):

* **file diff against root size.**  Read-only snapshots holding about 10,000 and 100,000 entries,
  each with a child snapshot that changes exactly one file.  ``filediff.file_changes(parent,
  child)`` (a metadata-only ``btrfs send``) is timed *in-process* against the tree walk a
  walk-based differ needs (``os.walk`` plus ``lstat`` of every entry of both trees, and the
  comparison).  Target: at the largest size, the walk takes >= 50x the diff.
* **package install.**  Whole processes: ``transactional-update --root R pkg install DEB`` against
  ``chroot SNAPSHOT apt-get -y install DEB`` in a writable snapshot with bind mounts.  Target:
  <= 1.2x.  The changelog entry of every transaction gives the time of each apt-get command, so
  the overhead is also broken down.

It is a report, not a test: targets print PASS or MISS, and the exit code is 0 whenever the
measurements could be taken (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import btrfsutil  # noqa: E402

from bench.harness import (  # noqa: E402
    PY_ENV,
    BenchError,
    Row,
    base_env,
    bytecode_env,
    installed_cli,
    machine,
    measure,
    p90,
    progress,
    remove_workdir,
    round_ms,
    run,
    run_as_root,
)
from testkit.systems import System, make_deb, managed_system  # noqa: E402
from transactional_update.core.chroot import command_env  # noqa: E402
from transactional_update.provision import image  # noqa: E402
from transactional_update.record import filediff  # noqa: E402
from transactional_update.snapshots import btrfs  # noqa: E402

VERSIONS = {"btrfs": ["btrfs", "--version"], "apt": ["apt-get", "--version"]}
BASE = 1  # the booted, read-only, default snapshot of the managed system
PACKAGE = "tu-bench"
DEB_DIR = "/var/cache/tu-test"  # inside the system: /var/cache is shared with every chroot
REPO_DIR = "/var/cache/tu-bench-repo"
BENCH_TREE = "usr/share/bench"  # where the generated files go, inside a snapshot
FILES_PER_DIR = 500
CHANGED_FILE = f"{BENCH_TREE}/d00000/f000000"  # the one file each child snapshot changes
CHROOT_BINDS = ("proc", "dev", "sys", "var")  # what a plain chroot install needs (see README)


# --------------------------------------------------------------------------------------------
# Running and timing


# --------------------------------------------------------------------------------------------
# Snapshots of many files


def count_entries(top: Path) -> int:
    """Directory entries below *top* (files, directories, links; *top* itself not counted)."""
    n = 0
    for _dirpath, dirnames, filenames in os.walk(top):
        n += len(dirnames) + len(filenames)
    return n


def add_entries(snapshot: Path, count: int) -> None:
    """Add *count* entries under BENCH_TREE: directories of FILES_PER_DIR small files each."""
    tree = snapshot / BENCH_TREE
    if not tree.exists():
        tree.mkdir()  # its parent, /usr/share, exists in any Debian root
        count -= 1
    existing = sorted(p for p in tree.iterdir() if p.name.startswith("d"))
    d = len(existing)
    current: Path | None = None
    in_dir = FILES_PER_DIR
    payload = b"benchmark file, small enough to be stored inline in btrfs metadata\n"
    added = 0
    while added < count:
        if current is None or in_dir >= FILES_PER_DIR:
            current = tree / f"d{d:05d}"
            current.mkdir()
            d += 1
            in_dir = 0
        else:
            name = f"f{(d - 1) * FILES_PER_DIR + in_dir:06d}"
            fd = os.open(current / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, payload)
            finally:
                os.close(fd)
            in_dir += 1
        added += 1


def walk_tree(top: Path) -> dict[str, tuple[int, int, int, int]]:
    """What a walk-based differ reads of one tree: ``lstat`` of every entry, by relative path."""
    prefix = len(str(top))
    out: dict[str, tuple[int, int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[path[prefix:]] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return out


def walk_frozen(child: Path) -> dict[str, tuple[int, int, int, int]]:
    """:func:`walk_tree` of *child* while it is read-only, as ``file_changes`` reads it.

    Reading a directory of a writable snapshot updates its access time (relatime, the first
    time): the walk would leave the child differing from its parent in every directory's time
    stamps, and every later ``btrfs send`` would carry them.  Read-only, the walk writes nothing.
    """
    with btrfs.read_only(child):
        return walk_tree(child)


def walk_diff(parent: Path, child: Path) -> list[str]:
    """A walk-based differ at its cheapest: both trees' metadata, compared (no content read)."""
    before, after = walk_tree(parent), walk_frozen(child)
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


@dataclass
class DiffPair:
    entries: int  # in the parent snapshot
    parent: Path  # read-only
    child: Path  # writable; exactly one file differs


def make_pairs(system: System, top: Path, sizes: Sequence[int]) -> list[DiffPair]:
    """Read-only snapshots of *sizes* entries (each built on the previous), each with a child."""
    pairs = []
    source = top / f"@/.snapshots/{BASE}/snapshot"
    have = count_entries(system.snapshot(BASE))
    progress(f"  snapshot {BASE} holds {have} entries")
    for size in sizes:
        parent = top / f"bench-{size}"
        btrfsutil.create_snapshot(source, parent)
        if size > have:
            begun = time.perf_counter()
            add_entries(parent, size - have)
            progress(f"  added {size - have} entries in {time.perf_counter() - begun:.1f} s")
        if not (parent / CHANGED_FILE).exists():
            raise RuntimeError(f"no {CHANGED_FILE} in {parent}: make the sizes larger")
        btrfs.set_read_only(parent, True)
        entries = count_entries(parent)
        child = top / f"bench-{size}-child"
        btrfsutil.create_snapshot(parent, child)
        (child / CHANGED_FILE).write_bytes(b"changed by the benchmark\n")
        btrfs.sync(top)
        pairs.append(DiffPair(entries, parent, child))
        progress(f"  {parent.name}: {entries} entries, read-only; {child.name} changes one file")
        source, have = parent, entries
    return pairs


def check_pair(pair: DiffPair) -> None:
    """Untimed: both differs see exactly the one changed file."""
    want = "/" + CHANGED_FILE
    found = [(c.path, str(c.kind)) for c in filediff.file_changes(pair.parent, pair.child)]
    if found != [(want, "modified")]:
        raise RuntimeError(f"file_changes of {pair.child.name} found {found}, wanted {want}")
    walked = walk_diff(pair.parent, pair.child)
    if walked != [want]:
        raise RuntimeError(f"the walk of {pair.child.name} found {walked[:5]}, wanted {want}")


def diff_rows(pairs: Sequence[DiffPair]) -> list[Row]:
    s = "file diff vs tree walk, one file changed (in-process)"
    rows = []
    for pair in pairs:
        k = f"{pair.entries // 1000}k"
        p, c = pair.parent, pair.child
        rows += [
            Row(
                f"filediff_{k}",
                f"filediff.file_changes, {pair.entries} entries",
                s,
                partial(filediff.file_changes, p, c),
            ),
            Row(
                f"walk_both_{k}",
                f"os.walk + lstat, both trees + compare, {pair.entries}",
                s,
                partial(walk_diff, p, c),
            ),
            Row(
                f"walk_one_{k}",
                f"os.walk + lstat, one tree, {pair.entries}",
                s,
                partial(walk_frozen, c),
            ),
        ]
    return rows


# --------------------------------------------------------------------------------------------
# Package installs


def stage_package(system: System, workdir: Path) -> str:
    """The .deb where every chroot sees it, and an offline apt source as the system's only one.

    ``pkg install`` runs ``apt-get update`` first; the Debian mirrors in the root's sources.list
    would make that a network benchmark, so the sources become a local file repository (the
    .deb's own) in the shared /var/cache, as tests/privileged/test_packages.py does.
    """
    deb = make_deb(workdir / "deb", PACKAGE, "1.0")
    inside = Path(DEB_DIR) / deb.name
    for where in (DEB_DIR, REPO_DIR):
        (system.root / where.lstrip("/")).mkdir(parents=True, exist_ok=True)
        shutil.copy(deb, system.root / where.lstrip("/"))
    repo = system.root / REPO_DIR.lstrip("/")
    index = run_in(repo, ["dpkg-scanpackages", "--multiversion", "."])
    (repo / "Packages").write_bytes(index)
    snap = system.snapshot(BASE)
    btrfs.set_read_only(snap, False)
    try:
        (snap / "etc/apt/sources.list").write_text(f"deb [trusted=yes] file:{REPO_DIR} ./\n")
        for extra in (snap / "etc/apt/sources.list.d").glob("*"):
            extra.unlink()
    finally:
        btrfs.set_read_only(snap, True)
    return str(inside)


def run_in(cwd: Path, argv: Sequence[str]) -> bytes:
    proc = subprocess.run(
        list(argv), cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, check=False
    )
    if proc.returncode != 0:
        raise BenchError(f"{shlex.join(argv)} exited {proc.returncode}")
    return proc.stdout


@contextmanager
def bind_mounts(system: System, target: Path) -> Iterator[None]:
    """/proc, /dev, /sys of the host and the system's shared /var, bound into *target*."""
    done: list[Path] = []
    try:
        for name in CHROOT_BINDS:
            source = system.root / "var" if name == "var" else Path("/") / name
            run(["mount", "--bind", source, target / name])
            done.append(target / name)
        yield
    finally:
        for where in reversed(done):
            subprocess.run(["umount", str(where)], capture_output=True, check=False)
            if os.path.ismount(where):
                subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


class Installs:
    """The package-install rows and their resets."""

    def __init__(
        self,
        system: System,
        tu: Path,
        deb: str,
        chroot_dirs: Sequence[Path],
        base_tu: Path | None = None,
        base_ref: str = "",
    ) -> None:
        self.system = system
        self.root = system.root
        self.tu = tu
        self.base_tu = base_tu  # the same tool built from --baseline-ref, if given
        self.base_ref = base_ref
        self.deb = deb
        self.chroot, self.chroot_cold = chroot_dirs
        self.env = {**base_env(), "TU_SNAPPER_BACKEND": "cli"}
        # The environment our tool gives commands in the snapshot, for the plain chroot too.
        self.chroot_env = command_env(base_env())

    # -- our tool

    def numbers(self) -> list[int]:
        snaps = self.root / ".snapshots"
        return sorted(int(p.name) for p in snaps.iterdir() if p.name.isdigit())

    def tu_install(self, tu: Path | None = None) -> Callable[[], int]:
        cli = tu or self.tu

        def action() -> int:
            before = self.numbers()
            out = run([cli, "--root", self.root, "pkg", "install", self.deb], self.env).decode()
            new = [n for n in self.numbers() if n not in before]
            if len(new) != 1:
                raise BenchError(f"pkg install made snapshots {new}: {out.strip()!r}")
            return new[0]

        return action

    def tu_after(self, row: Row, tu: Path | None = None) -> Callable[[object], None]:
        def after(number: object) -> None:
            try:
                if isinstance(number, int):
                    self.record_commands(row, number, tu or self.tu)
            finally:
                self.reset_transactions()

        return after

    def record_commands(self, row: Row, number: int, tu: Path) -> None:
        """Per-command times from the changelog entry (untimed), and the rest: the machinery."""
        out = run([tu, "--root", self.root, "--json", "changelog", str(number)], self.env)
        entry = json.loads(out)
        names = {"update": "apt-get update", "-s": "apt-get -s install", "-y": "apt-get -y install"}
        total = 0.0
        for command in entry["commands"]:
            argv = command["argv"]
            key = names.get(argv[1], shlex.join(argv)) if len(argv) > 1 else shlex.join(argv)
            ms = float(command["seconds"]) * 1000.0
            row.extra.setdefault(key, []).append(ms)
            total += ms
        if [p["name"] for p in entry["packages"]] != [PACKAGE]:
            raise RuntimeError(f"changelog {number} shows packages {entry['packages']}")
        row.extra.setdefault("apt-get, all of them", []).append(total)
        row.extra.setdefault("files in the changelog", []).append(float(len(entry["files"])))

    def reset_transactions(self) -> None:
        """Snapshot BASE is the default and the only snapshot again; wait for btrfs' cleaner."""
        btrfs.set_default(self.system.snapshot(BASE))
        ids = set()
        for n in self.numbers():
            if n == BASE:
                continue
            subvol = self.system.snapshot(n)
            if btrfs.is_subvolume(subvol):
                ids.add(btrfs.delete_subvolume(subvol))
            shutil.rmtree(self.root / ".snapshots" / str(n))
            (self.root / f"var/lib/transactional-update/changelog/{n}.json").unlink(missing_ok=True)
        if ids and not btrfs.wait_cleaned(self.root, ids, timeout=60):
            raise RuntimeError(f"btrfs did not clean deleted snapshots {sorted(ids)} in 60 s")
        btrfs.sync(self.root)  # the next row does not pay for this one's btrfs commit

    # -- plain chroot

    def apt(self, snapshot: Path, *args: str) -> None:
        run(["chroot", snapshot, "apt-get", *args], self.chroot_env)

    def chroot_install(self) -> None:
        self.apt(self.chroot, "-y", "install", self.deb)

    def chroot_sequence(self) -> None:
        """What ``pkg install`` runs in the snapshot, run directly: the dry run, the install.

        The metadata refresh (``apt-get update``) is not in it: within ``REFRESH_DELAY`` of the
        previous refresh, with the same sources, ``pkg install`` does not run one either.
        """
        self.apt(self.chroot, "-s", "install", self.deb)
        self.apt(self.chroot, "-y", "install", self.deb)

    def chroot_with_binds(self) -> None:
        with bind_mounts(self.system, self.chroot_cold):
            self.apt(self.chroot_cold, "-y", "install", self.deb)

    def purge(self, snapshot: Path, binds: bool) -> Callable[[object], None]:
        def after(_result: object) -> None:
            with ExitStack() as stack:
                if binds:
                    stack.enter_context(bind_mounts(self.system, snapshot))
                run(["chroot", snapshot, "dpkg", "--purge", PACKAGE], self.chroot_env)
            btrfs.sync(self.system.root)  # the next row does not pay for this one's commit

        return after


def install_rows(b: Installs) -> list[Row]:
    s = "package install (whole processes)"
    tu = Row(
        "tu_pkg_install",
        "transactional-update pkg install DEB  [cli]",
        s,
        b.tu_install(),
    )
    tu.after = b.tu_after(tu)
    baseline = []
    if b.base_tu is not None:
        base = Row(
            "tu_pkg_install_base",
            f"  baseline {b.base_ref}: pkg install DEB  [cli]",
            s,
            b.tu_install(b.base_tu),
        )
        base.after = b.tu_after(base, b.base_tu)
        baseline.append(base)
    return [
        Row(
            "chroot_install",
            "chroot SNAP apt-get -y install DEB (binds kept)",
            s,
            b.chroot_install,
            b.purge(b.chroot, binds=False),
        ),
        Row(
            "chroot_install_binds",
            "chroot, with mount/umount of the 4 binds timed",
            s,
            b.chroot_with_binds,
            b.purge(b.chroot_cold, binds=True),
        ),
        Row(
            "chroot_sequence",
            "chroot SNAP apt-get -s install; -y install",
            s,
            b.chroot_sequence,
            b.purge(b.chroot, binds=False),
        ),
        tu,
        *baseline,
    ]


# --------------------------------------------------------------------------------------------
# The benchmark


def diff_section(
    system: System, top: Path, args: argparse.Namespace, info: dict[str, Any]
) -> list[Row]:
    progress(f"snapshots of {', '.join(map(str, args.sizes))} entries on {system.device}")
    pairs = make_pairs(system, top, args.sizes)
    info["entries"] = [p.entries for p in pairs]
    for pair in pairs:
        check_pair(pair)
    diff = diff_rows(pairs)
    progress(f"file diffs ({args.warmup} warm-up + {args.repeat} runs each)")
    measure(diff, args.repeat, args.warmup)
    for pair in pairs:  # not needed any more: keep the install rows' disk quiet
        for sub in (pair.child, pair.parent):
            btrfs.delete_subvolume(sub)
    btrfs.sync(top)
    return diff


def run_benchmark(args: argparse.Namespace) -> tuple[dict[str, Row], dict[str, Any]]:
    rows: list[Row] = []
    info: dict[str, Any] = {}
    workdir = Path(tempfile.mkdtemp(prefix="tu-changelog-bench-", dir=args.tmpdir))
    try:
        PY_ENV.clear()
        PY_ENV.update(bytecode_env(workdir, not args.no_bytecode_cache))
        tu = Path(args.tu) if args.tu else installed_cli(workdir)
        base_tu = installed_cli(workdir, args.baseline_ref) if args.baseline_ref else None
        progress(f"building a managed system in {workdir}")
        with (
            managed_system(workdir, size=args.image_size) as system,
            image.mounted_top(system.device, workdir / "top") as top,
        ):
            if not args.skip_diff:
                rows += diff_section(system, top, args, info)

            progress("package installs: staging the .deb and a local apt source")
            deb = stage_package(system, workdir)
            chroots = [top / "bench-chroot", top / "bench-chroot-binds"]
            for path in chroots:  # writable snapshots of BASE, after its sources changed
                btrfsutil.create_snapshot(top / f"@/.snapshots/{BASE}/snapshot", path)
            b = Installs(system, tu, deb, chroots, base_tu, args.baseline_ref or "")
            with bind_mounts(system, b.chroot):
                progress(f"package installs ({args.warmup} warm-up + {args.repeat} runs each)")
                installs = install_rows(b)
                measure(installs, args.repeat, args.warmup)
                rows += installs
            if b.numbers() != [BASE]:
                raise RuntimeError(f"snapshots left after the installs: {b.numbers()}")
    finally:
        remove_workdir(workdir)
    return {r.key: r for r in rows}, info


# --------------------------------------------------------------------------------------------
# Reporting


@dataclass(frozen=True)
class Verdict:
    text: str
    ours: float | None
    baseline: float | None
    ratio: float | None
    limit: float
    higher_is_better: bool

    @property
    def passed(self) -> bool | None:
        if self.ratio is None:
            return None
        return self.ratio >= self.limit if self.higher_is_better else self.ratio <= self.limit

    def as_json(self) -> dict[str, Any]:
        return {
            "target": self.text,
            "ours_ms": round_ms(self.ours),
            "baseline_ms": round_ms(self.baseline),
            "ratio": None if self.ratio is None else round(self.ratio, 3),
            "limit": self.limit,
            "higher_is_better": self.higher_is_better,
            "pass": self.passed,
        }


def median_of(rows: Mapping[str, Row], key: str) -> float | None:
    row = rows.get(key)
    return row.median if row is not None and row.error is None else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def verdicts(rows: Mapping[str, Row], info: Mapping[str, Any]) -> list[Verdict]:
    out = []
    entries = info.get("entries") or []
    if entries:
        k = f"{entries[-1] // 1000}k"
        walk, diff = median_of(rows, f"walk_both_{k}"), median_of(rows, f"filediff_{k}")
        out.append(
            Verdict(
                f"walk/diff at {entries[-1]} entries >= 50x",
                diff,
                walk,
                ratio(walk, diff),
                50.0,
                higher_is_better=True,
            )
        )
    tu, plain = median_of(rows, "tu_pkg_install"), median_of(rows, "chroot_install")
    out.append(
        Verdict(
            "pkg install <= 1.2x plain chroot apt-get install",
            tu,
            plain,
            ratio(tu, plain),
            1.2,
            higher_is_better=False,
        )
    )
    return out


def context_lines(rows: Mapping[str, Row], info: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(text, value) lines without a target."""
    out: list[tuple[str, str]] = []
    entries = info.get("entries") or []
    if len(entries) >= 2:
        lo, hi = f"{entries[0] // 1000}k", f"{entries[-1] // 1000}k"
        growth = entries[-1] / entries[0]
        for name, key in (
            ("filediff", "filediff"),
            ("walk, both trees", "walk_both"),
            ("walk, one tree", "walk_one"),
        ):
            r = ratio(median_of(rows, f"{key}_{hi}"), median_of(rows, f"{key}_{lo}"))
            out.append((f"{name}: {hi} / {lo} ({growth:.1f}x the entries)", fmt_x(r)))
        for k in (lo, hi):
            r = ratio(median_of(rows, f"walk_one_{k}"), median_of(rows, f"filediff_{k}"))
            out.append((f"walk of one tree / filediff at {k}", fmt_x(r)))
    tu_row = rows.get("tu_pkg_install")
    tu = median_of(rows, "tu_pkg_install")
    plain = median_of(rows, "chroot_install")
    out.append(
        (
            "pkg install / plain chroot doing -s install + -y install",
            fmt_x(ratio(tu, median_of(rows, "chroot_sequence"))),
        )
    )
    out.append(
        (
            # The dry run the package commands must do first (so that nothing to do leaves no
            # snapshot), run plainly: the floor of the 1.2x target before any transaction cost.
            "floor: plain -s install + -y install / plain -y install",
            fmt_x(ratio(median_of(rows, "chroot_sequence"), plain)),
        )
    )
    out.append(
        (
            "pkg install / plain chroot install with the binds timed",
            fmt_x(ratio(tu, median_of(rows, "chroot_install_binds"))),
        )
    )
    base_row = rows.get("tu_pkg_install_base")
    if base_row is not None and base_row.samples:
        base = median_of(rows, "tu_pkg_install_base")
        out.append(("pkg install: new / baseline (medians)", fmt_x(ratio(tu, base))))
        if tu_row is not None and tu_row.samples:
            out.append(
                (
                    "pkg install: new / baseline (p90s)",
                    fmt_x(ratio(p90(tu_row.samples), p90(base_row.samples))),
                )
            )
        out.append(
            (
                "pkg install: new - baseline (medians)",
                fmt_ms(None if tu is None or base is None else tu - base),
            )
        )
        out.append(
            ("baseline pkg install / plain chroot apt-get install", fmt_x(ratio(base, plain)))
        )
        out += minus_apt(base_row, "baseline pkg install minus its apt-get commands (median)")
    if tu_row is not None and tu_row.samples:
        inner = tu_row.extra_median("apt-get -y install")
        out.append(
            ("pkg install's own apt-get -y install / plain chroot", fmt_x(ratio(inner, plain)))
        )
        out += minus_apt(tu_row, "pkg install minus its apt-get commands (median)")
    return out


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def fmt_x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def minus_apt(row: Row, label: str) -> list[tuple[str, str]]:
    """The median of what a ``pkg install`` row took besides its apt-get commands."""
    totals = row.extra.get("apt-get, all of them", [])
    rest = [w - c for w, c in zip(row.samples, totals, strict=False)]
    return [(label, fmt_ms(statistics.median(rest)))] if rest else []


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def print_table(rows: Mapping[str, Row], info: Mapping[str, Any], args: argparse.Namespace) -> None:
    m = machine(VERSIONS)
    print(
        f"changelog benchmark, {m['date']}: Linux {m['kernel']}, {m['cpus']} CPUs, "
        f"Python {m['python']}, {m['btrfs']}, load {m['load']}"
    )
    cache = "off (PYTHONDONTWRITEBYTECODE=1)" if args.no_bytecode_cache else "on"
    print(
        f"{args.repeat} runs per row after {args.warmup} warm-up, round-robin; "
        f"Python bytecode cache {cache}; times in ms"
    )
    if args.baseline_ref:
        print(f"baseline rows: the wheel of git ref {args.baseline_ref}, installed the same way")
    width = max(len(r.label) for r in rows.values()) + 2
    section = None
    for row in rows.values():
        if row.section != section:
            section = row.section
            print(f"\n{section:<{width}}{'median':>9}{'p90':>9}{'min':>9}")
        if row.error:
            print(f"  {row.label:<{width - 2}}  ERROR: {row.error}")
            continue
        lo = min(row.samples) if row.samples else None
        hi = p90(row.samples) if row.samples else None
        print(f"  {row.label:<{width - 2}}{fmt(row.median):>9}{fmt(hi):>9}{fmt(lo):>9}")
        for name, values in row.extra.items():
            if name == "files in the changelog":
                continue
            label = f"  of which {name} (changelog)"
            vmin = min(values) if values else None
            vp90 = p90(values) if values else None
            print(
                f"  {label:<{width - 2}}{fmt(row.extra_median(name)):>9}{fmt(vp90):>9}"
                f"{fmt(vmin):>9}"
            )

    print(
        f"\n{'target (ratio of medians)':<52}{'ours':>10}{'baseline':>10}{'ratio':>9}{'target':>9}"
    )
    for v in verdicts(rows, info):
        sign = ">=" if v.higher_is_better else "<="
        verdict = {True: "PASS", False: "MISS", None: "n/a"}[v.passed]
        print(
            f"  {v.text:<50}{fmt(v.ours):>10}{fmt(v.baseline):>10}{fmt_x(v.ratio):>9}"
            f"{sign + f'{v.limit:g}x':>9}  {verdict}"
        )
    print("\ncontext (ratio of medians, no target)")
    for text, value in context_lines(rows, info):
        print(f"  {text:<68}{value:>10}")


# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--repeat", type=int, default=10, help="timed runs per row (default 10)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument(
        "--sizes",
        default="10000,100000",
        help="entries in the compared snapshots, ascending (default 10000,100000)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument(
        "--tu",
        default=None,
        help="the CLI to measure (default: this checkout, built as a wheel and installed into"
        " a fresh venv in the work directory, as users install it)",
    )
    p.add_argument("--image-size", default="4G", help="size of the sparse loop image")
    p.add_argument("--tmpdir", default=None, help="where the work directory goes")
    p.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="measured Python processes compile from source (PYTHONDONTWRITEBYTECODE=1)",
    )
    p.add_argument(
        "--baseline-ref",
        default=None,
        metavar="REF",
        help="also measure pkg install of the tool built from this git revision, side by side"
        " with the checkout, and print the ratio",
    )
    p.add_argument(
        "--skip-diff",
        action="store_true",
        help="leave out the file-diff section (it is the same with or without --baseline-ref)",
    )
    args = p.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        p.error("--sizes: numbers separated by commas")
    if args.repeat < 1 or args.warmup < 0 or args.sizes != sorted(args.sizes):
        p.error("--repeat >= 1, --warmup >= 0 and ascending --sizes please")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run_as_root(
        "changelog_bench", "loop devices, btrfs, mounts", lambda: run_benchmark(args)
    )
    if isinstance(result, int):
        return result
    rows, info = result
    if args.json:
        print(
            json.dumps(
                {
                    "machine": machine(VERSIONS),
                    "repeat": args.repeat,
                    "warmup": args.warmup,
                    "bytecode_cache": not args.no_bytecode_cache,
                    "entries": info.get("entries"),
                    "rows": [r.as_json() for r in rows.values()],
                    "targets": [v.as_json() for v in verdicts(rows, info)],
                    "context": dict(context_lines(rows, info)),
                    "baseline_ref": args.baseline_ref,
                },
                indent=2,
            )
        )
    else:
        print_table(rows, info, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
