"""Fleet reboot slots: the FleetLock client against a protocol server written from the
specification (testkit.fleetlock_server, real HTTP on loopback), the machine's fleet ID against
systemd's own, the back-off, the slot's state through take, reboot and release, and the reboot
manager's handling of a refusal."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from testkit.fleetlock_server import FleetLockServer
from transactional_update.config.settings import Config, RebootMethod, Window
from transactional_update.reboot import etcdlock, fleetlock, manager, slots, slotstate

NOW = datetime(2026, 12, 1, 3, 40, tzinfo=UTC)
MACHINE_ID = "3d1219c7c4c5404aaa1f6d2a48adfda4"


@pytest.fixture
def server() -> Iterator[FleetLockServer]:
    s = FleetLockServer(slots=1)
    yield s
    s.stop()


def machine(tmp_path: Path, name: str, machine_id: str = MACHINE_ID) -> Path:
    root = tmp_path / name
    (root / "etc").mkdir(parents=True)
    (root / "etc/machine-id").write_text(machine_id + "\n")
    return root


def cfg(url: str, **kw: object) -> Config:
    return replace(Config(), reboot_method=RebootMethod.FLEETLOCK, fleetlock_url=url, **kw)  # type: ignore[arg-type]


def test_the_requests_are_what_the_protocol_specifies(server: FleetLockServer) -> None:
    call = fleetlock.build(server.url + "/", "pre-reboot", "abc", "workers")
    assert call.url == f"{server.url}/v1/pre-reboot"
    assert call.headers == (("fleet-lock-protocol", "true"), ("content-type", "application/json"))
    assert json.loads(call.body) == {"client_params": {"id": "abc", "group": "workers"}}
    client = fleetlock.FleetLock(server.url, "workers")
    assert client.acquire("abc") == fleetlock.Answer(True, "granted")
    (seen,) = server.seen
    assert (seen.method, seen.path) == ("POST", "/v1/pre-reboot")
    assert seen.headers["fleet-lock-protocol"] == "true"
    assert json.loads(seen.body) == {"client_params": {"id": "abc", "group": "workers"}}
    assert server.holders("workers") == ["abc"]


def test_grants_refusals_releases_and_outages(server: FleetLockServer) -> None:
    one, two = (
        fleetlock.FleetLock(server.url, "default"),
        fleetlock.FleetLock(server.url, "default"),
    )
    assert one.acquire("a").ok and one.acquire("a").ok, "taking a held slot again is fine"
    refused = two.acquire("b")
    assert refused == fleetlock.Answer(False, "failed_lock: all reboot slots of default are taken")
    assert one.release("a").ok and two.release("nobody").ok
    assert two.acquire("b").ok and server.holders() == ["b"]
    server.mode = "refuse"
    assert one.acquire("a") == fleetlock.Answer(
        False, "internal_error: the lock store is unavailable"
    )
    server.mode = "garbage"
    assert one.acquire("a") == fleetlock.Answer(False, "HTTP 502: <html>bad gateway</html>")
    server.mode = "down"
    down = one.acquire("a")
    assert not down.ok and not down.reachable and down.why.startswith(f"{server.url}/v1/pre-reboot")
    server.stop()
    gone = one.release("b")
    assert not gone.ok and not gone.reachable and "is unreachable" in gone.why


def test_a_bad_body_or_missing_header_is_refused_by_the_server(server: FleetLockServer) -> None:
    call = fleetlock.build(server.url, "pre-reboot", "a", "default")
    no_header = fleetlock.Call(call.url, (("content-type", "application/json"),), call.body)
    assert fleetlock.send(no_header) == fleetlock.Answer(
        False, "missing_header: fleet-lock-protocol: true is required"
    )
    bad_group = fleetlock.build(server.url, "pre-reboot", "a", "no spaces")
    assert fleetlock.send(bad_group).why == "bad_body: invalid id or group"


@pytest.mark.skipif(shutil.which("systemd-id128") is None, reason="needs systemd-id128")
def test_the_fleet_id_is_systemds_app_specific_id_of_the_machine_id(tmp_path: Path) -> None:
    host = Path("/etc/machine-id")
    if not host.is_file():
        pytest.skip("no /etc/machine-id")
    theirs = subprocess.run(
        ["systemd-id128", "--app-specific", slots.APP_ID, "machine-id"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert slots.app_specific_id(host.read_text()) == theirs
    root = machine(tmp_path, "m")
    ident = slots.node_id(root)
    assert len(ident) == 32 and ident != MACHINE_ID and ident[12] == "4" and ident[16] in "89ab"


def test_the_back_off_doubles_and_is_bounded() -> None:
    waits = [slots.backoff(n).total_seconds() for n in range(1, 9)]
    assert waits == [15, 30, 60, 60, 60, 60, 60, 60]
    assert slots.backoff(10**6) == slots.MAX_BACKOFF


def test_a_slot_is_waited_for_taken_and_given_back_after_the_boot(
    server: FleetLockServer, tmp_path: Path
) -> None:
    a = machine(tmp_path, "a", "11" * 16)
    b = machine(tmp_path, "b", "22" * 16)
    c = cfg(server.url)
    held = slots.take(a, c, RebootMethod.FLEETLOCK, 5, NOW)
    assert (held.state, held.snapshot, held.since) == ("holding", 5, NOW.isoformat())
    first = slots.take(b, c, RebootMethod.FLEETLOCK, 7, NOW)
    assert (first.state, first.attempts) == ("waiting", 1)
    assert first.next_try == (NOW + timedelta(seconds=15)).isoformat()
    assert first.last_error == "failed_lock: all reboot slots of default are taken"
    second = slots.take(b, c, RebootMethod.FLEETLOCK, 7, NOW + timedelta(seconds=15))
    assert (second.attempts, second.since) == (2, NOW.isoformat())
    assert second.next_try == (NOW + timedelta(seconds=45)).isoformat()
    assert "waiting for a reboot slot (fleetlock, group default)" in (
        slotstate.describe(slotstate.read(b)) or ""
    )
    # a reboots; its boot check finds it healthy and gives the slot back; then b gets it.
    assert slots.after_boot(a, c, NOW) == "reboot slot of group default given back"
    assert slots.load(a) is None
    assert slots.take(b, c, RebootMethod.FLEETLOCK, 7, NOW).state == "holding"
    assert server.holders() == [slots.node_id(b)]
    # The server is down when b comes back: the release is retried until it goes through.
    server.mode = "down"
    assert (slots.after_boot(b, c, NOW) or "").startswith("reboot slot not given back yet:")
    releasing = slots.load(b)
    assert releasing is not None and (releasing.state, releasing.attempts) == ("releasing", 1)
    server.mode = "normal"
    slots.retry_release(b, c, NOW + timedelta(seconds=10))  # not yet: the back-off
    assert server.holders() == [slots.node_id(b)]
    slots.retry_release(b, c, NOW + timedelta(seconds=15))
    assert server.holders() == [] and slots.load(b) is None


TAKE = (
    "import sys\n"
    "from datetime import UTC, datetime\n"
    "from pathlib import Path\n"
    "from dataclasses import replace\n"
    "from transactional_update.config.settings import Config, RebootMethod\n"
    "from transactional_update.reboot import slots\n"
    "c = replace(Config(), reboot_method=RebootMethod.FLEETLOCK, fleetlock_url=sys.argv[2])\n"
    "slots.take(Path(sys.argv[1]), c, RebootMethod.FLEETLOCK, 5, datetime.now(UTC))\n"
)


def test_a_machine_killed_between_the_grant_and_its_record_gives_the_slot_back_at_boot(
    server: FleetLockServer, tmp_path: Path
) -> None:
    """kill -9 after the server granted the slot and before the machine wrote that down: the
    record made before asking says a slot may be held, so the boot check gives it back."""
    a = machine(tmp_path, "a", "11" * 16)
    c = cfg(server.url)
    server.answer_gate = threading.Event()
    child = subprocess.Popen([sys.executable, "-c", TAKE, str(a), server.url])
    try:
        deadline = time.monotonic() + 30
        while server.holders() != [slots.node_id(a)] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.holders() == [slots.node_id(a)], "the grant never came"
    finally:
        child.kill()
        child.wait()
        server.answer_gate.set()
    left = slots.load(a)
    assert left is not None and (left.state, left.node) == ("asking", slots.node_id(a))
    assert (slotstate.describe(slotstate.read(a)) or "").startswith(
        "asking for a reboot slot (fleetlock, group default); if this stays, the asking was cut"
    )
    assert slots.after_boot(a, c, NOW) == "reboot slot of group default given back"
    assert server.holders() == [] and slots.load(a) is None
    # The same cut without a reboot (the reboot manager was killed and restarts): its first
    # tick gives the slot back; a reboot that is due asks again.
    held = slots.take(a, c, RebootMethod.FLEETLOCK, 5, NOW)
    assert held.state == "holding"
    slots.save(a, replace(held, state="asking"))
    slots.retry_release(a, c, NOW)
    assert server.holders() == [] and slots.load(a) is None


def test_the_boot_check_leaves_this_boots_request_and_a_lost_answer_may_hold_a_slot(
    server: FleetLockServer, tmp_path: Path
) -> None:
    a = machine(tmp_path, "a", "11" * 16)
    c = cfg(server.url)
    # The reboot manager of this boot asked (a reboot is due at once) before the boot check
    # ran: that slot is for the coming reboot, not the one this boot came from.
    assert slots.take(a, c, RebootMethod.FLEETLOCK, 5, NOW).state == "holding"
    booted = NOW - timedelta(minutes=1)
    assert slots.after_boot(a, c, NOW + timedelta(minutes=1), booted_at=booted) is None
    assert server.holders() == [slots.node_id(a)]
    later = NOW + timedelta(minutes=3)  # the reboot happened; this boot began after the request
    assert slots.after_boot(a, c, later, booted_at=NOW + timedelta(minutes=2)) == (
        "reboot slot of group default given back"
    )
    # Unanswered (the server or the network went down mid-request): the grant may have been
    # made unseen.  Still due, the manager keeps asking; no longer due, it gives the slot back.
    server.mode = "down"
    lost = slots.take(a, c, RebootMethod.FLEETLOCK, 6, NOW)
    assert (lost.state, lost.may_hold) == ("waiting", True)
    slots.retry_release(a, c, NOW, reboot_due=True)
    assert slots.load(a) == lost
    server.mode = "normal"
    slots.retry_release(a, c, NOW, reboot_due=False)
    assert slots.load(a) is None and server.seen[-1].path == "/v1/steady-state"
    # A plain refusal proves no slot is held: the boot check has nothing to give back.
    other = machine(tmp_path, "other", "55" * 16)
    slots.take(other, c, RebootMethod.FLEETLOCK, 9, NOW)
    refused = slots.take(a, c, RebootMethod.FLEETLOCK, 6, NOW)
    assert (refused.state, refused.may_hold) == ("waiting", False)
    assert slots.after_boot(a, c, later) is None


def test_an_admin_releases_a_dead_machines_slot_by_id(
    server: FleetLockServer, tmp_path: Path
) -> None:
    dead, admin = machine(tmp_path, "dead", "33" * 16), machine(tmp_path, "admin", "44" * 16)
    c = cfg(server.url)
    slots.take(dead, c, RebootMethod.FLEETLOCK, 3, NOW)
    assert slots.take(admin, c, RebootMethod.FLEETLOCK, 3, NOW).state == "waiting"
    answer = slots.release(admin, c, NOW, node=slots.node_id(dead))
    assert answer.ok and server.holders() == []
    assert slots.load(admin) is not None, "the admin machine's own record is not touched"


def test_a_method_without_its_server_is_refused_with_the_setting_to_fix() -> None:
    with pytest.raises(Exception, match="FLEETLOCK_URL is not set"):
        slots.slots_for(Config(), RebootMethod.FLEETLOCK)
    with pytest.raises(Exception, match="ETCD_ENDPOINTS is not set"):
        slots.slots_for(Config(), RebootMethod.ETCD_LOCK)


def test_the_reboot_manager_asks_again_after_the_back_off_and_reboots_only_with_a_slot(
    server: FleetLockServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = machine(tmp_path, "m")
    other = machine(tmp_path, "other", "55" * 16)
    c = cfg(server.url)
    slots.take(other, c, RebootMethod.FLEETLOCK, 9, NOW)
    window = Window(start=NOW.time().replace(minute=30), duration=timedelta(hours=1))
    manager.save(root, manager.Plan(4, NOW, NOW))
    rebooted: list[str] = []

    def reboot() -> None:
        held = slots.take(root, c, RebootMethod.FLEETLOCK, 4, NOW)
        if held.state != "holding":
            assert held.next_try is not None
            raise slots.Postponed(
                f"no reboot slot: {held.last_error}", datetime.fromisoformat(held.next_try)
            )
        rebooted.append("yes")

    m = manager.Manager(root, window, pending=lambda: 4, locked=lambda: False, reboot=reboot)
    with caplog.at_level(logging.INFO):
        decision, plan = m.tick(NOW)
    assert decision is manager.Decision.WAIT and rebooted == []
    said = [r.getMessage() for r in caplog.records if r.name.endswith("manager")]
    assert said == ["the reboot into snapshot 4 is due (maintenance window)"], said
    assert plan.planned == NOW + timedelta(seconds=15) and plan.attempts == 0
    assert plan.last_error == "no reboot slot: failed_lock: all reboot slots of default are taken"
    slots.release(other, c, NOW)
    decision, _ = m.tick(NOW + timedelta(seconds=15))
    assert decision is manager.Decision.REBOOT and rebooted == ["yes"]
    st = manager.status(root, window, 4, NOW)
    assert st["reboot_slot"]["state"] == "holding"
    assert "slot:     holding a reboot slot (fleetlock, group default)" in manager.status_text(
        st, window
    )


def test_the_etcd_semaphore_decisions() -> None:
    holders, why = etcdlock.decide_acquire({}, "a", 2, "t0")
    assert holders == {"a": {"since": "t0"}} and why == "granted"
    holders, why = etcdlock.decide_acquire({"a": {}, "b": {}}, "c", 2, "t1")
    assert holders is None and why == "all 2 slot(s) are taken (by a, b)"
    assert etcdlock.decide_acquire({"a": {}}, "a", 1, "t2") == ({"a": {}}, "granted (held already)")
    assert etcdlock.decide_release({"a": {}, "b": {}}, "a") == ({"b": {}}, "released")
    assert etcdlock.decide_release({}, "a") == (None, "released (held none)")
    txn = etcdlock.compare_and_put("/k", 0, "v")
    assert txn["compare"] == [
        {"key": "L2s=", "result": "EQUAL", "target": "VERSION", "version": "0"}
    ]
    txn = etcdlock.compare_and_put("/k", 17, "v")
    assert txn["compare"][0]["target"] == "MOD" and txn["compare"][0]["mod_revision"] == "17"
    assert txn["success"] == [{"request_put": {"key": "L2s=", "value": "dg=="}}]
