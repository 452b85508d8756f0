"""Pure parts of the power-cut handling: the leftover and boot-menu reports, the menu check,
the fstab check and the intent file (on a plain directory)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from transactional_update.boot import menustate
from transactional_update.cli.status import leftover_lines
from transactional_update.core.cleanup import CleanupResult, cleanup_text
from transactional_update.snapshots import leftovers
from transactional_update.snapshots.leftovers import Leftovers

CFG = """\
### BEGIN /etc/grub.d/09_transactional-update ###
menuentry 'Debian GNU/Linux 12 (bookworm)' --class gnu-linux --class os --id tu-default {
	linux '/@/.snapshots/7/snapshot/boot/vmlinuz-6.1' 'rootflags=subvol=@/.snapshots/7/snapshot'
}
submenu 'Snapshots' --id tu-snapshots {
	menuentry 'Snapshot 9' --id tu-snapshot-9 {
		linux '/@/.snapshots/9/snapshot/boot/vmlinuz-6.1'
	}
}
### END /etc/grub.d/09_transactional-update ###
"""


def test_menu_default_reads_the_main_entry_only() -> None:
    assert menustate.menu_default(CFG) == 7
    assert menustate.menu_default(CFG.replace("--id tu-default", "--id other")) is None
    assert menustate.menu_default("") is None


def test_fstab_grub_dir() -> None:
    def fstab(tmp: Path, text: str) -> str | None:
        (tmp / "etc").mkdir(exist_ok=True)
        (tmp / "etc/fstab").write_text(text)
        return menustate.fstab_grub_dir(tmp)

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        assert menustate.fstab_grub_dir(tmp) is None  # no fstab
        assert fstab(tmp, "UUID=a / btrfs ro 0 0\nUUID=b /boot/grub ext4 nofail 0 2\n") == (
            "boot/grub"
        )
        assert fstab(tmp, "UUID=b /boot/grub2/ ext4 defaults 0 2\n") == "boot/grub2"
        assert fstab(tmp, "# UUID=b /boot/grub ext4 defaults 0 2\nUUID=a / btrfs ro 0 0\n") is None


def test_stale_marker_keeps_when_it_began(tmp_path: Path) -> None:
    assert menustate.read_stale(tmp_path) is None
    menustate.mark_stale(tmp_path, "first reason", now="2026-01-01T00:00:00+00:00")
    menustate.mark_stale(tmp_path, "second reason")
    assert menustate.read_stale(tmp_path) == {
        "since": "2026-01-01T00:00:00+00:00",
        "reason": "second reason",
    }
    menustate.clear_stale(tmp_path)
    assert menustate.read_stale(tmp_path) is None
    menustate.clear_stale(tmp_path)  # nothing to clear is fine
    (tmp_path / menustate.STALE_FILE).write_text("[1]")  # garbled: not stale, no traceback
    assert menustate.read_stale(tmp_path) is None


def test_menu_state_compares_the_main_entry_with_the_default(tmp_path: Path) -> None:
    assert menustate.state(tmp_path, 7) is None  # no GRUB at all
    (tmp_path / "boot/grub").mkdir(parents=True)
    (tmp_path / "boot/grub/grub.cfg").write_text(CFG)
    assert menustate.state(tmp_path, 7) == {"stale": False, "since": None, "reason": None}
    assert menustate.state(tmp_path, 9) == {
        "stale": True,
        "since": None,
        "reason": "its main entry boots snapshot 7, the default is 9",
    }
    menustate.mark_stale(tmp_path, "/boot/grub is read-only", now="T")
    assert menustate.state(tmp_path, 7) == {
        "stale": True,
        "since": "T",
        "reason": "/boot/grub is read-only",
    }


def test_intent_round_trip(tmp_path: Path) -> None:
    assert leftovers.read_intent(tmp_path) is None
    leftovers.write_intent(tmp_path, 12, 9, 345)
    assert (tmp_path / leftovers.INTENT).read_text() == "12 9 345\n"
    assert leftovers.read_intent(tmp_path) == 12
    leftovers.clear_intent(tmp_path)
    leftovers.clear_intent(tmp_path)
    assert leftovers.read_intent(tmp_path) is None
    (tmp_path / leftovers.INTENT).write_text("garbage\n")
    assert leftovers.read_intent(tmp_path) is None


class _Managed:
    """Just what leftovers.find reads of a ManagedRoot."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.snapshots_dir = root / ".snapshots"


def test_find_sorts_directories_by_what_they_hold(tmp_path: Path) -> None:
    store = tmp_path / ".snapshots"
    old = time.time() - 600

    def snap(n: int, info: str | None, age: float = old) -> None:
        (store / str(n)).mkdir(parents=True)
        if info is not None:
            (store / str(n) / "info.xml").write_text(info)
        os.utime(store / str(n), (age, age))

    done = "<snapshot><num>{}</num></snapshot>"
    snap(1, done.format(1))
    snap(2, done.format(2))
    snap(3, "<userdata><key>transactional-update-in-progress</key></userdata>")
    snap(4, None)
    snap(5, None, age=time.time())  # snapper is making it now
    snap(6, done.format(6))  # the lost commit
    snap(7, "<key>transactional-update-failed</key>")
    snap(8, "<userdata><key>transactional-update-in-progress</key></userdata>")  # live
    (tmp_path / leftovers.INTENT).parent.mkdir(parents=True)
    (tmp_path / leftovers.INTENT).write_text("6 2\n")  # without a subvolume id: by number
    (store / "0").mkdir()
    (store / "x").mkdir()
    managed = _Managed(tmp_path)
    found = leftovers.find(managed, 1, 2, live=[8])  # type: ignore[arg-type]
    assert (found.orphans, found.stale, found.lost) == ([4], [3], [6])
    assert found.all() == [3, 4, 6]
    only = leftovers.find(managed, 1, 2, candidates=[3])  # type: ignore[arg-type]
    assert (only.orphans, only.stale, only.lost) == ([], [3], [])
    # Once the default is the intent's snapshot, its commit did land.
    assert leftovers.find(managed, 1, 6).lost == []  # type: ignore[arg-type]
    # An intent whose subvolume is not the one at that number now: a reused number, no loss.
    leftovers.write_intent(tmp_path, 6, 2, 12345)
    assert leftovers.find(managed, 1, 2).lost == []  # type: ignore[arg-type]
    assert leftovers.status_candidates(managed, 2, 3) == [3, 4, 5, 6, 7, 8]  # type: ignore[arg-type]


