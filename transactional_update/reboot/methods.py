"""Reboot methods (``REBOOT_METHOD``): build the action for a method, then execute it.

:func:`plan` is pure: from the configuration, the pending snapshot and (for kexec) the default
snapshot's kernel it builds an :class:`Action` - commands to run, marker files to write, a plan
for the reboot manager.  :func:`execute` is the one place that acts.  The commands that reboot are
configuration (``REBOOT_COMMAND``, ``KEXEC_LOAD_COMMAND``, ``KEXEC_COMMAND``,
``NOTIFY_COMMAND``), so tests record them instead of rebooting.

A reboot is requested only when the default snapshot is not the booted one.  A system managed
through ``--root`` is not the machine this runs on: methods that would reboot *this* machine are
refused there unless the root's configuration names the command that reboots *that* system.
"""

from __future__ import annotations

import logging
import re
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from transactional_update.config.settings import Config, RebootMethod
from transactional_update.core import reboot_needed
from transactional_update.errors import SystemError_, UsageError
from transactional_update.files import write_atomic
from transactional_update.paths import resolve_under
from transactional_update.snapshots.system import ManagedRoot

log = logging.getLogger(__name__)

KURED_MARKER = "/var/run/reboot-required"  # what kured (and Debian's tools) watch
NOTIFY_MARKER = reboot_needed.MARKER  # openSUSE's file saying a reboot is due


@dataclass(frozen=True)
class Action:
    method: RebootMethod  # the method that acts (auto resolved)
    snapshot: int  # the snapshot the next boot starts
    commands: tuple[tuple[str, ...], ...] = ()  # run in order on this machine
    markers: tuple[tuple[str, str], ...] = ()  # (path in the root, content) written first
    schedule: bool = False  # hand the reboot to the reboot manager
    message: str = ""


@dataclass(frozen=True)
class KexecImage:
    kernel: Path  # paths on this machine, inside the default snapshot
    initrd: Path | None
    cmdline: str


def resolve(method: RebootMethod, manager_running: bool) -> RebootMethod:
    if method is RebootMethod.AUTO:
        return RebootMethod.REBOOTMGR if manager_running else RebootMethod.SYSTEMD
    return method


def needed_keys(method: RebootMethod) -> tuple[str, ...]:
    """The configured commands *method* runs on this machine."""
    return {
        RebootMethod.SYSTEMD: ("REBOOT_COMMAND",),
        RebootMethod.KEXEC: ("KEXEC_LOAD_COMMAND", "KEXEC_COMMAND"),
        RebootMethod.NOTIFY: ("NOTIFY_COMMAND",),
    }.get(method, ())


def check_target(cfg: Config, method: RebootMethod, root: Path) -> None:
    """Refuse to reboot this machine on behalf of a system mounted elsewhere."""
    if root == Path("/"):
        return
    unset = [k for k in needed_keys(method) if cfg.source(k) is None]
    if unset:
        raise UsageError(
            f"not rebooting: {root} is not the running system",
            f"set {' and '.join(unset)} in {root}/etc/transactional-update.conf to what reboots "
            "that system, or boot it to use its new default snapshot",
        )


def kexec_cmdline(current: str, default_subvolume: str) -> str:
    """The running kernel's command line for the new snapshot.

    ``BOOT_IMAGE`` names the old kernel and is dropped; a ``subvol=`` in ``rootflags`` pins the
    old root and is pointed at the new default (without one the default subvolume boots anyway).
    """
    out = []
    for word in current.split():
        if word.startswith("BOOT_IMAGE="):
            continue
        if word.startswith("rootflags="):
            opts = [
                f"subvol=/{default_subvolume.lstrip('/')}" if o.startswith("subvol=") else o
                for o in word.removeprefix("rootflags=").split(",")
                if not o.startswith("subvolid=")
            ]
            out.append("rootflags=" + ",".join(opts))
        else:
            out.append(word)
    return " ".join(out)


def _version_key(name: str) -> list[tuple[int, str]]:
    return [(int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"(\d+)", name)]


def find_kernel(snapshot_dir: Path) -> tuple[Path, Path | None]:
    """The kernel and initrd a boot of *snapshot_dir* uses (resolved inside it).

    The distribution's links first (``/boot/vmlinuz`` on openSUSE, ``/vmlinuz`` on Debian), else
    the newest ``/boot/vmlinuz-VERSION`` with its ``initrd.img-VERSION`` / ``initrd-VERSION``.
    """
    for kernel, initrd in (("boot/vmlinuz", "boot/initrd"), ("vmlinuz", "initrd.img")):
        k = resolve_under(snapshot_dir, kernel)
        if k.is_file():
            i = resolve_under(snapshot_dir, initrd)
            return k, i if i.is_file() else None
    boot = snapshot_dir / "boot"
    kernels = sorted(boot.glob("vmlinuz-*"), key=lambda p: _version_key(p.name))
    if not kernels:
        raise SystemError_(
            f"no kernel in {snapshot_dir}/boot to kexec",
            "install a kernel in the snapshot, or set REBOOT_METHOD=systemd",
        )
    k = kernels[-1]
    version = k.name.removeprefix("vmlinuz-")
    for name in (f"initrd.img-{version}", f"initrd-{version}"):
        if (boot / name).is_file():
            return k, boot / name
    return k, None


