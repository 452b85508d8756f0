"""testkit/vm.py's own checks on what a guest reported (pure logic, on outputs captured from real
boots of the VM test image)."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit import vm

# `systemctl show` of the subvolume mounts in a boot of the image before the fstab ordered them:
# systemd started all seven within 0.4 s (the race that sometimes failed one of them).
PARALLEL = """\
Id=var.mount
InactiveExitTimestampMonotonic=17835574
ActiveEnterTimestampMonotonic=18211730

Id=\\x2esnapshots.mount
InactiveExitTimestampMonotonic=17418047
ActiveEnterTimestampMonotonic=18177150

Id=home.mount
InactiveExitTimestampMonotonic=17492671
ActiveEnterTimestampMonotonic=18182456

Id=root.mount
InactiveExitTimestampMonotonic=17550361
ActiveEnterTimestampMonotonic=18203049

Id=opt.mount
InactiveExitTimestampMonotonic=17522844
ActiveEnterTimestampMonotonic=18190541

Id=srv.mount
InactiveExitTimestampMonotonic=17590879
ActiveEnterTimestampMonotonic=18206667

Id=usr-local.mount
InactiveExitTimestampMonotonic=17681616
ActiveEnterTimestampMonotonic=18209675
"""

# the same with image.fstab's x-systemd.after=var.mount (a boot of the fixed image)
ORDERED = """\
Id=var.mount
InactiveExitTimestampMonotonic=12988542
ActiveEnterTimestampMonotonic=13145088

Id=\\x2esnapshots.mount
InactiveExitTimestampMonotonic=13181478
ActiveEnterTimestampMonotonic=13830773

Id=home.mount
InactiveExitTimestampMonotonic=13218417
ActiveEnterTimestampMonotonic=13838940

Id=root.mount
InactiveExitTimestampMonotonic=13306860
ActiveEnterTimestampMonotonic=13846523

Id=opt.mount
InactiveExitTimestampMonotonic=13263919
ActiveEnterTimestampMonotonic=13844729

Id=srv.mount
InactiveExitTimestampMonotonic=13347575
ActiveEnterTimestampMonotonic=13847738

Id=usr-local.mount
InactiveExitTimestampMonotonic=13399372
ActiveEnterTimestampMonotonic=13859301
"""


def boot(mounts: str) -> vm.Boot:
    return vm.Boot(1, Path("/nonexistent"), 1.0, {"mounts": mounts}, False)


def test_mount_times_parses_systemctl_show() -> None:
    times = vm.mount_times(boot(PARALLEL))
    assert times["var.mount"] == (17835574, 18211730)
    assert times["\\x2esnapshots.mount"] == (17418047, 18177150)
    assert len(times) == 7


def test_parallel_mounts_fail_the_check() -> None:
    with pytest.raises(vm.ScenarioFailed, match=r"boot 1: \\x2esnapshots.mount started after"):
        vm.check_mount_order(boot(PARALLEL))


def test_mounts_after_var_pass_the_check() -> None:
    vm.check_mount_order(boot(ORDERED))


def test_a_missing_mount_fails_the_check() -> None:
    without_home = PARALLEL.replace(
        "Id=home.mount\nInactiveExitTimestampMonotonic=17492671\n"
        "ActiveEnterTimestampMonotonic=18182456\n\n",
        "",
    )
    with pytest.raises(vm.ScenarioFailed, match="all subvolumes mounted"):
        vm.check_mount_order(boot(without_home))


def test_var_never_mounted_fails_the_check() -> None:
    # systemctl shows 0 for a timestamp that never happened (a failed mount)
    with pytest.raises(vm.ScenarioFailed, match="/var was mounted"):
        vm.check_mount_order(boot(PARALLEL.replace("=18211730", "=0")))
