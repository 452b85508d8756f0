"""The state file ``/var/lib/misc/transactional-update.state`` (under /var, so rollbacks keep it).

Same name and format as openSUSE's: shell assignments.  ``LAST_WORKING_SNAPSHOTS`` lists snapshots
known to have run this system, newest first: each transaction records the snapshot it was
started on.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

from transactional_update.config import conffile
from transactional_update.files import write_atomic

log = logging.getLogger(__name__)

STATE_FILE = "var/lib/misc/transactional-update.state"
KEEP = 10


def parse(text: str) -> dict[str, str]:
    # A garbled line of a file another tool may write too is skipped, not fatal.
    return conffile.values(text, STATE_FILE, conffile.Lines.LENIENT)


def render(values: dict[str, str]) -> str:
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in sorted(values.items()))


def load(root: Path) -> dict[str, str]:
    """The state file's assignments; a missing, unreadable or garbled file reads as empty."""
    try:
        data = (root / STATE_FILE).read_bytes()
    except OSError:
        return {}
    return parse(data.decode("utf-8", errors="replace"))


def save(root: Path, values: dict[str, str]) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    write_atomic(root / STATE_FILE, render(values))


def last_working(root: Path) -> list[int]:
    return [int(n) for n in load(root).get("LAST_WORKING_SNAPSHOTS", "").split() if n.isdigit()]


def record_working(root: Path, number: int) -> bool:
    """Put *number* first in ``LAST_WORKING_SNAPSHOTS``; False (and a warning) if it cannot.

    Called after a transaction's commit point: the new default is already set, so a full or
    broken /var must not turn a committed transaction into a reported failure.
    """
    values = load(root)
    numbers = [number] + [n for n in last_working(root) if n != number]
    values["LAST_WORKING_SNAPSHOTS"] = " ".join(str(n) for n in numbers[:KEEP])
    try:
        save(root, values)
    except OSError as exc:
        log.warning(
            "cannot record snapshot %d as working in /%s (%s); `rollback last` will not know it",
            number,
            STATE_FILE,
            exc.strerror or exc,
        )
        return False
    return True
