"""The live ``/etc`` conflicts still open, for ``status``.

Every merge that kept a snapshot's version over a live change (the live one beside it as
``PATH.live``) notes it in ``/var/lib/transactional-update/etc-conflicts.json``.  A conflict is
open while its snapshot exists and the ``.live`` file is still there: the admin resolves it by
taking what they want from the live version and deleting the ``.live`` file.  ``status`` reads
the file only when it exists, so a system without conflicts pays one ``stat``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

TYPE_CHECKING = False  # typing itself is not imported: it costs status ~3 ms
if TYPE_CHECKING:
    from typing import Any

NOTES = "var/lib/transactional-update/etc-conflicts.json"


def _live_copy(root: Path, snapshot: int, live: str) -> Path:
    return root / ".snapshots" / str(snapshot) / "snapshot" / live.lstrip("/")


def _read(root: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads((root / NOTES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [c for c in data if isinstance(c, dict)] if isinstance(data, list) else []


def open_conflicts(root: Path) -> list[dict[str, Any]]:
    """``[{"snapshot", "path", "live", "reason", "at"}]`` whose ``.live`` file still exists."""
    if not os.path.exists(root / NOTES):
        return []
    found = []
    for c in _read(root):
        number, live = c.get("snapshot"), c.get("live")
        if (
            isinstance(number, int)
            and isinstance(live, str)
            and isinstance(c.get("path"), str)
            and os.path.lexists(_live_copy(root, number, live))
        ):
            found.append(c)
    return found


def note(root: Path, snapshot: int, at: str, conflicts: list[dict[str, Any]]) -> None:
    """Add *snapshot*'s new conflicts (a later note of a path replaces an earlier one)."""
    from transactional_update.files import write_atomic

    if not conflicts:
        return
    new = {c["path"]: {**c, "snapshot": snapshot, "at": at} for c in conflicts}
    kept = [
        c
        for c in open_conflicts(root)
        if not (c.get("snapshot") == snapshot and c.get("path") in new)
    ]
    write_atomic(root / NOTES, json.dumps([*kept, *new.values()], indent=1) + "\n", mode=0o600)
