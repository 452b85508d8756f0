"""``boot-check``: what every boot ends with (``transactional-update-health.service``).

1. **Settle a fallback.**  GRUB spent the tries of the snapshot on trial and booted the
   known-good one (:mod:`boot.counting`): the known-good snapshot becomes the default again,
   and the one on trial is marked "failed boot" - it never reached user space.
2. **Examine.**  The built-in checks and the admin's and packages' health.d checks.
3. **Record** the report (``/var/lib/transactional-update/boot-health.json``).
4. **Judge.**  Healthy: the booted default is known-good from now on, and its trial ends.
   Unhealthy: a default that is not known-good is marked failed, the known-good snapshot
   becomes the default again and the machine reboots with ``REBOOT_METHOD``; at most once per
   snapshot (one the admin makes the default again is not rolled back twice), never away from
   the known-good snapshot itself (nothing older is known to work: it only reports), and never
   after a one-time boot of another snapshot than the default.
5. **Tell** the admin (``NOTIFY_COMMAND``) whenever a snapshot failed, and **reboot** after a
   rollback.

A snapshot counts as "on trial" whenever it is the default and not the known-good one: every
default that passes a check becomes known-good, so a default that is not has never passed one.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from transactional_update.boot import counting, menustate
from transactional_update.core.context import Context
from transactional_update.core.lock import Lock
from transactional_update.errors import TUError
from transactional_update.health import builtin, checks
from transactional_update.paths import resolve_under
from transactional_update.proc import run
from transactional_update.record import bootstate, changelog
from transactional_update.snapshots import btrfs, etcvol

log = logging.getLogger(__name__)

# A transaction running at boot (a timer that caught up) holds the lock for minutes; the check
# waits for it rather than fail the boot's verdict.
LOCK_WAIT = 600.0
NOTIFY_TIMEOUT = 30.0  # seconds NOTIFY_COMMAND may take
FAILED_MARK = "tu-boot"  # snapper userdata of a snapshot that failed to boot: "failed"
# What tells kured and openSUSE's tools that a reboot is due: after a rollback the running
# system is what boots next, so neither may linger.
REBOOT_MARKERS = ("/var/run/reboot-required", "/run/reboot-needed")


class Verdict(StrEnum):
    GOOD = "known-good"  # healthy, the default: known-good from now on
    VISIT = "visit"  # healthy, a one-time boot of another snapshot: nothing changes
    ROLLED_BACK = "rolled-back"  # unhealthy: the known-good snapshot is the default again
    REPORTED = "reported"  # unhealthy, and no rollback is due (``why`` says why)


@dataclass(frozen=True)
class Facts:
    booted: int | None
    default: int | None
    trial: counting.Trial
    known_good: int | None
    failures: dict[int, dict[str, Any]]


@dataclass
class Result:
    report: checks.Report
    verdict: Verdict = Verdict.REPORTED
    booted: int | None = None
    known_good: int | None = None
    fell_back: int | None = None  # the snapshot GRUB gave up on, settled at this boot
    failed: int | None = None  # the snapshot this boot marked failed
    rolled_back_to: int | None = None
    why: str = ""  # why an unhealthy boot was not rolled back
    reason: str = ""  # why the snapshot failed
    reboot: str | None = None  # what the reboot method did
    slot: str | None = None  # what became of the fleet reboot slot this machine rebooted with
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "healthy": self.report.healthy,
            "verdict": str(self.verdict),
            "booted": self.booted,
            "known_good": self.known_good,
            "fell_back": self.fell_back,
            "failed": self.failed,
            "reason": self.reason or None,
            "rolled_back_to": self.rolled_back_to,
            "not_rolled_back": self.why or None,
            "reboot": self.reboot,
            "reboot_slot": self.slot,
            "checks": [o.as_json() for o in self.report.outcomes],
        }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def boot_check(ctx: Context, *, reboot: bool = True) -> Result:
    """The steps above; *reboot* False leaves the reboot after a rollback to the admin."""
    catch_up(ctx)
    facts = observe(ctx)
    fell_back = settle_fallback(ctx, facts)
    if fell_back is not None:
        facts = observe(ctx)  # the default, the trial and the failures changed
    report = examine(ctx)
    record(ctx, facts, report)
    result = Result(report, booted=facts.booted, fell_back=fell_back)
    if fell_back is not None:
        result.failed = fell_back
        result.reason = facts.failures.get(fell_back, {}).get("reason", "")
    if report.healthy:
        accept(ctx, facts, result)
    else:
        reject(ctx, facts, report, result)
    tell(ctx, result)
    if report.healthy:
        result.slot = give_back_slot(ctx)
    if result.verdict is Verdict.ROLLED_BACK and reboot:
        result.reboot = reboot_now(ctx)
    return result


def give_back_slot(ctx: Context) -> str | None:
    """Up and healthy: the fleet's reboot slot this machine rebooted with goes back (an
    unhealthy machine keeps it, so that a bad update stops rolling through the fleet)."""
    from transactional_update.reboot import slots

    try:
        return slots.after_boot(ctx.root, ctx.config, datetime.now(UTC), slots.boot_time())
    except TUError as exc:
        log.error("the reboot slot was not given back: %s", exc.message)
        return f"reboot slot not given back: {exc.message}"


def catch_up(ctx: Context) -> None:
    """A menu that does not boot the default (a cut before it followed) is rewritten first, with
    the trial: what this boot's verdict changes must reach the menu GRUB reads next."""
    found = menustate.state(ctx.root, ctx.managed.default())
    if found is not None and found["stale"]:
        with Lock(ctx.managed.snapshots_dir, max(ctx.config.lock_wait, LOCK_WAIT)):
            ctx.default_changed()


