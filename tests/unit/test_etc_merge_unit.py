"""etc.merge.plan: what the merge decides per path, from three described trees (pure)."""

from __future__ import annotations

from dataclasses import replace

from transactional_update.etc.merge import Action, Decision, Entry, Kind, plan

D = Entry(Kind.DIR, 0o755, 0, 0)
F = Entry(Kind.FILE, 0o644, 0, 0, digest="base")
L = Entry(Kind.SYMLINK, 0o777, 0, 0, target="../usr/share/zoneinfo/UTC")


def actions(decisions: tuple[Decision, ...]) -> dict[str, Action]:
    return {d.path: d.action for d in decisions}


def test_nothing_changed_or_only_theirs_is_left_alone() -> None:
    base = {"d": D, "d/f": F, "l": L}
    theirs = {"d": D, "d/f": replace(F, digest="new"), "l": L, "added": F}
    assert plan(base, base, base) == ()
    assert plan(base, base, theirs) == ()
    # The same change on both sides.
    assert plan(base, theirs, theirs) == ()


def test_one_side_changes_are_taken_whole() -> None:
    base = {"d": D, "f": F, "l": L, "gone": F, "m": F, "o": F}
    ours = {
        "d": D,
        "f": replace(F, digest="live"),
        "l": replace(L, target="../usr/share/zoneinfo/Europe/Berlin"),
        "m": replace(F, mode=0o600),
        "o": replace(F, uid=1000, gid=1000),
        "new": F,
        "d/new": F,
    }
    result = plan(base, ours, base)
    assert actions(result) == {
        "d/new": Action.TAKE,
        "f": Action.TAKE,
        "gone": Action.DELETE,
        "l": Action.TAKE,
        "m": Action.TAKE,
        "new": Action.TAKE,
        "o": Action.TAKE,
    }
    # Parents before children.
    assert [d.path for d in result] == ["d/new", "f", "gone", "l", "m", "new", "o"]


def test_both_changed_attributes_combine() -> None:
    base = {"f": F, "g": F, "h": F, "d": D}
    ours = {
        "f": replace(F, mode=0o600),
        "g": replace(F, digest="live"),
        "h": replace(F, digest="live", uid=5),
        "d": replace(D, mode=0o700),
    }
    theirs = {
        "f": replace(F, digest="new"),
        "g": replace(F, gid=42),
        "h": replace(F, digest="new"),
        "d": replace(D, uid=7),
    }
    by_path = {d.path: d for d in plan(base, ours, theirs)}
    assert by_path["f"].action == Action.META
    assert (by_path["f"].mode, by_path["f"].uid, by_path["f"].gid) == (0o600, 0, 0)
    assert by_path["g"].action == Action.CONTENT
    assert (by_path["g"].mode, by_path["g"].uid, by_path["g"].gid) == (0o644, 0, 42)
    assert by_path["h"].action == Action.MERGE_TEXT
    assert by_path["h"].uid == 5
    assert by_path["d"].action == Action.META
    assert (by_path["d"].mode, by_path["d"].uid) == (0o700, 7)


def test_account_files_at_the_top_merge_by_entry() -> None:
    base = {"passwd": F, "group": F, "shadow": F, "gshadow": F, "sub": D, "sub/passwd": F}
    ours = {p: replace(e, digest="live") if e.kind == Kind.FILE else e for p, e in base.items()}
    theirs = {p: replace(e, digest="new") if e.kind == Kind.FILE else e for p, e in base.items()}
    assert actions(plan(base, ours, theirs)) == {
        "group": Action.MERGE_ACCOUNTS,
        "gshadow": Action.MERGE_ACCOUNTS,
        "passwd": Action.MERGE_ACCOUNTS,
        "shadow": Action.MERGE_ACCOUNTS,
        "sub/passwd": Action.MERGE_TEXT,
    }


def test_conflicts() -> None:
    base = {"mode": F, "del": F, "del2": F, "type": F, "link": L}
    ours = {
        "mode": replace(F, mode=0o600),
        "del2": replace(F, digest="live"),
        "type": D,
        "link": replace(L, target="a"),
        "both": replace(F, digest="live"),
    }
    theirs = {
        "mode": replace(F, mode=0o640),
        "del": replace(F, digest="new"),
        "type": L,
        "link": replace(L, target="b"),
        "both": replace(F, digest="new"),
    }
    result = plan(base, ours, theirs)
    assert actions(result) == dict.fromkeys(
        ["both", "del", "del2", "link", "mode", "type"], Action.CONFLICT
    )
    assert all(d.reason for d in result)


def test_extended_attributes_must_agree_for_a_content_merge() -> None:
    base = {"f": F}
    ours = {"f": replace(F, digest="live", xattrs=(("security.selinux", b"a"),))}
    theirs = {"f": replace(F, digest="new")}
    assert actions(plan(base, ours, theirs)) == {"f": Action.CONFLICT}


def test_a_directory_replaced_by_a_file_live() -> None:
    base = {"x.d": D, "x.d/a": F, "x.d/b": F}
    ours = {"x.d": F}
    # Theirs unchanged: the children go, then the file takes the directory's place.
    assert actions(plan(base, ours, base)) == {
        "x.d": Action.TAKE,
        "x.d/a": Action.DELETE,
        "x.d/b": Action.DELETE,
    }
    # Theirs changed a child, or added one: the directory stays, the live file is a conflict.
    for theirs in ({**base, "x.d/a": replace(F, digest="new")}, {**base, "x.d/c": F}):
        got = actions(plan(base, ours, theirs))
        assert got["x.d"] == Action.CONFLICT
        assert got["x.d/b"] == Action.DELETE


def test_a_directory_deleted_live_with_a_kept_grandchild() -> None:
    base = {"x": D, "x/y": D, "x/y/z": F}
    theirs = {**base, "x/y/z": replace(F, digest="new")}
    got = actions(plan(base, {}, theirs))
    assert got == {"x": Action.CONFLICT, "x/y": Action.CONFLICT, "x/y/z": Action.CONFLICT}


def test_a_file_replaced_by_a_directory_live() -> None:
    base = {"x": F}
    ours = {"x": D, "x/a": F}
    assert actions(plan(base, ours, base)) == {"x": Action.TAKE, "x/a": Action.TAKE}
    # Theirs changed the file too: it stays, and ours' children have nowhere to go.
    theirs = {"x": replace(F, digest="new")}
    assert actions(plan(base, ours, theirs)) == {"x": Action.CONFLICT, "x/a": Action.CONFLICT}


def test_the_account_paths_are_the_account_files() -> None:
    from transactional_update.etc import accounts, merge

    assert merge._ACCOUNT_PATHS == accounts.ACCOUNT_FILES
