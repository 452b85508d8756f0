"""The record of this machine's reboot slot (``/var/lib/transactional-update/reboot-slot.json``),
read without the rest of :mod:`.slots`: ``status`` shows it and stays light (no dataclasses)."""

from __future__ import annotations

from pathlib import Path

from transactional_update.files import read_json_object

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

STATE_FILE = "var/lib/transactional-update/reboot-slot.json"


def read(root: Path) -> dict[str, Any] | None:
    return read_json_object(root / STATE_FILE)


def describe(state: dict[str, Any] | None) -> str | None:
    """One line for ``status`` and ``reboot-manager status``."""
    if state is None:
        return None
    where = f"{state.get('method')}, group {state.get('group')}"
    if state.get("state") == "holding":
        return (
            f"holding a reboot slot ({where}) since {state.get('since')}; given back once up "
            "and healthy"
        )
    if state.get("state") == "asking":
        return (
            f"asking for a reboot slot ({where}); if this stays, the asking was cut short and "
            "the slot is given back at the next healthy boot, or: transactional-update "
            "reboot-manager release"
        )
    if state.get("state") == "releasing":
        return (
            f"giving the reboot slot back ({where}) failed {state.get('attempts')} time(s): "
            f"{state.get('last_error')}; next try {state.get('next_try')}"
        )
    return (
        f"waiting for a reboot slot ({where}) since {state.get('since')}: "
        f"{state.get('last_error')}; asked {state.get('attempts')} time(s), next at "
        f"{state.get('next_try')}"
    )
