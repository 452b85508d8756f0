"""What the boot checks found: the known-good snapshot, the snapshots that failed to boot, and the
last check (``/var/lib/transactional-update/boot-health.json``, under /var so rollbacks keep it).

GRUB's environment block holds the counter GRUB itself needs (:mod:`boot.counting`); this file
holds what the admin reads (``status``, ``list``, ``rollback``) and what ``cleanup`` must keep:
the known-good snapshot is the fallback of every trial, so it is never removed while it is.
Readable by root only: a failed check's output may name anything.

Light on purpose (no dataclasses, json imported when the file exists): ``status`` reads it.
"""

from __future__ import annotations

from pathlib import Path

from transactional_update.files import write_atomic

TYPE_CHECKING = False  # typing itself is not imported: it costs status ~3 ms
if TYPE_CHECKING:
    from typing import Any

STATE_FILE = "var/lib/transactional-update/boot-health.json"


def load(root: Path) -> dict[str, Any]:
    """The recorded state; a missing or garbled file reads as empty (nothing known yet)."""
    path = root / STATE_FILE
    if not path.exists():
        return {}
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save(root: Path, data: dict[str, Any]) -> None:
    import json

    path = root / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n", mode=0o600)


def known_good(data: dict[str, Any]) -> int | None:
    good = data.get("known_good")
    number = good.get("number") if isinstance(good, dict) else None
    return number if isinstance(number, int) else None


def failures(data: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Snapshot -> why and when it failed to boot (the latest failure of each)."""
    found = data.get("failed")
    if not isinstance(found, dict):
        return {}
    return {int(k): v for k, v in found.items() if k.isdigit() and isinstance(v, dict)}


def notice(data: dict[str, Any]) -> dict[str, Any] | None:
    """The failure ``status`` leads with: the latest automatic rollback, until a later snapshot
    passes its trial."""
    number = data.get("notice")
    if not isinstance(number, int):
        return None
    failure = failures(data).get(number)
    return {"snapshot": number, **failure} if failure else None


def with_known_good(
    data: dict[str, Any], number: int, at: str, ended_trial: bool
) -> dict[str, Any]:
    """*data* with *number* known-good (since *at*, or since it first was); a trial it passed
    retires the last failure's notice."""
    if known_good(data) == number:
        at = data["known_good"].get("at") or at
    new = {**data, "known_good": {"number": number, "at": at}}
    if ended_trial:
        new.pop("notice", None)
    return new


def with_failure(data: dict[str, Any], number: int, failure: dict[str, Any]) -> dict[str, Any]:
    """*data* with snapshot *number* failed: *failure* says why, when and what was done.

    ``automatic_rollbacks`` counts the rollbacks the boot check made away from it: one is the
    most it ever makes (a snapshot the admin makes the default again is not rolled back twice).
    """
    old = failures(data).get(number, {})
    rollbacks = int(old.get("automatic_rollbacks", 0)) + (1 if failure.get("rolled_back_to") else 0)
    failed = {str(k): v for k, v in failures(data).items()}
    failed[str(number)] = {**failure, "automatic_rollbacks": rollbacks}
    return {**data, "failed": failed, "notice": number}


def with_check(data: dict[str, Any], check: dict[str, Any]) -> dict[str, Any]:
    return {**data, "last_check": check}


def prune(root: Path) -> list[int]:
    """Forget the failures of snapshots that were deleted; returns their numbers."""
    data = load(root)
    gone = {n for n in failures(data) if not (root / ".snapshots" / str(n) / "snapshot").is_dir()}
    if gone:
        save(root, forget(data, gone))
    return sorted(gone)


def forget(data: dict[str, Any], gone: set[int]) -> dict[str, Any]:
    """*data* without the failures of snapshots that no longer exist."""
    failed = {str(k): v for k, v in failures(data).items() if k not in gone}
    new = {**data, "failed": failed}
    if data.get("notice") in gone:
        new.pop("notice", None)
    return new
