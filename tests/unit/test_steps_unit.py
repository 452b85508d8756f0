"""The named steps of a package request, and how its findings reach the transaction (pure)."""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from transactional_update.boot import bootmenu
from transactional_update.config.settings import Config, Manager
from transactional_update.core.transaction import Options, Transaction
from transactional_update.errors import CommandFailed
from transactional_update.packages import operation
from transactional_update.packages.model import FULL_REBOOT, Action, Outcome, Request, Verdict
from transactional_update.snapshots.snapper import Snapshot, SnapshotType

PATCH = "zypper --non-interactive --non-interactive-include-reboot-patches patch"


class ScriptedTx:
    """run() and capture() answer with scripted exit codes; there is no result to write into."""

    __slots__ = ("codes", "ctx", "number", "ran")

    def __init__(self, root: Path, codes: dict[str, int]) -> None:
        self.codes = codes
        self.ran: list[str] = []
        self.number = 2
        self.ctx = SimpleNamespace(
            root=root,
            config=Config(refresh_delay=timedelta(minutes=10)),
            managed=SimpleNamespace(snapshot_dir=lambda n: root / "snapshot"),
        )

    def run(self, argv: list[str], env: dict[str, str] | None = None) -> int:
        self.ran.append(" ".join(argv))
        return self.codes.get(" ".join(argv), 0)

    def capture(self, argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
        return self.run(argv, env), ""


def _execute(tx: ScriptedTx, manager: Manager, request: Request) -> operation.Findings:
    return operation.execute(tx, manager, request)  # type: ignore[arg-type]


def test_the_findings_carry_the_reboot_a_command_asks_for(tmp_path: Path) -> None:
    tx = ScriptedTx(tmp_path, {PATCH: 102})
    assert _execute(tx, Manager.ZYPPER, Request(Action.PATCH)) == operation.Findings(FULL_REBOOT)
    assert tx.ran[-1] == "zypper needs-rebooting"


def test_the_findings_carry_the_reboot_the_check_finds(tmp_path: Path) -> None:
    tx = ScriptedTx(tmp_path, {"zypper needs-rebooting": 102})
    found = _execute(tx, Manager.ZYPPER, Request(Action.INSTALL, ("kernel",)))
    assert found.reboot == FULL_REBOOT


def test_no_reboot_found_is_none(tmp_path: Path) -> None:
    tx = ScriptedTx(tmp_path, {})
    assert _execute(tx, Manager.APT, Request(Action.INSTALL, ("hello",))).reboot is None
    assert tx.ran == ["apt-get update", "apt-get -s install hello", "apt-get -y install hello"]


def test_judge_raises_for_a_failure_with_the_hint_and_passes_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    argv = ("zypper", "--non-interactive", "install", "x")
    with pytest.raises(CommandFailed) as err:
        operation.judge(Verdict(Outcome.FAILED, "locked"), argv, 7, "the hint")
    assert err.value.message == "zypper install x failed (exit 7: locked)"
    assert err.value.hint == "the hint"
    reboot = Verdict(Outcome.REBOOT, "a kernel")
    assert operation.judge(reboot, argv, 102) is reboot
    assert "zypper: a kernel; reboot fully, not only with a soft reboot" in caplog.text
    ok = Verdict(Outcome.OK)
    assert operation.judge(ok, argv, 0) is ok


def _transaction(tmp_path: Path) -> Transaction:
    ctx = SimpleNamespace(
        managed=SimpleNamespace(snapshots_dir=tmp_path), config=Config(), root=tmp_path
    )
    return Transaction(ctx, Options("patch"))  # type: ignore[arg-type]


def test_needs_reboot_is_recorded_in_the_result_and_the_changelog_entry(tmp_path: Path) -> None:
    tx = _transaction(tmp_path)
    tx.session = SimpleNamespace()  # type: ignore[assignment]  # open, as inside `with tx`
    tx.number, tx.result.base = 3, 2
    assert tx._record(tmp_path, tmp_path, untouched=True).reboot is None
    tx.needs_reboot(FULL_REBOOT)
    assert tx.result.reboot == FULL_REBOOT
    assert tx._record(tmp_path, tmp_path, untouched=True).reboot == FULL_REBOOT


def test_needs_reboot_only_while_the_transaction_is_open(tmp_path: Path) -> None:
    with pytest.raises(AssertionError):
        _transaction(tmp_path).needs_reboot(FULL_REBOOT)


KERNEL = bootmenu.Kernel("6.1.0", "/boot/vmlinuz-6.1.0", "/boot/initrd.img-6.1.0")


def snap(n: int) -> Snapshot:
    return Snapshot(n, SnapshotType.SINGLE, None, None, "root", "", "number", {})


def test_the_menu_reads_each_snapshot_once() -> None:
    read: list[int] = []

    def files_of(n: int) -> bootmenu.SnapshotFiles:
        read.append(n)
        return bootmenu.SnapshotFiles(KERNEL, "/boot", {}, "Debian GNU/Linux")

    menu = bootmenu.build(
        [snap(1), snap(2), snap(3), snap(4)],
        files_of,
        lambda n: None,
        fs_uuid="U", store="@/.snapshots", booted=1, default=3,
        flavour=bootmenu.Flavour.UPSTREAM, title="Snapshots", limit=3,
    )  # fmt: skip
    assert menu.main is not None and menu.main.number == 3
    assert [e.number for e in menu.entries] == [4, 3, 1]
    assert read == [3, 1, 4]  # the main entry's, the kept ones', then newest first to the limit


# -- create-system: what a failing step leaves behind ---------------------------------------------


def test_a_new_image_file_is_removed_when_a_step_fails(tmp_path: Path) -> None:
    from transactional_update.errors import UsageError
    from transactional_update.provision import create_system as cs

    img = tmp_path / "new.img"
    with pytest.raises(RuntimeError), cs._image_file(img, 1 << 20):
        assert img.stat().st_size == 1 << 20
        raise RuntimeError("a step failed")
    assert not img.exists()
    old = tmp_path / "old.img"
    old.write_bytes(b"data")
    with pytest.raises(RuntimeError), cs._image_file(old, None):
        raise RuntimeError("a step failed")
    assert old.read_bytes() == b"data"
    with pytest.raises(UsageError, match="does not exist"), cs._image_file(img, None):
        pass
    assert not img.exists()


def test_a_failing_step_unmounts_detaches_and_removes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transactional_update.provision import create_system as cs
    from transactional_update.provision import image

    ran: list[list[str]] = []

    def run(argv: list[str], **kw: object) -> SimpleNamespace:
        ran.append(list(argv))
        return SimpleNamespace(stdout="/dev/loop9\n" if argv[0] == "losetup" else "")

    def grub_fails(root: Path, disk: object, opts: object) -> None:
        assert root.is_dir()  # mounted, as far as this test goes
        raise RuntimeError("grub-install failed")

    monkeypatch.setattr(cs, "run", run)
    monkeypatch.setattr(cs, "_refuse", lambda target, opts: None)
    monkeypatch.setattr(cs, "_partition", lambda t, d: {2: "/dev/p2", 3: "/dev/p3", 4: "/dev/p4"})
    monkeypatch.setattr(
        cs, "_make_filesystems", lambda p: cs._Disk(p[2], p[3], p[4], "G", "R", "E")
    )
    monkeypatch.setattr(image, "populate", lambda *a: None)
    monkeypatch.setattr(image, "mount_system", lambda dev, where: where.mkdir(parents=True))
    monkeypatch.setattr(cs, "_install_grub", grub_fails)
    works: list[Path] = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(prefix: str) -> str:
        works.append(Path(real_mkdtemp(prefix=prefix, dir=tmp_path)))
        return str(works[-1])

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(image, "run", lambda argv, **kw: ran.append(list(argv)))
    img = tmp_path / "new.img"
    with pytest.raises(RuntimeError, match="grub-install failed"):
        cs.create_system(img, cs.CreateOptions(size=1 << 20, rootfs=tmp_path / "rootfs.tar"))
    (work,) = works
    root = str(work / "root")
    assert ran[-3:] == [
        ["umount", "-R", root],
        ["partx", "-d", "/dev/loop9"],
        ["losetup", "-d", "/dev/loop9"],
    ]
    assert ["mount", "/dev/p2", f"{root}/boot/grub"] in ran
    assert not work.exists()  # its empty directories are removed, never a recursive delete
    assert not img.exists()
