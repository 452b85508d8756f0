"""One simulated machine of a fleet, for the etcd tests and the benchmark: a fake root (its own
``/etc/machine-id`` and ``/var``), the real slot code (:func:`slots.take`, then, after a
simulated reboot, :func:`slots.after_boot` as the boot check calls it).

``python -m testkit.fleet_machine ROOT METHOD URL GROUP SLOTS ROUNDS REBOOT_S WAIT_S LOG``:
*ROUNDS* reboots, each after a slot was granted; refused, it waits *WAIT_S* (the tests) or its
back-off scaled by ``-WAIT_S`` when negative (the benchmark: ``-30`` is 30 times faster).  Each
reboot appends ``take ID T`` when the slot was granted and ``give ID T`` before it is given back
(T: CLOCK_MONOTONIC ns, the same clock for every process), so the intervals lie inside the real
holding times.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path


def run(
    root: Path,
    method: str,
    url: str,
    group: str,
    slots_n: int,
    rounds: int,
    reboot_s: float,
    wait_s: float,
    log: Path,
) -> None:
    from transactional_update.config.settings import Config, RebootMethod
    from transactional_update.reboot import slots

    m = RebootMethod(method)
    cfg = replace(
        Config(),
        reboot_method=m,
        fleetlock_url=url if m is RebootMethod.FLEETLOCK else "",
        etcd_endpoints=(url,) if m is RebootMethod.ETCD_LOCK else (),
        fleetlock_group=group,
        reboot_slots=slots_n,
    )
    me = slots.node_id(root)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        for _ in range(rounds):
            while True:
                state = slots.take(root, cfg, m, 2, datetime.now(UTC))
                if state.state == "holding":
                    break
                wait = (
                    wait_s
                    if wait_s >= 0
                    else slots.backoff(state.attempts).total_seconds() / -wait_s
                )
                time.sleep(wait)
            os.write(fd, f"take {me} {time.monotonic_ns()}\n".encode())
            time.sleep(reboot_s)
            os.write(fd, f"give {me} {time.monotonic_ns()}\n".encode())
            while slots.after_boot(root, cfg, datetime.now(UTC)) != (
                f"reboot slot of group {group} given back"
            ):
                time.sleep(0.05)
    finally:
        os.close(fd)


def make_root(base: Path, index: int) -> Path:
    root = base / f"machine-{index}"
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/machine-id").write_text(f"{index + 1:032x}\n")
    return root


def max_holders(log_text: str) -> tuple[int, int]:
    """The most machines between "take" and "give" at once, and the number of reboots."""
    events = []
    for line in log_text.splitlines():
        what, _, at = line.split()
        events.append((int(at), 0 if what == "give" else 1))
    held = most = 0
    for _, delta in sorted(events):  # a give at the same instant as a take counts first
        held += 1 if delta else -1
        most = max(most, held)
    return most, sum(1 for _, d in events if d)


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.ERROR)  # each refusal is a warning: thousands of lines
    a = sys.argv[1:]
    run(Path(a[0]), a[1], a[2], a[3], int(a[4]), int(a[5]), float(a[6]), float(a[7]), Path(a[8]))
