"""What the commands do once their arguments are parsed, without click.

The command line (:mod:`.app`) parses with click; the executable's quick path (:mod:`.entry`) parses
the most frequent invocations by hand, because importing click is a third of a no-op transaction's
start-up.  Both hand the same :class:`State` to the same steps here, so they cannot disagree about
what a command does, how its result is printed, or which exit code an error gets.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing itself is not imported: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path
    from typing import Any

    from transactional_update.core.context import Context
    from transactional_update.core.transaction import Options, Result

    Step = Callable[["State"], int]


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
            from transactional_update.boot.menu import follow_default
            from transactional_update.core.context import open_context
            from transactional_update.log import attach_file

            # GRUB's menu follows every change of the default (see Context.after_default).
            self._ctx = open_context(self.root, after_default=(follow_default,))
            attach_file(self.root)
        return self._ctx

    def options(self, description: str) -> Options:
        from transactional_update.core.transaction import Options

        return Options(
            description=self.opts["description"] or description,
            summarize=self.opts["description"] is None,
            continue_from=self.opts["continue_from"],
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
    return State(
        opts["root"].absolute(),
        opts["json"],
        {
            "continue_from": opts["continue_from"],
            "drop_if_no_change": opts["drop_if_no_change"],
            "keep": opts["keep"],
            "description": opts["description"],
            "interactive": opts["interactive"] and not opts["non_interactive"],
            "refresh": opts["refresh"],
            "debug": opts["debug"],
            "quiet": opts["quiet"],
        },
    )


def run_step(command: Sequence[str]) -> Step:
    """``run COMMAND…``: the command in a new snapshot; its non-zero exit discards it."""

    def step(state: State) -> int:
        from transactional_update.core.transaction import Transaction, default_description

        tx = Transaction(state.ctx, state.options(default_description("run", command)))
        with tx:
            discard_unless_ok(tx.run(list(command)), "command", f": {command[0]}")
        return report(state, tx.result)

    return step


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


def package_step(action: str, names: Sequence[str] = ()) -> Step:
    """``up``, ``dup``, ``patch``, ``pkg ACTION NAME…``: the package manager in a new snapshot."""

    def step(state: State) -> int:
        from transactional_update.core.transaction import Transaction
        from transactional_update.packages import forward, operation
        from transactional_update.packages import model as packages
        from transactional_update.record import pkgdb

        manager = pkgdb.manager_for(state.ctx.root, state.ctx.config.package_manager)
        pkgdb.check_database(state.ctx.root, manager)
        words, given = forward.split(names)
        request = packages.Request(
            packages.Action(action),
            words,
            state.opts["interactive"],
            state.opts["refresh"],
            forward.translate(manager, packages.Action(action), given),
        )
        operation.plan(manager, request)  # refuse bad requests before any snapshot exists
        tx = Transaction(state.ctx, state.options(packages.describe(request)))
        with tx:
            found = operation.execute(tx, manager, request)
            if found.reboot is not None:
                tx.needs_reboot(found.reboot)
        return report(state, tx.result)

    return step


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


def execute(steps: Sequence[Step], state: State) -> int:
    """Run *steps* in order; the first non-zero exit code stops the chain and is returned."""
    for s in steps:
        code = s(state)
        if code != 0:
            return code
    return 0


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