def observe(ctx: Context) -> Facts:
    data = bootstate.load(ctx.root)
    return Facts(
        ctx.managed.booted(),
        ctx.managed.default(),
        counting.read(ctx.root),
        bootstate.known_good(data),
        bootstate.failures(data),
    )


def examine(ctx: Context) -> checks.Report:
    """The built-in checks, then every health.d check."""
    timeout = ctx.config.health_check_timeout
    found = builtin.run_builtin(ctx.root, ctx.managed, ctx.config)
    found += [checks.run_check(c, ctx.root, timeout) for c in checks.discover(ctx.root)]
    return checks.Report(tuple(found))


def fell_back(facts: Facts) -> bool:
    """GRUB booted the known-good snapshot because the default's tries were spent."""
    trial = facts.trial
    return (
        trial.number is not None
        and trial.number == facts.default
        and trial.number != facts.known_good
        and trial.tries == 0
        and facts.booted is not None
        and facts.booted != facts.default
        and facts.booted in (trial.good, facts.known_good)
    )


def settle_fallback(ctx: Context, facts: Facts) -> int | None:
    """After GRUB's fallback: the booted snapshot is the default again; the failed one marked."""
    if not fell_back(facts):
        return None
    failed, booted = facts.default, facts.booted
    assert failed is not None and booted is not None
    tries = ctx.config.boot_tries
    reason = f"did not reach user space in {tries} {'try' if tries == 1 else 'tries'}"
    with Lock(ctx.managed.snapshots_dir, max(ctx.config.lock_wait, LOCK_WAIT)):
        make_default(ctx, booted)
        mark_failed(ctx, failed, reason, how="boot-counting", rolled_back_to=booted)
        ctx.default_changed()  # the trial ends (known-good is the default) and the menu follows
    log.error("snapshot %d %s; rolled back to %d", failed, reason, booted)
    return failed


def record(ctx: Context, facts: Facts, report: checks.Report) -> None:
    check = {
        "snapshot": facts.booted,
        "at": _now(),
        "healthy": report.healthy,
        "failed": [o.check.id for o in report.failed],
        "checks": [o.as_json() for o in report.outcomes],
    }
    try:
        bootstate.save(ctx.root, bootstate.with_check(bootstate.load(ctx.root), check))
    except OSError as exc:
        log.warning("cannot record the boot check: %s", exc.strerror or exc)


