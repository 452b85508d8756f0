"""GRUB on a managed system: the grub.cfg section, its automatic refresh, reinstalling, boot-once.

Where things live (``create-system`` builds it so):

* ``/boot/grub`` is a small ext4 partition: ``grub.cfg``, GRUB's modules and ``grubenv`` belong
  to no snapshot (deleting one can never break booting) and GRUB can write ``grubenv`` there
  (upstream GRUB cannot write on btrfs, so a one-shot ``next_entry`` would never be cleared);
  journaled, so a power cut while ``grub.cfg`` is replaced leaves nothing for fsck to guess
  (systems made with ext2 get a journal from ``setup-boot-fs``, :mod:`.bootfs`);
* kernels and initrds stay inside each snapshot's ``/boot``, and the menu names them there.

``grub-mkconfig`` runs ``/etc/grub.d/09_transactional-update``, which prints
``transactional-update boot-menu``; Debian's ``10_linux`` is diverted away
(``dpkg-divert``, so package upgrades keep it away) because its entries pin one snapshot with
``rootflags=subvol=``.  After every commit, rollback and cleanup :func:`refresh` rewrites just that
section of ``grub.cfg`` (milliseconds; no grub-mkconfig run): the new file is checked with
``grub-script-check``, written to a temporary file, fsynced and renamed over the old one, so a
crash leaves either the old or the new config, and a failed check leaves the old one.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from transactional_update.boot import bootmenu, menustate
from transactional_update.core.lock import Lock
from transactional_update.errors import (
    CommandFailed,
    NotManagedError,
    SystemError_,
    TUError,
    UsageError,
)
from transactional_update.files import checkpoint, fsync_dir
from transactional_update.paths import data_dir, resolve_under
from transactional_update.proc import run

if TYPE_CHECKING:
    from transactional_update.core.context import Context
    from transactional_update.core.transaction import Transaction

log = logging.getLogger(__name__)

SCRIPT_NAME = "09_transactional-update"
SCRIPT_PATH = f"/etc/grub.d/{SCRIPT_NAME}"
LINUX_SCRIPT = "/etc/grub.d/10_linux"
# grub-mkconfig skips "*.dpkg-*" files, so the diverted 10_linux never runs again.
LINUX_DIVERTED = "/etc/grub.d/10_linux.dpkg-divert"
DEFAULTS_PATH = "/etc/default/grub.d/transactional-update.cfg"
MKCONFIG_TMP = ".grub.cfg.tu-mkconfig"
_BEGIN = re.compile(rf"^### BEGIN (?:.*/)?{re.escape(SCRIPT_NAME)} ###$")
_END = re.compile(rf"^### END (?:.*/)?{re.escape(SCRIPT_NAME)} ###$")

SAFE_ARG = re.compile(r"[A-Za-z0-9_.,:=/+@-]+")
# systemd-fsck runs fsck in preen mode (-a) by default, which gives up on damage such as an
# unattached inode (exit 4): the mount then fails (``nofail``: silently) and stays so until
# someone runs fsck by hand.  fsck.repair=yes makes it answer yes (-y) to every repair.
FSCK_REPAIR = "fsck.repair=yes"
# Runs a command in the snapshot being set up; returns its exit code and output.
Runner = Callable[[Sequence[str]], tuple[int, str]]


@dataclass(frozen=True)
class Tools:
    """Names and places of one GRUB installation (Debian's ``grub-*`` or openSUSE's ``grub2-*``)."""

    flavour: bootmenu.Flavour
    grub_dir: str  # relative to the root: boot/grub or boot/grub2
    mkconfig: str
    script_check: str
    install: str
    probe: str

    def cfg(self, root: Path) -> Path:
        return root / self.grub_dir / "grub.cfg"

    def env(self, root: Path) -> Path:
        return root / self.grub_dir / "grubenv"


def detect(root: Path) -> Tools:
    """Which GRUB the managed root has: tool names from its binaries, flavour from its module."""
    two = not _exists(root, "grub-mkconfig") and _exists(root, "grub2-mkconfig")
    p = "grub2-" if two else "grub-"
    return Tools(
        flavour=bootmenu.detect_flavour(root),
        grub_dir="boot/grub2" if two else "boot/grub",
        mkconfig=f"{p}mkconfig",
        script_check=f"{p}script-check",
        install=f"{p}install",
        probe=f"{p}probe",
    )


def _exists(root: Path, name: str) -> bool:
    return any((root / d / name).exists() for d in ("usr/sbin", "usr/bin", "sbin", "bin"))


# --- the grub.cfg section ------------------------------------------------------------------------


def splice(cfg: str, menu: str) -> str | None:
    """*cfg* with the body of our grub.d script's section replaced by *menu*; None without one."""
    lines = cfg.splitlines(keepends=True)
    begin = next((i for i, x in enumerate(lines) if _BEGIN.match(x.rstrip("\n"))), None)
    if begin is None:
        return None
    end = next((i for i in range(begin + 1, len(lines)) if _END.match(lines[i].rstrip("\n"))), None)
    if end is None:
        return None
    body = menu if menu.endswith("\n") or not menu else menu + "\n"
    return "".join(lines[: begin + 1]) + body + "".join(lines[end:])


