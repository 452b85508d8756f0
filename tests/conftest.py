"""Fixtures: real btrfs systems on loop images and a private system bus with snapperd."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Bus, System, sweep_stale
from tests.helpers import managed_system as _managed_system
from tests.helpers import system_bus as _system_bus


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
    if _privileged_reason() is None:
        for image in sweep_stale():
            print(f"removed a stale test system left by a killed run: {image}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _privileged_reason()
    if reason is None:
        return
    for item in items:
        if "privileged" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def managed_system(tmp_path: Path) -> Iterator[System]:
    with _managed_system(tmp_path) as system:
        yield system


@pytest.fixture
def system_bus(managed_system: System, monkeypatch: pytest.MonkeyPatch) -> Iterator[Bus]:
    with _system_bus(managed_system) as bus:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
        yield bus


@pytest.fixture(params=["cli", "dbus"])
def system(
    request: pytest.FixtureRequest, managed_system: System, monkeypatch: pytest.MonkeyPatch
) -> Iterator[System]:
    """A managed system driven through snapper's CLI or through snapperd on a system bus."""
    if request.param == "dbus":
        with _system_bus(managed_system) as bus:
            monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
            monkeypatch.setenv("TU_SNAPPER_BACKEND", "dbus")
            yield managed_system
    else:
        monkeypatch.setenv("TU_SNAPPER_BACKEND", "cli")
        yield managed_system
