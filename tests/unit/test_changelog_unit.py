"""Changelog entries: summaries, userdata facts, storage round trip, pruning (pure, tmp dirs)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from transactional_update.record import changelog, summary
from transactional_update.record.changelog import Command, Entry, Who

PKGS: list[dict[str, Any]] = [
    {"name": "a", "kind": "added", "old": None, "new": "1"},
    {"name": "b", "kind": "upgraded", "old": "1", "new": "2"},
    {"name": "c", "kind": "upgraded", "old": "1", "new": "3"},
]


def _entry(n: int = 5) -> Entry:
    return Entry(
        snapshot=n,
        base=1,
        created="2026-11-26T06:00:00+00:00",
        tool_version="0.1.0",
        who=Who(0, "root", "alice", "alice"),
        description='pkg install a "b"',
        commands=[Command(["apt-get", "-y", "install", "a"], 0, 1.25)],
        packages=PKGS,
        files=[{"path": "/usr/share/a", "kind": "added", "dir": True}],
    )


def test_summary_counts_packages_and_files() -> None:
    assert summary.summarize(PKGS, [{}] * 12, None) == "+1 pkg, ↑2 pkgs, 12 files"
    assert summary.summarize([], [], None) == "no changes"
    assert summary.summarize([], [], "base is writable") == "files not compared"
    assert summary.summarize([{"kind": "removed"}], [{}], None) == "-1 pkg, 1 file"


def test_userdata_facts_have_no_separators() -> None:
    facts = changelog.userdata(_entry())
    assert facts == {
        "tu-base": "1",
        "tu-files": "1",
        "tu-pkgs-added": "1",
        "tu-pkgs-upgraded": "2",
    }
    assert all("," not in v and "=" not in v for v in facts.values())
    assert changelog.userdata(replace(_entry(), files=[], files_error="x"))["tu-files"] == "unknown"


def test_save_load_round_trip_and_prune(tmp_path: Path) -> None:
    (tmp_path / ".snapshots/5/snapshot").mkdir(parents=True)
    changelog.save(tmp_path, _entry(5))
    changelog.save(tmp_path, _entry(6))
    assert changelog.load(tmp_path, 5) == _entry(5)
    assert changelog.load(tmp_path, 7) is None
    assert changelog.prune(tmp_path) == [6]
    assert sorted(p.name for p in (tmp_path / summary.STORE).iterdir()) == ["5.json"]


def test_render_is_readable() -> None:
    text = changelog.render(_entry())
    assert text.splitlines() == [
        "snapshot 5 (from 1) · +1 pkg, ↑2 pkgs, 1 file",
        '  description: pkg install a "b"',
        "  when: 2026-11-26T06:00:00+00:00   who: root (sudo by alice)   tool: "
        "transactional-update 0.1.0",
        "  ran: apt-get -y install a  (exit 0, 1.2 s)",
        "  + a 1",
        "  ~ b 1 -> 2 (upgraded)",
        "  ~ c 1 -> 3 (upgraded)",
        "  A /usr/share/a",
    ]
