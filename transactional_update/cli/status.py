"""``status`` and ``list``: what boots now, what boots next, and every snapshot.

``status`` reads the snapshots it reports (booted, default, pending) straight from snapper's
``info.xml``, looks for leftovers of interrupted runs only among the snapshots newer than the
booted or default one (:func:`leftovers.status_candidates`), and compares GRUB's menu with the
default, so it stays fast with thousands of snapshots.
"""

from __future__ import annotations

from transactional_update.boot import grubenv, menustate
from transactional_update.core.lock import Lock, noted_forks
from transactional_update.errors import TUError
from transactional_update.reboot import slotstate
from transactional_update.record import applied, bootstate, conflicts
from transactional_update.record.summary import read_facts
from transactional_update.snapshots import btrfs, leftovers
from transactional_update.snapshots.snapinfo import IN_PROGRESS, Snapshot, read_all_info, read_info
from transactional_update.snapshots.system import snapshot_number

FAILED_BOOT = "tu-boot"  # snapper userdata of a snapshot that failed to boot (health.bootcheck)
BASE = "tu-base"  # snapper userdata: the snapshot a transaction forked (record.changelog.userdata)

TYPE_CHECKING = False  # typing itself is not imported: it costs status ~3 ms
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from transactional_update.snapshots.system import ManagedRoot


class Status:
    """What boots now and next.  A plain record: this module stays free of dataclasses, whose
    import alone would cost ``status`` a third of its run time (see :mod:`snapshots.snapinfo`)."""

    __slots__ = (
        "applied",
        "boot",
        "boot_menu",
        "booted",
        "default",
        "etc_conflicts",
        "etc_writable",
        "foreign_default",
        "leftovers",
        "live",
        "pending",
        "pending_reboot",
        "pending_summary",
        "running",
        "snapshots",
        "stale",
    )

    def __init__(
        self,
        booted: int | None,
        default: int | None,
        pending: int | None,  # the default when it is not the booted snapshot
        running: str | None,  # the lock holder while a transaction runs
        stale: int | None,  # fork of a transaction that died (lock free, note remains)
        snapshots: dict[int, Snapshot],
        # The default subvolume's path when it is no snapper snapshot (the next boot mounts it).
        foreign_default: str | None = None,
        pending_summary: str | None = None,  # the pending snapshot's changelog summary
        pending_reboot: str | None = None,  # the reboot its packages ask for ("reboot": full)
        found: leftovers.Leftovers | None = None,  # what interrupted runs left
        boot_menu: dict[str, Any] | None = None,  # None: no boot menu; else whether it is stale
        etc_writable: bool = True,  # the booted snapshot has its own /etc (snapshots.etcvol)
        etc_conflicts: list[dict[str, Any]] | None = None,  # open live /etc conflicts
        boot: dict[str, Any] | None = None,  # trial, known-good, failures (boot_state)
        live: int | None = None,  # whose /usr and /etc run (apply); None: the booted one's
        applied: dict[str, Any] | None = None,  # the apply's record (record.applied)
    ) -> None:
        self.booted = booted
        self.default = default
        self.pending = pending
        self.running = running
        self.stale = stale
        self.snapshots = snapshots
        self.foreign_default = foreign_default
        self.pending_summary = pending_summary
        self.pending_reboot = pending_reboot
        self.leftovers = found or leftovers.Leftovers([], [], [])
        self.boot_menu = boot_menu
        self.etc_writable = etc_writable
        self.etc_conflicts = etc_conflicts or []
        self.boot = boot or {}
        self.live = booted if live is None else live
        self.applied = applied

    @property
    def reboot_needed(self) -> bool:
        """A pending default that apply made live needs no reboot, unless for its kernel."""
        if self.pending is None:
            return False
        a = self.applied
        pending = a.get("reboot_pending", a.get("kernel_pending", True)) if a else True
        return not (a and a.get("snapshot") == self.pending and not pending)


def _info(root: Path, number: int | None) -> Snapshot | None:
    if number is None:
        return None
    try:
        return read_info(root, number)
    except TUError:
        return None


