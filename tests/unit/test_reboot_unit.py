"""Reboot methods: each builds its action, and executing it runs the configured commands."""

from __future__ import annotations

import os
import shlex
from datetime import UTC, datetime
from pathlib import Path

import pytest

from transactional_update.config import settings as config
from transactional_update.config.settings import RebootMethod
from transactional_update.errors import SystemError_, UsageError
from transactional_update.reboot import manager as reboot_manager
from transactional_update.reboot import methods as reboot
from transactional_update.reboot.methods import KexecImage, plan


def recorder(tmp_path: Path, name: str) -> tuple[str, Path]:
    """A command that appends its name and arguments to a log instead of rebooting."""
    log = tmp_path / "recorded"
    script = tmp_path / name
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "{name} $*" >> {shlex.quote(str(log))}\n')
    script.chmod(0o755)
    return str(script), log


def recording_config(tmp_path: Path) -> config.Config:
    lines = []
    for key, name in (
        ("REBOOT_COMMAND", "reboot"),
        ("KEXEC_LOAD_COMMAND", "kexec"),
        ("KEXEC_COMMAND", "kexec-reboot"),
        ("NOTIFY_COMMAND", "wall"),
    ):
        lines.append(f"{key}={shlex.quote(recorder(tmp_path, name)[0] + ' --recorded')}")
    (tmp_path / "etc").mkdir(exist_ok=True)
    (tmp_path / "etc/transactional-update.conf").write_text("\n".join(lines) + "\n")
    return config.load(tmp_path)


def test_default_actions_per_method() -> None:
    cfg = config.Config()
    image = KexecImage(Path("/.snapshots/7/snapshot/boot/vmlinuz-6.1"), None, "root=UUID=x ro")
    assert plan(cfg, RebootMethod.SYSTEMD, 7).commands == (("systemctl", "reboot"),)
    assert plan(cfg, RebootMethod.KEXEC, 7, image).commands == (
        (
            "kexec",
            "--load",
            "/.snapshots/7/snapshot/boot/vmlinuz-6.1",
            "--command-line=root=UUID=x ro",
        ),
        ("systemctl", "kexec"),
    )
    notify = plan(cfg, RebootMethod.NOTIFY, 7)
    assert notify.commands == (
        ("wall", "transactional-update: snapshot 7 is the new default; reboot to use it"),
    )
    assert notify.markers == (("/run/reboot-needed", "reboot"),)
    kured = plan(cfg, RebootMethod.KURED, 7)
    assert kured.commands == () and kured.markers[0][0] == "/var/run/reboot-required"
    mgr = plan(cfg, RebootMethod.REBOOTMGR, 7)
    assert mgr.schedule and mgr.commands == () and mgr.markers == ()
    none = plan(cfg, RebootMethod.NONE, 7)
    assert (none.commands, none.markers, none.schedule) == ((), (), False)
    assert reboot.resolve(RebootMethod.AUTO, True) is RebootMethod.REBOOTMGR
    assert reboot.resolve(RebootMethod.AUTO, False) is RebootMethod.SYSTEMD
    assert reboot.resolve(RebootMethod.KURED, True) is RebootMethod.KURED


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        (RebootMethod.SYSTEMD, ["reboot --recorded"]),
        (
            RebootMethod.KEXEC,
            [
                "kexec --recorded --load /k --initrd=/i --command-line=root=UUID=x",
                "kexec-reboot --recorded",
            ],
        ),
        (
            RebootMethod.NOTIFY,
            [
                "wall --recorded transactional-update: snapshot 7 is the new default; "
                "reboot to use it"
            ],
        ),
        (RebootMethod.KURED, []),
        (RebootMethod.NONE, []),
    ],
)
def test_each_method_executes_its_recorded_commands(
    tmp_path: Path, method: RebootMethod, expected: list[str]
) -> None:
    cfg = recording_config(tmp_path)
    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    (root / "var").mkdir()
    (root / "var/run").symlink_to("../run")  # as on Debian: the marker lands in /run
    action = plan(cfg, method, 7, KexecImage(Path("/k"), Path("/i"), "root=UUID=x"))
    reboot.execute(root, cfg, action)
    log = tmp_path / "recorded"
    assert (log.read_text().splitlines() if log.exists() else []) == expected
    markers = sorted(p.name for p in (root / "run").iterdir())
    assert markers == {
        RebootMethod.NOTIFY: ["reboot-needed"],
        RebootMethod.KURED: ["reboot-required"],
    }.get(method, [])
    if method is RebootMethod.KURED:
        assert (root / "run/reboot-required").read_text() == "*** System restart required ***\n"


