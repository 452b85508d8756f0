#!/usr/bin/env python3
"""What the writable /etc costs a transaction, and what carrying live edits costs at shutdown.

Run as root from the repository root::

    .venv/bin/python bench/etc_tx_bench.py [--repeat 15] [--warmup 1] [--baseline-ref REF]
        [--edits 10] [--json]

Two managed systems on loop devices (:func:`testkit.systems.managed_system`), side by side in
the same rounds (harness.measure):

* **own /etc**: the layout of ``create-system`` (``/etc`` a subvolume of each snapshot);
  ``run true`` there forks the live /etc, keeps a sync point, compares /etc at the commit and
  merges the live changes since the fork;
* **plain /etc**: the same system made as before the writable /etc (:meth:`System.plain_etc`);
  ``run true`` there does none of it.  With ``--baseline-ref`` the tool built from REF runs there
  too (it knows only this layout): the rest of the transaction did not get slower.
* **sync-etc**: on the own-/etc system with a pending snapshot, ``--edits`` live edits (files
  rewritten, one added, one removed) are made before each run (untimed), and ``sync-etc``
  merges them into the pending snapshot: what the shutdown adds to a reboot.

It is a report, not a test: the exit code is 0 whenever the measurements could be taken.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.bench import Bench  # noqa: E402
from bench.harness import (  # noqa: E402
    PY_ENV,
    BenchError,
    Row,
    base_env,
    bytecode_env,
    installed_cli,
    machine,
    measure,
    progress,
    remove_workdir,
    run,
    run_as_root,
)
from testkit.systems import managed_system  # noqa: E402


def edits(root: Path, count: int, round_no: list[int]) -> None:
    """*count* live edits an admin makes: files rewritten, one added, one removed (untimed)."""
    round_no[0] += 1
    etc = root / "etc"
    n = round_no[0]
    for i in range(max(count - 2, 0)):
        (etc / f"bench-{i}.conf").write_text(f"setting={n}\n")
    (etc / f"bench-added-{n}.conf").write_text("added\n")
    (etc / f"bench-added-{n - 1}.conf").unlink(missing_ok=True)


def sync_etc(tu: Path, root: Path, expect: int) -> Callable[[], None]:
    def action() -> None:
        out = run([tu, "--root", root, "--json", "sync-etc"], base_env())
        merges = json.loads(out)["merges"]
        carried = sum(len(m["taken"]) + len(m["merged"]) for m in merges)
        if carried != expect:
            raise BenchError(f"sync-etc carried {carried} changes, not {expect}: {merges}")

    return action


def run_benchmark(args: argparse.Namespace) -> list[Row]:
    workdir = Path(tempfile.mkdtemp(prefix="tu-etc-tx-bench-", dir="/var/tmp"))
    try:
        PY_ENV.clear()
        PY_ENV.update(bytecode_env(workdir, True))
        tu = installed_cli(workdir)
        base_tu = installed_cli(workdir, args.baseline_ref) if args.baseline_ref else None
        with ExitStack() as stack:
            (workdir / "own").mkdir()
            (workdir / "plain").mkdir()
            progress("building two managed systems")
            own = Bench(stack.enter_context(managed_system(workdir / "own")), tu)
            plain_system = stack.enter_context(managed_system(workdir / "plain"))
            plain_system.plain_etc()
            plain = Bench(plain_system, tu, base_tu, args.baseline_ref or "")
            section = "no-op transaction (snapshot 1 only)"
            rows = [
                Row(
                    "run_own",
                    "run true, own /etc  [cli]",
                    section,
                    own.tu_run_true("cli"),
                    lambda _r: own.reset_transactions(),
                ),
                Row(
                    "run_plain",
                    "run true, plain /etc  [cli]",
                    section,
                    plain.tu_run_true("cli"),
                    lambda _r: plain.reset_transactions(),
                ),
            ]
            if base_tu is not None:
                rows.append(
                    Row(
                        "run_plain_base",
                        f"  baseline {args.baseline_ref}: run true, plain /etc  [cli]",
                        section,
                        plain.tu_run_true("cli", base_tu),
                        lambda _r: plain.reset_transactions(),
                    )
                )
            progress(f"transactions ({args.warmup} warm-up + {args.repeat} runs each)")
            measure(rows, args.repeat, args.warmup)
            # A pending snapshot made while the own-/etc system runs: what sync-etc feeds.  The
            # file the first round removes is in both.
            (own.root / "etc/bench-added-0.conf").write_text("added\n")
            run([tu, "--root", own.root, "run", "true"], own.tu_env("cli"))
            round_no = [0]
            edits(own.root, args.edits, round_no)
            # In each round: the edits (made after the previous round), then nothing new.
            sync = Row(
                "sync_etc",
                f"sync-etc, {args.edits} live edits into the pending snapshot",
                "shutdown",
                sync_etc(tu, own.root, args.edits),
            )
            unchanged = Row(
                "sync_etc_none",
                "sync-etc, nothing edited live since the last one",
                "shutdown",
                sync_etc(tu, own.root, 0),
                lambda _r: edits(own.root, args.edits, round_no),
            )
            progress(f"sync-etc ({args.warmup} warm-up + {args.repeat} runs)")
            measure([sync, unchanged], args.repeat, args.warmup)
            return [*rows, sync, unchanged]
    finally:
        remove_workdir(workdir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--edits", type=int, default=10)
    parser.add_argument("--baseline-ref", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    def body() -> int:
        rows = run_benchmark(args)
        if args.json:
            print(json.dumps({"machine": machine({}), "rows": [r.as_json() for r in rows]}))
            return 0
        print(f"{'row':<58} {'median':>9} {'p90':>9} {'min':>9}")
        for r in rows:
            if r.error:
                print(f"{r.label:<58} FAILED: {r.error}")
                continue
            print(
                f"{r.label:<58} {r.median or 0:>7.1f}ms {r.p90 or 0:>7.1f}ms "
                f"{min(r.samples):>7.1f}ms"
            )
        return 0

    result = run_as_root("etc_tx_bench", "loop devices, btrfs and snapper", body)
    return result


if __name__ == "__main__":
    sys.exit(main())
