"""filediff: parsing ``btrfs receive --dump`` and replaying it into file changes (pure).

The dumps are real ones, recorded from btrfs-progs 6.2 on the changes each test names.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

import pytest

from transactional_update.errors import SystemError_
from transactional_update.record import filediff
from transactional_update.record.filediff import (
    FileChange,
    FileChangeKind,
    SendOp,
    classify,
    parse_dump,
)
from transactional_update.snapshots import btrfs

A, M, D = FileChangeKind.ADDED, FileChangeKind.MODIFIED, FileChangeKind.DELETED

HEADER = (
    "snapshot        ./snapshot                      uuid=810dd61f-8933-7949-b457-9f92962f7f3a "
    "transid=11 parent_uuid=8643d0b8-c766-424b-a8c8-e8a0203597ff parent_transid=8\n"
)


# ``tu run -- sh -c '...'`` on the test system (see test_a_full_recorded_transaction); most
# utimes lines are left out and trailing fields of long lines cut (the parser ignores them).
RECORDED = """\
snapshot        ./snapshot                      uuid=db609ba8-370c-d343-92ee-1c1b22a6ca6b
chmod           ./snapshot/etc/debian_version   mode=600
utimes          ./snapshot/etc/debian_version   atime=2026-11-26T06:01:25+0000
rename          ./snapshot/etc/default          dest=./snapshot/etc/default2
truncate        ./snapshot/etc/host.conf        size=0
update_extent   ./snapshot/etc/hostname         offset=0 len=8
link            ./snapshot/etc/issue-hl         dest=etc/issue
unlink          ./snapshot/etc/issue.net
link            ./snapshot/etc/motd.renamed     dest=etc/motd
unlink          ./snapshot/etc/motd
rmdir           ./snapshot/etc/opt
chown           ./snapshot/etc/shells           gid=1 uid=1
utimes          ./snapshot/etc/shells           atime=2026-11-26T06:01:25+0000
utimes          ./snapshot/usr/bin/mv           atime=2026-11-26T06:01:26+0000
utimes          ./snapshot/usr/lib/locale/C.utf8/LC_MEASUREMENT atime=2026-11-26T06:01:26+0000
utimes          ./snapshot/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
utimes          ./snapshot/usr/lib64/ld-linux-x86-64.so.2 atime=2026-11-26T06:01:26+0000
mkfile          ./snapshot/o9239-10-0
rename          ./snapshot/o9239-10-0           dest=./snapshot/etc/new-file
link            ./snapshot/etc/new-hardlink     dest=etc/new-file
update_extent   ./snapshot/etc/new-file         offset=0 len=3
chown           ./snapshot/etc/new-file         gid=0 uid=0
chmod           ./snapshot/etc/new-file         mode=644
mkdir           ./snapshot/o9240-10-0
rename          ./snapshot/o9240-10-0           dest=./snapshot/etc/newdir
chown           ./snapshot/etc/newdir           gid=0 uid=0
chmod           ./snapshot/etc/newdir           mode=755
mkfile          ./snapshot/o9241-10-0
rename          ./snapshot/o9241-10-0           dest=./snapshot/etc/newdir/inner
update_extent   ./snapshot/etc/newdir/inner     offset=0 len=2
chown           ./snapshot/etc/newdir/inner     gid=0 uid=0
chmod           ./snapshot/etc/newdir/inner     mode=644
symlink         ./snapshot/o9242-10-0           dest=/etc/hostname
rename          ./snapshot/o9242-10-0           dest=./snapshot/etc/newlink
chown           ./snapshot/etc/newlink          gid=0 uid=0
mkfifo          ./snapshot/o9243-10-0
rename          ./snapshot/o9243-10-0           dest=./snapshot/etc/fifo
chown           ./snapshot/etc/fifo             gid=0 uid=0
chmod           ./snapshot/etc/fifo             mode=644
mkfile          ./snapshot/o9244-10-0
rename          ./snapshot/o9244-10-0           dest=./snapshot/etc/tmpy
update_extent   ./snapshot/etc/tmpy             offset=0 len=2
chown           ./snapshot/etc/tmpy             gid=0 uid=0
chmod           ./snapshot/etc/tmpy             mode=644
utimes          ./snapshot/etc/default2         atime=2026-11-26T06:01:25+0000
"""


def dump(*lines: str) -> str:
    return HEADER + "".join(f"{line}\n" for line in lines)


def changes(*lines: str) -> list[FileChange]:
    return classify(parse_dump(dump(*lines)))


# --- parsing ---------------------------------------------------------------------------------


def test_parse_keeps_rename_and_link_destinations() -> None:
    text = dump(
        "mkfile          ./snapshot/o9239-10-0",
        "rename          ./snapshot/o9239-10-0           dest=./snapshot/etc/new-file",
        "link            ./snapshot/etc/new-hardlink     dest=etc/new-file",
        "update_extent   ./snapshot/etc/new-file         offset=0 len=3",
        "utimes          ./snapshot/etc/new-file         atime=2026-11-26T05:48:22+0000 "
        "mtime=2026-11-26T05:48:22+0000 ctime=2026-11-26T05:48:22+0000",
        "symlink         ./snapshot/o9242-10-0           dest=/etc/hostname",
        "chmod           ./snapshot                      mode=755",
    )
    assert parse_dump(text) == [
        SendOp("mkfile", "/o9239-10-0"),
        SendOp("rename", "/o9239-10-0", "/etc/new-file"),
        # link's dest is relative to the subvolume, without the ./snapshot prefix
        SendOp("link", "/etc/new-hardlink", "/etc/new-file"),
        SendOp("update_extent", "/etc/new-file"),
        SendOp("symlink", "/o9242-10-0"),  # its dest is the link's target, not a path
        SendOp("chmod", "/"),
    ]


def test_parse_unescapes_blanks_backslashes_and_utf8_bytes() -> None:
    text = dump(
        r"rename          ./snapshot/a\ b                 dest=./snapshot/c\ d",
        r"rename          ./snapshot/o264-9-0             dest=./snapshot/c\ d/new\\\ file",
        r"link            ./snapshot/\303\274             dest=\303\251",
        r"set_xattr       ./snapshot/tab\there            name=user.t data=1 len=1",
    )
    assert parse_dump(text) == [
        SendOp("rename", "/a b", "/c d"),
        SendOp("rename", "/o264-9-0", "/c d/new\\ file"),
        SendOp("link", "/ü", "/é"),
        SendOp("set_xattr", "/tab\there"),
    ]


def test_parse_non_utf8_names_round_trip_as_file_names() -> None:
    (op,) = parse_dump(dump(r"unlink          ./snapshot/etc/caf\351"))
    assert op.path == "/etc/caf\udce9"  # surrogateescape, as os.listdir would give it
    assert op.path.encode("utf-8", "surrogateescape") == b"/etc/caf\xe9"


def test_parse_uses_the_subvolume_name_from_the_header() -> None:
    text = (
        "subvol          ./42                            uuid=5d01 transid=10\n"
        "mkdir           ./42/o258-9-0\n"
        "rename          ./42/o258-9-0                   dest=./42/srv\n"
    )
    assert parse_dump(text) == [
        SendOp("mkdir", "/o258-9-0"),
        SendOp("rename", "/o258-9-0", "/srv"),
    ]


def test_parse_rejects_a_rename_without_destination() -> None:
    with pytest.raises(ValueError, match="no dest="):
        parse_dump(dump("rename          ./snapshot/etc/x"))


# --- classification: one quirk of the stream each --------------------------------------------


def test_new_file_is_created_under_a_temporary_name_and_renamed_into_place() -> None:
    assert changes(
        "mkfile          ./snapshot/o9239-10-0",
        "rename          ./snapshot/o9239-10-0           dest=./snapshot/etc/new-file",
        "update_extent   ./snapshot/etc/new-file         offset=0 len=3",
        "chown           ./snapshot/etc/new-file         gid=0 uid=0",
        "chmod           ./snapshot/etc/new-file         mode=644",
    ) == [FileChange("/etc/new-file", A, False)]


def test_new_directory_and_its_contents_are_added() -> None:
    assert changes(
        "mkdir           ./snapshot/o9240-10-0",
        "rename          ./snapshot/o9240-10-0           dest=./snapshot/etc/newdir",
        "chmod           ./snapshot/etc/newdir           mode=755",
        "mkfile          ./snapshot/o9241-10-0",
        "rename          ./snapshot/o9241-10-0           dest=./snapshot/etc/newdir/inner",
        "symlink         ./snapshot/o9242-10-0           dest=/etc/hostname",
        "rename          ./snapshot/o9242-10-0           dest=./snapshot/etc/newlink",
        "mkfifo          ./snapshot/o9243-10-0",
        "rename          ./snapshot/o9243-10-0           dest=./snapshot/etc/fifo",
    ) == [
        FileChange("/etc/fifo", A, False),
        FileChange("/etc/newdir", A, True),
        FileChange("/etc/newdir/inner", A, False),
        FileChange("/etc/newlink", A, False),
    ]


@pytest.mark.parametrize(
    "line",
    [
        "update_extent   ./snapshot/etc/hostname         offset=0 len=8",
        "truncate        ./snapshot/etc/hostname         size=0",
        "chmod           ./snapshot/etc/hostname         mode=600",
        "chown           ./snapshot/etc/hostname         gid=1 uid=1",
        "set_xattr       ./snapshot/etc/hostname         name=user.t data=1 len=1",
        "remove_xattr    ./snapshot/etc/hostname         name=user.t",
        "clone           ./snapshot/etc/hostname         offset=0 len=4096 "
        "from=./snapshot/etc/other clone_offset=0",
        "fileattr        ./snapshot/etc/hostname         fileattr=0x16",  # protocol v2 and newer
    ],
)
def test_content_and_metadata_changes_modify(line: str) -> None:
    assert changes(line) == [FileChange("/etc/hostname", M)]


def test_time_stamps_alone_are_no_change() -> None:
    assert (
        changes(
            "utimes          ./snapshot/etc                  atime=2026-11-26T05:48:21+0000 "
            "mtime=2026-11-26T05:48:22+0000 ctime=2026-11-26T05:48:22+0000",
            "utimes          ./snapshot/usr/bin/dash         atime=2026-11-26T05:48:22+0000 "
            "mtime=2023-01-05T13:20:48+0000 ctime=2026-11-26T05:48:21+0000",
        )
        == []
    )


def test_unlink_and_rmdir_delete() -> None:
    assert changes(
        "unlink          ./snapshot/etc/issue.net",
        "rmdir           ./snapshot/etc/opt",
    ) == [FileChange("/etc/issue.net", D, False), FileChange("/etc/opt", D, True)]


def test_renamed_file_appears_as_link_and_unlink() -> None:
    assert changes(
        "link            ./snapshot/etc/motd.renamed     dest=etc/motd",
        "unlink          ./snapshot/etc/motd",
    ) == [
        FileChange("/etc/motd", D, False),
        FileChange("/etc/motd.renamed", A, False, source="/etc/motd"),
    ]


def test_renamed_directory_is_reported_itself_not_its_contents() -> None:
    assert changes(
        "rename          ./snapshot/etc/default          dest=./snapshot/etc/default2"
    ) == [
        FileChange("/etc/default", D),
        FileChange("/etc/default2", A, source="/etc/default"),
    ]


def test_change_inside_a_renamed_directory_is_at_the_new_path() -> None:
    assert changes(
        "rename          ./snapshot/etc/default          dest=./snapshot/etc/default2",
        "chmod           ./snapshot/etc/default2/nss     mode=600",
    ) == [
        FileChange("/etc/default", D, True),
        FileChange("/etc/default2", A, True, source="/etc/default"),
        FileChange("/etc/default2/nss", M),
    ]


def test_hard_link_to_an_existing_file_is_added() -> None:
    assert changes("link            ./snapshot/etc/issue-hl         dest=etc/issue") == [
        FileChange("/etc/issue-hl", A, False, source="/etc/issue")
    ]


def test_hard_link_to_a_new_file_has_no_source() -> None:
    assert changes(
        "mkfile          ./snapshot/o9239-10-0",
        "rename          ./snapshot/o9239-10-0           dest=./snapshot/etc/new-file",
        "link            ./snapshot/etc/new-hardlink     dest=etc/new-file",
    ) == [FileChange("/etc/new-file", A, False), FileChange("/etc/new-hardlink", A, False)]


def test_file_replaced_by_a_new_inode_is_modified() -> None:
    # sed -i, dpkg's .dpkg-new: the old inode goes, a new one is renamed onto the path
    assert changes(
        "unlink          ./snapshot/etc/victim",
        "mkfile          ./snapshot/o266-9-0",
        "rename          ./snapshot/o266-9-0             dest=./snapshot/etc/victim",
        "update_extent   ./snapshot/etc/victim           offset=0 len=4",
    ) == [FileChange("/etc/victim", M, False)]


def test_deleted_tree_is_moved_to_a_temporary_name_first() -> None:
    assert changes(
        "rename          ./snapshot/etc/d                dest=./snapshot/o258-7-0",
        "unlink          ./snapshot/o258-7-0/f",
        "rmdir           ./snapshot/o258-7-0/e",
        "rmdir           ./snapshot/o258-7-0",
    ) == [
        FileChange("/etc/d", D, True),
        FileChange("/etc/d/e", D, True),
        FileChange("/etc/d/f", D, False),
    ]


def test_entry_moved_aside_then_into_a_new_directory_of_the_same_name() -> None:
    # mv x z; mkdir x; mv z/y x/y; echo 5 > z/y
    assert changes(
        "rename          ./snapshot/x                    dest=./snapshot/z",
        "mkdir           ./snapshot/o265-9-0",
        "link            ./snapshot/o265-9-0/y           dest=z/y",
        "unlink          ./snapshot/z/y",
        "rename          ./snapshot/o265-9-0             dest=./snapshot/x",
        "mkfile          ./snapshot/o266-9-0",
        "rename          ./snapshot/o266-9-0             dest=./snapshot/z/y",
    ) == [
        FileChange("/x", M, True),  # a new directory where one was
        FileChange("/x/y", M, False),  # the same file back at its path
        FileChange("/z", A, True, source="/x"),
        FileChange("/z/y", A, False),
    ]


def test_new_entry_below_a_moved_directory_asks_whether_it_existed() -> None:
    # mv /etc/x /etc/x.bak; mkdir /etc/x; cp /etc/x.bak/a /etc/x/a
    ops = parse_dump(
        dump(
            "rename          ./snapshot/etc/x                dest=./snapshot/etc/x.bak",
            "mkdir           ./snapshot/o300-9-0",
            "rename          ./snapshot/o300-9-0             dest=./snapshot/etc/x",
            "mkfile          ./snapshot/o301-9-0",
            "rename          ./snapshot/o301-9-0             dest=./snapshot/etc/x/a",
            "mkfile          ./snapshot/o302-9-0",
            "rename          ./snapshot/o302-9-0             dest=./snapshot/etc/x/b",
        )
    )
    asked = []

    def existed(path: str) -> bool:
        asked.append(path)
        return path == "/etc/x/a"

    assert classify(ops, existed) == [
        FileChange("/etc/x", M, True),
        FileChange("/etc/x.bak", A, None, source="/etc/x"),  # file_changes asks the snapshot
        FileChange("/etc/x/a", M, False),
        FileChange("/etc/x/b", A, False),
    ]
    assert sorted(asked) == ["/etc/x/a", "/etc/x/b"]
    assert classify(ops)[2] == FileChange("/etc/x/a", A, False)  # without the callback


def test_chmod_of_the_root_directory() -> None:
    assert changes("chmod           ./snapshot                      mode=700") == [
        FileChange("/", M, True)
    ]


def test_a_rename_onto_an_existing_entry_replaces_it() -> None:
    # btrfs send never does this (it moves the old entry aside first), but rename(2) would
    assert changes(
        "rename          ./snapshot/etc/a                dest=./snapshot/etc/b",
        "chmod           ./snapshot/etc/b                mode=600",
        "rename          ./snapshot/etc/c                dest=./snapshot/etc/b",
    ) == [
        FileChange("/etc/a", D),  # overwritten at /etc/b
        FileChange("/etc/b", A, source="/etc/c"),
        FileChange("/etc/c", D),
    ]
    assert changes(
        "rename          ./snapshot/etc/c                dest=./snapshot/etc/b",
        "chmod           ./snapshot/etc/b                mode=600",
        "rename          ./snapshot/etc/a                dest=./snapshot/etc/c",
    ) == [
        FileChange("/etc/a", D),
        FileChange("/etc/b", A, source="/etc/c"),
        FileChange("/etc/c", M, source="/etc/a"),  # something else where it was
    ]


def test_a_full_recorded_transaction() -> None:
    """The dump of a real ``tu run``: every quirk at once, atime noise included."""
    assert classify(parse_dump(RECORDED)) == [
        FileChange("/etc/debian_version", M),
        FileChange("/etc/default", D),
        FileChange("/etc/default2", A, source="/etc/default"),
        FileChange("/etc/fifo", A, False),
        FileChange("/etc/host.conf", M),
        FileChange("/etc/hostname", M),
        FileChange("/etc/issue-hl", A, False, source="/etc/issue"),
        FileChange("/etc/issue.net", D, False),
        FileChange("/etc/motd", D, False),
        FileChange("/etc/motd.renamed", A, False, source="/etc/motd"),
        FileChange("/etc/new-file", A, False),
        FileChange("/etc/new-hardlink", A, False),
        FileChange("/etc/newdir", A, True),
        FileChange("/etc/newdir/inner", A, False),
        FileChange("/etc/newlink", A, False),
        FileChange("/etc/opt", D, True),
        FileChange("/etc/shells", M),
        FileChange("/etc/tmpy", A, False),
    ]


def test_file_changes_fills_in_what_the_stream_does_not_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent, child = tmp_path / "1", tmp_path / "2"
    (parent / "etc/default").mkdir(parents=True)
    (parent / "etc/hostname").write_text("a\n")
    (child / "etc/default2").mkdir(parents=True)
    (child / "etc/hostname").write_text("b\n")
    text = dump(
        "update_extent   ./snapshot/etc/hostname         offset=0 len=2",
        "rename          ./snapshot/etc/default          dest=./snapshot/etc/default2",
    )
    monkeypatch.setattr(filediff, "send_dump", lambda p, c: text)
    assert filediff.file_changes(parent, child) == [
        FileChange("/etc/default", D, True),  # asked of the parent
        FileChange("/etc/default2", A, True, source="/etc/default"),  # asked of the child
        FileChange("/etc/hostname", M, False),
    ]


def test_no_room_for_the_stream_is_a_tool_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(*_: Any, **__: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(btrfs, "is_read_only", lambda path: True)
    monkeypatch.setattr(btrfs, "read_only", lambda path: contextlib.nullcontext())
    monkeypatch.setattr(tempfile, "TemporaryDirectory", no_space)
    with pytest.raises(SystemError_, match=r"cannot compare .* No space left"):
        filediff.file_changes(tmp_path / "1", tmp_path / "2")
