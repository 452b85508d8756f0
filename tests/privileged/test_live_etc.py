"""The writable /etc on real btrfs images: live edits are carried into the next snapshot.

Every root snapshot has its own ``/etc``, a nested writable subvolume (``snapshots.etcvol``).
What the admin changes in the live ``/etc`` before, during and after a transaction must reach
the snapshot that boots next - at the fork, at the commit, by ``sync-etc`` at shutdown, or by
``sync-etc`` at the first boot when a power cut came first - merged three ways with what the
transaction changed (``etc.carry``), losing nothing: a real conflict keeps the snapshot's
version and puts the live one beside it as ``FILE.live``.  Rollback boots the chosen snapshot's
own ``/etc`` and names the live edits it leaves behind; deleting a snapshot deletes its nested
subvolumes; ``setup-etc`` migrates a system made before this layout.

A reboot is :meth:`System.boot_default` (the default subvolume mounted again) followed by
``sync-etc``, which ``transactional-update-etc.service`` runs early at boot.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from testkit.systems import System, sh
from transactional_update.snapshots import btrfs

ALICE = {
    "passwd": "alice:x:1000:1000:Alice:/home/alice:/bin/bash\n",
    "group": "alice:x:1000:\n",
    "shadow": "alice:$6$salt$hash:19000:0:99999:7:::\n",
    "gshadow": "alice:!::\n",
}
SVC = {
    "passwd": "svc:x:999:999::/nonexistent:/usr/sbin/nologin\n",
    "group": "svc:x:999:\n",
    "shadow": "svc:!:19000::::::\n",
    "gshadow": "svc:!::\n",
}
STARTED = "tx-started"  # what the paused transaction's command touches in its /etc
GO = "root/go"  # what releases it: /root is bound from the live system into the chroot
DIFFERENT = "both changed the content, differently"  # the reason of a content conflict


# -- helpers -----------------------------------------------------------------------------------


def ok(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return r


def changelog(system: System, number: int) -> dict[str, Any]:
    """``--json changelog N``: the snapshot's entry, with its ``live_etc`` merges."""
    data: dict[str, Any] = json.loads(ok(system.tu("--json", "changelog", str(number))).stdout)
    return data


def live_merges(system: System, number: int) -> list[dict[str, Any]]:
    merges: list[dict[str, Any]] = changelog(system, number)["live_etc"]
    return merges


def sync_etc(system: System) -> list[dict[str, Any]]:
    """``--json sync-etc``, as the unit runs it at shutdown and early at boot."""
    merges: list[dict[str, Any]] = json.loads(ok(system.tu("--json", "sync-etc")).stdout)["merges"]
    return merges


def reboot(system: System) -> list[dict[str, Any]]:
    """Boot the default snapshot: mount it, then the boot unit's ``sync-etc``."""
    system.boot_default()
    return sync_etc(system)


def etc(system: System, number: int) -> Path:
    return system.snapshot(number) / "etc"


def info(system: System, number: int) -> Path:
    """``.snapshots/N``, where the /etc references of snapshot N are."""
    return system.root / ".snapshots" / str(number)


