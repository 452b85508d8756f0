"""Fleet reboots: a machine reboots only while it holds one of its group's reboot slots.

``REBOOT_METHOD=fleetlock`` asks a FleetLock server (:mod:`.fleetlock`), ``etcd-lock`` takes a
slot of a semaphore in etcd (:mod:`.etcdlock`).  The reboot manager takes the slot at the
planned moment, inside its maintenance window, and reboots only when it got one; refused or
unanswered, it does not reboot and asks again after a back-off that doubles up to
:data:`MAX_BACKOFF`.  After the reboot the boot check gives the slot back once the machine is up
and healthy (an unhealthy machine keeps it: a bad update should not roll on through the fleet);
a failed release is retried by the reboot manager until it succeeds.

What the machine holds or waits for is kept in ``/var/lib/transactional-update/reboot-slot.json``
(shared ``/var``: the boot after the reboot reads it), shown by ``status`` and ``reboot-manager
status``.  The machine's ID is derived from ``/etc/machine-id`` with an application-specific
key, as Zincati's is (systemd's ``sd_id128_get_machine_app_specific``): stable, and not the
machine ID itself, which must not leave the machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from transactional_update.config.settings import Config, RebootMethod
from transactional_update.errors import TUError, UsageError
from transactional_update.files import write_atomic
from transactional_update.reboot.fleetlock import Answer, FleetLock
from transactional_update.reboot.slotstate import STATE_FILE

log = logging.getLogger(__name__)

LOCK_FILE = "var/lib/transactional-update/reboot-slot.lock"

# This tool's application ID for sd_id128_get_machine_app_specific (Zincati has its own).
APP_ID = "b4c7e1d2a9f04e3c8d6b5a4f3e2d1c0b"
# A slot stands free until a waiting machine asks again: a long back-off costs the fleet far
# more time than the requests cost the server (bench/fleet_bench.py: with a 15-minute bound,
# 50 machines took 9.3 times the ideal through 5 slots).  50 machines asking once a minute are
# less than one request a second.
FIRST_BACKOFF = timedelta(seconds=15)
MAX_BACKOFF = timedelta(seconds=60)
COORDINATED = (RebootMethod.FLEETLOCK, RebootMethod.ETCD_LOCK)


class Slots(Protocol):
    def describe(self) -> str: ...
    def acquire(self, node_id: str) -> Answer: ...
    def release(self, node_id: str) -> Answer: ...


class Postponed(TUError):
    """No slot now: the reboot waits until *until* (the reboot manager asks again then)."""

    def __init__(self, message: str, until: datetime) -> None:
        super().__init__(message, "the reboot manager asks again; see: reboot-manager status")
        self.until = until


@dataclass(frozen=True)
class SlotState:
    # "asking" (a request is out: a grant may come back unrecorded), "waiting" (asked, refused),
    # "holding" (rebooting), "releasing" (giving back)
    state: str
    method: str
    group: str
    node: str
    snapshot: int | None = None
    since: str = ""
    attempts: int = 0  # refusals in a row while waiting, failed releases while releasing
    next_try: str | None = None
    last_error: str | None = None
    asked: str = ""  # when the latest request went out (this boot's, or the last one's)
    # Waiting, but the last request went unanswered: the server may have granted it unseen.
    may_hold: bool = False


def app_specific_id(machine_id: str, app_id: str = APP_ID) -> str:
    """systemd's ``sd_id128_get_machine_app_specific``: HMAC-SHA256 of the app ID keyed by the
    machine ID, its first 16 bytes made a version-4 UUID, as 32 hex digits (pure)."""
    key = bytes.fromhex(machine_id.strip())
    digest = bytearray(hmac.new(key, bytes.fromhex(app_id), hashlib.sha256).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x40
    digest[8] = (digest[8] & 0x3F) | 0x80
    return digest.hex()


def node_id(root: Path) -> str:
    path = root / "etc/machine-id"
    try:
        raw = path.read_text(encoding="ascii").strip()
        return app_specific_id(raw)
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"cannot derive this machine's fleet ID from {path}: {exc}",
            "systemd-machine-id-setup writes one (32 hex digits)",
        ) from exc


def backoff(attempts: int) -> timedelta:
    """The wait after *attempts* refusals in a row: 15 s, 30 s, then every minute."""
    step: timedelta = FIRST_BACKOFF * (2 ** min(max(attempts - 1, 0), 16))
    return min(step, MAX_BACKOFF)


def slots_for(cfg: Config, method: RebootMethod) -> Slots:
    if method is RebootMethod.FLEETLOCK:
        if not cfg.fleetlock_url:
            raise UsageError(
                "REBOOT_METHOD=fleetlock needs the lock server: FLEETLOCK_URL is not set",
                "set FLEETLOCK_URL=http://HOST:PORT in /etc/transactional-update.conf",
            )
        return FleetLock(cfg.fleetlock_url, cfg.fleetlock_group)
    if method is RebootMethod.ETCD_LOCK:
        if not cfg.etcd_endpoints:
            raise UsageError(
                "REBOOT_METHOD=etcd-lock needs etcd: ETCD_ENDPOINTS is not set",
                "set ETCD_ENDPOINTS=http://HOST:2379 in /etc/transactional-update.conf",
            )
        from transactional_update.reboot.etcdlock import EtcdSemaphore

        return EtcdSemaphore(cfg.etcd_endpoints, cfg.fleetlock_group, cfg.reboot_slots)
    raise UsageError(f"REBOOT_METHOD={method} takes no reboot slots", "")


def load(root: Path) -> SlotState | None:
    try:
        data = json.loads((root / STATE_FILE).read_text(encoding="utf-8"))
        return SlotState(**data) if isinstance(data, dict) else None
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        log.warning("ignoring unreadable /%s: %s", STATE_FILE, exc)
        return None


def save(root: Path, state: SlotState | None) -> None:
    path = root / STATE_FILE
    if state is None:
        path.unlink(missing_ok=True)
        return
    write_atomic(path, json.dumps(asdict(state), indent=1) + "\n", mode=0o600)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One reader-writer of the slot's record at a time: the boot check gives back while the
    reboot manager, started at the same boot, may be asking."""
    path = root / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def take(
    root: Path, cfg: Config, method: RebootMethod, snapshot: int | None, now: datetime
) -> SlotState:
    """Ask for a slot; the state afterwards (holding, or waiting with the next try).

    Recorded before the answer is acted on: a machine that reboots holding a slot finds that
    out at its next boot, and gives it back.  And before the request: killed between the grant
    and its record, the machine still knows it may hold a slot, and gives it back all the same
    (a release of a slot not held is a no-op for both backends; a refusal proves none is held,
    as both grant again to a holder).
    """
    slots = slots_for(cfg, method)
    me = node_id(root)
    stamp = now.isoformat(timespec="seconds")
    with _locked(root):
        old = load(root)
        waiting = old is not None and old.state == "waiting"
        asking = (
            replace(old, state="asking", asked=stamp)
            if old is not None and waiting
            else SlotState(
                "asking", str(method), cfg.fleetlock_group, me, snapshot, stamp, asked=stamp
            )
        )
        save(root, asking)
        answer = slots.acquire(me)
        if answer.ok:
            state = SlotState(
                "holding", str(method), cfg.fleetlock_group, me, snapshot, stamp, asked=stamp
            )
            log.warning("reboot slot granted by %s", slots.describe())
        else:
            attempts = (old.attempts if old is not None and waiting else 0) + 1
            state = SlotState(
                "waiting",
                str(method),
                cfg.fleetlock_group,
                me,
                snapshot,
                old.since if old is not None and waiting else stamp,
                attempts,
                (now + backoff(attempts)).isoformat(timespec="seconds"),
                answer.why,
                asked=stamp,
                may_hold=not answer.reachable,
            )
            log.warning(
                "no reboot slot from %s: %s; asking again at %s",
                slots.describe(),
                answer.why,
                state.next_try,
            )
        save(root, state)
    return state


