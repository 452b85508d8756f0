"""Both snapper backends against real snapper 0.10.4 on a real btrfs image (root only).

Fixtures from conftest: ``managed_system`` (``.root``: the booted snapshot, with ``/.snapshots``
and the snapper config ``root`` inside; snapshot 1 is booted and default) and ``system_bus``
(a private dbus-daemon whose snapperd has a config with SUBVOLUME = ``managed_system.root``;
``DBUS_SYSTEM_BUS_ADDRESS`` points at it).

Outcomes are checked with snapper's own CLI, btrfs and the filesystem, not with the client.
Snapshots made through the CLI are not seen by an already running snapperd (it caches a config's
snapshots), so cross-backend checks create through D-Bus.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from transactional_update.errors import NotManagedError, SnapshotError
from transactional_update.snapshots import snapinfo as si
from transactional_update.snapshots import snapper as sn
from transactional_update.snapshots.snapper import Backend

# Shell syntax, XML syntax, whitespace, option look-alikes, snapper's D-Bus escapes, UTF-8.
NASTY = (
    "he said \"hi\"\n$HOME; rm -rf / `x` 'q' <x>&amp; \t tab  \n\n trailing  \n"
    "-d --x é \\x41 back\\slash ü"
)


def snapper_list(root: Path) -> dict[int, dict[str, Any]]:
    """``snapper --no-dbus --root ROOT list`` as number -> JSON entry (snapper's own view)."""
    out = subprocess.run(
        ["snapper", "--no-dbus", "--root", str(root), "-c", "root", "--utc", "--jsonout", "list"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {int(e["number"]): e for e in json.loads(out)["root"]}


def read_only_flag(path: Path) -> str:
    return subprocess.run(
        ["btrfs", "property", "get", "-ts", str(path), "ro"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


class Made:
    """The client under test plus the snapshots a test made, deleted again at teardown."""

    def __init__(self, client: sn.Snapper, root: Path) -> None:
        self.client = client
        self.root = root
        self.numbers: list[int] = []

    def create(
        self,
        *,
        read_only: bool = False,
        description: str = "test",
        cleanup: str = "",
        userdata: dict[str, str] | None = None,
    ) -> int:
        number = self.client.create_snapshot(
            1,
            read_only=read_only,
            description=description,
            cleanup=cleanup,
            userdata=userdata or {},
        )
        self.numbers.append(number)
        return number

    def cleanup(self) -> None:
        left = [n for n in self.numbers if (self.root / ".snapshots" / str(n)).exists()]
        if left:
            self.client.delete_snapshots(left)


@pytest.fixture(params=["cli", "dbus"])
def made(request: pytest.FixtureRequest, managed_system: Any) -> Iterator[Made]:
    root = Path(managed_system.root)
    if request.param == "dbus":
        request.getfixturevalue("system_bus")
    client = sn.connect(root, backend=Backend(request.param))
    assert client.backend is Backend(request.param)
    helper = Made(client, root)
    try:
        yield helper
    finally:
        try:
            helper.cleanup()
        finally:
            close = getattr(client, "close", None)
            if close is not None:
                close()


def test_create_read_write(made: Made) -> None:
    number = made.create(description="rw snapshot", cleanup="number", userdata={"tu": "yes"})
    entry = snapper_list(made.root)[number]
    assert entry["description"] == "rw snapshot"
    assert entry["cleanup"] == "number"
    assert entry["userdata"] == {"tu": "yes"}
    assert entry["type"] == "single"
    subvolume = made.root / ".snapshots" / str(number) / "snapshot"
    assert read_only_flag(subvolume) == "ro=false"
    (subvolume / "written-by-test").write_text("ok")
    assert (subvolume / "written-by-test").read_text() == "ok"


def test_create_read_only(made: Made) -> None:
    number = made.create(read_only=True)
    assert read_only_flag(made.root / ".snapshots" / str(number) / "snapshot") == "ro=true"


def test_list_and_get(made: Made, monkeypatch: pytest.MonkeyPatch) -> None:
    # A zone far from UTC: the dates must still come back as UTC.
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    number = made.create(description="listed")
    snapshots = {s.number: s for s in made.client.list_snapshots()}
    assert 0 not in snapshots
    assert {1, number} <= set(snapshots)
    snap = made.client.get_snapshot(number)
    assert snapshots[number] == snap
    assert snap.date is not None
    assert snap.date.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - snap.date) < timedelta(minutes=5)
    assert snap.user == "root"
    assert snap.type is sn.SnapshotType.SINGLE
    assert snap.pre_number is None
    current = made.client.get_snapshot(0)
    assert current.date is None


def test_set_snapshot_replaces_userdata(made: Made) -> None:
    number = made.create(description="keep me", cleanup="number", userdata={"a": "1", "b": "2"})
    made.client.set_snapshot(number, userdata={"b": "3", "c": "4"})
    entry = snapper_list(made.root)[number]
    assert entry["userdata"] == {"b": "3", "c": "4"}
    assert entry["description"] == "keep me"
    assert entry["cleanup"] == "number"
    made.client.set_snapshot(number, description="changed", cleanup="")
    entry = snapper_list(made.root)[number]
    assert (entry["description"], entry["cleanup"]) == ("changed", "")
    assert entry["userdata"] == {"b": "3", "c": "4"}
    made.client.set_snapshot(number, userdata={})
    assert not snapper_list(made.root)[number]["userdata"]


def test_delete_removes_directory(made: Made) -> None:
    first = made.create()
    second = made.create()
    made.client.delete_snapshots([first, second])
    assert not (made.root / ".snapshots" / str(first)).exists()
    assert not (made.root / ".snapshots" / str(second)).exists()
    assert not {first, second} & set(snapper_list(made.root))


def test_delete_refusal_changes_nothing(made: Made) -> None:
    number = made.create()
    with pytest.raises(SnapshotError, match="snapshot 1 cannot be deleted"):
        made.client.delete_snapshots([number, 1])
    with pytest.raises(SnapshotError, match="987654"):
        made.client.delete_snapshots([number, 987654])
    assert (made.root / ".snapshots" / str(number) / "snapshot").is_dir()
    assert (made.root / ".snapshots" / "1" / "snapshot").is_dir()


def test_unknown_number(made: Made) -> None:
    with pytest.raises(SnapshotError, match="987654"):
        made.client.get_snapshot(987654)
    with pytest.raises(SnapshotError, match="987654"):
        made.client.set_snapshot(987654, description="x")
    with pytest.raises(SnapshotError, match="987654"):
        made.client.set_snapshot(987654, userdata={"a": "b"})
    with pytest.raises(SnapshotError, match="987654"):
        made.client.delete_snapshots([987654])
    with pytest.raises(SnapshotError, match="parent snapshot 987654"):
        made.client.create_snapshot(
            987654, read_only=False, description="", cleanup="", userdata={}
        )


def test_description_round_trips(made: Made) -> None:
    number = made.create(description=NASTY)
    assert made.client.get_snapshot(number).description == NASTY
    assert snapper_list(made.root)[number]["description"] == NASTY
    assert si.read_info(made.root, number).description == NASTY
    made.client.set_snapshot(number, description=NASTY + "!")
    assert snapper_list(made.root)[number]["description"] == NASTY + "!"


def test_read_info_agrees(made: Made) -> None:
    number = made.create(description="agree", cleanup="number", userdata={"k": "v"})
    assert si.read_info(made.root, number) == made.client.get_snapshot(number)
    assert si.read_info(made.root, 1) == made.client.get_snapshot(1)


def test_backends_and_read_info_agree(managed_system: Any, system_bus: Any) -> None:
    root = Path(managed_system.root)
    with sn.DBusSnapper(root) as dbus:
        number = dbus.create_snapshot(
            1,
            read_only=True,
            description=NASTY,
            cleanup="number",
            userdata={"a": "b", "ü": "é \\x41"},
        )
        try:
            cli = sn.CliSnapper(root)
            from_dbus = dbus.get_snapshot(number)
            assert from_dbus == cli.get_snapshot(number) == si.read_info(root, number)
            assert dbus.list_snapshots() == cli.list_snapshots()
            assert dbus.default_and_active() == cli.default_and_active()
        finally:
            dbus.delete_snapshots([number])


def test_connect_auto(
    managed_system: Any, system_bus: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = Path(managed_system.root)
    monkeypatch.delenv(sn.BACKEND_ENV, raising=False)
    client = sn.connect(root)
    assert isinstance(client, sn.DBusSnapper)
    client.close()
    monkeypatch.setenv(sn.BACKEND_ENV, "cli")
    assert isinstance(sn.connect(root), sn.CliSnapper)


def test_connect_auto_without_bus(
    managed_system: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(sn.BACKEND_ENV, raising=False)
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")
    assert isinstance(sn.connect(Path(managed_system.root)), sn.CliSnapper)


def test_dbus_root_without_config(managed_system: Any, system_bus: Any, tmp_path: Path) -> None:
    # snapperd has a config for managed_system.root only.
    with pytest.raises(NotManagedError, match="SUBVOLUME"):
        sn.DBusSnapper(tmp_path)


def test_cli_unknown_config(managed_system: Any) -> None:
    with pytest.raises(NotManagedError, match="nope"):
        sn.connect(Path(managed_system.root), "nope", backend=Backend.CLI)
