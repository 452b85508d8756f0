"""Real boots in qemu (testkit/vm.py, vm-tests/run): scenarios 1-3 and 7-13, the ones CI runs.

About 37 minutes for the ten under TCG (powercut alone boots eight times, about 8-10), part of
every ``./tu-dev test`` (and so of CI); ``TU_VM_TESTS=0`` skips them, ``TU_VM_TESTS=all`` adds
scenarios 4-6 (also run with ``vm-tests/run nightly broken uefi``).  The
golden image is cached in /var/cache/transactional-update-tests/vm.
"""

from __future__ import annotations

import os
import shutil

import pytest

from testkit import vm

SELECTED = os.environ.get("TU_VM_TESTS", "1")

pytestmark = [
    pytest.mark.skipif(SELECTED not in ("1", "all"), reason="TU_VM_TESTS=0 skips the VM tests"),
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86 (./tu-dev test)"
    ),
]

MORE = ["nightly", "broken", "uefi"]
# stack: two transactions before one reboot boot with both changes (changes stack on the default)
# etc: the writable /etc, live edits carried at commit, shutdown and boot, a conflict, rollback
# unbootable, unhealthy: boot counting in GRUB and the boot check roll a bad update back
# apply: a change used without a reboot, a service restarted onto an upgrade, then the reboot
# fleetlock: a reboot waits for a FleetLock slot another machine holds, takes it once given
# back, and the boot check of the new snapshot returns it
SCENARIOS = [
    "update",
    "rollback",
    "grub",
    "powercut",
    "stack",
    "etc",
    "unbootable",
    "unhealthy",
    "apply",
    "fleetlock",
] + (MORE if SELECTED == "all" else [])


@pytest.mark.parametrize("name", SCENARIOS)
def test_vm_scenario(name: str) -> None:
    o = vm.run_scenario(name, vm.golden())
    detail = ""
    if not o.passed and o.boots:
        detail = f"\n--- serial log of boot {o.boots[-1].number} ---\n"
        detail += vm.serial_tail(o.boots[-1].serial)
    assert o.passed, o.error + detail
