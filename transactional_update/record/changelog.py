"""What each snapshot holds: one changelog entry per transaction.

An entry records what ran (commands, exit codes, durations; an interactive shell as such), who ran
it (also through sudo), when, from which base snapshot, with which tool version, and what changed:
packages (from the package databases of base and snapshot) and files (from btrfs itself).

Entries live in ``/var/lib/transactional-update/changelog/N.json`` of the managed root: ``/var``
is shared by all snapshots, so a rollback cannot lose them (snapper's own ``.snapshots/N`` would
be wrong: snapper's delete leaves a directory behind that holds files it does not know).  An entry
whose snapshot is gone is pruned by :func:`prune`.
"""

from __future__ import annotations

import json
import os
import pwd
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from transactional_update import __version__
from transactional_update.files import write_atomic
from transactional_update.record.summary import STORE, entry_path, summarize


@dataclass(frozen=True)
class Who:
    uid: int
    user: str
    sudo_user: str | None = None  # the admin behind sudo
    login_user: str | None = None  # the audit login user (survives su and sudo)


@dataclass(frozen=True)
class Command:
    argv: list[str]
    exit: int
    seconds: float
    interactive: bool = False


@dataclass(frozen=True)
class Entry:
    snapshot: int
    base: int
    created: str  # ISO 8601, UTC
    tool_version: str
    who: Who
    description: str
    commands: list[Command]
    packages: list[dict[str, Any]] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    files_error: str | None = None  # why files could not be compared (e.g. writable base)
    shadowed_writes: list[str] = field(default_factory=list)
    # The reboot the package manager asked for ("reboot": a full one, not a soft reboot or apply).
    reboot: str | None = None
    # Why GRUB's menu did not follow this snapshot when it became the default ("stale: ...").
    boot_menu: str | None = None
    # Live /etc changes merged in (etc.carry.Carried.record), at fork, commit, shutdown or boot.
    live_etc: list[dict[str, Any]] = field(default_factory=list)
    # What its boots showed: {"event": "known-good" | "failed", "at", and for a failure
    # "reason", "how" (boot-counting, health-check) and "rolled_back_to"}.
    boot: list[dict[str, Any]] = field(default_factory=list)
    # Each time ``apply`` made it live on the running system: {"at", "who", "from", "class",
    # "kernel_pending", "processes", "restarted", "not_restarted", "restart_failed"}.
    applied: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        return summarize(self.packages, self.files, self.files_error)


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def who(environ: dict[str, str] | None = None) -> Who:
    """The invoking user: real uid, the sudo caller, and the kernel's audit login uid."""
    env = os.environ if environ is None else environ
    uid = os.getuid()
    login = None
    try:
        loginuid = int(Path("/proc/self/loginuid").read_text().strip())
        if loginuid != 0xFFFFFFFF:  # (uid_t)-1: no login session (a service, CI)
            login = _name(loginuid)
    except (OSError, ValueError):
        pass
    return Who(uid=uid, user=_name(uid), sudo_user=env.get("SUDO_USER") or None, login_user=login)


def userdata(entry: Entry) -> dict[str, str]:
    """Key facts for snapper's userdata (no ``,`` or ``=``: snapper forbids them in values)."""
    facts = {
        "tu-base": str(entry.base),  # status names it without reading the changelog
        "tu-files": str(len(entry.files)) if entry.files_error is None else "unknown",
    }
    if entry.reboot is not None:
        facts["tu-reboot"] = entry.reboot
    kinds = [p["kind"] for p in entry.packages]
    for kind in ("added", "removed", "upgraded", "downgraded"):
        if kinds.count(kind):
            facts[f"tu-pkgs-{kind}"] = str(kinds.count(kind))
    return facts


def save(root: Path, entry: Entry) -> None:
    """Write atomically and durably: the entry exists completely or not at all.

    Readable by root only, like the store: entries hold every command line, and one may carry
    a secret (``run -- sh -c 'echo root:pw | chpasswd'``).
    """
    text = json.dumps(asdict(entry), indent=1, ensure_ascii=False)
    path = entry_path(root, entry.snapshot)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.parent.stat().st_mode & 0o077:
        path.parent.chmod(0o700)  # a store an older version made readable
    write_atomic(path, text, mode=0o600)


