"""The writable /etc's pure parts: the migration's fstab edit, the /etc file list, the records of
live merges (changelog text, status lines, the open-conflict notes)."""

from __future__ import annotations

import json
from pathlib import Path

from transactional_update.cli.status import Status, etc_lines
from transactional_update.etc import carry, merge
from transactional_update.etc.migrate import no_number_cleanup, root_read_write
from transactional_update.record import changelog, conflicts

UUID = "UUID=0b5c-1"


def test_root_read_write_drops_ro_and_keeps_the_rest() -> None:
    text = (
        "# a comment / btrfs ro 0 0\n"
        f"{UUID} / btrfs ro,noatime 0 0\n"
        f"{UUID} /var btrfs subvol=/@/var,ro 0 0\n"
        "tmpfs /tmp tmpfs mode=1777 0 0"
    )
    out = root_read_write(text).splitlines()
    assert out[0] == "# a comment / btrfs ro 0 0"
    assert out[1] == f"{UUID} / btrfs rw,noatime 0 0"
    assert out[2] == f"{UUID} /var btrfs subvol=/@/var,ro 0 0"  # only / changes
    assert out[3] == "tmpfs /tmp tmpfs mode=1777 0 0"
    assert not root_read_write(text).endswith("\n")


def test_root_read_write_is_idempotent_and_replaces_defaults() -> None:
    once = root_read_write(f"{UUID} / btrfs defaults 0 0\n")
    assert once == f"{UUID} / btrfs rw 0 0\n"
    assert root_read_write(once) == once


def _file(digest: str, mode: int = 0o644) -> merge.Entry:
    return merge.Entry(merge.Kind.FILE, mode, 0, 0, digest)


def test_changes_lists_added_deleted_modified_with_absolute_paths() -> None:
    d = merge.Entry(merge.Kind.DIR, 0o755, 0, 0)
    old = {"a": _file("1"), "b": _file("2"), "same": _file("3"), "dir": d}
    new = {"a": _file("1", 0o600), "same": _file("3"), "dir": d, "dir/c": _file("4")}
    assert carry.changes(old, new) == [
        {"path": "/etc/a", "kind": "modified", "dir": False},
        {"path": "/etc/b", "kind": "deleted", "dir": False},
        {"path": "/etc/dir/c", "kind": "added", "dir": False},
    ]


def _carried(report: merge.Report) -> carry.Carried:
    return carry.Carried(5, 3, carry.Moment.COMMIT, "2026-11-30T10:00:00+00:00", report)


def test_a_merge_record_names_every_path_under_etc() -> None:
    report = merge.Report(
        taken=("hostname",),
        merged=("passwd",),
        conflicted=(merge.Conflict("app.conf", "both changed the content, differently"),),
        failed=(merge.Failure("locked", "Operation not permitted"),),
    )
    c = _carried(report)
    assert not c.empty
    assert c.changed == ["hostname", "passwd", "app.conf"]
    assert c.record() == {
        "when": "commit",
        "at": "2026-11-30T10:00:00+00:00",
        "from": 3,
        "taken": ["/etc/hostname"],
        "merged": ["/etc/passwd"],
        "conflicts": [
            {
                "path": "/etc/app.conf",
                "live": "/etc/app.conf.live",
                "reason": "both changed the content, differently",
            }
        ],
        "failed": [{"path": "/etc/locked", "error": "Operation not permitted"}],
    }
    assert changelog.render_live_etc(c.record()) == [
        "  live /etc from snapshot 3 merged at 2026-11-30T10:00:00+00:00 (commit):",
        "    L /etc/hostname",
        "    L /etc/passwd (merged with the snapshot's change)",
        "    CONFLICT /etc/app.conf: both changed the content, differently; "
        "the live version is /etc/app.conf.live",
        "    FAILED /etc/locked: Operation not permitted",
    ]


def test_an_empty_merge_says_so() -> None:
    c = _carried(merge.Report())
    assert c.empty
    assert changelog.render_live_etc(c.record()) == [
        "  live /etc from snapshot 3 merged at 2026-11-30T10:00:00+00:00 (commit): "
        "nothing had changed"
    ]


def test_the_scan_leaves_out_shadow_utils_lock_and_backup_files(tmp_path: Path) -> None:
    for name in ("passwd", "passwd-", ".pwd.lock", "shadow-", "x.tu-new"):
        (tmp_path / name).write_text("x\n")
    assert sorted(carry.scan(tmp_path)) == ["passwd"]


def _status(**kw: object) -> Status:
    return Status(1, 1, None, None, None, {}, **kw)  # type: ignore[arg-type]


def test_status_lines_for_a_read_only_etc_and_for_conflicts() -> None:
    assert etc_lines(_status()) == []
    assert etc_lines(_status(etc_writable=False)) == [
        "/etc:     read-only (made before the writable /etc); give the system its own /etc "
        "with: transactional-update setup-etc"
    ]
    c = {"snapshot": 4, "path": "/etc/a", "live": "/etc/a.live", "reason": "r", "at": "T"}
    assert etc_lines(_status(etc_conflicts=[c])) == [
        "/etc conflict: /etc/a in snapshot 4 (r, T): the snapshot's version is in place, the "
        "live one is /etc/a.live; merge by hand, then delete /etc/a.live"
    ]


def test_conflict_notes_are_open_while_the_live_copy_exists(tmp_path: Path) -> None:
    root = tmp_path
    etc = root / ".snapshots/4/snapshot/etc"
    etc.mkdir(parents=True)
    assert conflicts.open_conflicts(root) == []  # no notes file: nothing read
    (etc / "a.live").write_text("mine\n")
    (etc / "b.live").write_text("mine\n")
    first = [
        {"path": "/etc/a", "live": "/etc/a.live", "reason": "r1"},
        {"path": "/etc/b", "live": "/etc/b.live", "reason": "r1"},
    ]
    conflicts.note(root, 4, "T1", first)
    conflicts.note(root, 4, "T2", [{"path": "/etc/a", "live": "/etc/a.live", "reason": "r2"}])
    found = conflicts.open_conflicts(root)
    assert [(c["path"], c["reason"], c["at"]) for c in found] == [
        ("/etc/b", "r1", "T1"),
        ("/etc/a", "r2", "T2"),
    ]
    assert (root / conflicts.NOTES).stat().st_mode & 0o777 == 0o600
    (etc / "b.live").unlink()  # resolved by the admin
    assert [c["path"] for c in conflicts.open_conflicts(root)] == ["/etc/a"]
    (root / conflicts.NOTES).write_text("not json")
    assert conflicts.open_conflicts(root) == []
    (root / conflicts.NOTES).write_text(json.dumps({"not": "a list"}))
    assert conflicts.open_conflicts(root) == []


def test_no_number_cleanup_replaces_or_adds_the_key() -> None:
    text = 'SUBVOLUME="/"\nNUMBER_CLEANUP="yes"\nNUMBER_LIMIT="10"\n'
    assert no_number_cleanup(text) == 'SUBVOLUME="/"\nNUMBER_CLEANUP="no"\nNUMBER_LIMIT="10"\n'
    assert no_number_cleanup('SUBVOLUME="/"') == 'SUBVOLUME="/"\nNUMBER_CLEANUP="no"\n'
    assert no_number_cleanup(no_number_cleanup(text)) == no_number_cleanup(text)
