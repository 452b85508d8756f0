"""``apply``: the default snapshot's userspace, live on the running system without a reboot.

1. **decide**: the default must descend from the live snapshot (the booted one, or the one an
   earlier apply made live); the change between them is read and sorted (:mod:`live.plan`);
2. **gate**: a change that replaces or deletes files needs ``--allow-replacement``;
3. **carry /etc**: the live ``/etc``'s edits since the last merge go into the snapshot first,
   by the live ``/etc`` rules (three ways, nothing lost);
4. **bind**: the snapshot's ``/usr`` (and ``/bin``, ``/sbin``, ``/lib*`` where they are not
   links into it), then its ``/etc``, over the running system (:mod:`live.binds`);
5. **scan**: which processes still map files the change replaced (:mod:`live.procs`);
6. **reload systemd**: ``daemon-reexec`` when systemd's own files were replaced, else
   ``daemon-reload``; a failure here takes the binds off again (exit 2, as openSUSE's tool);
7. **settle /etc**: what the old ``/etc`` took between the merge and the bind is merged too;
8. **remember**: ``/run`` records the apply; ``/run/reboot-needed`` stays only for a kernel;
9. **restart**: with ``--restart-services``, the units of those processes (never systemd, the
   bus, sessions, consoles, or what ``APPLY_NO_RESTART`` lists), each one named;
10. **record**: the apply goes into the snapshot's changelog entry.

The snapshot on disk is not changed by any step but the ``/etc`` merges, which every path into
it makes as well: the next boot brings up the same snapshot with what ``apply`` showed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from transactional_update.core import live_etc
from transactional_update.core.context import Context
from transactional_update.core.lock import Lock
from transactional_update.core.reboot_needed import MARKER
from transactional_update.errors import ApplyError, TUError
from transactional_update.etc import carry
from transactional_update.live import binds, procs
from transactional_update.live.plan import (
    ChangeClass,
    Plan,
    classify,
    compose_files,
    compose_packages,
)
from transactional_update.proc import run
from transactional_update.record import applied, changelog, filediff, pkgdb, pkgdiff
from transactional_update.snapshots import etcvol
from transactional_update.snapshots.snapinfo import read_info

log = logging.getLogger(__name__)

BASE = "tu-base"  # snapper userdata: the snapshot a transaction forked (record.changelog)
SYSTEMD_TIMEOUT = 300.0  # seconds; a daemon-reexec on a busy system takes a while


@dataclass(frozen=True)
class Applied:
    """What one apply did (``--json``, and the changelog's record)."""

    plan: Plan
    at: str = ""
    systemd: str = ""  # "daemon-reexec", "daemon-reload", or "" (no systemd runs)
    stale: tuple[procs.Stale, ...] = ()
    restarted: tuple[str, ...] = ()
    not_restarted: tuple[tuple[str, str], ...] = ()
    restart_failed: tuple[tuple[str, str], ...] = ()
    etc: tuple[carry.Carried, ...] = field(default=())
    in_old_etc: tuple[tuple[int, str], ...] = ()  # processes working in the hidden old /etc

    @property
    def done(self) -> bool:
        return bool(self.at)

    def as_json(self) -> dict[str, Any]:
        p = self.plan
        return {
            "snapshot": p.target,
            "from": p.live,
            "applied": self.done,
            "class": str(p.change_class),
            "kernel_pending": p.kernel_pending,
            "packages": [dict(x) for x in p.packages],
            "files": {"added": len(p.added), "replaced": [*p.replaced]},
            "not_live_until_reboot": [*p.kernel, *p.elsewhere],
            "kept_running": [f"/{top}/{tree}" for top, tree in p.keep],
            "systemd": self.systemd or None,
            "processes": [s.as_json() for s in self.stale],
            "restarted": [*self.restarted],
            "not_restarted": [{"unit": u, "why": w} for u, w in self.not_restarted],
            "restart_failed": [{"unit": u, "error": e} for u, e in self.restart_failed],
            "in_old_etc": [{"pid": pid, "command": c} for pid, c in self.in_old_etc],
        }


def apply(
    ctx: Context,
    *,
    allow_replacement: bool = False,
    restart_services: bool = False,
    say: Callable[[str], None] = log.info,
) -> Applied:
    """Make the default snapshot live (the module's steps); a refusal is an :class:`ApplyError`."""
    with Lock(ctx.managed.snapshots_dir):
        cut = applied.interrupted(ctx.root)
        merged: list[carry.Carried] = []
        if cut is None:
            plan = decide(ctx)
            if plan.change_class is ChangeClass.NONE and plan.live == plan.target:
                say(f"snapshot {plan.target} is live already; nothing to apply")
                done = applied.load(ctx.root, plan.target)
                if restart_services and done is not None:
                    # An apply whose restarts were cut short (or not asked for): the same
                    # scan and restarts again, over everything replaced since the boot.
                    return restart_again(ctx, done, say)
                return Applied(plan)
            gate(plan, allow_replacement)
            say(describe(plan))
            merged += [m for m in [carry_etc(ctx, plan)] if m is not None]
        else:
            # Cut short after its checks and its first /etc merge: finish what it started.
            plan = complete(ctx, cut)
            say(f"completing the interrupted apply: {describe(plan)}")
        at = datetime.now(UTC).isoformat(timespec="seconds")
        applied.begin(ctx.root, {"target": plan.target, "from": plan.live, "at": at})
        names: list[str] = []
        try:
            names = bind(ctx, plan)  # a failed bind takes its own mounts off again
            stale = procs.scan(ctx.root, plan.replaced)
            how = reload_systemd(ctx.root, reexec=any(s.pid == 1 for s in stale))
        except BaseException as exc:
            binds.detach(ctx.root, names)
            if names:
                reload_systemd(ctx.root, reexec=False, check=False)
            if cut is None:
                applied.abandon(ctx.root)
            if isinstance(exc, ApplyError) or not isinstance(exc, TUError | OSError):
                raise
            why, hint = (exc.message, exc.hint) if isinstance(exc, TUError) else (str(exc), None)
            raise ApplyError(
                f"{why}; nothing was applied, the running system is as it was",
                hint or "see the line above; the running system is unchanged",
            ) from exc
        merged += [m for m in [settle_etc(ctx, plan)] if m is not None]
        remember(ctx, plan, at)
        old_etc = ctx.managed.snapshot_dir(plan.live) / etcvol.ETC
        result = Applied(
            plan,
            at,
            how,
            tuple(stale),
            etc=tuple(merged),
            in_old_etc=tuple(procs.working_in(old_etc)),
        )
        result = restart(ctx, result, say) if restart_services else not_restarting(ctx, result)
        record(ctx, result)
        return result


def restart_again(ctx: Context, done: dict[str, Any], say: Callable[[str], None]) -> Applied:
    """``apply --restart-services`` on a live snapshot: restart what still uses replaced files."""
    booted = ctx.managed.booted()
    plan = decide(ctx, booted, int(done["snapshot"])) if booted is not None else None
    if plan is None:
        raise ApplyError("the booted snapshot is unknown", "reboot to bring the snapshot up")
    stale = procs.scan(ctx.root, plan.replaced)
    say(f"restarting what still uses files replaced since snapshot {plan.live} booted")
    return restart(ctx, Applied(plan, str(done.get("at", "")), "", tuple(stale)), say)


def report(result: Applied) -> list[str]:
    """The result as the admin reads it (after the plan and the restarts, said as they came)."""
    p = result.plan
    if not result.done:
        return []
    reloaded = f"; systemd: {result.systemd}" if result.systemd else ""
    lines = [
        f"snapshot {p.target} is live: its /usr and /etc run now{reloaded}; the booted "
        "snapshot is unchanged on disk, and the next boot brings up this one"
    ]
    restarted = set(result.restarted)
    for s in result.stale:
        if s.unit not in restarted:
            files = ", ".join(s.files[:3]) + (" …" if len(s.files) > 3 else "")
            lines.append(
                f"still using replaced files: PID {s.pid} {s.command} "
                f"({s.unit or 'no unit'}): {files}"
            )
    lines += [f"not restarted: {unit}: {why}" for unit, why in result.not_restarted]
    lines += [
        f"PID {pid} {command} works in the old /etc, now hidden: what it writes there is merged "
        "at the next sync-etc or boot; cd /etc to work in the live one"
        for pid, command in result.in_old_etc
    ]
    if p.kernel_pending:
        lines.append("the new kernel and initrd start with the next reboot (kexec or full)")
    return lines


def complete(ctx: Context, cut: dict[str, Any]) -> Plan:
    """The plan of an apply that was cut short, from what it recorded before its first bind."""
    target, live = cut.get("target"), cut.get("from")
    if not isinstance(target, int) or not isinstance(live, int):
        raise ApplyError(
            f"the record of an interrupted apply ({applied.INTENT_FILE}) is unreadable",
            "reboot: the running system then comes up as one snapshot again",
        )
    return decide(ctx, live, target)


def bind(ctx: Context, plan: Plan) -> list[str]:
    """The target's directories over the running ones, but those an interrupted apply bound."""
    snapshot_dir = ctx.managed.snapshot_dir(plan.target)
    names = binds.targets(snapshot_dir)
    return binds.attach(
        ctx.root,
        snapshot_dir,
        [n for n in names if not binds.is_bound(ctx.root, snapshot_dir, n)],
        plan.keep,
    )


def decide(ctx: Context, live: int | None = None, target: int | None = None) -> Plan:
    """The live and default snapshots, the chain between them, and the change, sorted."""
    managed = ctx.managed
    live = managed.live() if live is None else live
    default = managed.default() if target is None else target
    if live is None:
        raise ApplyError(
            "the running /usr is not a snapshot's", "apply works on a booted managed system"
        )
    if default is None:
        raise ApplyError(
            "the default subvolume is not a snapper snapshot; nothing to apply",
            "make a snapshot the default with: transactional-update rollback N",
        )
    if default == live:
        return classify(live, live, (), "changelog", (), (), os.uname().release)
    chain = descent(ctx.root, live, default)
    for number in (live, default):
        if not etcvol.has_own_etc(managed.snapshot_dir(number)):
            raise ApplyError(
                f"snapshot {number} has no /etc of its own; its /etc cannot be made live",
                "run: transactional-update setup-etc, and reboot once",
            )
    entries = [changelog.load(ctx.root, n) for n in chain]
    if all(e is not None and e.files_error is None for e in entries):
        files = compose_files(e.files for e in entries if e is not None)
        packages = compose_packages(e.packages for e in entries if e is not None)
        source = "changelog"
    else:
        live_dir, new_dir = managed.snapshot_dir(live), managed.snapshot_dir(default)
        log.info("reading the change from the snapshots (a changelog entry is missing)")
        files = [
            {"path": c.path, "kind": str(c.kind), "dir": bool(c.is_dir)}
            for c in filediff.file_changes(live_dir, new_dir, own_etc=False)
        ]
        manager = pkgdb.detect(new_dir)
        packages = [
            {"name": c.name, "kind": str(c.kind), "old": c.old, "new": c.new}
            for c in pkgdiff.package_changes(live_dir, new_dir, manager)
        ]
        source = "snapshots"
    plan = classify(live, default, chain, source, packages, files, os.uname().release)
    # Only what the running system has can be kept (a root without the running kernel's
    # modules, a container's, keeps nothing).
    kept = tuple(k for k in plan.keep if (ctx.root / k[0] / k[1]).is_dir())
    return plan if kept == plan.keep else replace(plan, keep=kept)


def descent(root: Path, live: int, target: int) -> list[int]:
    """The snapshots from *live* (excluded) to *target*, following each one's recorded base."""
    chain = [target]
    seen = {target}
    while True:
        try:
            base = read_info(root, chain[-1]).userdata.get(BASE, "")
        except TUError:
            base = ""
        if not base.isdigit():
            raise ApplyError(
                f"snapshot {target} is not a descendant of the running snapshot {live} "
                f"(snapshot {chain[-1]} records no base it was made from)",
                f"reboot to bring snapshot {target} up, or make one from {live}: "
                f"transactional-update rollback {live}",
            )
        number = int(base)
        if number == live:
            return chain[::-1]
        if number in seen or number <= 0:
            raise ApplyError(
                f"snapshot {target} is not a descendant of the running snapshot {live}",
                f"reboot to bring snapshot {target} up",
            )
        seen.add(number)
        chain.append(number)


def gate(plan: Plan, allow_replacement: bool) -> None:
    if plan.change_class is ChangeClass.REPLACEMENT and not allow_replacement:
        first = next(iter(plan.replaced), None)
        what = f"e.g. {first}" if first else "a package is upgraded, downgraded or removed"
        raise ApplyError(
            f"snapshot {plan.target} replaces or deletes {len(plan.replaced)} file(s) that "
            f"running programs may use ({what}); not applied",
            "apply with --allow-replacement (and --restart-services to restart what still "
            "uses the old files), or reboot",
        )


def describe(plan: Plan) -> str:
    chain = "" if plan.chain == (plan.target,) else f" via {', '.join(map(str, plan.chain))}"
    text = (
        f"applying snapshot {plan.target} over snapshot {plan.live}{chain}: "
        f"{plan.change_class}; {plan.summary()}"
    )
    if plan.kernel_pending:
        text += "; the new kernel starts only with the next reboot (kexec or full)"
    for top, tree in plan.keep:
        text += f"; the running kernel keeps its modules (/{top}/{tree}) until then"
    if plan.elsewhere:
        text += f"; {len(plan.elsewhere)} path(s) outside /usr and /etc wait for the reboot"
    return text


def carry_etc(ctx: Context, plan: Plan) -> carry.Carried | None:
    """The live edits into the snapshot before its ``/etc`` takes over (and, on an applied
    system, what the hidden old /etc took, first into the live one)."""
    live_etc.catch_up_hidden(ctx)
    try:
        merged = carry.merge_live(
            ctx.root,
            plan.live,
            plan.target,
            ctx.managed.snapshot_dir(plan.target),
            carry.Moment.APPLY,
        )
    except (TUError, OSError) as exc:
        why = exc.message if isinstance(exc, TUError) else str(exc)
        raise ApplyError(
            f"the live /etc's changes could not be merged into snapshot {plan.target}: {why}",
            "nothing was applied; the sync point is kept, so the next try merges them",
        ) from exc
    if merged is not None and not merged.empty:
        live_etc.record(ctx, merged)
    return merged


def settle_etc(ctx: Context, plan: Plan) -> carry.Carried | None:
    """What the old ``/etc`` took after the merge, as at the snapshot's first boot (which this
    now is for its ``/etc``); a failed path stays in the sync point for the next merge."""
    managed = ctx.managed
    try:
        merged = carry.at_boot(
            managed.snapshots_dir,
            plan.target,
            managed.snapshot_dir(plan.target),
            ctx.root / etcvol.ETC,
            carry.Moment.APPLY,
            still_running=True,
        )
    except (TUError, OSError) as exc:
        log.warning("the last /etc edits before the apply were not merged yet: %s", exc)
        return None
    if merged is not None and not merged.empty:
        live_etc.record(ctx, merged)
    return merged


def reload_systemd(root: Path, *, reexec: bool, check: bool = True) -> str:
    """Let systemd see the new units (and run its new binary); "" where systemd does not run."""
    if not (root / "run/systemd/system").is_dir():
        log.info("systemd does not run here; not reloading it")
        return ""
    how = "daemon-reexec" if reexec else "daemon-reload"
    try:
        run(["systemctl", how], what=f"systemctl {how}", timeout=SYSTEMD_TIMEOUT)
    except TUError as exc:
        if not check:
            return how
        raise ApplyError(
            f"systemctl {how} failed ({exc.message}); the new /usr and /etc were taken off again",
            "the running system is as it was; see: journalctl -b -u init.scope",
        ) from exc
    return how


def remember(ctx: Context, plan: Plan, at: str) -> None:
    """``/run``'s record of the apply; ``/run/reboot-needed`` only where a reboot still matters."""
    data = {
        "snapshot": plan.target,
        "from": plan.live,
        "booted": ctx.managed.booted(),
        "at": at,
        "kernel_pending": plan.kernel_pending,
        # What a reboot still brings: the kernel, what a package manager asked a reboot for,
        # and changes outside /usr and /etc.
        "reboot_pending": plan.kernel_pending
        or _reboot_asked(ctx.root, plan)
        or bool(plan.elsewhere),
    }
    try:
        applied.finish(ctx.root, data)
    except OSError as exc:
        log.warning("cannot record the apply in /run: %s", exc)
    if data["reboot_pending"]:
        return
    marker = ctx.root / MARKER.lstrip("/")
    try:
        marker.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("cannot remove %s: %s", marker, exc)


def _reboot_asked(root: Path, plan: Plan) -> bool:
    """Whether a package manager asked for a full reboot in one of the applied transactions."""
    entries = (changelog.load(root, n) for n in plan.chain)
    return any(e is not None and e.reboot is not None for e in entries)


def not_restarting(ctx: Context, result: Applied) -> Applied:
    restart, skipped = procs.restart_plan(result.stale, ctx.config.apply_no_restart, None)
    return replace(
        result,
        not_restarted=(*[(u, "not asked to (--restart-services)") for u in restart], *skipped),
    )


def restart(ctx: Context, result: Applied, say: Callable[[str], None]) -> Applied:
    """Each unit that still uses replaced files, one by one, named as it goes."""
    units, skipped = procs.restart_plan(result.stale, ctx.config.apply_no_restart, procs.own_unit())
    done, failed = [], []
    for unit in units:
        try:
            run(["systemctl", "restart", unit], what=f"restart {unit}", timeout=SYSTEMD_TIMEOUT)
        except TUError as exc:
            log.error("restarting %s failed: %s", unit, exc.message)
            failed.append((unit, exc.message))
            continue
        say(f"restarted {unit}")
        done.append(unit)
    return replace(
        result, restarted=tuple(done), not_restarted=tuple(skipped), restart_failed=tuple(failed)
    )


def record(ctx: Context, result: Applied) -> None:
    data = result.as_json()
    event = {
        "at": result.at,
        "who": asdict(changelog.who()),
        "from": result.plan.live,
        "class": data["class"],
        "kernel_pending": data["kernel_pending"],
        "processes": data["processes"],
        "restarted": data["restarted"],
        "not_restarted": data["not_restarted"],
        "restart_failed": data["restart_failed"],
    }
    try:
        if not changelog.add_apply_event(ctx.root, result.plan.target, event):
            log.info(
                "snapshot %d has no changelog entry to record the apply in", result.plan.target
            )
    except OSError as exc:
        log.warning("cannot record the apply of snapshot %d: %s", result.plan.target, exc)
