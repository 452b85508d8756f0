#!/usr/bin/env python3
"""Whole-process timings of transactional-update against the commands it competes with.

Run as root from the repository root::

    .venv/bin/python bench/bench.py [--repeat 15] [--warmup 1] [--snapshots 1000] [--json]
        [--baseline-ref REF] [--sync-repeat 50] [--sync-only] [--profile-status DIR]

Every row times complete processes (``time.perf_counter()`` around ``subprocess.run``), on a real
managed system: a sparse btrfs image on a loop device built by
:func:`testkit.systems.managed_system`, with snapperd on a private system bus from
:func:`testkit.systems.system_bus` for the D-Bus rows.
The exceptions are timed in-process, because they are single calls a process start would drown:
the sync primitives (BTRFS_IOC_SYNC, syncfs, fsync) and, with ``--profile-status``, the parts of
``status``.  With ``--baseline-ref REF`` every row of our tool also runs as built from REF.
The rows of one table are measured round-robin (one run of each row, then the next round), so a
slow moment of the machine hits every row alike; each row's baseline is measured in the same run.

It is a report, not a test: targets print PASS or MISS, and the exit code is 0 whenever the
measurements could be taken (see bench/README.md).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import pstats
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, cast
from xml.sax.saxutils import escape

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
    run,
    run_as_root,
)
from testkit.systems import Bus, System, managed_system, system_bus  # noqa: E402
from transactional_update.boot import menustate  # noqa: E402
from transactional_update.snapshots import btrfs, etcvol, leftovers  # noqa: E402
from transactional_update.snapshots.snapper import DBusSnapper  # noqa: E402
from transactional_update.snapshots.system import ManagedRoot  # noqa: E402

VERSIONS = {"snapper": ["snapper", "--version"]}  # shown in the report header
BASE_SNAPSHOT = 1
IN_PROGRESS = "transactional-update-in-progress"
# Environment that would change what a row measures; every row starts from the host's
# environment without these, and a row adds back what it needs.
# How measured Python processes treat bytecode, added to every row's environment (see
# bytecode_env): by default they get a bytecode cache of their own, as an installed tool has.


# --------------------------------------------------------------------------------------------
# Running and timing


# --------------------------------------------------------------------------------------------
# The system under test


class Bench:
    def __init__(
        self, system: System, tu: Path, base_tu: Path | None = None, base_ref: str = ""
    ) -> None:
        self.system = system
        self.root = system.root
        self.tu = tu
        self.base_tu = base_tu  # the same tool built from --baseline-ref, if given
        self.base_ref = base_ref
        self.snapshots = system.root / ".snapshots"
        self.dbus: DBusSnapper | None = None  # our own client of the bench's snapperd
        self.bus_address = ""

    # -- environments of our tool

    def tu_env(self, backend: str) -> dict[str, str]:
        env = {**base_env(), "TU_SNAPPER_BACKEND": backend}
        if backend == "dbus":
            env["DBUS_SYSTEM_BUS_ADDRESS"] = self.bus_address
        return env

    @contextmanager
    def bus(self) -> Iterator[Bus]:
        """snapperd on a private system bus (started fresh: snapperd caches the snapshot list)."""
        with system_bus(self.system) as bus:
            self.bus_address = bus.address
            saved = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
            os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = bus.address  # jeepney reads it on connect
            try:
                self.dbus = DBusSnapper(self.root)
            finally:
                if saved is None:
                    del os.environ["DBUS_SYSTEM_BUS_ADDRESS"]
                else:
                    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = saved
            try:
                yield bus
            finally:
                self.dbus.close()
                self.dbus = None
                self.bus_address = ""

    # -- snapshot bookkeeping (never timed)

    def numbers(self) -> list[int]:
        return sorted(int(p.name) for p in self.snapshots.iterdir() if p.name.isdigit())

    def next_number(self) -> int:
        return max(self.numbers()) + 1

    def reset_transactions(self) -> None:
        """Undo a transaction: snapshot 1 is the default again and the only snapshot.

        Snapshots that snapperd created are deleted through it, so that its cached list stays
        true; the others (made by ``snapper --no-dbus`` or btrfs) on disk.  Then wait for btrfs'
        cleaner, so that no run pays for the previous run's deletion.
        """
        btrfs.set_default(self.system.snapshot(BASE_SNAPSHOT))
        extra = [n for n in self.numbers() if n != BASE_SNAPSHOT]
        if not extra:
            return
        known = {s.number for s in self.dbus.list_snapshots()} if self.dbus else set()
        ids: set[int] = set()
        for n in extra:
            subvol = self.system.snapshot(n)
            if btrfs.is_subvolume(subvol):
                ids.add(btrfs.subvolume_id(subvol))
            if n in known and self.dbus is not None:
                self.dbus.delete_snapshots([n])
            else:
                etcvol.remove_nested(subvol)  # its own /etc and the references beside it
                if btrfs.is_subvolume(subvol):
                    btrfs.delete_subvolume(subvol)
                shutil.rmtree(self.snapshots / str(n))
        if not btrfs.wait_cleaned(self.root, ids, timeout=60):
            raise RuntimeError(f"btrfs did not clean deleted snapshots {sorted(ids)} in 60 s")

    def fill(self, count: int) -> None:
        """Snapshots 1..*count* in snapper's real layout, fast: btrfs snapshots + info.xml."""
        start = datetime(2024, 1, 1, tzinfo=UTC)
        source = self.system.snapshot(BASE_SNAPSHOT)
        begun = time.perf_counter()
        for n in range(self.next_number(), count + 1):
            (self.snapshots / str(n)).mkdir()
            btrfsutil.create_snapshot(source, self.system.snapshot(n), read_only=True)
            (self.snapshots / str(n) / "info.xml").write_text(
                info_xml(n, f"run: apt-get install -y package-{n}", start + timedelta(hours=n)),
                encoding="utf-8",
            )
            if n % 250 == 0:
                progress(f"  {n} snapshots ({time.perf_counter() - begun:.1f} s)")
        btrfs.sync(self.root)
        listed = self.snapper_count()
        if listed != count:
            raise RuntimeError(f"snapper --no-dbus list shows {listed} snapshots, wanted {count}")
        progress(f"  snapper --no-dbus list shows {listed} snapshots")

    def snapper_count(self) -> int:
        out = run(["snapper", "--no-dbus", "--root", self.root, "--jsonout", "list"], base_env())
        entries = next(iter(json.loads(out).values()))
        return sum(1 for e in entries if e["number"] != 0)

    # -- the timed actions

    def raw_sequence(self) -> None:
        """What the commit costs at the least: the three btrfs commands."""
        n = self.next_number()
        (self.snapshots / str(n)).mkdir()
        snap = self.system.snapshot(n)
        run(["btrfs", "subvolume", "snapshot", self.system.snapshot(BASE_SNAPSHOT), snap])
        run(["btrfs", "property", "set", "-ts", snap, "ro", "true"])
        run(["btrfs", "subvolume", "set-default", snap])

    def peer_create(self) -> int:
        """The peer's fork: ``snapper create --from 1 --read-write`` with the in-progress mark."""
        out = run(
            [
                *self.snapper_cli(),
                "create",
                "--from",
                str(BASE_SNAPSHOT),
                "--read-write",
                "--print-number",
                "--description",
                "run: true",
                "--cleanup-algorithm",
                "number",
                "--userdata",
                f"{IN_PROGRESS}=yes",
            ]
        )
        return int(out.split()[-1])

    def peer_modify(self, n: int) -> None:
        run([*self.snapper_cli(), "modify", "--userdata", f"{IN_PROGRESS}=", str(n)])

    def snapper_cli(self) -> list[str]:
        return ["snapper", "--no-dbus", "--root", str(self.root)]

    def peer_sequence(self) -> None:
        """The processes a C++ peer runs for ``run true``: snapper, chroot, snapper, btrfs."""
        n = self.peer_create()
        snap = self.system.snapshot(n)
        run(["chroot", snap, "true"])
        self.peer_modify(n)
        run(["btrfs", "property", "set", "-ts", snap, "ro", "true"])
        run(["btrfs", "subvolume", "set-default", snap])

    def snapper_pair(self) -> None:
        """The peer sequence's two snapper calls alone: what any tool driving snapper's CLI pays."""
        self.peer_modify(self.peer_create())

    def tu_run_true(self, backend: str, tu: Path | None = None) -> Callable[[], None]:
        cli = tu or self.tu

        def action() -> None:
            before = self.numbers()
            out = run([cli, "--root", self.root, "run", "true"], self.tu_env(backend))
            if not out.decode().startswith("snapshot ") or self.numbers() == before:
                raise BenchError(f"run true made no snapshot: {out.decode().strip()!r}")

        return action

    def tu_cmd(
        self, backend: str | None, *args: str, tu: Path | None = None
    ) -> Callable[[], bytes]:
        env = self.tu_env(backend) if backend else base_env()
        argv = [str(tu or self.tu), "--root", str(self.root), *args]
        return lambda: run(argv, env)