def section(cfg: str) -> str | None:
    """The body of our section in *cfg* (None without one)."""
    marker = "\x00tu-section\x00"
    spliced = splice(cfg, marker + "\n")
    if spliced is None:
        return None
    head = spliced.index(marker)
    tail = len(spliced) - head - len(marker) - 1
    return cfg[head : len(cfg) - tail]


def script_check_argv(root: Path, tools: Tools, path: Path) -> list[str]:
    """grub-script-check from the host, else the managed root's own binary."""
    tool = shutil.which(tools.script_check)
    if tool is None:
        own = next(
            (
                root / d / tools.script_check
                for d in ("usr/bin", "bin")
                if (root / d / tools.script_check).is_file()
            ),
            None,
        )
        if own is None:
            raise SystemError_(
                f"{tools.script_check} not found: the new boot configuration cannot be checked",
                "install GRUB's tools (Debian: grub-common)",
            )
        tool = str(own)
    return [tool, str(path)]


def install_config(root: Path, tools: Tools, text: str) -> None:
    """Check *text* with grub-script-check, then replace grub.cfg atomically and durably.

    On any failure the old grub.cfg stays as it was and the temporary file is removed.
    """
    cfg = tools.cfg(root)
    tmp = cfg.with_name(".grub.cfg.tu-new")
    try:
        mode = cfg.stat().st_mode & 0o7777
    except OSError:
        mode = 0o444  # what grub-mkconfig gives it (no passwords inside)
    try:
        tmp.unlink(missing_ok=True)
        # Created private: a grub.cfg with password hashes must never be readable, not even
        # for a moment; the old file's mode is applied before it becomes grub.cfg.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with open(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        res = run(script_check_argv(root, tools, tmp), check=False, what="grub-script-check")
        if res.returncode != 0:
            detail = (res.stderr or res.stdout).strip().splitlines()
            raise SystemError_(
                "the generated boot configuration failed grub-script-check"
                + (f": {detail[-1]}" if detail else ""),
                f"the previous {cfg} stays; rerun with --debug",
            )
        os.replace(tmp, cfg)
        fsync_dir(cfg.parent)
        checkpoint(cfg.parent)  # GRUB reads ext4 without its journal
    except OSError as exc:
        raise SystemError_(
            f"cannot write {cfg}: {exc.strerror or exc}", f"check that {cfg.parent} is writable"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)


def require_grub_dir(root: Path, tools: Tools) -> Path:
    """The GRUB directory, refused when it lies inside the root snapshot itself."""
    grub_dir = root / tools.grub_dir
    if not grub_dir.is_dir():
        raise NotManagedError(
            f"{grub_dir} does not exist: GRUB is not installed on this system",
            "create the system with: transactional-update create-system",
        )
    if not menustate.is_mount(root, tools.grub_dir):
        raise NotManagedError(
            f"{grub_dir} lies inside the root snapshot: deleting that snapshot would break booting",
            f"put /{tools.grub_dir} on its own partition or subvolume (create-system does)",
        )
    return grub_dir


def current_menu(ctx: Context) -> str:
    return bootmenu.render(bootmenu.menu_for(ctx.managed, ctx.config))


def refresh(ctx: Context) -> str | None:
    """Rewrite the menu section of grub.cfg for the current snapshots; never raises.

    Called after every commit, rollback and cleanup (the caller holds the transaction lock).
    Returns None when the menu is current, else why it is not (the old config stays, and a
    warning says so).
    """
    try:
        tools = detect(ctx.root)
        cfg = tools.cfg(ctx.root)
        if not cfg.is_file():
            return f"{cfg} does not exist"
        old = cfg.read_text(encoding="utf-8")
        new = splice(old, current_menu(ctx))
        if new is None:
            reason = f"{cfg} has no transactional-update section"
            log.warning(
                "%s, so its entries do not follow the snapshots; "
                "set it up with: transactional-update grub.cfg",
                reason,
            )
            return reason
        if new != old:
            install_config(ctx.root, tools, new)
            log.info("boot menu refreshed in %s", cfg)
        return None
    except Exception as exc:
        message = exc.message if isinstance(exc, TUError) else f"{type(exc).__name__}: {exc}"
        log.warning(
            "the boot menu was not refreshed, the previous grub.cfg stays (%s); "
            "retry with: transactional-update cleanup --prune-only",
            message,
        )
        return message


