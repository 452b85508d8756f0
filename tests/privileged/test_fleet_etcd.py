"""Reboot slots in a real etcd (Debian's etcd-server on a loopback port, removed afterwards).

Simulated machines are processes, each with a fake root of its own (its machine ID and /var)
where only the reboot path runs: the real slot code takes a slot, "reboots" (sleeps), and gives
the slot back as the boot check does.  They race for the slots round after round; the log of
when each held one must never show more holders than slots.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from testkit.etcd import etcd_server
from testkit.fleet_machine import make_root, max_holders
from testkit.systems import REPO
from transactional_update.config.settings import Config, RebootMethod
from transactional_update.reboot import slots
from transactional_update.reboot.etcdlock import EtcdSemaphore

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None, reason="needs etcd-server")


@pytest.fixture(scope="module")
def etcd() -> Iterator[str]:
    with etcd_server() as url:
        yield url


def machine_cmd(
    root: Path, url: str, group: str, n_slots: int, rounds: int, log: Path
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "testkit.fleet_machine",
        str(root),
        "etcd-lock",
        url,
        group,
        str(n_slots),
        str(rounds),
        "0.05",
        "0.005",
        str(log),
    ]


def cfg(url: str, group: str, n: int, *more: str) -> Config:
    return replace(
        Config(),
        reboot_method=RebootMethod.ETCD_LOCK,
        etcd_endpoints=(*more, url),
        fleetlock_group=group,
        reboot_slots=n,
    )


@pytest.mark.parametrize(("machines", "n_slots", "rounds"), [(12, 3, 12), (8, 1, 10)])
def test_machines_racing_for_slots_never_exceed_them_and_give_every_one_back(
    etcd: str, tmp_path: Path, machines: int, n_slots: int, rounds: int
) -> None:
    group = f"race-{machines}-{n_slots}"
    log = tmp_path / "holders.log"
    procs = [
        subprocess.Popen(
            machine_cmd(make_root(tmp_path, i), etcd, group, n_slots, rounds, log), cwd=REPO
        )
        for i in range(machines)
    ]
    for p in procs:
        assert p.wait(timeout=600) == 0
    most, reboots = max_holders(log.read_text())
    assert reboots == machines * rounds
    assert most <= n_slots, f"{most} machines held a slot at once; {n_slots} allowed"
    assert most == n_slots, "the machines did not even contend (the test would prove nothing)"
    assert EtcdSemaphore([etcd], group, n_slots).holders() == {}, "every slot was given back"


def test_a_holder_killed_mid_reboot_keeps_its_slot_until_it_comes_back(
    etcd: str, tmp_path: Path
) -> None:
    group = "crash"
    crashed, other, late = (make_root(tmp_path, i) for i in range(3))
    c = cfg(etcd, group, 2)
    # The crashing machine takes its slot in a process of its own and dies mid-"reboot".
    code = (
        "import sys, time\n"
        "from datetime import UTC, datetime\n"
        "from pathlib import Path\n"
        "from dataclasses import replace\n"
        "from transactional_update.config.settings import Config, RebootMethod\n"
        "from transactional_update.reboot import slots\n"
        "c = replace(Config(), reboot_method=RebootMethod.ETCD_LOCK, etcd_endpoints=(sys.argv[2],),"
        " fleetlock_group='crash', reboot_slots=2)\n"
        "s = slots.take(Path(sys.argv[1]), c, RebootMethod.ETCD_LOCK, 2, datetime.now(UTC))\n"
        "print(s.state, flush=True)\n"
        "time.sleep(3600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(crashed), etcd],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    now = datetime.now(UTC)
    assert slots.take(other, c, RebootMethod.ETCD_LOCK, 2, now).state == "holding"
    refused = slots.take(late, c, RebootMethod.ETCD_LOCK, 2, now)
    holders = ", ".join(sorted([slots.node_id(crashed), slots.node_id(other)]))
    assert refused.state == "waiting"
    assert refused.last_error == f"all 2 slot(s) are taken (by {holders})"
    # It comes back up and healthy: its boot check gives the slot back, and the next one gets it.
    assert slots.after_boot(crashed, c, now) == "reboot slot of group crash given back"
    assert slots.take(late, c, RebootMethod.ETCD_LOCK, 2, now).state == "holding"
    # A machine that never comes back: an admin frees its slot by its ID, from any machine.
    assert slots.release(crashed, c, now, node=slots.node_id(other)).ok
    assert set(EtcdSemaphore([etcd], group, 2).holders()) == {slots.node_id(late)}


def test_a_partition_never_reboots_without_a_slot(etcd: str, tmp_path: Path) -> None:
    root = make_root(tmp_path, 7)
    dead = "http://127.0.0.1:1"
    c = replace(cfg(etcd, "partition", 1), etcd_endpoints=(dead,))
    state = slots.take(root, c, RebootMethod.ETCD_LOCK, 2, datetime.now(UTC))
    assert state.state == "waiting"
    assert (state.last_error or "").startswith(f"etcd at {dead} is unreachable")
    # Another endpoint of the cluster answers: the dead one is skipped.
    state = slots.take(
        root, cfg(etcd, "partition", 1, dead), RebootMethod.ETCD_LOCK, 2, datetime.now(UTC)
    )
    assert state.state == "holding"