def accept(ctx: Context, facts: Facts, result: Result) -> None:
    """A healthy boot of the default makes it known-good and ends its trial."""
    booted = facts.booted
    result.known_good = facts.known_good
    if booted is None or booted != facts.default:
        result.verdict = Verdict.VISIT
        return
    on_trial = booted != facts.known_good
    with Lock(ctx.managed.snapshots_dir, max(ctx.config.lock_wait, LOCK_WAIT)):
        if changed_meanwhile(ctx, facts, result):
            return
        result.verdict, result.known_good = Verdict.GOOD, booted
        # GRUB's count first: a known-good record beside a spent count would make the next boot
        # fall back from a snapshot that passed.
        counting.end_trial(ctx.root, booted, booted)
        data = bootstate.load(ctx.root)
        bootstate.save(ctx.root, bootstate.with_known_good(data, booted, _now(), on_trial))
        if on_trial:
            changelog.add_boot_event(ctx.root, booted, {"event": "known-good", "at": _now()})
            ctx.default_changed()  # the menu's marks and its fallback follow
    if on_trial:
        log.info("snapshot %d passed its boot check: it is known-good", booted)


def changed_meanwhile(ctx: Context, facts: Facts, result: Result) -> bool:
    """The default moved while the checks ran (a commit, a rollback): the verdict is about a
    boot that no longer decides anything, so it changes nothing."""
    if ctx.managed.default() == facts.default:
        return False
    result.verdict = Verdict.REPORTED
    result.why = "the default changed while the checks ran"
    return True


def no_rollback(facts: Facts) -> str | None:
    """Why an unhealthy boot is not rolled back (None: it is)."""
    booted, good = facts.booted, facts.known_good
    if booted is None or booted != facts.default:
        return "a one-time boot of another snapshot than the default is never rolled back"
    if good is None:
        return "no snapshot is known-good yet: there is nothing to roll back to"
    if booted == good:
        return f"snapshot {booted} is the known-good snapshot: nothing older is known to work"
    if facts.failures.get(booted, {}).get("automatic_rollbacks", 0) >= 1:
        return (
            f"snapshot {booted} was rolled back automatically once already; "
            "it is the default again by choice"
        )
    return None


def unfinished_rollback(facts: Facts) -> bool:
    """The snapshot on trial runs, but the known-good one is the default already and no failure
    is recorded: a cut came between a rollback's steps, before the menu followed."""
    return (
        facts.booted is not None
        and facts.booted == facts.trial.number
        and facts.default == facts.known_good
        and facts.booted not in facts.failures
    )


def reject(ctx: Context, facts: Facts, report: checks.Report, result: Result) -> None:
    """An unhealthy default on trial: marked failed, the known-good snapshot the default."""
    reason = failure_reason(report)
    result.known_good = facts.known_good
    result.reason = reason
    why = None if unfinished_rollback(facts) else no_rollback(facts)
    good = facts.known_good
    if why is None:
        assert good is not None
        target = ctx.managed.snapshot_dir(good)
        if not target.is_dir() or etcvol.lacks_etc(target):
            why = f"known-good snapshot {good} is gone or cannot boot"
    if why is not None:
        result.verdict, result.why = Verdict.REPORTED, why
        if facts.booted is not None and facts.booted == facts.default:
            # It reached user space: GRUB must not count it down and fall back from it later
            # (that would be a second rollback, under a false reason).
            with Lock(ctx.managed.snapshots_dir, max(ctx.config.lock_wait, LOCK_WAIT)):
                counting.end_trial(ctx.root, facts.booted, None)
        log.error("snapshot %s is unhealthy (%s); not rolled back: %s", facts.booted, reason, why)
        return
    assert good is not None and facts.booted is not None
    with Lock(ctx.managed.snapshots_dir, max(ctx.config.lock_wait, LOCK_WAIT)):
        if changed_meanwhile(ctx, facts, result):
            return
        make_default(ctx, good)
        mark_failed(ctx, facts.booted, reason, how="health-check", rolled_back_to=good)
        ctx.default_changed()
    result.verdict, result.failed, result.rolled_back_to = Verdict.ROLLED_BACK, facts.booted, good
    log.error("snapshot %d is unhealthy (%s); rolled back to %d", facts.booted, reason, good)