# --- setting a snapshot up for GRUB --------------------------------------------------------------


def script_text() -> str:
    """The grub.d script, shipped beside the tool (``grub.d/`` like ``systemd-units/``)."""
    found = data_dir("grub.d", SCRIPT_NAME)
    if found is None:
        raise SystemError_(
            f"{SCRIPT_NAME} is not installed next to {Path(__file__).resolve().parent}",
            "reinstall transactional-update (pip install); the GRUB script ships with it",
        )
    return (found / SCRIPT_NAME).read_text(encoding="utf-8")


def defaults_text(serial: bool = False, cmdline: str = "") -> str:
    """``/etc/default/grub.d/transactional-update.cfg`` for a managed system."""
    lines = [
        "# written by transactional-update (create-system)",
        # The font grub-install copies to the GRUB partition: Debian's 00_header would otherwise
        # name /usr/share/grub/unicode.pf2 inside one snapshot, gone when that snapshot is.
        "GRUB_FONT=/boot/grub/fonts/unicode.pf2",
        "GRUB_DISABLE_OS_PROBER=true",
        "GRUB_DISABLE_RECOVERY=true",
    ]
    args = cmdline.split()
    if serial:
        lines += [
            'GRUB_TERMINAL="console serial"',
            'GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"',
        ]
        args = ["console=tty0", "console=ttyS0,115200", *args]
    # First, so that an admin's own fsck.repair= in *cmdline* comes later and wins.
    args = [FSCK_REPAIR, *args]
    bad = [a for a in args if not SAFE_ARG.fullmatch(a)]
    if bad:
        raise UsageError(
            f"kernel argument {bad[0]!r} has characters that need quoting",
            "use plain words like console=ttyS0,115200 (letters, digits, . , : = / + - _ @)",
        )
    lines.append(cmdline_line(args))
    return "\n".join(lines) + "\n"


def cmdline_line(args: Sequence[str]) -> str:
    """The defaults line that adds *args* to whatever GRUB_CMDLINE_LINUX says before it."""
    return f'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX {" ".join(args)}"'


def install_integration(snap: Path, runner: Runner) -> list[str]:
    """Put the grub.d script into the writable snapshot *snap* and divert Debian's 10_linux.

    Returns what was changed (for the log).  *runner* runs commands chrooted into *snap*.
    """
    done = []
    script = resolve_under(snap, SCRIPT_PATH)
    text = script_text()
    if not script.is_file() or script.read_text(encoding="utf-8") != text:
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(text, encoding="utf-8")
        done.append(f"installed {SCRIPT_PATH}")
    script.chmod(0o755)
    linux = resolve_under(snap, LINUX_SCRIPT)
    if linux.exists() and resolve_under(snap, "/usr/bin/dpkg-divert").exists():
        argv = [
            "dpkg-divert",
            "--package",
            "transactional-update",
            "--rename",
            "--divert",
            LINUX_DIVERTED,
            "--add",
            LINUX_SCRIPT,
        ]
        rc, out = runner(argv)
        if rc != 0:
            raise CommandFailed(
                f"dpkg-divert of {LINUX_SCRIPT} failed: {_last(out)}",
                "its entries would pin one snapshot; the snapshot was discarded",
            )
        done.append(f"diverted {LINUX_SCRIPT} to {LINUX_DIVERTED}")
    elif linux.exists():
        # No dpkg (openSUSE's patched 10_linux boots the default subvolume itself; others):
        # not executable means grub-mkconfig skips it.
        linux.chmod(0o644)
        done.append(f"made {LINUX_SCRIPT} not executable")
    return done


