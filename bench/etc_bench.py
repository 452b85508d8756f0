#!/usr/bin/env python3
"""What merging the live /etc into a new snapshot's costs, against rsync comparing the same trees.

Run as root from the repository root::

    .venv/bin/python bench/etc_bench.py [--repeat 15] [--warmup 1] [--files 2000] [--json]

Three copies of the host's /etc (``cp -a``, padded with small config files up to ``--files``
entries) stand for base, live and new: live gets 10 edits an admin would make (edited files, a
mode, an owner, a file added and one deleted, a user added while the package adds another, two
files the package changed as well), new gets changes a package update would make.

Rows, measured round-robin (see harness.measure):

* **merge**: ``scan`` of the three trees, ``plan`` and ``apply``, in-process; after every run the
  new tree is restored (untimed);
* **rsync -an**: ``rsync -a --dry-run --delete live/ new/``, a whole process: what a copy-based
  sync would do, comparing size and mtime only;
* **rsync -anc**: the same with ``--checksum``, which reads every file as ``scan`` does.

It is a report, not a test: the exit code is 0 whenever the measurements could be taken.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.harness import Row, machine, measure, progress, run, run_as_root  # noqa: E402
from transactional_update.etc import merge  # noqa: E402

LIVE_EDITS = 10


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def _text_files(root: Path) -> list[Path]:
    out = []
    for p in _files(root):
        if p.name in merge._ACCOUNT_PATHS or p.stat().st_size > 4096:
            continue
        data = p.read_bytes()
        if data.endswith(b"\n") and b"\0" not in data and data.count(b"\n") > 3:
            out.append(p)
    return out


def build(work: Path, files: int) -> tuple[Path, Path, Path, Path]:
    """base, live, new and a pristine copy of new to restore it from."""
    base = work / "base"
    run(["cp", "-a", "/etc", str(base)])
    pad = base / "tu-bench.d"
    pad.mkdir()
    count = sum(1 for _ in base.rglob("*"))
    for n in range(max(0, files - count)):
        (pad / f"{n:05}.conf").write_text(f"# padding\nkey{n} = {n}\nother = value\n")
    for name in ("live", "new"):
        run(["cp", "-a", str(base), str(work / name)])
    live, new = work / "live", work / "new"
    if not (base / "passwd").is_file():
        (base / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")

    texts = [p.relative_to(base) for p in _text_files(base)]
    if len(texts) < 12:
        raise SystemExit("etc_bench: too few small text files in /etc")
    # The admin's 10 edits.
    for rel in texts[:3]:
        with (live / rel).open("a") as f:
            f.write("# edited live\n")
    for rel in texts[4:6]:  # also changed by the package, in another place: a line merge
        lines = (live / rel).read_text().splitlines(keepends=True)
        (live / rel).write_text("# edited live\n" + "".join(lines))
        (new / rel).write_text("".join(lines) + "# changed by the package\n")
    os.chmod(live / texts[6], 0o600)
    os.chown(live / texts[7], 1000, 1000)
    (live / "tu-bench-added.conf").write_text("added = live\n")
    (live / texts[8]).unlink()
    with (live / "passwd").open("a") as f:
        f.write("benchuser:x:1999:1999::/home/benchuser:/bin/bash\n")
    with (new / "passwd").open("a") as f:
        f.write("benchsvc:x:998:998::/var/lib/benchsvc:/usr/sbin/nologin\n")
    # The package update's own changes elsewhere.
    for rel in texts[9:12]:
        with (new / rel).open("a") as f:
            f.write("# changed by the package\n")
    pristine = work / "new-pristine"
    run(["cp", "-a", str(new), str(pristine)])
    return base, live, new, pristine


def do_merge(base: Path, live: Path, new: Path) -> merge.Report:
    decisions = merge.plan(merge.scan(base), merge.scan(live), merge.scan(new))
    return merge.apply(decisions, live, new, base)


def restore(new: Path, pristine: Path) -> None:
    shutil.rmtree(new)
    run(["cp", "-a", str(pristine), str(new)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if shutil.which("rsync") is None:
        print("etc_bench: needs rsync (apt-get install -y rsync)", file=sys.stderr)
        return 2

    def body() -> int:
        with tempfile.TemporaryDirectory(prefix="tu-etc-bench.") as tmp:
            work = Path(tmp)
            progress(f"building three /etc trees of about {args.files} entries in {work}")
            base, live, new, pristine = build(work, args.files)
            entries = sum(1 for _ in base.rglob("*"))
            report = do_merge(base, live, new)
            restore(new, pristine)
            rows = [
                Row(
                    "merge",
                    "merge: scan x3 + plan + apply",
                    "etc",
                    lambda: do_merge(base, live, new),
                    after=lambda _r: restore(new, pristine),
                ),
                Row(
                    "rsync",
                    "rsync -a --dry-run live/ new/",
                    "etc",
                    lambda: run(["rsync", "-a", "--dry-run", "--delete", f"{live}/", f"{new}/"]),
                ),
                Row(
                    "rsync-c",
                    "rsync -a --dry-run --checksum live/ new/",
                    "etc",
                    lambda: run(
                        [
                            "rsync",
                            "-a",
                            "--dry-run",
                            "--checksum",
                            "--delete",
                            f"{live}/",
                            f"{new}/",
                        ]
                    ),
                ),
            ]
            measure(rows, args.repeat, args.warmup)
            info = machine({"rsync": ["rsync", "--version"]})
            outcome = {
                "entries": entries,
                "live_edits": LIVE_EDITS,
                "taken": len(report.taken),
                "merged": len(report.merged),
                "conflicted": len(report.conflicted),
                "failed": len(report.failed),
            }
            if args.json:
                print(
                    json.dumps(
                        {"machine": info, "outcome": outcome, "rows": [r.as_json() for r in rows]},
                        indent=2,
                    )
                )
                return 0
            print(f"{entries} entries per tree; {LIVE_EDITS} live edits; merge outcome: {outcome}")
            print(f"machine: {info}")
            merged_median = rows[0].median
            print(f"{'row':<44} {'median ms':>10} {'p90 ms':>10} {'vs merge':>9}")
            for row in rows:
                if row.error or row.median is None or row.p90 is None:
                    print(f"{row.label:<44} ERROR: {row.error}")
                    continue
                ratio = f"{row.median / merged_median:.2f}x" if merged_median else "-"
                print(f"{row.label:<44} {row.median:>10.1f} {row.p90:>10.1f} {ratio:>9}")
            return 0

    result = run_as_root("etc_bench", "chown of the copied trees", body)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
