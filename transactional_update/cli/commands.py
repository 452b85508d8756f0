"""What the commands do once their arguments are parsed, without click.

The command line (:mod:`.app`) parses with click; the executable's quick path (:mod:`.entry`) parses
the most frequent invocations by hand, because importing click is a third of a no-op transaction's
start-up.  Both hand the same :class:`State` to the same steps here, so they cannot disagree about
what a command does, how its result is printed, or which exit code an error gets.

One invocation makes at most one snapshot, as openSUSE's tool does (``cleanup up shell reboot``
updates, opens the shell in the updated snapshot and reboots into it).  A command that changes
the system is a :class:`Change`, its share of the one transaction; every other command is a plain
step.  :func:`execute` orders them as openSUSE's script does:

1. ``cleanup`` and ``rollback`` first, wherever they stand (openSUSE cleans up before it opens
   the snapshot, and runs ``rollback`` before anything else; a transaction in the same invocation
   builds on the rolled-back default);
2. the other general commands given before the first change (``status up``: the status before);
3. the one transaction: the package command first (there may be one; openSUSE runs zypper before
   ``grub.cfg``, ``bootloader``, ``run`` and ``shell``), then the other changes in the order
   given; committed once after the last of them, discarded as a whole if any fails;
4. the general commands given after the first change, which see the committed snapshot;
5. ``reboot`` last, wherever it stands (openSUSE reboots at the very end, only if all went well).

The first failure stops the invocation; its exit code is the invocation's.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing itself is not imported: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path
    from typing import Any, TypeAlias

    from transactional_update.core.context import Context
    from transactional_update.core.transaction import Options, Result, Transaction

    Step = Callable[["State"], int]
    Command: TypeAlias = "Step | Checked | Change | Placed | Alone"


class State:
    """What the global options decided; the context is opened once, on first need."""

    def __init__(self, root: Path, json_out: bool, opts: dict[str, Any]) -> None:
        self.root = root
        self.json = json_out
        self.opts = opts
        self._ctx: Context | None = None

    @property
    def ctx(self) -> Context:
        if self._ctx is None:
            from transactional_update.boot.counting import start_trial
            from transactional_update.boot.menu import follow_default
            from transactional_update.core.context import open_context
            from transactional_update.log import attach_file

            # A new default goes on trial, then GRUB's menu follows it (Context.after_default).
            self._ctx = open_context(self.root, after_default=(start_trial, follow_default))
            attach_file(self.root)
        return self._ctx

    def options(self, description: str) -> Options:
        from transactional_update.core.transaction import Options

        return Options(
            description=self.opts["description"] or description,
            summarize=self.opts["description"] is None,
            continue_from=self.opts["continue_from"],
            from_booted=self.opts["from_booted"],
            keep=self.opts["keep"],
            drop_if_no_change=self.opts["drop_if_no_change"],
        )


def begin(opts: Mapping[str, Any]) -> State:
    """Logging set up and the :class:`State` that the global options decide, for both parsers.

    *opts* has every global option of :mod:`cli.options` by destination, ``--root`` as a path
    and ``--continue`` as a snapshot number (or None).
    """
    from transactional_update import log as logmod

    logmod.setup(2 if opts["debug"] else opts["verbose"], opts["quiet"])
    if opts["from_booted"] and opts["continue_from"] is not None:
        from transactional_update.errors import UsageError

        raise UsageError(
            "--from-booted and --continue both choose the base snapshot",
            "give one of them: --from-booted, or --continue N",
        )
    return State(
        opts["root"].absolute(),
        opts["json"],
        {
            "continue_from": opts["continue_from"],
            "from_booted": opts["from_booted"],
            "drop_if_no_change": opts["drop_if_no_change"],
            "keep": opts["keep"],
            "description": opts["description"],
            "interactive": opts["interactive"] and not opts["non_interactive"],
            "refresh": opts["refresh"],
            "debug": opts["debug"],
            "quiet": opts["quiet"],
        },
    )


class Change:
    """A command that changes the snapshot: its share of the invocation's one transaction.

    *prepare* checks before any snapshot exists and says whether there is anything to do (False:
    it printed why not); *describe* names the change (after *prepare*); *apply* changes the open
    transaction's snapshot; *finish* runs after the transaction ended well, committed or
    dropped because the snapshot did not change (``--drop-if-no-change``: ``grub.cfg`` changes
    only the GRUB partition, which is no snapshot's, and must still take effect); *undo* runs
    after a failure.
    """

    __slots__ = ("apply", "describe", "finish", "name", "package", "prepare", "undo")

    def __init__(
        self,
        name: str,
        describe: Callable[[State], str],
        apply: Callable[[State, Transaction], None],
        *,
        package: bool = False,
        prepare: Callable[[State], bool] | None = None,
        finish: Callable[[State], None] | None = None,
        undo: Callable[[State], None] | None = None,
    ) -> None:
        self.name = name
        self.describe = describe
        self.apply = apply
        self.package = package
        self.prepare = prepare or (lambda _state: True)
        self.finish = finish or (lambda _state: None)
        self.undo = undo or (lambda _state: None)


class Placed:
    """A general command with a fixed place: before the transaction (*first*) or after it."""

    __slots__ = ("first", "step")

    def __init__(self, step: Step, *, first: bool) -> None:
        self.step = step
        self.first = first


class Checked:
    """A general step whose refusals are known before anything runs: *check* is called for the
    whole invocation first, so ``pkg install x apply`` under ``--root`` makes no snapshot."""

    __slots__ = ("check", "step")

    def __init__(self, step: Step, check: Callable[[State], None]) -> None:
        self.step = step
        self.check = check

    def __call__(self, state: State) -> int:
        self.check(state)
        return self.step(state)


class Alone:
    """A command that makes its own snapshot and combines with no :class:`Change`."""

    __slots__ = ("name", "step")

    def __init__(self, name: str, step: Step) -> None:
        self.name = name
        self.step = step


def run_step(command: Sequence[str]) -> Change:
    """``run COMMAND…``: the command in the snapshot; its non-zero exit discards it."""

    def describe(_state: State) -> str:
        from transactional_update.core.transaction import default_description

        return default_description("run", command)

    def apply(_state: State, tx: Transaction) -> None:
        discard_unless_ok(tx.run(list(command)), "command", f": {command[0]}")

    return Change("run", describe, apply)


def discard_unless_ok(rc: int, what: str, detail: str = "") -> None:
    """End the transaction with exit code *rc* unless *what* (the command) succeeded."""
    if rc != 0:
        from transactional_update.errors import CommandFailed

        raise CommandFailed(
            f"{what} exited with {rc}{detail}",
            "the snapshot was discarded; the default is unchanged",
            code=rc,
        )


# ``pkg ACTION``: the action words of openSUSE's tool, short forms included.
PKG_ACTIONS = {
    "install": "install",
    "in": "install",
    "remove": "remove",
    "rm": "remove",
    "update": "update",
    "up": "update",
}


def package_step(action: str | None, names: Sequence[str] = ()) -> Change:
    """``up``, ``dup``, ``patch``, ``pkg ACTION NAME…``: the package manager in the snapshot.

    *action* None: the configured UPDATE_METHOD (``auto-update``).
    """
    from transactional_update.packages import model as packages

    planned: list[tuple[Any, packages.Request]] = []

    def prepare(state: State) -> bool:
        from transactional_update.packages import forward, operation
        from transactional_update.record import pkgdb

        manager = pkgdb.manager_for(state.ctx.root, state.ctx.config.package_manager)
        pkgdb.check_database(state.ctx.root, manager)
        words, given = forward.split(names)
        act = packages.Action(action or str(state.ctx.config.update_method))
        request = packages.Request(
            act,
            words,
            state.opts["interactive"],
            state.opts["refresh"],
            forward.translate(manager, act, given),
        )
        operation.plan(manager, request)  # refuse bad requests before any snapshot exists
        planned.append((manager, request))
        return True

    def apply(_state: State, tx: Transaction) -> None:
        from transactional_update.packages import operation

        manager, request = planned[-1]
        found = operation.execute(tx, manager, request)
        if found.reboot is not None:
            tx.needs_reboot(found.reboot)

    return Change(
        "pkg" if names else action or "auto-update",
        lambda _state: packages.describe(planned[-1][1]),
        apply,
        package=True,
        prepare=prepare,
    )


# apply's own options, where it follows ``pkg ACTION NAME…`` (cli.options has them for click).
APPLY_FLAGS = {"--allow-replacement": "allow_replacement", "--restart-services": "restart_services"}


def pkg_steps(action: str, args: Sequence[str]) -> list[Change | Step]:
    """``pkg ACTION NAME… [run COMMAND…]``: a ``run`` after the names is the next command;
    so is ``apply [--allow-replacement] [--restart-services]`` (before a ``run``, if any)."""
    words = list(args)
    ends = [i for i, w in enumerate(words) if i >= 1 and w in ("run", "apply")]
    if ends and words[ends[0]] == "apply":
        at = ends[0]
        after = words[at + 1 :]
        run_at = after.index("run") if "run" in after else len(after)
        flags = after[:run_at]
        unknown = [f for f in flags if f not in APPLY_FLAGS]
        if unknown:
            from transactional_update.errors import UsageError

            raise UsageError(
                f"apply after pkg takes no {unknown[0]!r}",
                "apply takes --allow-replacement and --restart-services",
            )
        steps: list[Change | Step] = [package_step(PKG_ACTIONS[action], words[:at])]
        if run_at < len(after):
            steps.append(run_step(after[run_at + 1 :]))
        opts = {dest: flag in flags for flag, dest in APPLY_FLAGS.items()}
        return [*steps, apply_step(**opts)]
    if "run" in words[1:-1]:  # after at least one name, before the command
        at = words.index("run", 1)
        return [package_step(PKG_ACTIONS[action], words[:at]), run_step(words[at + 1 :])]
    return [package_step(PKG_ACTIONS[action], words)]


def apply_step(allow_replacement: bool, restart_services: bool) -> Checked:
    """``apply``: the default snapshot's /usr and /etc live on the running system (live.flow)."""

    def running_system(state: State) -> None:
        from pathlib import Path

        from transactional_update.errors import ApplyError

        if state.root != Path("/"):
            raise ApplyError(
                f"apply changes the running system; --root {state.root} names one that is not "
                "running",
                "run apply on the system itself, without --root",
            )

    def step(state: State) -> int:
        from transactional_update.live import flow

        quiet = state.json or state.opts.get("quiet", False)

        def say(line: str) -> None:
            if not quiet:
                print(line, flush=True)

        result = flow.apply(
            state.ctx,
            allow_replacement=allow_replacement,
            restart_services=restart_services,
            say=say,
        )
        if state.json:
            import json

            print(json.dumps(result.as_json()), flush=True)
        else:
            for line in flow.report(result):
                say(line)
        if result.restart_failed:
            units = [u for u, _ in result.restart_failed]
            print(f"error: applied, but restarting failed: {', '.join(units)}", file=sys.stderr)
            print(f"hint: see: systemctl status {' '.join(units)}", file=sys.stderr)
            return 1
        return 0

    return Checked(step, running_system)


def prints_result(quiet: bool, json_out: bool) -> bool:
    """Whether the tool prints its own result line on stdout (``--quiet``: never).

    With ``--quiet`` stdout carries only what the commands in the snapshot print: Salt parses
    ``--quiet run salt-call … --out json`` and Ansible ``--quiet run zypper --xmlout …`` up to
    the end of stdout.  ``--json`` asks for the result as data, so it is printed even then.
    """
    return json_out or not quiet


def report(state: State, result: Result) -> int:
    """Print what a transaction did: one line, or one JSON object with ``--json``."""
    if not prints_result(state.opts.get("quiet", False), state.json):
        return 0
    if state.json:
        import json

        print(
            json.dumps(
                {
                    "snapshot": result.number,
                    "base": result.base,
                    "dropped": result.dropped,
                    "previous_default": result.previous_default,
                    "shadowed_writes": result.shadowed_writes,
                    "summary": result.summary,
                    "reboot": result.reboot,  # "reboot": the packages ask for a full one
                    "live_etc": result.live_etc,
                    "commands": [
                        {"argv": c.argv, "exit": c.returncode, "seconds": round(c.duration, 3)}
                        for c in result.commands
                    ],
                }
            ),
            flush=True,
        )
    elif result.dropped:
        print(f"{result.reason or 'nothing changed'}; no snapshot was kept", flush=True)
    else:
        how = "a full reboot (its packages ask for one)" if result.reboot else "reboot"
        print(f"snapshot {result.number} is the new default; {how} to use it", flush=True)
    return 0


def execute(commands: Sequence[Command], state: State) -> int:
    """Run one invocation in openSUSE's order (see the module docstring); its exit code."""
    before, changes, after = arrange(commands)
    for command in commands:
        if isinstance(command, Checked):
            command.check(state)
    for step in before:
        code = step(state)
        if code != 0:
            return code
    if changes:
        code = transact(changes, state)
        if code != 0:
            return code
    for step in after:
        code = step(state)
        if code != 0:
            return code
    return 0


def arrange(commands: Sequence[Command]) -> tuple[list[Step], list[Change | Alone], list[Step]]:
    """The steps before the transaction, its changes (package command first), the steps after.

    Refuses (usage error) a second package command and an :class:`Alone` combined with changes.
    """
    from transactional_update.errors import UsageError

    changes = [c for c in commands if isinstance(c, (Change, Alone))]
    packages = [c.name for c in changes if isinstance(c, Change) and c.package]
    if len(packages) > 1:
        raise UsageError(
            f"one package command per invocation: {packages[0]} and {packages[1]} given",
            "run them one after the other; each builds on the snapshot the last one made",
        )
    alone = [c.name for c in changes if isinstance(c, Alone)]
    if alone and len(changes) > 1:
        others = ", ".join(c.name for c in changes if c.name != alone[0])
        raise UsageError(
            f"{alone[0]} makes a snapshot of its own and cannot be combined with {others}",
            f"run {alone[0]} on its own",
        )
    changes.sort(key=lambda c: not (isinstance(c, Change) and c.package))  # stable
    first = next((i for i, c in enumerate(commands) if isinstance(c, (Change, Alone))), None)
    before: list[Step] = [c.step for c in commands if isinstance(c, Placed) and c.first]
    after: list[Step] = []
    for i, c in enumerate(commands):
        if not isinstance(c, (Change, Alone, Placed)):
            (before if first is None or i < first else after).append(c)
    after += [c.step for c in commands if isinstance(c, Placed) and not c.first]
    return before, changes, after


def transact(changes: Sequence[Change | Alone], state: State) -> int:
    """The invocation's one transaction: every change in one snapshot, committed once."""
    from transactional_update.core.transaction import NothingToDo, Transaction

    if isinstance(changes[0], Alone):
        return changes[0].step(state)
    wanted = [c for c in changes if isinstance(c, Change) and c.prepare(state)]
    if not wanted:
        return 0
    tx = Transaction(state.ctx, state.options("; ".join(c.describe(state) for c in wanted)))
    try:
        with tx:
            for change in wanted:
                try:
                    change.apply(state, tx)
                except NothingToDo:
                    if len(wanted) == 1:
                        raise  # the transaction ends without a snapshot
                    # Nothing for the package manager to do; the other changes still count.
                    continue
    except BaseException:
        for change in wanted:
            change.undo(state)
        raise
    for change in wanted:
        change.finish(state)
    if tx.result.number is not None:
        notify_conflicts(state, tx.result.number, tx.result.live_etc)
    return report(state, tx.result)


def notify_conflicts(state: State, number: int, merges: Sequence[dict[str, Any]]) -> None:
    """Tell the admin about live /etc conflicts the way the reboot method tells about reboots
    (NOTIFY_COMMAND, ``wall`` by default); the log line of each was written when it was found."""
    conflicts = [c for m in merges for c in m.get("conflicts", [])]
    if not conflicts:
        return
    from transactional_update.errors import TUError
    from transactional_update.proc import run

    listed = "; ".join(f"{c['path']} (live version: {c['live']})" for c in conflicts)
    text = (
        f"transactional-update: /etc of snapshot {number} keeps its own version where the live "
        f"/etc changed too: {listed}"
    )
    try:
        run([*state.ctx.config.notify_command, text], check=False)
    except TUError as exc:
        import logging

        logging.getLogger(__name__).warning("cannot notify about /etc conflicts: %s", exc.message)


def failed(exc: BaseException, debug: bool) -> int:
    """Report an exception that ended the command (one error line and a hint); its exit code."""
    if isinstance(exc, KeyboardInterrupt):
        print("error: interrupted; the default snapshot is unchanged", file=sys.stderr)
        return 130
    from transactional_update.errors import report as report_error

    if debug:
        import traceback

        traceback.print_exception(exc)
    return report_error(exc)