def test_rebootmgr_hands_the_reboot_to_the_manager(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = recording_config(tmp_path)
    now = datetime(2026, 11, 26, 14, 0, tzinfo=UTC)
    message = reboot.execute(tmp_path, cfg, plan(cfg, RebootMethod.REBOOTMGR, 7), now)
    assert message.startswith("reboot into snapshot 7 planned for 2026-11-2")
    saved = reboot_manager.load(tmp_path)
    assert saved.snapshot == 7 and saved.requested == now
    assert not (tmp_path / "recorded").exists()
    assert "the reboot manager is not running" in caplog.text


def test_a_failing_reboot_command_is_an_error(tmp_path: Path) -> None:
    cfg = config.build({"REBOOT_COMMAND": ("false", "f:1")})
    with pytest.raises(SystemError_, match=r"^systemd reboot \(false\) failed: exit code 1$"):
        reboot.execute(tmp_path, cfg, plan(cfg, RebootMethod.SYSTEMD, 7))


def test_reboot_commands_of_another_root_must_be_configured(tmp_path: Path) -> None:
    defaults = config.Config()
    for method in (RebootMethod.SYSTEMD, RebootMethod.KEXEC, RebootMethod.NOTIFY):
        with pytest.raises(UsageError) as err:
            reboot.check_target(defaults, method, tmp_path)
        assert err.value.message == f"not rebooting: {tmp_path} is not the running system"
    with pytest.raises(UsageError) as err:
        reboot.check_target(
            config.build({"KEXEC_COMMAND": ("true", "f:1")}), RebootMethod.KEXEC, tmp_path
        )
    assert err.value.hint.startswith("set KEXEC_LOAD_COMMAND in ")
    for method in (RebootMethod.KURED, RebootMethod.REBOOTMGR, RebootMethod.NONE):
        reboot.check_target(defaults, method, tmp_path)  # only files in the root: allowed
    reboot.check_target(defaults, RebootMethod.SYSTEMD, Path("/"))
    reboot.check_target(recording_config(tmp_path), RebootMethod.SYSTEMD, tmp_path)


def test_kexec_command_line_and_kernel_of_the_default_snapshot(tmp_path: Path) -> None:
    assert (
        reboot.kexec_cmdline(
            "BOOT_IMAGE=/boot/vmlinuz-6.1 root=UUID=x rootflags=subvol=@/.snapshots/1/snapshot,"
            "subvolid=266,compress=zstd ro quiet",
            "@/.snapshots/9/snapshot",
        )
        == "root=UUID=x rootflags=subvol=/@/.snapshots/9/snapshot,compress=zstd ro quiet"
    )
    assert reboot.kexec_cmdline("root=UUID=x ro", "@/.snapshots/9/snapshot") == "root=UUID=x ro"
    snap = tmp_path / "snap"
    (snap / "boot").mkdir(parents=True)
    with pytest.raises(SystemError_, match=r"no kernel in .*/boot to kexec"):
        reboot.find_kernel(snap)
    for v in ("6.1.0-9-amd64", "6.1.0-10-amd64"):
        (snap / f"boot/vmlinuz-{v}").write_text("k")
    (snap / "boot/initrd.img-6.1.0-10-amd64").write_text("i")
    assert reboot.find_kernel(snap) == (
        snap / "boot/vmlinuz-6.1.0-10-amd64",
        snap / "boot/initrd.img-6.1.0-10-amd64",
    )
    # Debian's /vmlinuz link is absolute-relative to the snapshot, never to the host.
    os.symlink("boot/vmlinuz-6.1.0-9-amd64", snap / "vmlinuz")
    os.symlink("/boot/initrd.img-6.1.0-10-amd64", snap / "initrd.img")
    assert reboot.find_kernel(snap) == (
        snap / "boot/vmlinuz-6.1.0-9-amd64",
        snap / "boot/initrd.img-6.1.0-10-amd64",
    )
