"""The ``transactional-update`` command line (click), a thin layer over the core.

General commands chain as in openSUSE's tool (``transactional-update cleanup run -- cmd``) and run
in the order given; the first failure stops the chain.  Everything but click is imported inside the
commands, so ``--help`` starts fast.  The options come from the table in :mod:`cli.options`,
global ones before or after the commands (:func:`options.arrange`); the exit codes, printed by
``--help``, from :class:`errors.ExitCode`.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from transactional_update.cli import options as table
from transactional_update.cli.commands import (
    PKG_ACTIONS,
    Alone,
    Change,
    Placed,
    State,
    begin,
    discard_unless_ok,
    execute,
    failed,
    package_step,
    pkg_steps,
    run_step,
)
from transactional_update.cli.options import arrange
from transactional_update.errors import ExitCode

if TYPE_CHECKING:
    from transactional_update.cli.commands import Command, Step
    from transactional_update.core.transaction import Transaction

log = logging.getLogger("transactional_update")

F = TypeVar("F", bound=Callable[..., Any])


def exit_codes_epilog() -> str:
    lines = [f"  {int(code):<3}  {code.meaning.replace('`', '')}" for code in ExitCode]
    return "\b\nExit codes:\n" + "\n".join(lines) + "\n"


def _click_type(opt: table.Option) -> click.ParamType[Any] | None:
    if opt.value_type is table.ValueType.PATH:
        return click.Path(path_type=Path)
    if opt.value_type is table.ValueType.FILE:
        return click.Path(path_type=Path, exists=True, dir_okay=False)
    if opt.value_type is table.ValueType.SECONDS:
        return click.FloatRange(min=0.1)
    return None


def click_option(opt: table.Option) -> Callable[[F], F]:
    """The click option that *opt* of the table describes."""
    decls = [*opt.names, opt.dest]
    kw: dict[str, Any] = {"help": opt.help, "metavar": opt.metavar}
    if opt.kind is table.Kind.FLAG:
        kw.update(is_flag=True, default=opt.default)
    elif opt.kind is table.Kind.COUNT:
        kw.update(count=True)
    elif opt.kind is table.Kind.SWITCH:
        decls = [f"{opt.names[0]}/{opt.negation}", opt.dest]
        kw.update(default=opt.default)
    elif opt.kind is table.Kind.VALUE:
        kw.update(
            type=_click_type(opt),
            default=opt.default,
            show_default=opt.show_default,
            multiple=opt.multiple,
        )
    # OPTIONAL_NUMBER: arrange() has made it --continue=N or --continue=default.
    return click.option(*decls, **kw)


def with_options(command: str | None) -> Callable[[F], F]:
    """Decorate a click command with its options from the table (None: the global ones)."""

    def decorate(f: F) -> F:
        for opt in reversed(table.for_command(command)):
            f = click_option(opt)(f)
        return f

    return decorate


def parse_continue(value: str | None) -> int | None:
    from transactional_update.snapshots.system import CONTINUE_DEFAULT

    if value is None:
        return None
    if value == "default":
        return CONTINUE_DEFAULT
    if not value.isdigit() or int(value) == 0:
        raise click.BadParameter(f"{value!r} is not a snapshot number", param_hint="--continue")
    return int(value)


@click.group(
    chain=True,
    epilog=exit_codes_epilog(),
    context_settings={"help_option_names": ["-h", "--help"]},
)
@with_options(None)
@click.version_option(package_name="transactional-update")
@click.pass_context
def cli(ctx: click.Context, /, **opts: Any) -> None:
    """Change a btrfs root atomically: every change goes to a new snapshot that boots next."""
    ctx.obj = begin({**opts, "continue_from": parse_continue(opts["continue_from"])})


@cli.result_callback()
@click.pass_obj
def run_steps(state: State, /, steps: list[Command | list[Change | Step]], **_: Any) -> None:
    flat = [c for s in steps for c in (s if isinstance(s, list) else [s])]
    code = execute(flat, state)
    if code != 0:
        sys.exit(code)


# Everything after the command's name is its argv, "--" included (``run grep -- -x f``); a first
# "--" only ends the options of ``run`` itself.
@cli.command(
    "run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run_cmd(command: tuple[str, ...]) -> Change:
    """Run COMMAND in a new snapshot; a non-zero exit discards it and is passed through."""
    return run_step(command)


@cli.command("shell")
def shell_cmd() -> Change:
    """Open an interactive shell in a new snapshot; exit 0 keeps the change, non-zero discards."""

    def apply(_state: State, tx: Transaction) -> None:
        from transactional_update.core.chroot import SHELL_RC

        click.echo(
            f"Shell in snapshot {tx.number} (from {tx.result.base}). "
            "`exit 0` keeps the changes; `exit 1` (any non-zero) discards them.",
            err=True,
        )
        shell = (
            "/bin/bash"
            if (tx.ctx.managed.snapshot_dir(tx.number or 0) / "bin/bash").exists()
            else "/bin/sh"
        )
        argv = [shell, "--rcfile", SHELL_RC, "-i"] if shell == "/bin/bash" else [shell, "-i"]
        rc = tx.run(argv, {"PS1": r"transactional update \w# "}, interactive=True)
        discard_unless_ok(rc, "shell")

    return Change("shell", lambda _state: "shell", apply)


@cli.command("up")
def up_cmd() -> Change:
    """Update all packages in a new snapshot (also: update)."""
    return package_step("up")


@cli.command("dup")
def dup_cmd() -> Change:
    """Distribution upgrade in a new snapshot (also: dist-upgrade)."""
    return package_step("dup")


@cli.command("patch")
def patch_cmd() -> Change:
    """Install patches in a new snapshot (zypper, dnf upgrade-minimal; apt has none)."""
    return package_step("patch")


@cli.command("pkg", context_settings={"ignore_unknown_options": True})
@click.argument("action", type=click.Choice(sorted(PKG_ACTIONS)), metavar="install|remove|update")
@click.argument("names", nargs=-1, type=click.UNPROCESSED)
def pkg_cmd(action: str, names: tuple[str, ...]) -> list[Change | Step]:
    """Install, remove or update the named packages in a new snapshot (also: package); then
    `run CMD…` in it, if given; then `apply` it live, if given.

    Options of the package manager among the names are forwarded where it has them
    (--auto-agree-with-licenses, --no-recommends, -y, ...) and refused otherwise.
    """
    return pkg_steps(action, names)


def _unsupported(name: str) -> None:
    from transactional_update.errors import TUError

    # Raised while the chain is parsed: `cleanup register …` runs nothing.
    raise TUError(
        f"{name} is not supported on this distribution",
        "it is SUSE's (SUSEConnect, SCC); register the system with its distribution's tools",
    )


# openSUSE's SUSEConnect commands: refused (exit 1), not a usage error, whatever follows them.
@cli.command(
    "register",
    context_settings={"ignore_unknown_options": True},
    hidden=True,
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def register_cmd(args: tuple[str, ...]) -> Step:
    """Register the system with SUSEConnect (SUSE only: refused)."""
    _unsupported("register")
    raise AssertionError  # pragma: no cover


@cli.command(
    "migration",
    context_settings={"ignore_unknown_options": True},
    hidden=True,
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def migration_cmd(args: tuple[str, ...]) -> Step:
    """Migrate to a new SUSE product version (SUSE only: refused)."""
    _unsupported("migration")
    raise AssertionError  # pragma: no cover


# --- issue 5: nightly updates, reboot methods, units, reboot manager ---


@cli.command("config")
def config_cmd() -> Step:
    """Show the effective configuration and where each value came from (--json)."""

    def step(state: State) -> int:
        from transactional_update.config import settings as config

        # Not state.ctx: the configuration of any root can be shown, managed or not.
        click.echo(config.show(config.load(state.root), state.json))
        return 0

    return step


@cli.command("auto-update")
def auto_update_cmd() -> Change:
    """Update with the configured UPDATE_METHOD (up, dup or patch); also what no command runs."""
    return package_step(None)


@cli.command("reboot")
def reboot_cmd() -> Placed:
    """Reboot into the new default snapshot with REBOOT_METHOD, if one is pending."""

    def step(state: State) -> int:
        from transactional_update.boot.menu import ensure_current
        from transactional_update.reboot.methods import request_reboot

        ctx = state.ctx
        # GRUB boots what its menu names: a menu a cut or a failed refresh left behind first.
        ensure_current(ctx)
        out = request_reboot(state.root, ctx.config, ctx.managed)
        if state.json:
            action = out.action
            click.echo(
                json.dumps(
                    {
                        "reboot_needed": action is not None,
                        "booted": out.booted,
                        "default": out.default,
                        "method": None if action is None else str(action.method),
                        "commands": [] if action is None else [list(c) for c in action.commands],
                        "markers": [] if action is None else [p for p, _ in action.markers],
                        "message": out.message,
                    }
                )
            )
        else:
            click.echo(out.message)
        return 0

    return Placed(step, first=False)  # last, after the transaction (as openSUSE)


@cli.command("install-units")
@with_options("install-units")
def install_units_cmd(
    unit_dir: Path | None, exec_path: str | None, enable: bool | None
) -> Step | Change:
    """Install the systemd units (nightly update, cleanup, reboot manager) in a new snapshot.

    Also a drop-in for snapper's snapper-cleanup.service that follows its deletions, and
    openSUSE's /usr/sbin/transactional-update as a link to the tool (--exec).
    """
    if exec_path is not None and not exec_path.startswith("/"):
        raise click.BadParameter(f"{exec_path!r} is not an absolute path", param_hint="--exec")
    if unit_dir is not None and enable:
        # Enabling means links in a system's /etc; a packager's directory has none.
        raise click.BadParameter("cannot enable units in a --unit-dir", param_hint="--enable")
    from transactional_update.reboot import units

    exe = exec_path or units.SHIPPED_EXEC
    if unit_dir is not None:

        def step(_state: State) -> int:  # a packager's directory: no snapshot
            texts = units.shipped()
            units.write(unit_dir.absolute(), units.files(texts, exe, "", enable=False))
            drop_ins = sum(units.is_drop_in(name) for name in texts)
            click.echo(
                f"installed {len(texts) - drop_ins} unit(s) and {drop_ins} drop-in(s) in {unit_dir}"
            )
            return 0

        return step
    # The units' texts now; the /usr/sbin link depends on the root (merged /usr/sbin or not).
    unit_files = units.files(units.shipped(), exe, units.UNIT_DIR, enable is not False)
    wanted: list[units.File] = []

    def prepare(state: State) -> bool:
        wanted[:] = unit_files + units.sbin_link(state.root, exe)
        if units.up_to_date(state.root, wanted):
            click.echo("the units are installed and up to date; no snapshot was made")
            return False
        return True

    def apply(_state: State, tx: Transaction) -> None:
        assert tx.number is not None
        units.write(tx.ctx.managed.snapshot_dir(tx.number), wanted)

    return Change("install-units", lambda _state: "install-units", apply, prepare=prepare)


@cli.command("reboot-manager")
@click.argument(
    "action",
    type=click.Choice(["run", "status", "cancel", "release"]),
    default="run",
    required=False,
)
@with_options("reboot-manager")
def reboot_manager_cmd(action: str, poll: float, node: str | None) -> Step:
    """Reboot inside the maintenance window (run), or show (status) or drop (cancel) the plan;
    release: give a fleet reboot slot back (this machine's, or --id ID's: a dead machine's)."""
    if node is not None and action != "release":
        raise click.BadParameter("only release takes --id", param_hint="--id")

    def step(state: State) -> int:
        from datetime import UTC, datetime

        from transactional_update.reboot import manager as reboot_manager
        from transactional_update.reboot.methods import pending_snapshot

        ctx = state.ctx
        if action == "release":
            from transactional_update.errors import SystemError_
            from transactional_update.reboot import slots

            answer = slots.release(state.root, ctx.config, datetime.now(UTC), node)
            who = f"machine {node}" if node else "this machine"
            if state.json:
                click.echo(json.dumps({"node": node, "released": answer.ok, "why": answer.why}))
            elif answer.ok:
                click.echo(f"the reboot slot of {who} is free ({answer.why})")
            if not answer.ok:
                raise SystemError_(
                    f"the reboot slot of {who} was not released: {answer.why}",
                    "check the lock server or etcd, then run this again",
                )
            return 0
        if action == "run":
            from transactional_update.boot.menu import ensure_current
            from transactional_update.reboot.daemon import daemon

            daemon(state.root, ctx.config, ctx.managed, poll, prepare=lambda: ensure_current(ctx))
            return 0
        if action == "cancel":
            old = reboot_manager.cancel(state.root)
            if state.json:
                click.echo(json.dumps({"cancelled": old.to_json() if old.snapshot else None}))
            elif old.snapshot is None:
                click.echo("no reboot was planned")
            else:
                when = old.planned.isoformat(timespec="minutes") if old.planned else "?"
                click.echo(f"cancelled the reboot into snapshot {old.snapshot} planned for {when}")
            return 0
        st = reboot_manager.status(
            state.root, ctx.config.window, pending_snapshot(ctx.managed), datetime.now(UTC)
        )
        if state.json:
            click.echo(json.dumps(st, indent=2))
        else:
            click.echo(reboot_manager.status_text(st, ctx.config.window))
        return 0

    return step


@cli.command("status")
def status_cmd() -> Step:
    """Show the booted, default and pending snapshots and any running transaction."""

    def step(state: State) -> int:
        from transactional_update.cli.status import show_status

        click.echo(show_status(state.ctx.managed, state.json))
        return 0

    return step


@cli.command("list")
def list_cmd() -> Step:
    """List snapshots with number, date, description and boot marks."""

    def step(state: State) -> int:
        from transactional_update.cli.status import show_list

        click.echo(show_list(state.ctx.managed, state.json))
        return 0

    return step


def log_step(number: int | None) -> Step:
    def step(state: State) -> int:
        from transactional_update.record.history import show_log

        click.echo(show_log(state.ctx.managed, number, state.json))
        return 0

    return step


@cli.command("log")
@click.argument("number", required=False, type=int, metavar="[N]")
def log_cmd(number: int | None) -> Step:
    """What each snapshot holds: one line per snapshot, or snapshot N in full."""
    return log_step(number)


@cli.command("changelog")
@click.argument("number", type=int, metavar="N")
def changelog_cmd(number: int) -> Step:
    """Everything recorded about snapshot N: commands, who, when, packages, files."""
    return log_step(number)


@cli.command("diff")
@click.argument("numbers", nargs=-1, type=int, metavar="[N [M]]")
def diff_cmd(numbers: tuple[int, ...]) -> Step:
    """Packages and files between two snapshots (default: the running one -> the default)."""
    if len(numbers) > 2:
        raise click.UsageError("diff takes at most two snapshot numbers")

    def step(state: State) -> int:
        from transactional_update.record.history import show_diff

        ctx = state.ctx
        click.echo(show_diff(ctx.managed, numbers, state.json, ctx.config.package_manager))
        return 0

    return step


@cli.command("rollback")
@click.argument("target", required=False, metavar="[N|last]")
def rollback_cmd(target: str | None) -> Placed:
    """Make snapshot N (or the last working one, or the booted one) boot next."""
    from transactional_update.core.rollback import parse_target

    # Checked while the chain is parsed, so `cleanup rollback abc` runs nothing.
    parsed = parse_target(target)

    def step(state: State) -> int:
        from transactional_update.core.rollback import rollback

        res = rollback(state.ctx, parsed)
        if state.json:
            click.echo(
                json.dumps(
                    {
                        "default": res.number,
                        "previous_default": res.previous_default,
                        "etc_left_behind": res.left_behind,
                        "etc_left_in": res.left_in,
                        "boot_failed": res.boot_failed,
                    }
                )
            )
        else:
            prev = res.previous_default
            was = "a subvolume that is not a snapshot" if prev is None else str(prev)
            click.echo(f"snapshot {res.number} is the default now (was {was}); reboot to use it")
        if res.left_behind:
            click.echo(
                f"live /etc edits since the boot that snapshot {res.number} does not have "
                f"(they stay in {res.left_in}): {' '.join(res.left_behind)}",
                err=True,
            )
        elif res.left_behind is None and res.left_in is not None:
            click.echo(
                f"the live /etc's edits since the boot are not known; it stays in {res.left_in}",
                err=True,
            )
        return 0

    return Placed(step, first=True)  # first, before the transaction (as openSUSE)


@cli.command("cleanup")
@with_options("cleanup")
def cleanup_cmd(prune_only: bool) -> Placed:
    """Remove snapshots of interrupted transactions and apply the number limit."""

    def step(state: State) -> int:
        from transactional_update.core.cleanup import cleanup, cleanup_text

        if prune_only:
            return prune_step(state)

        res = cleanup(state.ctx)
        if state.json:
            click.echo(
                json.dumps(
                    {
                        "stale": res.stale,
                        "number": res.number,
                        "orphans": res.orphans,
                        "lost": res.lost,
                    }
                )
            )
        else:
            click.echo(cleanup_text(res))
        return 0

    return Placed(step, first=True)  # first, before the transaction (as openSUSE)


@cli.command("delete")
@click.argument("numbers", nargs=-1, type=int, required=True, metavar="N...")
def delete_cmd(numbers: tuple[int, ...]) -> Placed:
    """Delete snapshots N... with their own /etc (snapper 0.10.4's delete refuses those)."""

    def step(state: State) -> int:
        from transactional_update.core.cleanup import delete

        done = delete(state.ctx, list(numbers))
        if state.json:
            click.echo(json.dumps({"deleted": done}))
        else:
            click.echo(f"deleted snapshot(s) {' '.join(map(str, done))}")
        return 0

    return Placed(step, first=True)  # with cleanup and rollback, before any transaction


def prune_step(state: State) -> int:
    from transactional_update.core.cleanup import prune_only, prune_text

    res = prune_only(state.ctx)
    if state.json:
        done = {None: "none", True: "current", False: "failed"}
        followed = {f.key: done[f.done] for f in res.followups}
        click.echo(json.dumps({"pruned": res.pruned, **followed, "skipped": res.skipped}))
    else:
        click.echo(prune_text(res))
    return 0


# --- boot: the GRUB menu, boot configuration, boot once, new systems (transactional_update.grub,
# .bootmenu, .create_system) ----------------------------------------------------------------------


@cli.command("boot-menu")
def boot_menu_cmd() -> Step:
    """Print the GRUB boot menu (what /etc/grub.d/09_transactional-update emits); --json: model."""

    def step(state: State) -> int:
        from transactional_update.boot import bootmenu

        menu = bootmenu.menu_for(state.ctx.managed, state.ctx.config)
        if state.json:
            click.echo(json.dumps(bootmenu.to_json(menu), indent=2))
            return 0
        click.echo(bootmenu.render(menu), nl=False)
        for x in menu.left_out:
            click.echo(f"boot menu: snapshot {x.number} left out: {x.reason}", err=True)
        for note in menu.notes:
            click.echo(f"boot menu: {note}", err=True)
        return 0

    return step


def grub_step(description: str, reinstall: bool) -> Change:
    from transactional_update.boot import grub

    found: list[grub.Tools] = []

    def prepare(state: State) -> bool:
        found.append(grub.prepare(state.ctx))
        return True

    def apply(state: State, tx: Transaction) -> None:
        grub.configure(state.ctx, found[-1], tx, reinstall=reinstall)

    return Change(
        description,
        lambda _state: description,
        apply,
        prepare=prepare,
        finish=lambda state: grub.install(state.ctx, found[-1]),
        undo=lambda state: grub.discard(state.ctx, found[-1]) if found else None,
    )


@cli.command("grub.cfg")
def grub_cfg_cmd() -> Change:
    """Regenerate the GRUB configuration (grub-mkconfig) in a new snapshot; checked, atomic."""
    return grub_step("grub.cfg", reinstall=False)


@cli.command("bootloader")
def bootloader_cmd() -> Change:
    """Reinstall GRUB (grub-install) and its configuration in a new snapshot."""
    return grub_step("bootloader", reinstall=True)


@cli.command("setup-boot-fs")
def setup_boot_fs_cmd() -> Alone:
    """Make /boot/grub survive a power cut: repair and mount it, add a journal, and in a new
    snapshot mount it as ext4 and add fsck.repair=yes to the kernel command line."""

    def step(state: State) -> int:
        from transactional_update.boot import bootfs

        emit = (lambda _line: None) if state.json else click.echo
        out = bootfs.setup_boot_fs(state.ctx, state.options("setup-boot-fs"), emit)
        if state.json:
            click.echo(json.dumps(out.to_json()))
        return 0

    return Alone("setup-boot-fs", step)


@cli.command("setup-etc")
def setup_etc_cmd() -> Change:
    """Give a system made before the writable /etc its own /etc subvolume, in a new snapshot,
    and the unit that carries live /etc changes at shutdown and boot."""
    from transactional_update.snapshots import etcvol

    def prepare(state: State) -> bool:
        managed = state.ctx.managed
        default = managed.default()
        if default is not None and etcvol.has_own_etc(managed.snapshot_dir(default)):
            click.echo(f"snapshot {default}, the default, has its own /etc; no snapshot was made")
            return False
        return True

    def apply(_state: State, tx: Transaction) -> None:
        from transactional_update.etc import migrate
        from transactional_update.reboot import units
        from transactional_update.snapshots import btrfs

        assert tx.number is not None
        snap = tx.ctx.managed.snapshot_dir(tx.number)
        if migrate.own_etc(snap):
            # The reference the changelog compares with: the changes below are the migration's.
            btrfs.snapshot(snap / etcvol.ETC, etcvol.info_dir(snap) / etcvol.START, True)
        migrate.edit(snap / "etc/fstab", migrate.root_read_write)
        migrate.edit(
            snap / "etc/snapper/configs" / tx.ctx.config.snapper_config, migrate.no_number_cleanup
        )
        text = {units.ETC_UNIT: units.shipped()[units.ETC_UNIT]}
        units.write(snap, units.files(text, units.SHIPPED_EXEC, units.UNIT_DIR, enable=True))

    return Change("setup-etc", lambda _state: "setup-etc", apply, prepare=prepare)


@cli.command("sync-etc")
def sync_etc_cmd() -> Step:
    """Carry the live /etc's changes into the snapshot that boots next; at a snapshot's first
    boot, from the previous system's /etc (transactional-update-etc.service runs it)."""

    def step(state: State) -> int:
        from transactional_update.cli.commands import notify_conflicts
        from transactional_update.core.live_etc import sync

        ctx = state.ctx
        done, error = sync(ctx)
        if state.json:
            click.echo(json.dumps({"merges": [{"into": m.into, **m.record()} for m in done]}))
        elif not state.opts.get("quiet", False):
            for m in done:
                what = len(m.changed)
                click.echo(
                    f"snapshot {m.into}: {what} live /etc change(s) from snapshot {m.live} "
                    f"carried ({m.when}), {len(m.report.conflicted)} conflict(s), "
                    f"{len(m.report.failed)} failed"
                )
        for m in done:
            notify_conflicts(state, m.into, [m.record()])
        if any(p.startswith("systemd/") for m in done if m.when == "boot" for p in m.changed):
            _reload_systemd(ctx.root)
        if error is not None:
            raise error
        return 0

    return step


@cli.command("apply")
@with_options("apply")
def apply_cmd(allow_replacement: bool, restart_services: bool) -> Step:
    """Make the default snapshot's /usr and /etc live on the running system, without a reboot
    (additions; replacements with --allow-replacement; the kernel waits for the reboot)."""

    from transactional_update.cli.commands import apply_step

    return apply_step(allow_replacement, restart_services)


def _reload_systemd(root: Path) -> None:
    """Units enabled live since the fork: systemd read /etc before the boot merge brought them."""
    if root != Path("/") or not Path("/run/systemd/system").is_dir():
        return
    from transactional_update.proc import run

    run(["systemctl", "daemon-reload"], check=False, what="reload systemd's units")


@cli.command("health")
def health_cmd() -> Step:
    """Run the health checks (built-in, health.d/required and wanted) and print each result."""

    def step(state: State) -> int:
        from transactional_update.errors import ExitCode
        from transactional_update.health import bootcheck, checks

        report = bootcheck.examine(state.ctx)
        if state.json:
            click.echo(
                json.dumps(
                    {
                        "healthy": report.healthy,
                        "checks": [o.as_json() for o in report.outcomes],
                    }
                )
            )
        else:
            click.echo(checks.render(report))
        return 0 if report.healthy else int(ExitCode.UNHEALTHY)

    return step


@cli.command("boot-check")
@with_options("boot-check")
def boot_check_cmd(no_reboot: bool) -> Step:
    """Judge this boot (transactional-update-health.service runs it): a healthy default becomes
    known-good; an unhealthy new one is rolled back to the known-good snapshot and rebooted."""

    def step(state: State) -> int:
        from transactional_update.errors import ExitCode
        from transactional_update.health import bootcheck, checks

        result = bootcheck.boot_check(state.ctx, reboot=not no_reboot)
        if state.json:
            click.echo(json.dumps(result.as_json()))
        elif not state.opts.get("quiet", False):
            click.echo(checks.render(result.report))
            click.echo(bootcheck.verdict_text(result))
        return 0 if result.report.healthy else int(ExitCode.UNHEALTHY)

    return step


@cli.command("boot-once")
@click.argument("number", type=int, metavar="N")
def boot_once_cmd(number: int) -> Step:
    """Boot snapshot N at the next boot only; the boot after returns to the default."""

    def step(state: State) -> int:
        from transactional_update.boot.menu import boot_once

        value = boot_once(state.ctx, number)
        if state.json:
            click.echo(json.dumps({"snapshot": number, "next_entry": value}))
        else:
            default = state.ctx.managed.default()
            click.echo(
                f"snapshot {number} boots at the next boot only; "
                f"later boots use the default ({default})"
            )
        return 0

    return step


@cli.command("create-system")
@click.argument("target", type=click.Path(path_type=Path))
@with_options("create-system")
def create_system_cmd(
    target: Path,
    size: str | None,
    rootfs: Path | None,
    suite: str | None,
    kernel: str,
    include: tuple[str, ...],
    serial_console: bool,
    kernel_args: str,
    force: bool,
) -> Step:
    """Create a bootable managed system on a disk or image file (GPT, GRUB, btrfs layout)."""

    def step(state: State) -> int:
        from transactional_update.errors import UsageError
        from transactional_update.provision.create_system import (
            CreateOptions,
            create_system,
            parse_size,
        )

        if state.root != Path("/"):
            raise UsageError(
                "create-system makes a new system; --root does not apply",
                "mount the new system afterwards and manage it with --root",
            )
        opts = CreateOptions(
            size=parse_size(size) if size is not None else None,
            rootfs=rootfs,
            suite=suite,
            kernel=kernel,
            include=tuple(p for arg in include for p in arg.replace(",", " ").split()),
            serial_console=serial_console,
            kernel_args=kernel_args,
            force=force,
        )
        made = create_system(target.absolute(), opts)
        if state.json:
            click.echo(json.dumps(made.__dict__))
        else:
            click.echo(
                f"created a managed system on {made.target} (btrfs {made.root_uuid}, "
                f"GRUB partition {made.grub_uuid}, ESP {made.esp_uuid}, "
                f"kernel {made.kernel or 'none: will not boot'})"
            )
        return 0

    return step


def parse(argv: Sequence[str]) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    """What the command line makes of *argv*, without running anything.

    The global options by destination (``--continue`` as click gives it, before
    :func:`parse_continue`) and each command of the chain with its parameters; click's
    exceptions for bad input.  For tests, which hold the quick path of :mod:`entry` to it.
    """
    ctx = cli.make_context("transactional-update", arrange(argv))
    rest = [*ctx._protected_args, *ctx.args]
    chain = []
    while rest:
        name, command, rest = cli.resolve_command(ctx, rest)
        assert name is not None and command is not None
        sub = command.make_context(
            name, rest, parent=ctx, allow_extra_args=True, allow_interspersed_args=False
        )
        chain.append((name, dict(sub.params)))
        rest = sub.args
    return dict(ctx.params), chain


def main(argv: Sequence[str] | None = None) -> None:
    args = arrange(list(sys.argv[1:] if argv is None else argv))
    debug = "--debug" in table.leading(args)
    try:
        cli.main(args=args, prog_name="transactional-update", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        # One error line and one hint, like every other error, instead of click's usage block.
        ctx = exc.ctx if isinstance(exc, click.UsageError) else None
        path = ctx.command_path if ctx is not None else "transactional-update"
        click.echo(f"error: {exc.format_message()}", err=True)
        click.echo(f"hint: see: {path} --help", err=True)
        sys.exit(ExitCode.USAGE)
    except click.exceptions.Abort:
        click.echo("error: interrupted", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    except (Exception, KeyboardInterrupt) as exc:
        sys.exit(failed(exc, debug))