def get_status(managed: ManagedRoot) -> Status:
    booted, default_path = managed.booted(), managed.default_subvolume()
    default = snapshot_number(default_path)
    foreign = _subvolume_name(default_path) if default is None else None
    pending = default if default is not None and default != booted else None
    lock = Lock(managed.snapshots_dir)
    running = lock.holder() if lock.is_held() else None
    live: list[int] | None = None
    if running is not None:
        # The running transaction's fork is no leftover: the one its holder noted, or, before
        # the note is written, the newest directory (snapper may be making it right now).
        live = [n for n in noted_forks(lock.read()) if f"snapshot {n}" in running]
        live += leftovers.numbers(managed.snapshots_dir)[-1:]
    found = leftovers.for_status(managed, booted, default, live)
    running_live = managed.live()
    record = None
    if running_live is not None and running_live != booted:
        record = applied.load(managed.root, running_live) or {"snapshot": running_live}
    cut = applied.interrupted(managed.root)
    if cut is not None:
        record = {**(record or {}), "interrupted": cut}
    stale = found.stale[-1] if found.stale else None
    infos = {
        n: i for n in (booted, default, stale) if n is not None and (i := _info(managed.root, n))
    }
    facts = read_facts(managed.root, pending) if pending is not None else None
    summary, reboot = facts if facts is not None else (None, None)
    return Status(
        booted,
        default,
        pending,
        running,
        stale,
        infos,
        foreign,
        summary,
        reboot,
        found,
        menustate.state(managed.root, default),
        btrfs.is_subvolume(managed.root / "etc"),
        conflicts.open_conflicts(managed.root),
        boot_state(managed.root),
        running_live,
        record,
    )


def boot_state(root: Path) -> dict[str, Any]:
    """The trial (GRUB's environment block), the known-good snapshot and the failures."""
    data = bootstate.load(root)
    trial: dict[str, Any] = {}
    for rel in menustate.GRUB_DIRS:
        env = root / rel / "grubenv"
        if env.is_file():
            try:
                values = grubenv.parse(env.read_bytes())
            except (OSError, ValueError):
                break
            number, tries = values.get("tu_trial", ""), values.get("tu_tries", "")
            if number.isdigit():
                trial = {
                    "snapshot": int(number),
                    "tries_left": int(tries) if tries.isdigit() else 0,
                }
            break
    last = data.get("last_check")
    return {
        "known_good": bootstate.known_good(data),
        "known_good_since": (data.get("known_good") or {}).get("at"),
        "trial": trial or None,
        "failed": {str(n): f for n, f in sorted(bootstate.failures(data).items())},
        "notice": bootstate.notice(data),
        "reboot_slot": slotstate.read(root),
        "last_check": (
            {k: last.get(k) for k in ("snapshot", "at", "healthy", "failed")}
            if isinstance(last, dict)
            else None
        ),
    }


def _subvolume_name(path: str) -> str:
    return path or "<FS_TREE>"  # the top level, named as btrfs-progs does


def show_status(managed: ManagedRoot, as_json: bool) -> str:
    st = get_status(managed)
    return dump_json(status_json(st)) if as_json else status_text(st)


def show_list(managed: ManagedRoot, as_json: bool) -> str:
    """Every snapshot, read from snapper's info.xml as ``snapper --no-dbus list`` does."""
    snaps = read_all_info(managed.root)
    booted, default = managed.booted(), managed.default()
    if as_json:
        return dump_json(list_json(snaps, booted, default))
    return list_text(snaps, booted, default)


def dump_json(value: object) -> str:
    # Imported here: the text output, what monitoring mostly reads, does not pay for json.
    import json

    return json.dumps(value, indent=2)


