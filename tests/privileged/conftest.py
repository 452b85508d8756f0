"""The privileged tier: real btrfs systems on loop images, snapper, a private system bus, apt.

Every test here is marked ``privileged``; the root conftest skips them without root or the tools.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.systems import Bus, System
from testkit.systems import managed_system as _managed_system
from testkit.systems import system_bus as _system_bus


def pytest_itemcollected(item: pytest.Item) -> None:
    # pytest calls this through the item's own directory's conftests: items under tests/privileged.
    item.add_marker(pytest.mark.privileged)


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