def failure_reason(report: checks.Report) -> str:
    """``health check required/nginx failed: exit 1: <its last line>`` (and how many more)."""
    bad = [o for o in report.failed if o.check.level is checks.Level.REQUIRED]
    if not bad:
        return "no required check failed"
    first = bad[0]
    text = f"health check {first.check.id} failed: {first.reason}"
    last = first.output.strip().splitlines()[-1:] if first.output.strip() else []
    if last and last[0] != first.reason:
        text += f": {last[0]}"
    if len(bad) > 1:
        text += f" (and {len(bad) - 1} more)"
    return text


def make_default(ctx: Context, number: int) -> None:
    btrfs.set_default(ctx.managed.snapshot_dir(number))
    btrfs.sync(ctx.root)  # on disk before the failure is recorded and the machine reboots


def mark_failed(ctx: Context, number: int, reason: str, *, how: str, rolled_back_to: int) -> None:
    """Snapshot *number* failed to boot: in our state, its changelog and snapper's userdata."""
    failure = {"reason": reason, "at": _now(), "how": how, "rolled_back_to": rolled_back_to}
    bootstate.save(ctx.root, bootstate.with_failure(bootstate.load(ctx.root), number, failure))
    changelog.add_boot_event(ctx.root, number, {"event": "failed", **failure})
    try:
        info = ctx.snapper.get_snapshot(number)
        ctx.snapper.set_snapshot(number, userdata={**info.userdata, FAILED_MARK: "failed"})
    except TUError as exc:
        log.warning("snapper's userdata of snapshot %d not marked: %s", number, exc.message)


def tell(ctx: Context, result: Result) -> None:
    """NOTIFY_COMMAND for every failure; the reboot markers of a rolled-back update go."""
    if result.failed is None and result.verdict is not Verdict.REPORTED:
        return
    if result.fell_back is not None or result.verdict is Verdict.ROLLED_BACK:
        for marker in REBOOT_MARKERS:
            try:
                resolve_under(ctx.root, marker).unlink(missing_ok=True)
            except OSError as exc:
                log.warning("cannot remove %s: %s", marker, exc.strerror or exc)
    message = f"transactional-update: {summary(result)}"
    argv = [*ctx.config.notify_command, message]
    try:
        # Bounded: the reboot into the known-good snapshot comes after it.
        res = run(argv, check=False, what="NOTIFY_COMMAND", timeout=NOTIFY_TIMEOUT)
    except TUError as exc:
        log.warning("the notification failed: %s", exc.message)
        return
    if res.returncode != 0:
        log.warning("NOTIFY_COMMAND %s failed (exit %d)", shlex.join(argv[:1]), res.returncode)


def summary(result: Result) -> str:
    """One line for the admin: what failed, why, and what was done."""
    if result.verdict is Verdict.ROLLED_BACK:
        return (
            f"snapshot {result.failed} failed its boot check ({result.reason}); "
            f"rolled back to {result.rolled_back_to}, rebooting"
        )
    if result.verdict is Verdict.REPORTED:
        return f"snapshot {result.booted} is unhealthy ({result.reason}); {result.why}"
    return (
        f"snapshot {result.failed} failed to boot ({result.reason}); rolled back to {result.booted}"
    )


def verdict_text(result: Result) -> str:
    """The boot check's last line(s) for the admin."""
    lines = []
    if result.fell_back is not None:
        lines.append(
            f"snapshot {result.fell_back} failed to boot ({result.reason}); "
            f"snapshot {result.booted} is the default again"
        )
    if result.verdict is Verdict.GOOD:
        lines.append(f"snapshot {result.booted} is known-good")
    elif result.verdict is Verdict.VISIT:
        lines.append(
            f"snapshot {result.booted} is healthy; it is not the default, so nothing changes"
        )
    else:
        lines.append(summary(result))
    if result.slot is not None:
        lines.append(result.slot)
    if result.reboot is not None:
        lines.append(result.reboot)
    return "\n".join(lines)


def reboot_now(ctx: Context) -> str:
    """Boot the known-good default with REBOOT_METHOD."""
    from transactional_update.reboot import methods

    try:
        outcome = methods.request_reboot(ctx.root, ctx.config, ctx.managed)
    except TUError as exc:
        log.error("the reboot into the known-good snapshot failed: %s", exc.message)
        return f"failed: {exc.message}"
    return outcome.message
