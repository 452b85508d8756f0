"""How long a fleet takes to reboot through its slots, against the ideal.

50 machines (processes of :mod:`testkit.fleet_machine`, each with its own fake root), 5 slots,
each reboot a fixed simulated duration: the ideal is ceil(50 / 5) rounds of one reboot.  The
machines run the real slot code against a real etcd (etcd-lock) and against the FleetLock
protocol server of the tests (fleetlock), with the real back-off scaled down by ``--scale``
(30: a 60 s reboot is 2 s, the first back-off 0.5 s, the longest 2 s), so the numbers say what
the back-off costs a fleet: the time slots stand free while the machines that want them wait.

    .venv/bin/python bench/fleet_bench.py [--machines 50] [--slots 5] [--reboot 60] [--scale 30]
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testkit.etcd import etcd_server
from testkit.fleet_machine import make_root, max_holders
from testkit.fleetlock_server import FleetLockServer
from testkit.systems import REPO


def fleet(
    method: str, url: str, machines: int, slots: int, reboot_s: float, scale: float
) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="tu-fleet-") as tmp:
        base, log = Path(tmp), Path(tmp) / "holders.log"
        start = time.monotonic()
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "testkit.fleet_machine",
                    str(make_root(base, i)),
                    method,
                    url,
                    f"bench-{method}-{start}",
                    str(slots),
                    "1",
                    str(reboot_s),
                    str(-scale),
                    str(log),
                ],
                cwd=REPO,
            )
            for i in range(machines)
        ]
        for p in procs:
            p.wait()
        total = time.monotonic() - start
        most, reboots = max_holders(log.read_text())
    return {"seconds": total, "most_holders": most, "reboots": reboots}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--machines", type=int, default=50)
    ap.add_argument("--slots", type=int, default=5)
    ap.add_argument("--reboot", type=float, default=60.0, help="seconds one reboot takes (real)")
    ap.add_argument("--scale", type=float, default=30.0, help="how much faster than real time")
    args = ap.parse_args()
    reboot_s = args.reboot / args.scale
    ideal = math.ceil(args.machines / args.slots) * reboot_s
    print(
        f"{args.machines} machines, {args.slots} slots, a reboot of {args.reboot:.0f} s, "
        f"time scaled 1/{args.scale:g} (the back-off too): ideal {ideal:.1f} s "
        f"= ceil({args.machines}/{args.slots}) x {reboot_s:.2f} s"
    )
    print(f"{'backend':<12}{'seconds':>9}{'ideal':>8}{'ratio':>8}{'real time':>12}{'max held':>10}")
    server = FleetLockServer(slots=args.slots)
    try:
        with etcd_server() as url:
            for name, where in (("fleetlock", server.url), ("etcd-lock", url)):
                r = fleet(name, where, args.machines, args.slots, reboot_s, args.scale)
                print(
                    f"{name:<12}{r['seconds']:>9.1f}{ideal:>8.1f}{r['seconds'] / ideal:>7.2f}x"
                    f"{r['seconds'] * args.scale / 60:>9.1f} min{r['most_holders']:>10.0f}"
                )
                assert r["reboots"] == args.machines and r["most_holders"] <= args.slots, r
    finally:
        server.stop()


if __name__ == "__main__":
    main()