def test_leftover_lines() -> None:
    assert leftover_lines(Leftovers([], [], [])) == []
    assert leftover_lines(Leftovers([4, 5], [3, 6], [9])) == [
        "stale:    snapshots 3 6 were left by interrupted transactions; remove them with: "
        "transactional-update cleanup",
        "orphan:   snapshots 4 5 without snapper's metadata (cut while being created); "
        "remove with: transactional-update cleanup",
        "lost:     snapshot 9 is complete, but its commit did not reach the disk; keep it with: "
        "transactional-update rollback 9; drop it with: transactional-update cleanup",
    ]


def test_cleanup_text_counts_every_leftover_as_interrupted() -> None:
    res = CleanupResult(stale=[3], number=[1], orphans=[4], lost=[6])
    assert cleanup_text(res) == "removed 3 interrupted and 1 old snapshot(s): 1 3 4 6"
    assert cleanup_text(CleanupResult()) == "removed 0 interrupted and 0 old snapshot(s)"
    assert json.dumps(res.removed()) == "[1, 3, 4, 6]"


def test_status_reuses_its_scan_until_the_store_changes(tmp_path: Path) -> None:
    store = tmp_path / ".snapshots"
    old = time.time() - 600
    for n, info in ((1, "<num>1</num>"), (3, "transactional-update-in-progress")):
        (store / str(n)).mkdir(parents=True)
        (store / str(n) / "info.xml").write_text(info)
    managed = _Managed(tmp_path)
    found = leftovers.for_status(managed, 1, 1, None)  # type: ignore[arg-type]
    assert found.stale == [3]
    assert (tmp_path / leftovers.CACHE).read_text().splitlines()[1:] == ["", "3"]
    # Not read again while the store's directory list is unchanged (what the cache is for)...
    (store / "3/info.xml").write_text("<num>3</num>")
    assert leftovers.for_status(managed, 1, 1, None).stale == [3]  # type: ignore[arg-type]
    # ...and read again once it changes, or booted/default differ.
    assert leftovers.for_status(managed, 1, 3, None).stale == []  # type: ignore[arg-type]
    (store / "3/info.xml").write_text("transactional-update-in-progress")
    (store / "9").mkdir()
    os.utime(store / "9", (old, old))
    found = leftovers.for_status(managed, 1, 1, None)  # type: ignore[arg-type]
    assert (found.stale, found.orphans) == ([3], [9])
    # A lost commit is read from the intent every time, cache or not.
    (store / "4").mkdir()
    (store / "4/info.xml").write_text("<num>4</num>")
    assert leftovers.for_status(managed, 1, 1, None).lost == []  # type: ignore[arg-type]
    (tmp_path / leftovers.INTENT).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / leftovers.INTENT).write_text("4 1\n")
    assert leftovers.for_status(managed, 1, 1, None).lost == [4]  # type: ignore[arg-type]
    # While a transaction runs nothing is cached, and a young directory is never judged.
    (tmp_path / leftovers.CACHE).unlink()
    (store / "10").mkdir()
    assert leftovers.for_status(managed, 1, 1, [3]).stale == []  # type: ignore[arg-type]
    assert not (tmp_path / leftovers.CACHE).exists()
    found = leftovers.for_status(managed, 1, 1, None)  # type: ignore[arg-type]
    assert found.orphans == [9] and found.young
    assert not (tmp_path / leftovers.CACHE).exists()
    (tmp_path / leftovers.CACHE).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / leftovers.CACHE).write_text("garbage")  # a garbled cache is a rescan
    assert leftovers.for_status(managed, 1, 1, None).orphans == [9]  # type: ignore[arg-type]


def test_a_directory_from_before_this_boot_is_an_orphan_however_young(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The boot right after a cut looks within a minute of it: the orphan is judged at once."""
    store = tmp_path / ".snapshots"
    (store / "5").mkdir(parents=True)
    made = time.time() - 10
    os.utime(store / "5", (made, made))
    managed = _Managed(tmp_path)
    monkeypatch.setattr(leftovers, "boot_time", lambda: made - 100)  # made during this boot
    assert leftovers.find(managed, 1, 1).orphans == []  # type: ignore[arg-type]
    monkeypatch.setattr(leftovers, "boot_time", lambda: made + 5)  # booted after it was made
    assert leftovers.find(managed, 1, 1).orphans == [5]  # type: ignore[arg-type]
    assert 0 < leftovers.boot_time() <= time.time()