def snapshot_json(s: Snapshot | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {
        "number": s.number,
        "type": str(s.type),
        "pre_number": s.pre_number,
        "date": s.date.isoformat() if s.date else None,
        "user": s.user,
        "description": s.description,
        "cleanup": s.cleanup,
        "userdata": dict(s.userdata),
    }


def status_json(st: Status) -> dict[str, Any]:
    return {
        "booted": snapshot_json(st.snapshots.get(st.booted)) if st.booted else None,
        "default": snapshot_json(st.snapshots.get(st.default)) if st.default else None,
        "pending": st.pending,
        "pending_summary": st.pending_summary,
        "pending_base": _base(st.snapshots.get(st.pending)) if st.pending else None,
        "reboot_needed": st.reboot_needed,
        "live": st.live,
        "applied": st.applied,
        "reboot_level": st.pending_reboot,
        "running": st.running,
        "stale_in_progress": st.stale,
        "stale": st.leftovers.stale,
        "orphans": st.leftovers.orphans,
        "lost_commits": st.leftovers.lost,
        "boot_menu": st.boot_menu,
        "foreign_default": st.foreign_default,
        "etc_writable": st.etc_writable,
        "etc_conflicts": st.etc_conflicts,
        "boot": st.boot or None,
    }


def _line(label: str, number: int | None, infos: dict[int, Snapshot]) -> str:
    if number is None:
        return f"{label:<9} -"
    info = infos.get(number)
    desc = info.description.splitlines()[0] if info and info.description else ""
    date = info.date.strftime("%Y-%m-%d %H:%M") if info and info.date else ""
    base = info.userdata.get(BASE) if info else None
    number_from = f"{number} (from {base})" if base else str(number)
    return f"{label:<9} {number_from}  {date}  {desc}".rstrip()


def _base(info: Snapshot | None) -> int | None:
    """The snapshot *info* was made from (recorded since transactions build on the default)."""
    base = info.userdata.get(BASE) if info else None
    return int(base) if base and base.isdigit() else None


def status_text(st: Status) -> str:
    lines = notice_lines(st.boot)
    lines += [
        _line("booted:", st.booted, st.snapshots),
        _line("default:", st.default, st.snapshots),
    ]
    cut = (st.applied or {}).get("interrupted")
    if cut is not None:
        lines.append(
            f"apply:    interrupted while making snapshot {cut.get('target')} live: /usr and /etc "
            "may belong to different snapshots; complete it: transactional-update apply (or reboot)"
        )
    elif st.applied is not None:
        a = st.applied
        when = f" at {_clock(a['at'])}" if a.get("at") else ""
        lines.append(
            f"live:     {st.live} (applied live{when}: its /usr and /etc run; the kernel is "
            f"snapshot {st.booted}'s until the reboot)"
        )
    if st.pending is not None and not st.reboot_needed:
        lines.append(
            f"pending:  snapshot {st.pending} boots next; it is live already (applied), the "
            "reboot brings it up unchanged"
        )
    elif st.pending is not None:
        change = f" ({st.pending_summary})" if st.pending_summary else ""
        how = "a full reboot (its packages ask for one)" if st.pending_reboot else "reboot"
        lines.append(f"pending:  snapshot {st.pending} boots next{change}; {how} to use it")
    elif st.foreign_default is not None:
        lines.append(
            f"pending:  the next boot mounts {st.foreign_default}, which is not a snapper "
            "snapshot; make the booted snapshot the default with: transactional-update rollback"
        )
    else:
        lines.append("pending:  none")
    if st.running:
        lines.append(f"running:  a transaction ({st.running})")
    lines += leftover_lines(st.leftovers)
    lines += etc_lines(st)
    lines += boot_lines(st.boot, st.default)
    slot = slotstate.describe(st.boot.get("reboot_slot"))
    if slot is not None:
        lines.append(f"fleet:    {slot}")
    menu = st.boot_menu
    if menu is not None and menu["stale"]:
        since = f" since {menu['since']}" if menu["since"] else ""
        lines.append(
            f"boot menu: stale{since} ({menu['reason']}); the next transaction, rollback or "
            "cleanup refreshes it (now: transactional-update cleanup --prune-only)"
        )
    return "\n".join(lines)


def _clock(at: str | None) -> str:
    """``2026-11-30T03:14:05+00:00`` as ``2026-11-30 03:14`` (what the admin reads)."""
    return (at or "")[:16].replace("T", " ")


def notice_lines(boot: dict[str, Any]) -> list[str]:
    """What ``status`` leads with after an automatic rollback, until a later update passes."""
    n = boot.get("notice")
    if not n:
        return []
    return [
        f"snapshot {n['snapshot']} failed to boot ({n.get('reason', '')}); rolled back to "
        f"{n.get('rolled_back_to')} at {_clock(n.get('at'))}"
    ]


def boot_lines(boot: dict[str, Any], default: int | None) -> list[str]:
    lines = []
    good, trial = boot.get("known_good"), boot.get("trial")
    if trial and trial["snapshot"] == default and trial["snapshot"] != good:
        fallback = f"then known-good snapshot {good} boots" if good else "no fallback yet"
        lines.append(
            f"boot:     snapshot {trial['snapshot']} is on trial ({trial['tries_left']} "
            f"boot(s) left, {fallback})"
        )
    elif good is not None:
        since = _clock(boot.get("known_good_since"))
        lines.append(f"boot:     snapshot {good} is known-good (since {since})")
    last = boot.get("last_check")
    if last and not last.get("healthy"):
        lines.append(
            f"health:   the check of snapshot {last.get('snapshot')} at {_clock(last.get('at'))} "
            f"failed: {' '.join(last.get('failed') or [])} (details: transactional-update health)"
        )
    return lines


def etc_lines(st: Status) -> list[str]:
    lines = []
    if not st.etc_writable:
        lines.append(
            "/etc:     read-only (made before the writable /etc); give the system its own /etc "
            "with: transactional-update setup-etc"
        )
    for c in st.etc_conflicts:
        lines.append(
            f"/etc conflict: {c['path']} in snapshot {c['snapshot']} ({c.get('reason', '')}, "
            f"{c.get('at', '')}): the snapshot's version is in place, the live one is "
            f"{c['live']}; merge by hand, then delete {c['live']}"
        )
    return lines


def _numbers(numbers: list[int]) -> str:
    return ("snapshot " if len(numbers) == 1 else "snapshots ") + " ".join(map(str, numbers))


def leftover_lines(found: leftovers.Leftovers) -> list[str]:
    """What ``status`` says about leftovers of interrupted runs (pure: unit-tested)."""
    lines = []
    if found.stale:
        one = len(found.stale) == 1
        lines.append(
            f"stale:    {_numbers(found.stale)} {'was' if one else 'were'} left by "
            f"{'an interrupted transaction' if one else 'interrupted transactions'}; "
            f"remove {'it' if one else 'them'} with: transactional-update cleanup"
        )
    if found.orphans:
        lines.append(
            f"orphan:   {_numbers(found.orphans)} without snapper's metadata (cut while being "
            "created); remove with: transactional-update cleanup"
        )
    lines += [
        f"lost:     snapshot {n} is complete, but its commit did not reach the disk; keep it "
        f"with: transactional-update rollback {n}; drop it with: transactional-update cleanup"
        for n in found.lost
    ]
    return lines


def marks(s: Snapshot, booted: int | None, default: int | None) -> str:
    m = "x" if s.userdata.get(FAILED_BOOT) == "failed" else ""
    if s.number == booted:
        m += "-"
    if s.number == default:
        m += "*" if s.number == booted else "+"
    if IN_PROGRESS in s.userdata:
        m += "!"
    return m


def list_json(
    snaps: list[Snapshot], booted: int | None, default: int | None
) -> list[dict[str, Any]]:
    out = []
    for s in snaps:
        d = snapshot_json(s)
        assert d is not None
        d.update(
            booted=s.number == booted,
            default=s.number == default,
            in_progress=IN_PROGRESS in s.userdata,
        )
        out.append(d)
    return out


def list_text(snaps: list[Snapshot], booted: int | None, default: int | None) -> str:
    rows = [("#", "", "date", "description")]
    for s in snaps:
        desc = " ".join(s.description.split())  # newlines in a description would break the table
        date = s.date.strftime("%Y-%m-%d %H:%M:%S") if s.date else ""
        rows.append((str(s.number), marks(s, booted, default), date, desc))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    out = [f"{r[0]:>{w0}} {r[1]:<{w1}} | {r[2]:<{w2}} | {r[3]}".rstrip() for r in rows]
    out.append(
        "marks: - booted, + default (boots next), * booted and default, ! in progress, "
        "x failed to boot"
    )
    return "\n".join(out)