def _last(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines[-1] if lines else "no output"


def mkconfig(tools: Tools, runner: Runner) -> None:
    """Run grub-mkconfig in the snapshot into a temporary file on the GRUB partition."""
    tmp = f"/{tools.grub_dir}/{MKCONFIG_TMP}"
    rc, out = runner([tools.mkconfig, "-o", tmp])
    if rc != 0:
        runner(["rm", "-f", tmp, f"{tmp}.new"])  # grub-mkconfig leaves its .new behind
        raise CommandFailed(
            f"{tools.mkconfig} failed (exit {rc}): {_last(out)}",
            "the previous grub.cfg stays; the snapshot was discarded",
        )


def install_generated(ctx: Context, tools: Tools) -> None:
    """Put the menu into grub-mkconfig's output and make that the new grub.cfg (under the lock)."""
    generated = ctx.root / tools.grub_dir / MKCONFIG_TMP
    try:
        text = generated.read_text(encoding="utf-8")
    except OSError as exc:
        raise SystemError_(
            f"cannot read {generated}: {exc.strerror}", "rerun: transactional-update grub.cfg"
        ) from exc
    finally:
        generated.unlink(missing_ok=True)
    new = splice(text, current_menu(ctx))
    if new is None:
        raise SystemError_(
            f"{tools.mkconfig} did not run {SCRIPT_PATH}: the menu would have no snapshots",
            f"check that {SCRIPT_PATH} is executable in the default snapshot",
        )
    install_config(ctx.root, tools, new)


# ``grub.cfg`` and ``bootloader`` as a share of a transaction (cli.commands.Change): checked
# before it, run in its snapshot with the GRUB integration in place, and the checked config
# replaces the old one only after the commit.


def prepare(ctx: Context) -> Tools:
    """The GRUB tools of *ctx*'s system, checked before any snapshot exists."""
    tools = detect(ctx.root)
    require_grub_dir(ctx.root, tools)
    return tools


def configure(ctx: Context, tools: Tools, tx: Transaction, *, reinstall: bool = False) -> None:
    """In the open transaction: the integration, grub-install (*reinstall*), grub-mkconfig."""
    assert tx.number is not None
    for change in install_integration(ctx.managed.snapshot_dir(tx.number), tx.capture):
        log.info("%s", change)
    if reinstall:
        bootloader(tools, tx.capture)
    mkconfig(tools, tx.capture)


def install(ctx: Context, tools: Tools) -> None:
    """After the commit: the generated config, with the menu, becomes grub.cfg."""
    with Lock(ctx.managed.snapshots_dir, ctx.config.lock_wait):
        install_generated(ctx, tools)


def discard(ctx: Context, tools: Tools) -> None:
    """After a failed transaction: no generated config is left on the GRUB partition."""
    (ctx.root / tools.grub_dir / MKCONFIG_TMP).unlink(missing_ok=True)


def bootloader(tools: Tools, runner: Runner) -> str:
    """grub-install onto the disk that holds the GRUB directory: for UEFI into /boot/efi when
    that is mounted, and for BIOS into the disk's BIOS boot partition when it has one."""
    rc, out = runner([tools.probe, "--target=disk", f"/{tools.grub_dir}"])
    disk = out.strip().splitlines()[-1] if rc == 0 and out.strip() else ""
    if not disk.startswith("/dev/"):
        raise CommandFailed(
            f"cannot find the disk of /{tools.grub_dir}: {_last(out)}",
            "the snapshot was discarded; install GRUB by hand with grub-install DISK",
        )
    rc, _ = runner(["mountpoint", "-q", "/boot/efi"])
    uefi = rc == 0
    base = [tools.install, "--boot-directory=/boot"]
    if uefi:
        # Also (Debian) or only (openSUSE's grub2-install) at the removable-media path
        # EFI/BOOT/BOOTX64.EFI, which firmware boots without an NVRAM entry: an image file
        # cannot carry one.  NVRAM is left alone: this may run for a system mounted elsewhere.
        extra = "--removable" if tools.install.startswith("grub2-") else "--force-extra-removable"
        efi = [*base, "--target=x86_64-efi", "--efi-directory=/boot/efi", "--no-nvram", extra]
        _install(tools, runner, efi)
        log.info("GRUB for UEFI installed in /boot/efi")
    # BIOS too: a disk with a BIOS boot partition boots with either firmware.  A UEFI-only disk
    # has none, and grub-install says so; that is no failure there.
    absent = "BIOS Boot Partition" if uefi else None
    if _install(tools, runner, [*base, "--target=i386-pc", disk], absent):
        log.info("GRUB for BIOS installed on %s", disk)
    return disk


def _install(tools: Tools, runner: Runner, argv: list[str], absent: str | None = None) -> bool:
    """Run grub-install; False when it failed only because its target is *absent* (its words)."""
    rc, out = runner(argv)
    if rc != 0 and absent is not None and absent in out:
        return False
    if rc != 0:
        raise CommandFailed(
            f"{tools.install} failed (exit {rc}): {_last(out)}",
            "the snapshot was discarded; the previous boot loader stays",
        )
    return True