def release(root: Path, cfg: Config, now: datetime, node: str | None = None) -> Answer:
    """Give a slot back: this machine's (its state follows), or another's by ID (an admin's
    way to free the slot of a machine that will not come back)."""
    with _locked(root):
        return _release(root, cfg, now, node)


def _release(root: Path, cfg: Config, now: datetime, node: str | None = None) -> Answer:
    state = load(root)
    # The method the slot was taken with (the configuration may have changed since).
    method = RebootMethod(state.method) if state is not None else cfg.reboot_method
    slots = slots_for(cfg, method)
    me = node_id(root)
    answer = slots.release(node or me)
    if (node is None or node == me) and state is not None:
        if answer.ok:
            save(root, None)
        else:
            attempts = state.attempts + 1 if state.state == "releasing" else 1
            save(
                root,
                replace(
                    state,
                    state="releasing",
                    attempts=attempts,
                    next_try=(now + backoff(attempts)).isoformat(timespec="seconds"),
                    last_error=answer.why,
                ),
            )
    return answer


def boot_time(stat: Path = Path("/proc/stat")) -> datetime | None:
    """When this boot began (the kernel's ``btime``), or None."""
    try:
        for line in stat.read_text(encoding="ascii").splitlines():
            if line.startswith("btime "):
                return datetime.fromtimestamp(int(line.split()[1]), UTC)
    except (OSError, ValueError):
        pass
    return None


def after_boot(
    root: Path, cfg: Config, now: datetime, booted_at: datetime | None = None
) -> str | None:
    """Up and healthy: give back the slot this machine rebooted with; what happened, or None.

    A request made since *booted_at* is this boot's reboot manager's, for the next reboot: it
    is left alone.  A machine that waits holds nothing, unless its last request went
    unanswered.
    """
    with _locked(root):
        state = load(root)
        if state is None or (state.state == "waiting" and not state.may_hold):
            return None
        asked = _when(state.asked or state.since)
        if booted_at is not None and asked is not None and asked >= booted_at:
            return None
        answer = _release(root, cfg, now)
    if answer.ok:
        return f"reboot slot of group {state.group} given back"
    log.warning("the reboot slot was not given back (%s); the reboot manager retries", answer.why)
    return f"reboot slot not given back yet: {answer.why}"


def _when(stamp: str) -> datetime | None:
    try:
        return datetime.fromisoformat(stamp)
    except ValueError:
        return None


def retry_release(root: Path, cfg: Config, now: datetime, reboot_due: bool = True) -> None:
    """The reboot manager's part, at each tick: a release that failed is tried again when its
    time comes; a request that was cut short (the manager killed while asking), or one that
    went unanswered when no reboot is due any more, may hold a slot: it is given back (a
    reboot that is due asks again)."""
    with _locked(root):
        state = load(root)
        if state is None:
            return
        if state.state == "asking" or (
            state.state == "waiting" and state.may_hold and not reboot_due
        ):
            if _release(root, cfg, now).ok:
                log.warning("a reboot slot this machine may have held is given back")
            return
        if state.state != "releasing":
            return
        if state.next_try is not None and now < datetime.fromisoformat(state.next_try):
            return
        answer = _release(root, cfg, now)
    if answer.ok:
        log.warning("reboot slot of group %s given back", state.group)


def as_json(state: SlotState | None) -> dict[str, Any] | None:
    return None if state is None else asdict(state)