def load(root: Path, number: int) -> Entry | None:
    try:
        data = json.loads(entry_path(root, number).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return from_json(data)


def from_json(data: dict[str, Any]) -> Entry:
    return Entry(
        snapshot=int(data["snapshot"]),
        base=int(data["base"]),
        created=str(data["created"]),
        tool_version=str(data["tool_version"]),
        who=Who(**data["who"]),
        description=str(data["description"]),
        commands=[Command(**c) for c in data["commands"]],
        packages=list(data.get("packages", [])),
        files=list(data.get("files", [])),
        files_error=data.get("files_error"),
        shadowed_writes=list(data.get("shadowed_writes", [])),
        reboot=data.get("reboot"),
        boot_menu=data.get("boot_menu"),
        live_etc=list(data.get("live_etc", [])),
        boot=list(data.get("boot", [])),
        applied=list(data.get("applied", [])),
    )


def add_live_etc(root: Path, number: int, merged: dict[str, Any]) -> bool:
    """Append a live ``/etc`` merge to snapshot *number*'s entry (False: it has none)."""
    return _append(root, number, "live_etc", merged)


def add_boot_event(root: Path, number: int, event: dict[str, Any]) -> bool:
    """Append what a boot of snapshot *number* showed to its entry (False: it has none)."""
    return _append(root, number, "boot", event)


def add_apply_event(root: Path, number: int, event: dict[str, Any]) -> bool:
    """Append an ``apply`` of snapshot *number* to its entry (False: it has none)."""
    return _append(root, number, "applied", event)


def _append(root: Path, number: int, name: str, item: dict[str, Any]) -> bool:
    entry = load(root, number)
    if entry is None:
        return False
    changed: dict[str, Any] = {name: [*getattr(entry, name), item]}
    save(root, replace(entry, **changed))
    return True


def conflicts(entry: Entry) -> list[dict[str, Any]]:
    """The live ``/etc`` conflicts of *entry*, the latest per path."""
    latest: dict[str, dict[str, Any]] = {}
    for merged in entry.live_etc:
        for c in merged.get("conflicts", []):
            latest[c["path"]] = {**c, "at": merged.get("at", "")}
    return list(latest.values())


def prune(root: Path) -> list[int]:
    """Delete entries whose snapshot no longer exists; returns their numbers."""
    store = root / STORE
    gone = []
    try:
        names = os.listdir(store)
    except OSError:
        return []
    for name in names:
        stem = name.removesuffix(".json")
        if stem.isdigit() and not (root / ".snapshots" / stem / "snapshot").is_dir():
            (store / name).unlink(missing_ok=True)
            gone.append(int(stem))
    return sorted(gone)


def new_entry(
    snapshot: int,
    base: int,
    description: str,
    commands: list[Command],
    shadowed_writes: list[str],
) -> Entry:
    return Entry(
        snapshot=snapshot,
        base=base,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        tool_version=__version__,
        who=who(),
        description=description,
        commands=commands,
        shadowed_writes=shadowed_writes,
    )


def render(entry: Entry) -> str:
    """The entry as text for ``log``/``changelog``."""
    w = entry.who
    by = w.user + (f" (sudo by {w.sudo_user})" if w.sudo_user else "")
    if w.login_user and w.login_user not in (w.user, w.sudo_user):
        by += f" (login {w.login_user})"
    lines = [
        f"snapshot {entry.snapshot} (from {entry.base}) · {entry.summary()}",
        f"  description: {entry.description}",
        f"  when: {entry.created}   who: {by}   tool: transactional-update {entry.tool_version}",
    ]
    for c in entry.commands:
        what = "interactive shell" if c.interactive else " ".join(c.argv)
        lines.append(f"  ran: {what}  (exit {c.exit}, {c.seconds:.1f} s)")
    for p in entry.packages:
        if p["kind"] == "added":
            lines.append(f"  + {p['name']} {p['new']}")
        elif p["kind"] == "removed":
            lines.append(f"  - {p['name']} {p['old']}")
        else:
            lines.append(f"  ~ {p['name']} {p['old']} -> {p['new']} ({p['kind']})")
    if entry.files_error:
        lines.append(f"  files: not compared ({entry.files_error})")
    marks = {"added": "A", "modified": "M", "deleted": "D"}
    lines += [f"  {marks.get(f['kind'], '?')} {f['path']}" for f in entry.files]
    lines += [f"  discarded (outside the snapshot): {p}" for p in entry.shadowed_writes]
    if entry.reboot is not None:
        lines.append(f"  needs: a full {entry.reboot} (the package manager asks for it)")
    if entry.boot_menu is not None:
        lines.append(f"  boot menu: {entry.boot_menu}")
    lines += [line for merged in entry.live_etc for line in render_live_etc(merged)]
    lines += [render_boot_event(event) for event in entry.boot]
    lines += [line for event in entry.applied for line in render_apply_event(event)]
    return "\n".join(lines)


def render_apply_event(event: dict[str, Any]) -> list[str]:
    who = event.get("who") or {}
    by = who.get("user", "?") + (f" (sudo by {who['sudo_user']})" if who.get("sudo_user") else "")
    lines = [
        f"  applied live at {event.get('at')} by {by} (over snapshot {event.get('from')}, "
        f"{event.get('class')})"
    ]
    if event.get("kernel_pending"):
        lines.append("    the new kernel starts with the next reboot")
    lines += [f"    restarted {u}" for u in event.get("restarted", [])]
    lines += [
        f"    RESTART FAILED {f['unit']}: {f['error']}" for f in event.get("restart_failed", [])
    ]
    lines += [
        f"    still uses replaced files: {p['command']} "
        f"(PID {p['pid']}, {p.get('unit') or 'no unit'})"
        for p in event.get("processes", [])
        if p.get("unit") not in event.get("restarted", [])
    ]
    return lines


def render_boot_event(event: dict[str, Any]) -> str:
    if event.get("event") == "failed":
        return (
            f"  boot: FAILED at {event.get('at')}: {event.get('reason')}; "
            f"rolled back to {event.get('rolled_back_to')} ({event.get('how')})"
        )
    return f"  boot: {event.get('event')} at {event.get('at')}"


def render_live_etc(merged: dict[str, Any]) -> list[str]:
    """One live ``/etc`` merge as the changelog shows it."""
    lines = [
        f"  live /etc from snapshot {merged.get('from')} merged at {merged.get('at')} "
        f"({merged.get('when')}):"
    ]
    lines += [f"    L {p}" for p in merged.get("taken", [])]
    lines += [f"    L {p} (merged with the snapshot's change)" for p in merged.get("merged", [])]
    lines += [
        f"    CONFLICT {c['path']}: {c['reason']}; the live version is {c['live']}"
        for c in merged.get("conflicts", [])
    ]
    lines += [f"    FAILED {f['path']}: {f['error']}" for f in merged.get("failed", [])]
    if len(lines) == 1:
        lines[0] = lines[0][:-1] + ": nothing had changed"
    return lines
