"""Which snapshot ``apply`` made live (``/run/transactional-update/applied.json``).

In ``/run``, a tmpfs: an apply lasts until the next boot, and so does its record.  The snapshot
whose ``/usr`` runs is read from the mount itself (:meth:`ManagedRoot.live`); this file adds what
the mount cannot tell: when, from which snapshot, and whether a kernel still waits for the reboot.
A record that no longer matches the live snapshot (a hand-made mount, a stale file) is ignored.

Light on purpose (json imported only when the file exists): ``status`` reads it.
"""

from __future__ import annotations

from pathlib import Path

from transactional_update.files import read_json_object, write_atomic

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

STATE_FILE = "run/transactional-update/applied.json"


def load(root: Path, live: int | None) -> dict[str, Any] | None:
    """The record of the apply that made *live* the running userspace, or None."""
    data = read_json_object(root / STATE_FILE) if live is not None else None
    return data if data is not None and data.get("snapshot") == live else None


def save(root: Path, data: dict[str, Any]) -> None:
    import json

    write_atomic(root / STATE_FILE, json.dumps(data, indent=1) + "\n", mode=0o600)


INTENT_FILE = "run/transactional-update/applying.json"


def interrupted(root: Path) -> dict[str, Any] | None:
    """The apply that was cut short (``{"target", "from", "at"}``), or None.

    Written before the first bind and removed after the last step: while it exists, ``/usr`` and
    ``/etc`` may belong to different snapshots, and whoever merges ``/etc`` must wait until
    ``apply`` completes it (or a reboot ends it: ``/run`` goes with it).
    """
    path = root / INTENT_FILE
    if not path.exists():
        return None
    data = read_json_object(path)
    if data is None or not isinstance(data.get("target"), int):
        return {"target": None, "from": None, "at": None}
    return data


def begin(root: Path, data: dict[str, Any]) -> None:
    import json

    write_atomic(root / INTENT_FILE, json.dumps(data) + "\n", mode=0o600)


def abandon(root: Path) -> None:
    """An apply that undid itself: nothing is left to complete."""
    (root / INTENT_FILE).unlink(missing_ok=True)


def finish(root: Path, data: dict[str, Any]) -> None:
    """The record of a completed apply; the intent goes after it is written."""
    save(root, data)
    abandon(root)


def refuse_interrupted(root: Path) -> None:
    """Refuse to merge ``/etc`` while an interrupted apply leaves it unclear whose it is."""
    cut = interrupted(root)
    if cut is None:
        return
    from transactional_update.errors import SystemError_

    raise SystemError_(
        f"an apply of snapshot {cut.get('target')} was interrupted: the running /usr and /etc "
        "may belong to different snapshots",
        "complete it with: transactional-update apply (or reboot)",
    )