class SyncPrimitives:
    """Ways to make a small change durable, timed in-process after the same dirtying.

    Before every timed call the filesystem is committed (untimed) and then dirtied the same way:
    a new 4 KiB file in a writable snapshot, and the default subvolume set to that snapshot and
    back, as a commit does.  The rows then differ only in the call that makes it durable.
    """

    def __init__(self, system: System) -> None:
        self.system = system
        self.root = system.root
        # A writable snapshot of snapshot 1 (the root itself is read-only); snapper, and our
        # numbers(), skip a name that is not a number.  It is gone before the other sections.
        self.scratch = system.root / ".snapshots" / "tu-bench-sync"
        self.file = self.scratch / "tu-bench-dirt"
        self.round = 0
        self._syncfs = ctypes.CDLL(None, use_errno=True).syncfs  # Python 3.11's os has none

    @contextmanager
    def scratch_snapshot(self) -> Iterator[None]:
        btrfsutil.create_snapshot(self.system.snapshot(BASE_SNAPSHOT), self.scratch)
        try:
            self.dirty()
            yield
        finally:
            btrfs.set_default(self.system.snapshot(BASE_SNAPSHOT))
            ids = {btrfs.delete_subvolume(self.scratch)}
            if not btrfs.wait_cleaned(self.root, ids, timeout=60):
                raise RuntimeError(f"btrfs did not clean {self.scratch} in 60 s")
            btrfs.sync(self.root)

    def dirty(self) -> None:
        self.round += 1
        fd = os.open(self.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, self.round.to_bytes(8, "little") * 512)  # 4 KiB, new each time
        finally:
            os.close(fd)
        btrfs.set_default(self.scratch)
        btrfs.set_default(self.system.snapshot(BASE_SNAPSHOT))

    def reset(self, _result: object) -> None:
        """Commit what the row left (untimed), then dirty again for the next row."""
        btrfs.sync(self.root)
        self.dirty()

    # -- the timed calls

    def ioc_sync(self) -> None:
        btrfsutil.sync(self.root)  # what btrfs.sync runs: BTRFS_IOC_SYNC

    def syncfs(self) -> None:
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if self._syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise BenchError(f"syncfs({self.root}): {os.strerror(err)}")
        finally:
            os.close(fd)

    def fsync_file(self) -> None:
        fd = os.open(self.file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def nothing(self) -> None:
        pass


def sync_rows(p: SyncPrimitives) -> list[Row]:
    s = "sync primitives after a 4 KiB write + set-default there and back (in-process)"
    return [
        Row("sync_ioctl", "btrfsutil.sync(root)  [BTRFS_IOC_SYNC]", s, p.ioc_sync, p.reset),
        Row("sync_syncfs", "syncfs(fd of root)", s, p.syncfs, p.reset),
        Row("sync_fsync", "fsync(the 4 KiB file)", s, p.fsync_file, p.reset),
        Row("sync_nothing", "nothing (the timer alone)", s, p.nothing, p.reset),
    ]


def info_xml(number: int, description: str, date: datetime) -> str:
    """snapper's info.xml for a snapshot our tool committed (like image.info_xml, with cleanup)."""
    return (
        '<?xml version="1.0"?>\n<snapshot>\n  <type>single</type>\n'
        f"  <num>{number}</num>\n  <date>{date.strftime('%Y-%m-%d %H:%M:%S')}</date>\n"
        f"  <description>{escape(description)}</description>\n"
        "  <cleanup>number</cleanup>\n</snapshot>\n"
    )


# --------------------------------------------------------------------------------------------
# The benchmark


@dataclass(frozen=True)
class Target:
    row: str
    baseline: str | None  # None: *limit* is in milliseconds
    limit: float
    text: str


TARGETS = (
    Target("tu_run_cli", "peer_tx", 1.0, "no-op transaction [cli] <= 1.0x peer sequence"),
    Target("tu_run_dbus", "peer_tx", 1.0, "no-op transaction [dbus] <= 1.0x peer sequence"),
    Target("tu_status_cli", "snapper_list", 0.5, "status [cli] <= 0.5x snapper list"),
    Target("tu_status_dbus", "snapper_list", 0.5, "status [dbus] <= 0.5x snapper list"),
    Target(
        "tu_list_json_cli",
        "snapper_list_json",
        1.0,
        "list --json [cli] <= 1.0x snapper --jsonout list",
    ),
    Target(
        "tu_list_json_dbus",
        "snapper_list_json",
        1.0,
        "list --json [dbus] <= 1.0x snapper --jsonout list",
    ),
    Target("tu_help", None, 60.0, "--help <= 60 ms"),
)
# The standard library a transaction of ours imports (pathlib, logging, dataclasses for the
# configuration, subprocess, json for the changelog, socket and ctypes for the chroot): together
# with the bare start, the least any Python implementation of the transaction pays.
STDLIB = "logging, subprocess, pathlib, dataclasses, enum, typing, json, socket, ctypes, datetime"
# Printed for context, without a target: (row, baseline, text).
CONTEXT = (
    ("tu_run_cli", "raw_tx", "run true [cli] vs raw btrfs sequence"),
    ("tu_run_dbus", "raw_tx", "run true [dbus] vs raw btrfs sequence"),
    ("peer_tx", "raw_tx", "peer sequence vs raw btrfs sequence"),
    ("tu_help", "python_bare", "--help vs bare Python start"),
    ("tu_help", "python_click", "--help vs Python + import click"),
)
# Same-run comparisons without a target, (row, against, text): the sync calls with each other, and
# the checkout with the tool built from --baseline-ref (rows that were not measured are skipped).
COMPARISONS = (
    ("sync_syncfs", "sync_ioctl", "syncfs / BTRFS_IOC_SYNC"),
    ("sync_ioctl", "sync_fsync", "BTRFS_IOC_SYNC / fsync of one file"),
    ("sync_syncfs", "sync_fsync", "syncfs / fsync of one file"),
    ("tu_run_cli", "tu_run_cli_base", "run true [cli]: new / baseline"),
    ("tu_help", "tu_help_base", "--help: new / baseline"),
    ("tu_run_dbus", "tu_run_dbus_base", "run true [dbus]: new / baseline"),
    ("tu_status_cli", "tu_status_cli_base", "status [cli]: new / baseline"),
    ("tu_status_dbus", "tu_status_dbus_base", "status [dbus]: new / baseline"),
    ("tu_run_cli_base", "peer_tx", "baseline run true [cli] / peer sequence"),
    ("tu_run_dbus_base", "peer_tx", "baseline run true [dbus] / peer sequence"),
    ("tu_status_cli_base", "snapper_list", "baseline status [cli] / snapper list"),
    ("tu_status_dbus_base", "snapper_list", "baseline status [dbus] / snapper list"),
    ("piece_read_raw", "piece_read_buffered", "info.xml reads: os.read / open().read()"),
)


def startup_rows(tu: Path, base_tu: Path | None = None) -> list[Row]:
    env = base_env()
    py = tu.parent / "python"  # the installed tool's own interpreter (see installed_cli)
    base = (
        []
        if base_tu is None
        else [
            Row(
                "tu_help_base",
                "transactional-update --help  (baseline)",
                "start-up",
                lambda: run([base_tu, "--help"], env),
            )
        ]
    )
    return [
        Row(
            "python_bare",
            "python -c pass (bare venv Python)",
            "start-up",
            lambda: run([py, "-c", "pass"], env),
        ),
        Row(
            "python_click",
            "python -c 'import click'",
            "start-up",
            lambda: run([py, "-c", "import click"], env),
        ),
        Row(
            "python_stdlib",
            "python -c 'import <stdlib of a transaction>'",
            "start-up",
            lambda: run([py, "-c", f"import {STDLIB}"], env),
        ),
        Row("tu_help", "transactional-update --help", "start-up", lambda: run([tu, "--help"], env)),
        *base,
    ]


def transaction_rows(b: Bench) -> list[Row]:
    s = "no-op transaction, fresh image (snapshot 1 only)"

    def reset(_result: object) -> None:
        b.reset_transactions()

    return [
        Row(
            "raw_tx",
            "raw: btrfs snapshot + property set ro + set-default",
            s,
            b.raw_sequence,
            reset,
        ),
        Row(
            "peer_tx",
            "peer: snapper create/modify + chroot true + btrfs ro/default",
            s,
            b.peer_sequence,
            reset,
        ),
        Row(
            "snapper_pair",
            "peer's two snapper calls alone (create + modify)",
            s,
            b.snapper_pair,
            reset,
        ),
        Row(
            "tu_run_cli",
            "transactional-update run true  [TU_SNAPPER_BACKEND=cli]",
            s,
            b.tu_run_true("cli"),
            reset,
        ),
        Row(
            "tu_run_dbus",
            "transactional-update run true  [TU_SNAPPER_BACKEND=dbus]",
            s,
            b.tu_run_true("dbus"),
            reset,
        ),
    ] + [
        Row(
            f"tu_run_{backend}_base",
            f"  baseline {b.base_ref}: run true  [{backend}]",
            s,
            b.tu_run_true(backend, b.base_tu),
            reset,
        )
        for backend in (("cli", "dbus") if b.base_tu else ())
    ]


def listing_rows(b: Bench, count: int) -> list[Row]:
    s = f"status and list, {count} snapshots"
    env = base_env()
    snapper = ["snapper", "--no-dbus", "--root", str(b.root)]
    return [
        Row("snapper_list", "snapper --no-dbus list", s, lambda: run([*snapper, "list"], env)),
        Row(
            "snapper_list_json",
            "snapper --no-dbus --jsonout list",
            s,
            lambda: run([*snapper, "--jsonout", "list"], env),
        ),
        Row("tu_status_cli", "transactional-update status  [cli]", s, b.tu_cmd("cli", "status")),
        Row("tu_status_dbus", "transactional-update status  [dbus]", s, b.tu_cmd("dbus", "status")),
        Row(
            "tu_list_json_cli",
            "transactional-update --json list  [cli]",
            s,
            b.tu_cmd("cli", "--json", "list"),
        ),
        Row(
            "tu_list_json_dbus",
            "transactional-update --json list  [dbus]",
            s,
            b.tu_cmd("dbus", "--json", "list"),
        ),
    ] + [
        Row(
            f"tu_status_{backend}_base",
            f"  baseline {b.base_ref}: status  [{backend}]",
            s,
            b.tu_cmd(backend, "status", tu=b.base_tu),
        )
        for backend in (("cli", "dbus") if b.base_tu else ())
    ]


def read_buffered(paths: Sequence[str]) -> int:
    """Every file read as ``leftovers.find`` reads an info.xml: ``open(path, "rb").read()``."""
    n = 0
    for path in paths:
        with open(path, "rb") as f:
            n += len(f.read())
    return n


def read_raw(paths: Sequence[str]) -> int:
    """The same bytes through ``os.open``/``os.read``/``os.close``, without a buffered file object.

    info.xml is far below 64 KiB, so one read gets it all; the comparison shows what the Python
    file objects cost per snapshot.
    """
    n = 0
    for path in paths:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            n += len(os.read(fd, 65536))
        finally:
            os.close(fd)
    return n


def status_piece_rows(b: Bench, count: int) -> list[Row]:
    """The parts ``status`` added in ccfafc0, timed in-process on the status rows' system."""
    s = f"status pieces, {count} snapshots (in-process)"
    managed = ManagedRoot(b.root, "root")
    booted = default = BASE_SNAPSHOT  # as the status rows see it: booted and default are 1

    def scan() -> None:
        candidates = leftovers.status_candidates(managed, booted, default)
        leftovers.find(managed, booted, default, candidates=candidates)

    store = str(managed.snapshots_dir)
    infos = [
        f"{store}/{n}/info.xml"
        for n in leftovers.status_candidates(managed, booted, default)
        if n != BASE_SNAPSHOT
    ]
    return [
        Row("piece_scan", "leftovers.status_candidates + find (the scan)", s, scan),
        Row(
            "piece_numbers",
            "  of which leftovers.numbers (listdir, sort)",
            s,
            partial(leftovers.numbers, managed.snapshots_dir),
        ),
        Row(
            "piece_read_buffered",
            f"  {len(infos)} info.xml read with open().read()",
            s,
            partial(read_buffered, infos),
        ),
        Row(
            "piece_read_raw",
            f"  {len(infos)} info.xml read with os.open/os.read",
            s,
            partial(read_raw, infos),
        ),
        Row(
            "piece_menustate",
            "menustate.state (boot menu check)",
            s,
            partial(menustate.state, b.root, default),
        ),
    ]


def check_list_output(b: Bench, count: int) -> None:
    """Untimed: our list shows all the snapshots through both backends."""
    for backend in ("cli", "dbus"):
        try:
            shown = json.loads(b.tu_cmd(backend, "--json", "list")())
        except BenchError as exc:
            progress(f"  list --json [{backend}] failed: {exc}")
            continue
        if len(shown) != count:
            progress(
                f"  WARNING: list --json [{backend}] shows {len(shown)} snapshots, not {count}"
            )


def run_benchmark(args: argparse.Namespace) -> dict[str, Row]:
    rows: list[Row] = []
    workdir = Path(tempfile.mkdtemp(prefix="tu-bench-", dir=args.tmpdir))
    try:
        PY_ENV.clear()
        PY_ENV.update(bytecode_env(workdir, not args.no_bytecode_cache))
        base_tu = None
        if args.sync_only:
            tu = Path(args.tu or "transactional-update")  # never run: the sync rows are in-process
        else:
            tu = Path(args.tu) if args.tu else installed_cli(workdir)
            if args.baseline_ref:
                base_tu = installed_cli(workdir, args.baseline_ref)
        if not args.sync_only:
            progress(f"start-up rows ({args.warmup} warm-up + {args.repeat} runs each)")
            startup = startup_rows(tu, base_tu)
            measure(startup, args.repeat, args.warmup)
            rows += startup

        progress(f"building a managed system in {workdir}")
        with managed_system(workdir, size=args.image_size) as system:
            b = Bench(system, tu, base_tu, args.baseline_ref or "")
            if args.sync_repeat:
                prims = SyncPrimitives(system)
                progress(f"sync primitives ({args.warmup} warm-up + {args.sync_repeat} runs each)")
                with prims.scratch_snapshot():
                    syncs = sync_rows(prims)
                    measure(syncs, args.sync_repeat, args.warmup)
                rows += syncs
            if args.sync_only:
                return {r.key: r for r in rows}
            progress(f"no-op transactions on {system.device}")
            with b.bus():
                tx = transaction_rows(b)
                measure(tx, args.repeat, args.warmup)
            rows += tx
            if b.numbers() != [BASE_SNAPSHOT]:
                raise RuntimeError(f"snapshots left after the transactions: {b.numbers()}")
            progress(f"creating {args.snapshots} snapshots")
            b.fill(args.snapshots)
            boot_checked(system.root)
            with b.bus():  # started now: snapperd caches the list it first reads
                check_list_output(b, args.snapshots)
                listing = listing_rows(b, args.snapshots)
                measure(listing, args.repeat, args.warmup)
            rows += listing
            if args.profile_status:
                progress("status pieces, in-process")
                pieces = status_piece_rows(b, args.snapshots)
                measure(pieces, args.repeat, args.warmup)
                rows += pieces
                profile_status(b, Path(args.profile_status))
    finally:
        remove_workdir(workdir)
    return {r.key: r for r in rows}


def boot_checked(root: Path) -> None:
    """The state a machine has once its boots are checked: status reads it at every run."""
    from transactional_update.record import bootstate

    checks = [
        {"check": f"required/check-{i}", "level": "required", "path": f"/x/{i}", "passed": True,
         "exit": 0, "seconds": 0.1, "reason": "", "output": "ok\n" * 20}
        for i in range(5)
    ]  # fmt: skip
    data = bootstate.with_known_good({}, BASE_SNAPSHOT, "2026-11-30T03:00:00+00:00", True)
    check = {"snapshot": BASE_SNAPSHOT, "at": "2026-11-30T03:00:00+00:00", "healthy": True}
    bootstate.save(root, bootstate.with_check(data, {**check, "failed": [], "checks": checks}))


def profile_status(b: Bench, out: Path, runs: int = 10) -> None:
    """Where ``status`` spends its time (CLI backend), for the checkout and the baseline.

    Untimed: ``python -X importtime`` (stderr) of one run and cProfiles of *runs* runs each,
    with the rows' bytecode cache, written to *out* as ``importtime-NAME.txt``,
    ``status-NAME-I.prof`` and the top of the summed profiles as ``status-NAME.txt``.  One run
    on a loaded machine can lose tens of ms to one preemption, charged to whatever line was
    running; the sum of several shows where the time reliably goes.
    """
    out.mkdir(parents=True, exist_ok=True)
    tools = [("new", b.tu)] + ([("baseline", b.base_tu)] if b.base_tu else [])
    env = b.tu_env("cli")
    for name, tu in tools:
        py = tu.parent / "python"  # the tool's own venv interpreter (see installed_cli)
        status = [str(tu), "--root", str(b.root), "status"]
        # cwd: ``python -m`` puts the working directory first on sys.path, and from the
        # repository root that would profile the checkout instead of the installed wheel.
        proc = subprocess.run(
            [str(py), "-X", "importtime", *status],
            env=env,
            cwd=out,
            capture_output=True,
            check=True,
        )
        (out / f"importtime-{name}.txt").write_bytes(proc.stderr)
        profiles = [str(out / f"status-{name}-{i}.prof") for i in range(runs)]
        for prof in profiles:
            subprocess.run(
                [str(py), "-m", "cProfile", "-o", prof, *status],
                env=env,
                cwd=out,
                capture_output=True,
                check=True,
            )
        with open(out / f"status-{name}.txt", "w", encoding="utf-8") as f:
            f.write(f"the sum of {runs} runs of: {shlex.join(status)}\n")
            stats = pstats.Stats(*profiles, stream=f)
            stats.sort_stats("cumulative").print_stats(45)
            stats.sort_stats("tottime").print_stats(25)
        progress(f"  status profile of {name}: {out}/status-{name}.txt")


# --------------------------------------------------------------------------------------------
# Reporting


def verdicts(rows: Mapping[str, Row]) -> list[dict[str, Any]]:
    out = []
    for t in TARGETS:
        row = rows.get(t.row)
        base = rows.get(t.baseline) if t.baseline else None
        value = row.median if row else None
        if t.baseline is None:
            ratio = value / t.limit if value is not None else None
            base_ms = None
        else:
            base_ms = base.median if base else None
            ratio = value / base_ms if value is not None and base_ms else None
        against_target = ratio if t.baseline is None or ratio is None else ratio / t.limit
        out.append(
            {
                "target": t.text,
                "row": t.row,
                "baseline": t.baseline,
                "median_ms": value,
                "baseline_median_ms": base_ms,
                "ratio": None if t.baseline is None else ratio,
                "limit": t.limit,
                "limit_unit": "ms" if t.baseline is None else "x",
                "of_target": against_target,  # ratio / limit (or ms / limit): <= 1 passes
                "pass": None if against_target is None else against_target <= 1.0,
            }
        )
    return out


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:.3f}{unit}" if abs(value) < 10 else f"{value:.1f}{unit}"