def put(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


def owner(path: Path) -> tuple[int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def notifications(system: System) -> Path:
    """Send the conflict notices (``wall`` by default) to a file instead; set in the live
    /etc before the transaction, so that both sides have the setting and it merges quietly."""
    log = system.workdir / "notified"
    script = system.workdir / "notify.sh"
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$1\" >> {log}\n")
    script.chmod(0o755)
    put(system.root / "etc/transactional-update.conf", f"NOTIFY_COMMAND={script}\n")
    return log


def subvolumes(system: System) -> dict[int, tuple[int, str]]:
    """Every subvolume of the filesystem: ``{id: (parent id, path)}``."""
    found = {}
    for line in sh("btrfs", "subvolume", "list", "-a", str(system.root)).stdout.splitlines():
        fields = line.split()
        # ID 259 gen 8 top level 258 path <FS_TREE>/@/.snapshots/1/snapshot/etc
        # (without "<FS_TREE>/" below the mounted subvolume)
        found[int(fields[1])] = (int(fields[6]), fields[8].removeprefix("<FS_TREE>/"))
    return found


def snapshot_subvolumes(system: System, number: int) -> list[str]:
    """The paths of the subvolumes that belong to snapshot *number*: itself, nested in it, or
    beside it in ``.snapshots/N``."""
    marker = f"/.snapshots/{number}/"
    return sorted(p for _, p in subvolumes(system).values() if marker in p)


def assert_no_dangling_subvolumes(system: System) -> None:
    """Every subvolume's parent still exists (a nested /etc cannot outlive its snapshot)."""
    found = subvolumes(system)
    dangling = [p for parent, p in found.values() if parent != 5 and parent not in found]
    assert dangling == []


class Paused:
    """A transaction running in the background whose command waits for :meth:`release`."""

    def __init__(self, system: System, script: str) -> None:
        self.system = system
        self.go = system.root / GO
        self.go.unlink(missing_ok=True)
        waiting = f"touch /etc/{STARTED}; while [ ! -e /{GO} ]; do sleep 0.1; done; {script}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "transactional_update",
                "--root",
                str(system.root),
                "run",
                "--",
                "sh",
                "-c",
                waiting,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.number = self._wait_started()

    def _wait_started(self, timeout: float = 120) -> int:
        deadline = time.monotonic() + timeout
        snapshots = self.system.root / ".snapshots"
        while True:
            for d in snapshots.iterdir():
                if d.name.isdigit() and (d / "snapshot/etc" / STARTED).exists():
                    return int(d.name)
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                raise AssertionError(f"the transaction ended early: {out}{err}")
            assert time.monotonic() < deadline, "the transaction's command did not start"
            time.sleep(0.05)

    def release(self, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Let the command go on, and wait for the transaction to end."""
        self.go.touch()
        out, err = self.proc.communicate(timeout=timeout)
        self.go.unlink(missing_ok=True)
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, err)

    def kill(self) -> None:
        with suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate()
        self.go.unlink(missing_ok=True)


@contextmanager
def paused(system: System, script: str = "true") -> Iterator[Paused]:
    """A :class:`Paused` transaction that is released (or killed) when the test leaves."""
    tx = Paused(system, script)
    try:
        yield tx
    finally:
        if tx.proc.poll() is None:
            tx.go.touch()
            try:
                tx.proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                tx.kill()
        tx.go.unlink(missing_ok=True)


@contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """``chattr +i`` for the block: btrfs then refuses to replace or delete the files."""
    try:
        for p in paths:
            sh("chattr", "+i", str(p))
        yield
    finally:
        for p in paths:
            sh("chattr", "-i", str(p), check=False)


def _wait_for_processes_gone(text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            with suppress(OSError):
                if text in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                    alive.append(pid)
        if not alive:
            return
        assert time.monotonic() < deadline, f"still running: {alive}"
        time.sleep(0.05)


# -- the layout --------------------------------------------------------------------------------


def test_layout_only_etc_is_writable(system: System) -> None:
    root = system.root
    assert system.booted_number() == 1
    assert btrfs.is_subvolume(root / "etc")
    assert btrfs.is_subvolume(etc(system, 1))
    assert btrfs.is_read_only(system.snapshot(1))
    assert not btrfs.is_read_only(root / "etc")
    (root / "etc/written-live").write_text("ok\n")
    assert (etc(system, 1) / "written-live").read_text() == "ok\n"
    for path in (root / "usr/written-live", root / "written-live"):
        try:
            path.write_text("no\n")
        except OSError as exc:
            assert exc.errno == 30, exc  # EROFS
        else:
            raise AssertionError(f"{path} was writable")
    st = system.status_json()
    assert st["etc_writable"] is True
    assert st["etc_conflicts"] == []
    assert "/etc:" not in ok(system.tu("status")).stdout


def test_live_edit_before_a_transaction_is_in_the_new_snapshot(system: System) -> None:
    root = system.root
    put(root / "etc/before.conf", "live=1\n", 0o600)
    ok(system.tu("run", "--", "sh", "-c", "cat /etc/before.conf > /etc/seen; echo tx > /etc/tx"))
    new = system.default_number()
    assert new == 2
    new_etc = etc(system, new)
    assert btrfs.is_subvolume(new_etc)
    assert not btrfs.is_read_only(new_etc)
    assert btrfs.is_read_only(system.snapshot(new))
    assert (new_etc / "before.conf").read_text() == "live=1\n"
    assert mode(new_etc / "before.conf") == 0o600
    assert (new_etc / "seen").read_text() == "live=1\n"  # the command saw it
    assert (new_etc / "tx").read_text() == "tx\n"
    # The live /etc does not get the transaction's change, and nothing changed after the fork.
    assert not (root / "etc/tx").exists()
    entry = changelog(system, new)
    assert entry["live_etc"] == []
    assert {f["path"] for f in entry["files"]} == {"/etc/seen", "/etc/tx"}
    # The sync point (what the live /etc was at the fork) waits beside the pending snapshot;
    # the transaction's start reference is gone.
    assert btrfs.is_read_only(info(system, new) / "etc-sync")
    assert (info(system, new) / "etc-sync/before.conf").read_text() == "live=1\n"
    assert json.loads((info(system, new) / "etc-sync.json").read_text())["live"] == 1
    assert not (info(system, new) / "etc-start").exists()


# -- the commit's merge ------------------------------------------------------------------------


def test_live_edits_during_a_transaction_are_merged_at_commit(managed_system: System) -> None:
    s = managed_system
    live = s.root / "etc"
    notified = notifications(s)
    # The live /etc at the fork: the base of the merge.
    put(live / "content.conf", "one\n")
    put(live / "mode.conf", "m\n")
    put(live / "owner.conf", "o\n")
    put(live / "xattr.conf", "x\n")
    os.symlink("target-a", live / "link")
    put(live / "gone.conf", "bye\n")
    put(live / "same.conf", "before\n")
    put(live / "lines.conf", "a=1\nb=1\nc=1\nd=1\ne=1\nf=1\n")
    put(live / "clash.conf", "setting=1\n")
    (live / "blob.bin").write_bytes(b"\0\1base")
    put(live / "dir2file/inner.conf", "inner\n")
    shadow_meta = (mode(live / "shadow"), owner(live / "shadow"))
    transaction = (
        "echo after > /etc/same.conf; "
        "sed -i s/f=1/f=tx/ /etc/lines.conf; "
        "echo setting=tx > /etc/clash.conf; "
        "printf '\\000tx' > /etc/blob.bin; "
        "cp -p /etc/passwd /etc/passwd-; "
        + "; ".join(f"printf '{line.strip()}\\n' >> /etc/{f}" for f, line in SVC.items())
    )
    with paused(s, transaction) as tx:
        assert tx.number == 2
        (live / "content.conf").write_text("two\n")
        (live / "mode.conf").chmod(0o600)
        os.chown(live / "owner.conf", 1000, 1000)
        os.setxattr(live / "xattr.conf", "user.x", b"1")
        (live / "link").unlink()
        os.symlink("target-b", live / "link")
        (live / "gone.conf").unlink()
        put(live / "newdir/file.conf", "new\n", 0o640)
        (live / "newdir").chmod(0o750)
        (live / "same.conf").write_text("after\n")
        (live / "lines.conf").write_text("a=live\nb=1\nc=1\nd=1\ne=1\nf=1\n")
        (live / "clash.conf").write_text("setting=live\n")
        (live / "blob.bin").write_bytes(b"\0\1live")
        shutil.copy2(live / "passwd", live / "passwd-")  # as useradd does
        for name, line in ALICE.items():
            append(live / name, line)
        shutil.rmtree(live / "dir2file")
        put(live / "dir2file", "now a file\n")
        r = tx.release()
    ok(r)
    n = tx.number
    assert s.default_number() == n
    new = etc(s, n)

    # Changed only live: taken whole.
    assert (new / "content.conf").read_text() == "two\n"
    assert mode(new / "mode.conf") == 0o600
    assert owner(new / "owner.conf") == (1000, 1000)
    assert os.getxattr(new / "xattr.conf", "user.x") == b"1"
    assert os.readlink(new / "link") == "target-b"
    assert not (new / "gone.conf").exists()
    assert (new / "newdir/file.conf").read_text() == "new\n"
    assert mode(new / "newdir/file.conf") == 0o640
    assert mode(new / "newdir") == 0o750
    assert (new / "dir2file").is_file()
    assert (new / "dir2file").read_text() == "now a file\n"
    # Changed the same way on both sides: no conflict.
    assert (new / "same.conf").read_text() == "after\n"
    assert not (new / "same.conf.live").exists()
    # Changed in different places: both edits.
    assert (new / "lines.conf").read_text() == "a=live\nb=1\nc=1\nd=1\ne=1\nf=tx\n"
    # Accounts merge by entry: the live user and the transaction's system user both survive.
    for name, alice in ALICE.items():
        text = (new / name).read_text()
        assert alice in text and SVC[name] in text, name
        assert text.count("\nalice:") == 1 and text.count("\nsvc:") == 1, name
        assert not (new / f"{name}.live").exists()
    assert (mode(new / "shadow"), owner(new / "shadow")) == shadow_meta
    assert not (new / "passwd-.live").exists()  # backup files are not merged
    # Real conflicts: the snapshot's version in place, the live one beside it.
    assert (new / "clash.conf").read_text() == "setting=tx\n"
    assert (new / "clash.conf.live").read_text() == "setting=live\n"
    assert (new / "blob.bin").read_bytes() == b"\0tx"
    assert (new / "blob.bin.live").read_bytes() == b"\0\1live"
    # The live /etc itself is left as the admin made it.
    assert (live / "clash.conf").read_text() == "setting=live\n"
    assert not (live / "clash.conf.live").exists()
    assert "svc:" not in (live / "passwd").read_text()

    for path in ("/etc/clash.conf", "/etc/blob.bin"):
        assert (
            f"/etc conflict: {path} changed live and in snapshot {n} ({DIFFERENT}); the "
            f"snapshot's version is kept, the live one is {path}.live"
        ) in r.stderr
    assert "Traceback" not in r.stderr
    (merge,) = live_merges(s, n)
    assert (merge["when"], merge["from"]) == ("commit", 1)
    assert sorted(merge["merged"]) == [
        "/etc/group",
        "/etc/gshadow",
        "/etc/lines.conf",
        "/etc/passwd",
        "/etc/shadow",
    ]
    # Not the same change twice (same.conf), nor the backup files (passwd-).
    assert sorted(merge["taken"]) == [
        "/etc/content.conf",
        "/etc/dir2file",
        "/etc/dir2file/inner.conf",
        "/etc/gone.conf",
        "/etc/link",
        "/etc/mode.conf",
        "/etc/newdir",
        "/etc/newdir/file.conf",
        "/etc/owner.conf",
        "/etc/xattr.conf",
    ]
    assert sorted(merge["conflicts"], key=lambda c: str(c["path"])) == [
        {"path": "/etc/blob.bin", "live": "/etc/blob.bin.live", "reason": DIFFERENT},
        {"path": "/etc/clash.conf", "live": "/etc/clash.conf.live", "reason": DIFFERENT},
    ]
    assert merge["failed"] == []
    text = ok(s.tu("changelog", str(n))).stdout
    assert f"live /etc from snapshot 1 merged at {merge['at']} (commit):" in text
    assert "    L /etc/content.conf" in text
    assert "    CONFLICT /etc/clash.conf: " in text
    # The admin is told, as about reboots.
    note = notified.read_text()
    assert f"transactional-update: /etc of snapshot {n} keeps its own version" in note
    assert "/etc/clash.conf (live version: /etc/clash.conf.live)" in note

    # status lists the open conflicts until the .live file is deleted.
    listed = s.status_json()["etc_conflicts"]
    assert sorted((c["snapshot"], c["path"], c["live"]) for c in listed) == [
        (n, "/etc/blob.bin", "/etc/blob.bin.live"),
        (n, "/etc/clash.conf", "/etc/clash.conf.live"),
    ]
    assert all(c["reason"] == DIFFERENT and c["at"] == merge["at"] for c in listed)
    # Carried once: a later sync finds nothing new and reports no conflict again.
    assert sync_etc(s) == []
    assert len(s.status_json()["etc_conflicts"]) == 2
    assert f"/etc conflict: /etc/clash.conf in snapshot {n} (" in ok(s.tu("status")).stdout
    (new / "clash.conf.live").unlink()
    listed = s.status_json()["etc_conflicts"]
    assert [c["path"] for c in listed] == ["/etc/blob.bin"]
    text = ok(s.tu("status")).stdout
    assert "/etc conflict: /etc/clash.conf" not in text
    assert f"/etc conflict: /etc/blob.bin in snapshot {n} (" in text


def test_a_failed_transaction_leaves_no_subvolume_and_takes_nothing(
    managed_system: System,
) -> None:
    s = managed_system
    before = subvolumes(s)
    with paused(s, "echo tx > /etc/tx; exit 3") as tx:
        put(s.root / "etc/during.conf", "live\n")
        r = tx.release()
    assert r.returncode == 3
    assert "the snapshot was discarded; the default is unchanged" in r.stderr
    assert s.numbers() == [1]
    assert s.default_number() == 1
    assert not info(s, tx.number).exists()
    assert snapshot_subvolumes(s, tx.number) == []
    assert subvolumes(s) == before
    assert (s.root / "etc/during.conf").read_text() == "live\n"  # the live edit stays live
    r = s.tu("run", "--", "false")
    assert r.returncode == 1
    assert subvolumes(s) == before
    assert_no_dangling_subvolumes(s)


# -- after the commit: shutdown and boot -------------------------------------------------------


def test_sync_etc_carries_later_edits_into_the_pending_snapshot(managed_system: System) -> None:
    s = managed_system
    live = s.root / "etc"
    put(live / "edit.conf", "v1\n")
    put(live / "gone.conf", "bye\n")
    ok(s.tu("run", "--", "sh", "-c", "echo tx > /etc/tx"))
    n = s.default_number()
    sync_before = json.loads((info(s, n) / "etc-sync.json").read_text())
    assert sync_etc(s) == []  # nothing changed since the commit
    assert live_merges(s, n) == []

    (live / "edit.conf").write_text("v2\n")
    (live / "gone.conf").unlink()
    put(live / "added.conf", "new\n", 0o600)
    r = ok(s.tu("sync-etc"))
    assert r.stdout == (
        f"snapshot {n}: 3 live /etc change(s) from snapshot 1 carried (sync), "
        "0 conflict(s), 0 failed\n"
    )
    new = etc(s, n)
    assert (new / "edit.conf").read_text() == "v2\n"
    assert not (new / "gone.conf").exists()
    assert (new / "added.conf").read_text() == "new\n"
    assert mode(new / "added.conf") == 0o600
    assert (new / "tx").read_text() == "tx\n"
    (merge,) = live_merges(s, n)
    assert (merge["when"], merge["from"]) == ("sync", 1)
    assert sorted(merge["taken"]) == ["/etc/added.conf", "/etc/edit.conf", "/etc/gone.conf"]
    assert (merge["merged"], merge["conflicts"], merge["failed"]) == ([], [], [])
    text = ok(s.tu("changelog", str(n))).stdout
    assert f"  live /etc from snapshot 1 merged at {merge['at']} (sync):" in text
    assert "    L /etc/edit.conf" in text
    # The sync point moved on: the next run finds nothing new.
    assert (info(s, n) / "etc-sync/edit.conf").read_text() == "v2\n"
    sync_after = json.loads((info(s, n) / "etc-sync.json").read_text())
    assert sync_after == {"live": 1, "at": merge["at"]}
    assert sync_after["at"] >= sync_before["at"]
    assert sync_etc(s) == []
    assert len(live_merges(s, n)) == 1
    # The booted snapshot is not a target.
    assert not (etc(s, 1) / "tx").exists()
    assert s.booted_number() == 1


def test_boot_merges_what_a_power_cut_kept_from_the_shutdown(managed_system: System) -> None:
    s = managed_system
    live = s.root / "etc"
    ok(s.tu("run", "--", "sh", "-c", "echo tx > /etc/tx"))
    n = s.default_number()
    # Edited after the commit, and no sync-etc at shutdown: the power was cut.
    put(live / "late.conf", "late\n")
    merges = reboot(s)
    assert s.booted_number() == n
    assert [(m["into"], m["when"], m["from"], m["taken"]) for m in merges] == [
        (n, "boot", 1, ["/etc/late.conf"])
    ]
    assert (s.root / "etc/late.conf").read_text() == "late\n"
    assert (s.root / "etc/tx").read_text() == "tx\n"
    assert not (info(s, n) / "etc-sync").exists()
    assert not (info(s, n) / "etc-sync.json").exists()
    assert btrfs.is_read_only(info(s, n) / "etc-booted")
    assert (info(s, n) / "etc-booted/late.conf").read_text() == "late\n"
    (merge,) = live_merges(s, n)
    assert merge["when"] == "boot"
    text = ok(s.tu("changelog", str(n))).stdout
    assert f"  live /etc from snapshot 1 merged at {merge['at']} (boot):" in text
    assert "    L /etc/late.conf" in text
    # The next boot (and shutdown) has nothing to carry.
    assert sync_etc(s) == []
    assert len(live_merges(s, n)) == 1
    assert snapshot_subvolumes(s, n) == [
        f"@/.snapshots/{n}/etc-booted",
        f"@/.snapshots/{n}/snapshot",
        f"@/.snapshots/{n}/snapshot/etc",
    ]


def test_stacked_transactions_before_a_reboot_get_every_live_edit(
    managed_system: System,
) -> None:
    s = managed_system
    live = s.root / "etc"
    put(live / "e0.conf", "0\n")
    ok(s.tu("run", "--", "sh", "-c", "echo a > /etc/tx-a"))
    first = s.default_number()
    put(live / "e1.conf", "1\n")
    (live / "e0.conf").write_text("0 again\n")
    # The second transaction builds on the pending one; the live edits since its sync point are
    # merged in at the fork, so its commands see them.
    ok(s.tu("run", "--", "sh", "-c", "cat /etc/e1.conf > /etc/seen-e1; echo b > /etc/tx-b"))
    second = s.default_number()
    assert (first, second) == (2, 3)
    new = etc(s, second)
    assert (new / "seen-e1").read_text() == "1\n"
    assert (new / "e0.conf").read_text() == "0 again\n"
    assert (new / "tx-a").read_text() == "a\n"
    assert (new / "tx-b").read_text() == "b\n"
    (fork,) = live_merges(s, second)
    assert (fork["when"], fork["from"]) == ("fork", 1)
    assert sorted(fork["taken"]) == ["/etc/e0.conf", "/etc/e1.conf"]
    # After the second commit: carried at shutdown into the default, not into the superseded one.
    put(live / "e2.conf", "2\n")
    merges = sync_etc(s)
    assert [(m["into"], m["when"], m["taken"]) for m in merges] == [
        (second, "sync", ["/etc/e2.conf"])
    ]
    assert not (etc(s, first) / "e2.conf").exists()
    assert [m["when"] for m in live_merges(s, second)] == ["fork", "sync"]
    # The reboot finds nothing more to carry, and every edit is there.
    assert reboot(s) == []
    assert s.booted_number() == second
    booted = s.root / "etc"
    assert [(booted / f).read_text() for f in ("e0.conf", "e1.conf", "e2.conf")] == [
        "0 again\n",
        "1\n",
        "2\n",
    ]
    assert (booted / "tx-a").exists() and (booted / "tx-b").exists()


def test_a_failed_path_is_retried_by_the_next_sync(managed_system: System) -> None:
    s = managed_system
    live = s.root / "etc"
    put(live / "stuck.conf", "old\n")
    put(live / "other.conf", "old\n")
    ok(s.tu("run", "--", "true"))
    n = s.default_number()
    (live / "stuck.conf").write_text("live\n")
    (live / "other.conf").write_text("live\n")
    with immutable(etc(s, n) / "stuck.conf"):
        r = ok(s.tu("--json", "sync-etc"))
        (merge,) = json.loads(r.stdout)["merges"]
        assert (merge["into"], merge["when"]) == (n, "sync")
        assert [f["path"] for f in merge["failed"]] == ["/etc/stuck.conf"]
        assert merge["failed"][0]["error"]
        assert merge["taken"] == ["/etc/other.conf"]
        assert f"/etc: /etc/stuck.conf not carried into snapshot {n}: " in r.stderr
        # The snapshot's file stays, the live one is untouched.  The sync point moved on for
        # the carried path only: the failed one is as before there, to be tried again.
        assert (etc(s, n) / "stuck.conf").read_text() == "old\n"
        assert (etc(s, n) / "other.conf").read_text() == "live\n"
        assert (live / "stuck.conf").read_text() == "live\n"
        assert json.loads((info(s, n) / "etc-sync.json").read_text())["live"] == 1
        assert (info(s, n) / "etc-sync/stuck.conf").read_text() == "old\n"
        assert (info(s, n) / "etc-sync/other.conf").read_text() == "live\n"
        assert btrfs.is_read_only(info(s, n) / "etc-sync")
        assert not (info(s, n) / "etc-sync.new").exists()
        assert [m["failed"] for m in live_merges(s, n)] == [merge["failed"]]
        # The admin reverts the carried edit: a change of its own, carried too (it would be
        # lost if the sync point had stayed where the first merge started).
        (live / "other.conf").write_text("old\n")
        # Still stuck: tried again, fails again; the revert is carried.
        (again,) = sync_etc(s)
        assert [f["path"] for f in again["failed"]] == ["/etc/stuck.conf"]
        assert again["taken"] == ["/etc/other.conf"]
        assert (etc(s, n) / "other.conf").read_text() == "old\n"
    # Once the file can be replaced, the next sync carries it (and only it).
    (done,) = sync_etc(s)
    assert (done["taken"], done["failed"]) == (["/etc/stuck.conf"], [])
    assert (etc(s, n) / "stuck.conf").read_text() == "live\n"
    assert (info(s, n) / "etc-sync/stuck.conf").read_text() == "live\n"
    assert sync_etc(s) == []


# -- rollback ----------------------------------------------------------------------------------


def test_rollback_boots_the_old_etc_and_names_the_edits_left_behind(
    managed_system: System,
) -> None:
    s = managed_system
    put(s.root / "etc/kept.conf", "from 1\n")
    ok(s.tu("run", "--", "sh", "-c", "echo 2 > /etc/kept.conf; echo tx > /etc/tx"))
    n = s.default_number()
    reboot(s)
    assert s.booted_number() == n
    assert (s.root / "etc/kept.conf").read_text() == "2\n"
    # Edits in the booted snapshot's /etc since the boot.
    put(s.root / "etc/after-boot.conf", "edited\n")
    (s.root / "etc/kept.conf").write_text("edited live\n")
    r = ok(s.tu("--json", "rollback", "1"))
    out = json.loads(r.stdout)
    where = str(etc(s, n))
    assert out["default"] == 1 and out["previous_default"] == n
    assert sorted(out["etc_left_behind"]) == ["/etc/after-boot.conf", "/etc/kept.conf"]
    assert out["etc_left_in"] == where
    assert (
        f"live /etc edits since the boot that snapshot 1 does not have (they stay in {where}): "
    ) in r.stderr
    assert "/etc/after-boot.conf" in r.stderr
    assert s.default_number() == 1
    # Snapshot 1 boots with its own /etc, as it was; the edits stay in snapshot n.
    assert reboot(s) == []
    assert s.booted_number() == 1
    assert (s.root / "etc/kept.conf").read_text() == "from 1\n"
    assert not (s.root / "etc/tx").exists()
    assert not (s.root / "etc/after-boot.conf").exists()
    assert (etc(s, n) / "after-boot.conf").read_text() == "edited\n"
    # Snapshot 1's own live edit since its boot (kept.conf, written before the transaction)
    # differs from what n boots with: named.  tx is n's own, no live edit.
    r = ok(s.tu("--json", "rollback", str(n)))
    assert json.loads(r.stdout)["etc_left_behind"] == ["/etc/kept.conf"]
    # A live edit that the target has as it is now is not left behind (n's kept.conf is the
    # edit made while n ran).
    (s.root / "etc/kept.conf").write_text("edited live\n")
    r = ok(s.tu("--json", "rollback", str(n)))
    assert json.loads(r.stdout)["etc_left_behind"] == []
    assert "live /etc edits" not in r.stderr


def test_rollback_refuses_a_snapshot_without_etc(managed_system: System) -> None:
    s = managed_system
    out = sh("snapper", "--no-dbus", "--root", str(s.root), "create", "--from", "1", "-p").stdout
    bare = int(out.strip())
    assert not btrfs.is_subvolume(etc(s, bare))
    r = s.tu("rollback", str(bare))
    assert r.returncode != 0
    assert f"snapshot {bare} has no /etc" in r.stderr
    assert "Traceback" not in r.stderr
    assert s.default_number() == 1


# -- deleting snapshots ------------------------------------------------------------------------


def test_cleanup_removes_nested_etc_subvolumes(system: System) -> None:
    s = system
    config = s.root / "etc/snapper/configs/root"
    text = config.read_text()
    config.write_text(text + 'NUMBER_LIMIT="1"\nNUMBER_MIN_AGE="0"\n')
    ok(s.tu("run", "--", "touch", "/etc/two"))
    ok(s.tu("run", "--", "touch", "/etc/three"))
    ok(s.tu("run", "--", "touch", "/etc/four"))
    assert s.numbers() == [1, 2, 3, 4]
    # Superseded before it booted: it keeps its sync point.
    assert snapshot_subvolumes(s, 2) == [
        "@/.snapshots/2/etc-sync",
        "@/.snapshots/2/snapshot",
        "@/.snapshots/2/snapshot/etc",
    ]
    # A transaction killed mid-command leaves a fork with its /etc and its references.
    with paused(s) as tx:
        killed = tx.number
        assert btrfs.is_subvolume(etc(s, killed))
        assert btrfs.is_subvolume(info(s, killed) / "etc-sync")
        assert btrfs.is_subvolume(info(s, killed) / "etc-start")
        tx.kill()
    _wait_for_processes_gone(str(s.root))
    r = ok(s.tu("--json", "cleanup"))
    assert json.loads(r.stdout) == {"stale": [killed], "number": [2], "orphans": [], "lost": []}
    assert s.numbers() == [1, 3, 4]
    for gone in (2, killed):
        assert snapshot_subvolumes(s, gone) == []
        assert not info(s, gone).exists()
    assert_no_dangling_subvolumes(s)
    # The default (4) and the superseded 3 keep their /etc.
    assert btrfs.is_subvolume(etc(s, 3)) and btrfs.is_subvolume(etc(s, 4))
    assert (etc(s, 4) / "four").exists()


# -- migration ---------------------------------------------------------------------------------


def _old_layout(system: System) -> None:
    system.plain_etc()


def test_setup_etc_migrates_a_system_made_before_the_writable_etc(managed_system: System) -> None:
    s = managed_system
    _old_layout(s)
    assert s.booted_number() == 1
    assert not btrfs.is_subvolume(s.root / "etc")
    hostname = (s.root / "etc/hostname").read_text()
    st = s.status_json()
    assert st["etc_writable"] is False
    status = ok(s.tu("status")).stdout
    assert "/etc:     read-only" in status and "setup-etc" in status

    r = ok(s.tu("setup-etc"))
    n = s.default_number()
    assert n == 2 and s.numbers() == [1, 2]
    assert "Traceback" not in r.stderr
    new = etc(s, n)
    assert btrfs.is_subvolume(new)
    assert not btrfs.is_read_only(new)
    assert btrfs.is_read_only(s.snapshot(n))
    assert (new / "hostname").read_text() == hostname
    assert (mode(new), owner(new)) == (mode(etc(s, 1)), owner(etc(s, 1)))
    assert not (s.snapshot(n) / "etc.tu-old").exists()
    (root_line,) = [
        line.split()
        for line in (new / "fstab").read_text().splitlines()
        if line.split()[1:2] == ["/"]
    ]
    assert "rw" in root_line[3].split(",") and "ro" not in root_line[3].split(",")
    # snapper's own number cleanup cannot delete snapshots with their own /etc: ours does it.
    config = (new / "snapper/configs/root").read_text().splitlines()
    assert 'NUMBER_CLEANUP="no"' in config and 'NUMBER_CLEANUP="yes"' not in config
    unit = "/usr/lib/systemd/system/transactional-update-etc.service"
    wants = new / "systemd/system/sysinit.target.wants/transactional-update-etc.service"
    assert os.readlink(wants) == unit  # absolute: resolved in the booted root
    assert (s.snapshot(n) / unit.lstrip("/")).is_file()
    # Snapshot 1 keeps its old layout (and still boots as it did).
    assert not btrfs.is_subvolume(etc(s, 1))

    # Booted: /etc is writable, status no longer asks for setup-etc.
    reboot(s)
    assert s.booted_number() == n
    assert btrfs.is_subvolume(s.root / "etc")
    (s.root / "etc/written-live").write_text("ok\n")
    assert s.status_json()["etc_writable"] is True
    assert "/etc:     read-only" not in ok(s.tu("status")).stdout
    # Nothing left to migrate.
    r = ok(s.tu("setup-etc"))
    assert r.stdout == f"snapshot {n}, the default, has its own /etc; no snapshot was made\n"
    assert s.numbers() == [1, 2]
    # The next transaction forks the migrated /etc, live edits included.
    ok(s.tu("run", "--", "true"))
    assert (etc(s, s.default_number()) / "written-live").read_text() == "ok\n"


# -- power cuts and protection of what is still to be carried ------------------------------------


def test_a_cut_between_dropping_and_renaming_the_sync_point_loses_nothing(
    managed_system: System,
) -> None:
    """The state a power cut leaves inside a sync point's replacement: the old one deleted (its
    info file kept), the new one not yet renamed.  The next run completes it."""
    s = managed_system
    live = s.root / "etc"
    ok(s.tu("run", "--", "true"))
    n = s.default_number()
    put(live / "before-cut.conf", "merged, then cut\n")
    # What merge_live does up to the cut: the merge itself, then the new reference, old gone.
    sh("cp", "-a", str(live / "before-cut.conf"), str(etc(s, n) / "before-cut.conf"))
    btrfs.snapshot(live, info(s, n) / "etc-sync.new", read_only=True)
    btrfs.delete_subvolume(info(s, n) / "etc-sync")
    assert (info(s, n) / "etc-sync.json").exists()
    put(live / "after-cut.conf", "edited after the cut\n")
    (merged,) = sync_etc(s)
    # before-cut.conf is in the promoted sync point: not carried again; after-cut.conf is new.
    assert merged["taken"] == ["/etc/after-cut.conf"]
    assert (etc(s, n) / "after-cut.conf").read_text() == "edited after the cut\n"
    assert btrfs.is_subvolume(info(s, n) / "etc-sync")
    assert not (info(s, n) / "etc-sync.new").exists()
    # A new reference beside an intact old one is a merge cut short: dropped, redone from the old.
    btrfs.snapshot(live, info(s, n) / "etc-sync.new", read_only=True)
    put(live / "later.conf", "x\n")
    (merged,) = sync_etc(s)
    assert merged["taken"] == ["/etc/later.conf"]
    assert not (info(s, n) / "etc-sync.new").exists()


def test_a_failed_boot_merge_retries_only_that_path(managed_system: System) -> None:
    s = managed_system
    live = s.root / "etc"
    put(live / "stuck.conf", "old\n")
    ok(s.tu("run", "--", "true"))
    n = s.default_number()
    # Edits after the commit, and a power cut before the shutdown's merge.
    put(live / "carried.conf", "from 1\n")
    put(live / "stuck.conf", "live on 1\n")
    s.boot_default()
    with immutable(s.root / "etc/stuck.conf"):
        (merged,) = sync_etc(s)
        assert merged["when"] == "boot"
        assert merged["taken"] == ["/etc/carried.conf"]
        assert [f["path"] for f in merged["failed"]] == ["/etc/stuck.conf"]
        assert not (info(s, n) / "etc-booted").exists()  # not booted cleanly yet
        # The admin reverts the carried file on n: the next run must not bring it back.
        (s.root / "etc/carried.conf").unlink()
        (again,) = sync_etc(s)
        assert again["taken"] == [] and [f["path"] for f in again["failed"]] == ["/etc/stuck.conf"]
        assert not (s.root / "etc/carried.conf").exists()
    (done,) = sync_etc(s)
    assert (done["taken"], done["failed"]) == (["/etc/stuck.conf"], [])
    assert (s.root / "etc/stuck.conf").read_text() == "live on 1\n"
    assert not (info(s, n) / "etc-sync").exists()
    assert btrfs.is_subvolume(info(s, n) / "etc-booted")
    assert sync_etc(s) == []


def test_the_source_of_changes_still_to_come_is_kept(managed_system: System) -> None:
    """A pending snapshot's sync point follows snapshot 1's /etc, which boot-once then leaves:
    snapshot 1 is neither booted nor default, yet cleanup keeps it and delete refuses it."""
    s = managed_system
    ok(s.tu("run", "--", "true"))
    n = s.default_number()
    put(s.root / "etc/not-yet.conf", "after the commit\n")
    # Boot another snapshot (as boot-once would) while n stays the default.
    ok(s.tu("run", "--", "true"))
    other = s.default_number()
    ok(s.tu("rollback", str(other)))
    s.boot_default()
    ok(s.tu("rollback", str(n)))
    assert (s.booted_number(), s.default_number()) == (other, n)
    conf = s.root / "etc/snapper/configs/root"
    conf.write_text(conf.read_text().replace('NUMBER_LIMIT="10"', 'NUMBER_LIMIT="0"'))
    r = ok(s.tu("--json", "cleanup"))
    assert 1 not in json.loads(r.stdout)["number"]
    assert 1 in s.numbers()
    r = s.tu("delete", "1")
    assert r.returncode != 0
    assert "snapshot 1's /etc changes are still to be carried into the next boot" in r.stderr
    # n's first boot takes them.
    s.boot_default()
    (merged,) = sync_etc(s)
    assert (merged["from"], merged["when"]) == (1, "boot")
    assert "/etc/not-yet.conf" in merged["taken"]


def test_setup_etc_without_an_fstab_says_so(managed_system: System) -> None:
    s = managed_system
    _old_layout(s)
    with s.booted_writable() as snap:
        (snap / "etc/fstab").rename(snap / "etc/fstab.away")
    r = s.tu("setup-etc")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "cannot read" in r.stderr and "etc/fstab" in r.stderr
    assert s.numbers() == [1]


def test_delete_removes_a_snapshot_with_its_etc_and_refuses_bad_numbers(
    managed_system: System,
) -> None:
    s = managed_system
    ok(s.tu("run", "--", "touch", "/etc/two"))
    ok(s.tu("run", "--", "touch", "/etc/three"))  # 3 the default, built on 2
    ok(s.tu("rollback", "1"))
    r = ok(s.tu("--json", "delete", "2", "3"))
    assert json.loads(r.stdout) == {"deleted": [2, 3]}
    assert s.numbers() == [1]
    for gone in (2, 3):
        assert snapshot_subvolumes(s, gone) == [] and not info(s, gone).exists()
        assert s.tu("changelog", str(gone)).returncode == 5
    assert_no_dangling_subvolumes(s)
    for bad, code, text in (
        ("1", 5, "snapshot 1 is the booted snapshot and cannot be deleted"),
        ("99", 5, "snapshot 99 does not exist"),
        ("0", 5, "snapshot 0 is not a root snapshot"),
        ("x", 2, "'x' is not a valid integer"),
    ):
        r = s.tu("delete", bad)
        assert (r.returncode, "Traceback" in r.stderr) == (code, False), r.stderr
        assert text in r.stderr, r.stderr
    assert s.numbers() == [1]
