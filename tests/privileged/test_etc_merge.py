"""etc.merge on real directories: scan, plan and apply with owners, modes and symlinks.

Three plain directories stand for base (/etc at the fork), live (the booted /etc) and new (the
new snapshot's /etc): no btrfs is needed for what is checked here.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from transactional_update.etc.merge import LIVE_SUFFIX, Conflict, Kind, Report, apply, plan, scan


@dataclass(frozen=True)
class Trees:
    base: Path
    live: Path
    new: Path

    def merge(self) -> Report:
        decisions = plan(scan(self.base), scan(self.live), scan(self.new))
        return apply(decisions, self.live, self.new, self.base)


def put(path: Path, text: str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


USERS = "root:x:0:0:root:/root:/bin/bash\nbin:x:2:2:bin:/bin:/usr/sbin/nologin\n"
GROUPS = "root:x:0:\nsudo:x:27:bob\nshadow:x:42:\n"
SHADOW = "root:*:19000:0:99999:7:::\nbin:*:19000:0:99999:7:::\n"
HOSTS = "127.0.0.1 localhost\n\n# comment\n::1 localhost\n"


@pytest.fixture
def trees(tmp_path: Path) -> Iterator[Trees]:
    base = tmp_path / "base"
    put(base / "hosts", HOSTS)
    put(base / "passwd", USERS)
    put(base / "group", GROUPS)
    put(base / "shadow", SHADOW, 0o640, 0, 42)
    put(base / "motd", "hello\n")
    put(base / "owned", "x\n")
    put(base / "secret", "s\n", 0o600)
    put(base / "binary", "\0\1\2")
    put(base / "gone", "bye\n")
    put(base / "conf.d" / "a.conf", "a=1\n")
    put(base / "conf.d" / "b.conf", "b=1\n")
    os.symlink("../usr/share/zoneinfo/UTC", base / "localtime")
    for name in ("live", "new"):
        subprocess.run(["cp", "-a", str(base), str(tmp_path / name)], check=True)
    yield Trees(base, tmp_path / "live", tmp_path / "new")
    # An immutable file would outlive the test directory's removal.
    subprocess.run(["chattr", "-R", "-i", str(tmp_path)], check=False, capture_output=True)


def test_nothing_changed_touches_nothing(trees: Trees) -> None:
    before = scan(trees.new)
    assert trees.merge() == Report()
    assert scan(trees.new) == before


def test_one_side_changes_are_taken(trees: Trees) -> None:
    live, new = trees.live, trees.new
    (live / "motd").write_text("welcome\n")
    os.utime(live / "motd", ns=(1_000_000_000, 1_000_000_000))
    os.chmod(live / "secret", 0o640)
    os.chown(live / "owned", 1000, 1000)
    (live / "localtime").unlink()
    os.symlink("../usr/share/zoneinfo/Europe/Berlin", live / "localtime")
    (live / "gone").unlink()
    put(live / "added.conf", "new\n", 0o600, 1000, 100)
    # Theirs' own changes stay.
    (new / "conf.d" / "a.conf").write_text("a=2\n")

    report = trees.merge()
    assert sorted(report.taken) == [
        "added.conf",
        "gone",
        "localtime",
        "motd",
        "owned",
        "secret",
    ]
    assert report.merged == ()
    assert report.conflicted == ()
    assert report.failed == ()
    assert (new / "motd").read_text() == "welcome\n"
    assert (new / "motd").stat().st_mtime_ns == 1_000_000_000
    assert (new / "secret").stat().st_mode & 0o7777 == 0o640
    assert ((new / "owned").stat().st_uid, (new / "owned").stat().st_gid) == (1000, 1000)
    assert os.readlink(new / "localtime") == "../usr/share/zoneinfo/Europe/Berlin"
    assert not (new / "gone").exists()
    st = (new / "added.conf").stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o600, 1000, 100)
    assert (new / "conf.d" / "a.conf").read_text() == "a=2\n"
    assert not list(new.glob(".*.tu-new"))


def test_the_same_change_on_both_sides(trees: Trees) -> None:
    for root in (trees.live, trees.new):
        (root / "motd").write_text("same\n")
    assert trees.merge() == Report()
    assert (trees.new / "motd").read_text() == "same\n"


def test_text_changed_on_both_sides_merges(trees: Trees) -> None:
    (trees.live / "hosts").write_text(
        HOSTS.replace("127.0.0.1 localhost", "127.0.0.1 localhost box")
    )
    (trees.new / "hosts").write_text(HOSTS + "10.0.0.1 server\n")
    os.chmod(trees.new / "hosts", 0o640)
    report = trees.merge()
    assert report.merged == ("hosts",)
    assert (trees.new / "hosts").read_text() == (
        "127.0.0.1 localhost box\n\n# comment\n::1 localhost\n10.0.0.1 server\n"
    )
    assert (trees.new / "hosts").stat().st_mode & 0o7777 == 0o640


def test_text_conflict_keeps_theirs_and_puts_ours_beside_it(trees: Trees) -> None:
    (trees.live / "motd").write_text("ours\n")
    (trees.new / "motd").write_text("theirs\n")
    report = trees.merge()
    assert [c.path for c in report.conflicted] == ["motd"]
    assert (trees.new / "motd").read_text() == "theirs\n"
    assert (trees.new / ("motd" + LIVE_SUFFIX)).read_text() == "ours\n"


def test_binary_changed_on_both_sides_conflicts(trees: Trees) -> None:
    (trees.live / "binary").write_bytes(b"\0ours")
    (trees.new / "binary").write_bytes(b"\0theirs")
    report = trees.merge()
    assert [c.path for c in report.conflicted] == ["binary"]
    assert (trees.new / "binary").read_bytes() == b"\0theirs"
    assert (trees.new / ("binary" + LIVE_SUFFIX)).read_bytes() == b"\0ours"


def test_account_files(trees: Trees) -> None:
    live, new = trees.live, trees.new
    (live / "passwd").write_text(USERS + "alice:x:1000:1000::/home/alice:/bin/bash\n")
    (new / "passwd").write_text(USERS + "postfix:x:105:110::/var/spool/postfix:/bin/false\n")
    (live / "group").write_text(GROUPS.replace("sudo:x:27:bob", "sudo:x:27:bob,alice"))
    (new / "group").write_text(GROUPS.replace("sudo:x:27:bob", "sudo:x:27:bob,dave"))
    # Same password changed differently: the entry is theirs, ours is kept beside the file.
    (live / "shadow").write_text(SHADOW.replace("root:*", "root:$6$live"))
    (new / "shadow").write_text(SHADOW.replace("root:*", "root:$6$new") + "postfix:!:1::::::\n")

    report = trees.merge()
    assert sorted(report.merged) == ["group", "passwd"]
    assert report.conflicted == (Conflict("shadow", "entries kept as theirs: root"),)
    assert (new / "passwd").read_text() == (
        USERS
        + "postfix:x:105:110::/var/spool/postfix:/bin/false\n"
        + "alice:x:1000:1000::/home/alice:/bin/bash\n"
    )
    assert (new / "group").read_text() == GROUPS.replace(
        "sudo:x:27:bob", "sudo:x:27:bob,dave,alice"
    )
    assert (new / "shadow").read_text() == SHADOW.replace("root:*", "root:$6$new") + (
        "postfix:!:1::::::\n"
    )
    st = (new / "shadow").stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o640, 0, 42)
    live_copy = new / ("shadow" + LIVE_SUFFIX)
    assert live_copy.read_text() == SHADOW.replace("root:*", "root:$6$live")
    assert (live_copy.stat().st_mode & 0o7777, live_copy.stat().st_gid) == (0o640, 42)


def test_a_directory_replaced_by_a_file_live(trees: Trees) -> None:
    conf = trees.live / "conf.d"
    for child in conf.iterdir():
        child.unlink()
    conf.rmdir()
    put(conf, "all=1\n", 0o600)
    report = trees.merge()
    assert sorted(report.taken) == ["conf.d", "conf.d/a.conf", "conf.d/b.conf"]
    assert (trees.new / "conf.d").read_text() == "all=1\n"
    assert scan(trees.new)["conf.d"].kind == Kind.FILE


def test_a_file_replaced_by_a_directory_live(trees: Trees) -> None:
    (trees.live / "motd").unlink()
    put(trees.live / "motd" / "10-hello", "hi\n")
    report = trees.merge()
    assert sorted(report.taken) == ["motd", "motd/10-hello"]
    assert (trees.new / "motd" / "10-hello").read_text() == "hi\n"


def test_a_failure_leaves_the_file_as_it_was_and_is_reported(trees: Trees) -> None:
    (trees.live / "motd").write_text("ours\n")
    (trees.live / "owned").write_text("ours\n")
    (trees.live / "hosts").write_text("ours\n")
    (trees.new / "hosts").write_text("theirs\n")
    subprocess.run(["chattr", "+i", str(trees.new / "motd")], check=True)
    decisions = plan(scan(trees.base), scan(trees.live), scan(trees.new))
    # Unreadable even for root: base's copy of a file both sides changed is a directory now.
    (trees.base / "hosts").unlink()
    (trees.base / "hosts").mkdir()
    report = apply(decisions, trees.live, trees.new, trees.base)

    subprocess.run(["chattr", "-i", str(trees.new / "motd")], check=True)
    assert sorted(f.path for f in report.failed) == ["hosts", "motd"]
    assert all(f.error for f in report.failed)
    assert report.taken == ("owned",)
    assert (trees.new / "motd").read_text() == "hello\n"
    assert (trees.new / "hosts").read_text() == "theirs\n"
    assert (trees.new / "owned").read_text() == "ours\n"
    assert not list(trees.new.glob(".*.tu-new"))


def test_scan_does_not_follow_symlinks(tmp_path: Path) -> None:
    put(tmp_path / "real" / "f", "x\n")
    os.symlink("real", tmp_path / "link")
    os.symlink("/nonexistent", tmp_path / "dangling")
    got = scan(tmp_path)
    assert set(got) == {"real", "real/f", "link", "dangling"}
    assert got["link"].kind == got["dangling"].kind == Kind.SYMLINK
    assert got["dangling"].target == "/nonexistent"


def test_symlinks_retargeted_on_both_sides(trees: Trees) -> None:
    for root, zone in ((trees.live, "Europe/Berlin"), (trees.new, "Asia/Tokyo")):
        (root / "localtime").unlink()
        os.symlink(f"../usr/share/zoneinfo/{zone}", root / "localtime")
    report = trees.merge()
    assert [c.path for c in report.conflicted] == ["localtime"]
    assert os.readlink(trees.new / "localtime") == "../usr/share/zoneinfo/Asia/Tokyo"
    assert os.readlink(trees.new / "localtime.live") == "../usr/share/zoneinfo/Europe/Berlin"


def test_a_directory_deleted_by_the_package_with_a_live_file_in_it(trees: Trees) -> None:
    (trees.live / "conf.d" / "a.conf").write_text("a=live\n")
    subprocess.run(["rm", "-r", str(trees.new / "conf.d")], check=True)
    report = trees.merge()
    # Theirs' deletion stands; there is no directory to keep ours beside: the report names it.
    assert report.conflicted == (
        Conflict("conf.d/a.conf", "deleted on one side, changed on the other"),
    )
    assert report.failed == ()
    assert not (trees.new / "conf.d").exists()


def test_extended_attributes_are_copied(trees: Trees) -> None:
    (trees.live / "motd").write_text("ours\n")
    os.setxattr(trees.live / "motd", "user.tu-test", b"value")
    decisions = plan(scan(trees.base, True), scan(trees.live, True), scan(trees.new, True))
    report = apply(decisions, trees.live, trees.new, trees.base)
    assert report.taken == ("motd",)
    assert os.getxattr(trees.new / "motd", "user.tu-test") == b"value"


def test_a_live_file_gone_since_the_scan_is_reported(trees: Trees) -> None:
    (trees.live / "motd").write_text("ours\n")
    decisions = plan(scan(trees.base), scan(trees.live), scan(trees.new))
    (trees.live / "motd").unlink()
    report = apply(decisions, trees.live, trees.new, trees.base)
    assert [f.path for f in report.failed] == ["motd"]
    assert (trees.new / "motd").read_text() == "hello\n"


def test_without_base_files_content_merges_are_conflicts(trees: Trees) -> None:
    (trees.live / "hosts").write_text(HOSTS + "ours\n")
    (trees.new / "hosts").write_text("theirs\n" + HOSTS)
    decisions = plan(scan(trees.base), scan(trees.live), scan(trees.new))
    report = apply(decisions, trees.live, trees.new)
    assert [c.path for c in report.conflicted] == ["hosts"]
    assert (trees.new / "hosts.live").read_text() == HOSTS + "ours\n"


def test_attributes_changed_on_each_side_combine(trees: Trees) -> None:
    os.chmod(trees.live / "motd", 0o600)
    (trees.new / "motd").write_text("new\n")
    os.chmod(trees.live / "conf.d", 0o700)
    os.chown(trees.new / "conf.d", 0, 42)
    report = trees.merge()
    assert sorted(report.taken) == ["conf.d", "motd"]
    st = (trees.new / "motd").stat()
    assert ((trees.new / "motd").read_text(), st.st_mode & 0o7777) == ("new\n", 0o600)
    st = (trees.new / "conf.d").stat()
    assert (st.st_mode & 0o7777, st.st_gid) == (0o700, 42)