def comparisons(rows: Mapping[str, Row]) -> list[dict[str, Any]]:
    out = []
    for key, against, text in COMPARISONS:
        a, b = rows.get(key), rows.get(against)
        if a is None or b is None or not a.samples or not b.samples:
            continue
        am, bm = cast(float, a.median), cast(float, b.median)
        out.append(
            {
                "text": text,
                "row": key,
                "against": against,
                "median_ms": am,
                "against_median_ms": bm,
                "p90_ms": p90(a.samples),
                "against_p90_ms": p90(b.samples),
                "ratio": am / bm if bm else None,
                "p90_ratio": p90(a.samples) / p90(b.samples) if p90(b.samples) else None,
                "difference_ms": am - bm,
            }
        )
    return out


def print_table(rows: Mapping[str, Row], args: argparse.Namespace) -> None:
    m = machine(VERSIONS)
    print(
        f"transactional-update benchmark, {m['date']}: Linux {m['kernel']}, {m['cpus']} CPUs, "
        f"Python {m['python']}, {m['snapper']}"
    )
    cache = "off (PYTHONDONTWRITEBYTECODE=1)" if args.no_bytecode_cache else "on"
    print(
        f"whole processes (the sync rows: in-process, {args.sync_repeat} runs), {args.repeat} runs"
        f" per row after {args.warmup} warm-up, round-robin; Python bytecode cache {cache};"
        f" times in ms; load {m['load']}"
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
        print(f"  {row.label:<{width - 2}}{fmt(row.median):>9}{fmt(row.p90):>9}{fmt(lo):>9}")

    if args.sync_only:
        print_comparisons(rows)
        return
    print(
        f"\n{'target (ratio of medians)':<52}{'ours':>10}{'baseline':>10}{'ratio':>8}"
        f"{'target':>10}{'of target':>11}"
    )
    for v in verdicts(rows):
        unit = v["limit_unit"]
        limit = f"{v['limit']:.0f} ms" if unit == "ms" else f"{v['limit']:.2f}x"
        ratio = "-" if v["ratio"] is None else f"{v['ratio']:.2f}x"
        verdict = {True: "PASS", False: "MISS", None: "n/a"}[v["pass"]]
        of = "-" if v["of_target"] is None else f"{v['of_target']:.2f}"
        print(
            f"  {v['target']:<50}{fmt(v['median_ms']):>10}{fmt(v['baseline_median_ms']):>10}"
            f"{ratio:>8}{limit:>10}{of:>11}  {verdict}"
        )
    print("\ncontext (ratio of medians, no target)")
    for key, base, text in CONTEXT:
        a, b = rows.get(key), rows.get(base)
        if a and b and a.median is not None and b.median:
            print(f"  {text:<50}{a.median:>10.1f}{b.median:>10.1f}{a.median / b.median:>7.2f}x")
    fl = floor(rows)
    if fl is not None:
        print(
            f"  {'floor: Python + its stdlib + the two snapper calls':<50}{fl['floor_ms']:>10.1f}"
            f"{fl['peer_ms']:>10.1f}{fl['ratio']:>7.2f}x"
        )
    print_comparisons(rows)


def print_comparisons(rows: Mapping[str, Row]) -> None:
    comps = comparisons(rows)
    if comps:
        print(
            f"\n{'comparisons (same run)':<52}{'median':>10}{'against':>10}{'ratio':>8}"
            f"{'p90 ratio':>10}{'diff ms':>10}"
        )
    for c in comps:
        ratio = "-" if c["ratio"] is None else f"{c['ratio']:.2f}x"
        p90_ratio = "-" if c["p90_ratio"] is None else f"{c['p90_ratio']:.2f}x"
        print(
            f"  {c['text']:<50}{fmt(c['median_ms']):>10}{fmt(c['against_median_ms']):>10}"
            f"{ratio:>8}{p90_ratio:>10}{c['difference_ms']:>+10.2f}"
        )


def floor(rows: Mapping[str, Row]) -> dict[str, float] | None:
    """The least a Python tool driving snapper's CLI can take for ``run true``, against the peer.

    The peer sequence is the two snapper calls plus a chroot and two btrfs commands of a few ms
    each; a Python tool pays for its interpreter and standard library on top of the same two
    snapper calls, so this floor (measured, not estimated) is where the 1.0x target ends.
    """
    parts = [rows.get(k) for k in ("python_stdlib", "snapper_pair", "peer_tx")]
    if any(p is None or p.median is None for p in parts):
        return None
    stdlib, pair, peer = (p.median for p in parts if p is not None and p.median is not None)
    return {"floor_ms": stdlib + pair, "peer_ms": peer, "ratio": (stdlib + pair) / peer}


# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--repeat", type=int, default=15, help="timed runs per row (default 15)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument(
        "--snapshots",
        type=int,
        default=1000,
        help="snapshots for the status/list rows (default 1000)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument(
        "--tu",
        default=None,
        help="the CLI to measure (default: this checkout, built as a wheel and installed into"
        " a fresh venv in the work directory, as users install it)",
    )
    p.add_argument("--image-size", default="3G", help="size of the sparse loop image")
    p.add_argument("--tmpdir", default=None, help="where the work directory goes")
    p.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="measured Python processes compile from source (PYTHONDONTWRITEBYTECODE=1)"
        " instead of using a bytecode cache in the work directory",
    )
    p.add_argument(
        "--baseline-ref",
        default=None,
        metavar="REF",
        help="also measure the tool built from this git revision (run true, status), side by"
        " side with the checkout, and print the ratios",
    )
    p.add_argument(
        "--sync-repeat",
        type=int,
        default=50,
        help="timed in-process runs per sync primitive row (default 50; 0 skips them)",
    )
    p.add_argument(
        "--sync-only",
        action="store_true",
        help="measure the sync primitives only (no start-up, transaction or status rows)",
    )
    p.add_argument(
        "--profile-status",
        default=None,
        metavar="DIR",
        help="after the status rows, write -X importtime output and the cProfile of 10 status"
        " runs (checkout, and baseline if given) to DIR",
    )
    args = p.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0 or args.snapshots < 2 or args.sync_repeat < 0:
        p.error("--repeat >= 1, --warmup >= 0, --sync-repeat >= 0 and --snapshots >= 2 please")
    if args.sync_only and not args.sync_repeat:
        p.error("--sync-only needs --sync-repeat >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run_as_root(
        "bench", "loop devices, btrfs, mounts, snapperd", lambda: run_benchmark(args)
    )
    if isinstance(result, int):
        return result
    rows = result
    if args.json:
        print(
            json.dumps(
                {
                    "machine": machine(VERSIONS),
                    "repeat": args.repeat,
                    "warmup": args.warmup,
                    "bytecode_cache": not args.no_bytecode_cache,
                    "snapshots": args.snapshots,
                    "rows": [r.as_json() for r in rows.values()],
                    "targets": [
                        {k: round(v, 3) if isinstance(v, float) else v for k, v in t.items()}
                        for t in verdicts(rows)
                    ],
                    "floor": floor(rows),
                    "comparisons": comparisons(rows),
                    "baseline_ref": args.baseline_ref,
                },
                indent=2,
            )
        )
    else:
        print_table(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
