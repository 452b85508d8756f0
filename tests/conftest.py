"""What every tier needs: SIGTERM handling, the stale-image sweep, skipping privileged tests.

The tiers' own conftests mark their tests (``tests/privileged``: ``privileged``; ``tests/vm``:
``vm`` and ``privileged``) and hold their fixtures; ``tests/unit`` needs neither.
"""

from __future__ import annotations

import os
import shutil
import signal

import pytest

from testkit.systems import sweep_stale


def _privileged_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (loop devices, btrfs, mounts)"
    for tool in ("mkfs.btrfs", "snapper", "losetup", "mmdebstrap", "dbus-daemon", "unshare"):
        if shutil.which(tool) is None:
            return f"needs {tool} (run ./tu-dev test, which installs it)"
    return None


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM (a CI timeout, kill) would end pytest without fixture teardown and leak loop
    # devices and mounts; as KeyboardInterrupt, pytest still runs every finalizer.
    signal.signal(signal.SIGTERM, _terminate)


def pytest_sessionstart(session: pytest.Session) -> None:
    # Here, not in tests/privileged: a tier's conftest is loaded only when its directory is
    # collected, after the session has started.
    if _privileged_reason() is None:
        for image in sweep_stale():
            print(f"removed a stale test system left by a killed run: {image}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The tiers' markers are on the items by now: they are added as each item is collected.
    reason = _privileged_reason()
    if reason is None:
        return
    for item in items:
        if "privileged" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))