def plan(
    cfg: Config,
    method: RebootMethod,
    snapshot: int,
    kexec: KexecImage | None = None,
) -> Action:
    """The action *method* (already resolved) takes to boot *snapshot*."""
    text = f"snapshot {snapshot} is the new default; reboot to use it"
    if method is RebootMethod.SYSTEMD:
        return Action(
            method, snapshot, (cfg.reboot_command,), message=f"rebooting into snapshot {snapshot}"
        )
    if method is RebootMethod.KEXEC:
        assert kexec is not None
        load = [*cfg.kexec_load_command, "--load", str(kexec.kernel)]
        if kexec.initrd is not None:
            load.append(f"--initrd={kexec.initrd}")
        load.append(f"--command-line={kexec.cmdline}")
        return Action(
            method,
            snapshot,
            (tuple(load), cfg.kexec_command),
            message=f"rebooting into snapshot {snapshot} with kexec",
        )
    if method is RebootMethod.NOTIFY:
        return Action(
            method,
            snapshot,
            ((*cfg.notify_command, f"transactional-update: {text}"),),
            # openSUSE's content (one level word, no newline), as every commit writes it.
            markers=((NOTIFY_MARKER, reboot_needed.FULL),),
            message=f"told logged-in users: {text}",
        )
    if method is RebootMethod.KURED:
        return Action(
            method,
            snapshot,
            markers=((KURED_MARKER, "*** System restart required ***\n"),),
            message=f"{KURED_MARKER} created; kured reboots into snapshot {snapshot}",
        )
    if method is RebootMethod.REBOOTMGR:
        return Action(method, snapshot, schedule=True, message=f"reboot into snapshot {snapshot}")
    if method in (RebootMethod.FLEETLOCK, RebootMethod.ETCD_LOCK):
        # The reboot manager takes a slot of the fleet at the planned moment, then reboots.
        return Action(
            method,
            snapshot,
            schedule=True,
            message=f"reboot into snapshot {snapshot} (with a {method} reboot slot)",
        )
    return Action(
        RebootMethod.NONE, snapshot, message=f"not rebooting (REBOOT_METHOD=none): {text}"
    )


def write_marker(root: Path, path: str, content: str) -> Path:
    target = resolve_under(root, path)
    write_atomic(target, content)
    return target


def execute(root: Path, cfg: Config, action: Action, now: datetime | None = None) -> str:
    """Carry out *action*; returns a line for the admin."""
    from transactional_update.proc import run

    for path, content in action.markers:
        try:
            write_marker(root, path, content)
        except OSError as exc:
            raise SystemError_(
                f"cannot write {path}: {exc.strerror or exc}",
                "/run must be the running system's tmpfs (on a read-only root it is not)",
            ) from exc
    if action.schedule:
        from transactional_update.reboot import manager as reboot_manager

        plan_ = reboot_manager.request(root, action.snapshot, cfg.window, now or datetime.now(UTC))
        assert plan_.planned is not None
        message = f"{action.message} planned for {plan_.planned.isoformat(timespec='minutes')}"
        if not reboot_manager.is_running(root):
            log.warning(
                "the reboot manager is not running; the reboot happens once it runs "
                "(systemctl enable --now transactional-update-reboot-manager.service)"
            )
        return message
    for argv in action.commands:
        log.info("running: %s", shlex.join(argv))
        run(argv, what=f"{action.method} reboot ({argv[0]})")
    return action.message


@dataclass(frozen=True)
class Outcome:
    booted: int | None
    default: int | None
    action: Action | None  # None: no reboot needed
    message: str


def pending_snapshot(managed: ManagedRoot) -> int | None:
    """The default snapshot when it is not the booted one (a foreign default is not rebooted to),
    unless ``apply`` made it live already and no new kernel waits for the boot."""
    from transactional_update.record import applied

    booted, default = managed.booted(), managed.default()
    if default is None or default == booted:
        return None
    if default == managed.live():
        record = applied.load(managed.root, default)
        if record is not None and not record.get(
            "reboot_pending", record.get("kernel_pending", True)
        ):
            return None
    return default


def request_reboot(
    root: Path, cfg: Config, managed: ManagedRoot, now: datetime | None = None
) -> Outcome:
    """``transactional-update reboot``: the configured method, if a new snapshot is pending."""
    from transactional_update.reboot import manager as reboot_manager

    method = resolve(cfg.reboot_method, reboot_manager.is_running(root))
    check_target(cfg, method, root)
    if method in (RebootMethod.FLEETLOCK, RebootMethod.ETCD_LOCK):
        from transactional_update.reboot import slots

        slots.slots_for(cfg, method)  # refuses a method without its server before any plan
    booted, default = managed.booted(), managed.default()
    pending = pending_snapshot(managed)
    if pending is None:
        if default is None:
            log.warning(
                "the default subvolume is not a snapper snapshot; not rebooting into it "
                "(make the booted snapshot the default with: transactional-update rollback)"
            )
        running = "booted" if default == booted else "live (applied)"
        return Outcome(
            booted,
            default,
            None,
            f"no reboot needed: snapshot {default or booted} is {running} and the default",
        )
    kexec = None
    if method is RebootMethod.KEXEC:
        kernel, initrd = find_kernel(managed.snapshot_dir(pending))
        current = Path("/proc/cmdline").read_text(encoding="utf-8").strip()
        kexec = KexecImage(kernel, initrd, kexec_cmdline(current, managed.default_subvolume()))
    action = plan(cfg, method, pending, kexec)
    return Outcome(booted, default, action, execute(root, cfg, action, now))
