"""Real boots in qemu (tests/vm.py, vm-tests/run): scenarios 1-3, the ones CI is meant to run.

Slow (a few minutes per scenario under TCG), so skipped unless ``TU_VM_TESTS=1``; the golden
image is cached in /var/cache/transactional-update-tests/vm.  Scenarios 4 and 5 run with
``vm-tests/run nightly broken`` (or ``TU_VM_TESTS=all``).
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests import vm

SELECTED = os.environ.get("TU_VM_TESTS", "")

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.vm,
    pytest.mark.skipif(SELECTED not in ("1", "all"), reason="VM tests run with TU_VM_TESTS=1"),
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86 (./tu-dev test)"
    ),
]

SCENARIOS = ["update", "rollback", "grub"] + (["nightly", "broken"] if SELECTED == "all" else [])


@pytest.mark.parametrize("name", SCENARIOS)
def test_vm_scenario(name: str) -> None:
    o = vm.run_scenario(name, vm.golden())
    detail = ""
    if not o.passed and o.boots:
        detail = f"\n--- serial log of boot {o.boots[-1].number} ---\n"
        detail += vm.serial_tail(o.boots[-1].serial)
    assert o.passed, o.error + detail
