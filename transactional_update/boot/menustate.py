"""Whether GRUB's boot menu follows the snapshots: what ``status`` reads and commits record.

Light on purpose (no logging, no typing at run time): ``status`` imports it.  The menu is
*stale* when a refresh failed or was impossible - recorded in :data:`STALE_FILE` with the time
it began and why, until a refresh succeeds - or when grub.cfg's main entry boots another
snapshot than the default (:func:`menu_default`).
"""

from __future__ import annotations

from pathlib import Path

from transactional_update.files import read_json_object, unlink_durable, write_atomic

TYPE_CHECKING = False  # typing itself is not imported: it costs status ~3 ms
if TYPE_CHECKING:
    from typing import Any

GRUB_DIRS = ("boot/grub", "boot/grub2")  # Debian's and openSUSE's/Fedora's
STALE_FILE = "var/lib/transactional-update/boot-menu-stale"
MAIN_ID = "tu-default"  # the id of the menu's main entry (bootmenu)


def fstab_grub_dir(root: Path) -> str | None:
    """The GRUB directory the root's fstab mounts (``boot/grub``), if it mounts one.

    A system whose fstab mounts it expects a boot menu there; when it is missing (not mounted:
    a ``nofail`` mount whose fsck failed, a missing disk) the menu cannot follow the snapshots,
    which must never pass silently.
    """
    try:
        text = (root / "etc/fstab").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and not fields[0].startswith("#"):
            where = fields[1].strip("/")
            if where in GRUB_DIRS:
                return where
    return None


def is_mount(root: Path, rel: str) -> bool:
    """Whether ``root/rel`` is another filesystem or subvolume than the root itself (a separate
    mount or btrfs subvolume has its own st_dev; a directory of the snapshot does not)."""
    try:
        return (root / rel).stat().st_dev != root.stat().st_dev
    except OSError:
        return False


def mark_stale(root: Path, reason: str, now: str | None = None) -> None:
    """Record that the boot menu does not follow the snapshots (keeping when that began)."""
    import json
    from datetime import UTC, datetime

    since = (
        (read_stale(root) or {}).get("since")
        or now
        or datetime.now(UTC).isoformat(timespec="seconds")
    )
    write_atomic(root / STALE_FILE, json.dumps({"since": since, "reason": reason}) + "\n")


def clear_stale(root: Path) -> None:
    path = root / STALE_FILE
    if path.exists():
        unlink_durable(path)


def read_stale(root: Path) -> dict[str, str] | None:
    """``{"since": ..., "reason": ...}`` while the boot menu is recorded as stale."""
    data = read_json_object(root / STALE_FILE)
    if data is None:
        return None
    return {"since": str(data.get("since") or ""), "reason": str(data.get("reason") or "")}


def menu_default(cfg: str) -> int | None:
    """The snapshot that grub.cfg's main entry boots (None without one)."""
    at = cfg.find(f"--id {MAIN_ID} ")
    if at < 0:
        return None
    body = cfg[at : cfg.find("\n}", at)]
    _, sep, tail = body.partition(".snapshots/")
    number = tail.partition("/")[0]
    return int(number) if sep and number.isdigit() else None


def cfg_path(root: Path) -> Path | None:
    return next((p for d in GRUB_DIRS if (p := root / d / "grub.cfg").is_file()), None)


def state(root: Path, default: int | None) -> dict[str, Any] | None:
    """Whether GRUB's menu follows the snapshots: None for a system without one.

    Stale when a refresh failed or was impossible (recorded with its reason), or when the menu's
    main entry boots another snapshot than the default (a power cut between the commit and the
    menu's rewrite, or a default set by hand).
    """
    recorded = read_stale(root)
    if recorded is not None:
        return {"stale": True, "since": recorded["since"] or None, "reason": recorded["reason"]}
    cfg = cfg_path(root)
    if cfg is None:
        wanted = fstab_grub_dir(root)
        if wanted is None or is_mount(root, wanted):
            return None
        return {"stale": True, "since": None, "reason": f"/{wanted} is not mounted"}
    try:
        text = cfg.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {"stale": False, "since": None, "reason": None}
    names = menu_default(text)
    if default is not None and names is not None and names != default:
        return {
            "stale": True,
            "since": None,
            "reason": f"its main entry boots snapshot {names}, the default is {default}",
        }
    return {"stale": False, "since": None, "reason": None}
