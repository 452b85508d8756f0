"""``log``, ``changelog`` and ``diff``: reading what the snapshots hold.

``log`` and ``changelog`` show the entries recorded at commit (:mod:`.changelog`); ``diff``
computes packages and files between any two snapshots now, from btrfs and the package databases.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict

from transactional_update.config.settings import Manager
from transactional_update.errors import SnapshotError, TUError
from transactional_update.record import changelog, filediff, pkgdb, pkgdiff
from transactional_update.snapshots.snapinfo import read_all_info
from transactional_update.snapshots.system import ManagedRoot


def show_log(managed: ManagedRoot, number: int | None, as_json: bool) -> str:
    if number is not None:
        managed.require_snapshot_dir(number)
        entry = changelog.load(managed.root, number)
        if entry is None:
            raise SnapshotError(
                f"no changelog for snapshot {number}",
                "only snapshots made by transactional-update have one; see: "
                "transactional-update diff N",
            )
        return json.dumps(asdict(entry), indent=2) if as_json else changelog.render(entry)
    lines, data = [], []
    for snap in read_all_info(managed.root):
        entry = changelog.load(managed.root, snap.number)
        summary = entry.summary() if entry else "-"
        data.append(
            {
                "snapshot": snap.number,
                "description": snap.description,
                "summary": summary,
                "base": entry.base if entry else None,
                "has_changelog": entry is not None,
            }
        )
        first = snap.description.splitlines()[0] if snap.description else ""
        base = f"from {entry.base}" if entry else ""
        lines.append(f"{snap.number:>5}  {base:<9}  {summary:<28}  {first}".rstrip())
    return json.dumps(data, indent=2) if as_json else "\n".join(lines)


def diff_pair(managed: ManagedRoot, numbers: Sequence[int]) -> tuple[int, int]:
    """``diff``: running -> default; ``diff N``: running -> N; ``diff N M``: N -> M.

    Running is the live snapshot: the booted one, or the one an ``apply`` made live since.
    """
    if len(numbers) == 2:
        return numbers[0], numbers[1]
    running = managed.live()
    assert running is not None  # open_root refuses roots that are not snapshots
    if numbers:
        return running, numbers[0]
    default = managed.default()
    if default is None:
        raise SnapshotError(
            "the default subvolume is not a snapshot", "name the snapshots: diff N M"
        )
    return running, default


def show_diff(
    managed: ManagedRoot,
    numbers: Sequence[int],
    as_json: bool,
    forced: Manager | None = None,
) -> str:
    old, new = diff_pair(managed, numbers)
    old_dir, new_dir = managed.require_snapshot_dir(old), managed.require_snapshot_dir(new)
    files = [{"path": f.path, "kind": str(f.kind)} for f in filediff.file_changes(old_dir, new_dir)]
    try:
        packages = pkgdiff.package_changes(old_dir, new_dir, pkgdb.manager_for(new_dir, forced))
    except TUError:
        packages = []
    if as_json:
        return json.dumps(
            {
                "from": old,
                "to": new,
                "packages": [
                    {"name": p.name, "kind": str(p.kind), "old": p.old, "new": p.new}
                    for p in packages
                ],
                "files": files,
            },
            indent=2,
        )
    out = [f"snapshot {old} -> {new}: {len(packages)} package(s), {len(files)} file(s)"]
    for p in packages:
        out.append(f"  {p.name}: {p.old or '-'} -> {p.new or '-'} ({p.kind})")
    marks = {"added": "A", "modified": "M", "deleted": "D"}
    out += [f"  {marks[f['kind']]} {f['path']}" for f in files]
    return "\n".join(out)
