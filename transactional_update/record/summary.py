"""The one-line summary of a change (``+1 pkg, 12 files``) and where changelog entries live.

Kept apart from :mod:`.changelog` so that ``status`` can show the pending change's summary from the
entry's JSON without building the whole entry (and without importing dataclasses).
"""

from __future__ import annotations

from pathlib import Path

TYPE_CHECKING = False  # typing itself is not imported: it costs status ~3 ms
if TYPE_CHECKING:
    from typing import Any

STORE = "var/lib/transactional-update/changelog"


def entry_path(root: Path, number: int) -> Path:
    return root / STORE / f"{number}.json"


def summarize(
    packages: list[dict[str, Any]], files: list[dict[str, Any]], error: str | None
) -> str:
    """``+1 pkg, ~2 pkgs, 12 files`` — the one line shown in snapper list and boot menus."""
    parts = []
    for kind, sign in (("added", "+"), ("removed", "-"), ("upgraded", "↑"), ("downgraded", "↓")):
        n = sum(1 for p in packages if p.get("kind") == kind)
        if n:
            parts.append(f"{sign}{n} pkg{'s' if n > 1 else ''}")
    if error is not None:
        parts.append("files not compared")
    elif files:
        parts.append(f"{len(files)} file{'s' if len(files) != 1 else ''}")
    return ", ".join(parts) if parts else "no changes"


def read_facts(root: Path, number: int) -> tuple[str, str | None] | None:
    """Snapshot *number*'s change summary and the reboot its packages ask for (None: no need),
    from its changelog entry; None without a readable entry."""
    import json  # only when a change is pending: status's text output need not pay for it

    try:
        data = json.loads(entry_path(root, number).read_text(encoding="utf-8"))
        summary = summarize(
            data.get("packages", []), data.get("files", []), data.get("files_error")
        )
        reboot = data.get("reboot")
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    return summary, reboot if isinstance(reboot, str) else None
