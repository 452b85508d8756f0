"""The ``transactional-update`` executable: click-free paths for the most frequent invocations.

``status`` and ``list`` are what monitoring and admins' scripts call most, often every minute; they
run here without importing click or the transaction machinery (half of the start-up time).
``run CMD…``, ``pkg …``, ``up``, ``dup`` and ``patch`` are what scripts, configuration management
and the nightly job call for every change; they run here without click (a third of a no-op
transaction's start-up), through the same steps as :mod:`.app`.
Anything else (``-c``, chained commands, ``--help``, any option not listed below, bad input)
goes to the full command line in :mod:`.app`, which parses it with click.
"""

from __future__ import annotations

import sys
from pathlib import Path

TYPE_CHECKING = False  # typing itself is not imported: it costs status ~3 ms
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any


def parse_query(argv: Sequence[str]) -> tuple[Path, bool, str] | None:
    """``(root, json, command)`` when *argv* is a plain status/list query, else None."""
    root, as_json, command = Path("/"), False, None
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--json":
            as_json = True
        elif arg == "--root" and args:
            root = Path(args.pop(0))
        elif arg.startswith("--root="):
            root = Path(arg.split("=", 1)[1])
        elif arg in ("status", "list") and command is None:
            command = arg
        else:
            return None
    return (root.absolute(), as_json, command) if command else None


# Global options the quick path of the transaction commands understands, as the full command line
# defines them.
_FLAGS = {
    "--json": "json",
    "-v": "verbose",
    "--verbose": "verbose",
    "--debug": "debug",
    "-q": "quiet",
    "--quiet": "quiet",
    "-n": "non_interactive",
    "--non-interactive": "non_interactive",
    "-i": "interactive",
    "--interactive": "interactive",
    "-d": "drop_if_no_change",
    "--drop-if-no-change": "drop_if_no_change",
    "-k": "keep",
    "--keep": "keep",
    "--refresh": "refresh",
}
_PACKAGE_COMMANDS = ("up", "dup", "patch")


def parse_transaction(argv: Sequence[str]) -> tuple[dict[str, Any], str, list[str]] | None:
    """``(options, command, arguments)`` for one transaction command, else None.

    The commands: ``run [--] CMD…``, ``pkg ACTION [NAME…]`` and ``up``, ``dup``, ``patch`` (then
    nothing else: a chain of commands goes to click), after global options from the table above.
    As in the full command line, everything after ``run`` is the command, whose first ``--``
    ends the options of ``run``; an option of the command itself (``run --help``, a package
    name that starts with ``-``) goes to click.
    """
    from transactional_update.cli.commands import PKG_ACTIONS, VALUE_OPTIONS

    opts: dict[str, Any] = {"verbose": 0}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "run":
            if args and args[0] == "--":
                args.pop(0)
            elif args and args[0].startswith("-"):
                return None
            return (opts, arg, args) if args else None
        if arg == "pkg":
            if not args or args[0] not in PKG_ACTIONS or any(a.startswith("-") for a in args):
                return None
            return opts, arg, args
        if arg in _PACKAGE_COMMANDS:
            return (opts, arg, []) if not args else None
        name, eq, value = arg.partition("=")
        if name in VALUE_OPTIONS:
            if not eq:
                if not args:
                    return None
                value = args.pop(0)
            if not value or VALUE_OPTIONS[name] in opts:
                return None
            opts[VALUE_OPTIONS[name]] = value
        elif arg in _FLAGS:
            key = _FLAGS[arg]
            opts[key] = (int(opts["verbose"]) + 1) if key == "verbose" else True
        elif arg.startswith("-") and not arg.startswith("--") and len(arg) > 2:
            for c in arg[1:]:  # -vv, -nd: bundled short flags
                if f"-{c}" not in _FLAGS:
                    return None
                args.insert(0, f"-{c}")
        else:
            return None
    return None


def quick_transaction(opts: dict[str, Any], command: str, args: list[str]) -> int:
    from transactional_update.cli import commands

    debug = bool(opts.pop("debug", False))
    try:
        state = commands.begin(
            Path(str(opts.pop("root", "/"))), bool(opts.pop("json", False)), debug=debug, **opts
        )
        if command == "run":
            step = commands.run_step(args)
        elif command == "pkg":
            step = commands.package_step(commands.PKG_ACTIONS[args[0]], args[1:])
        else:
            step = commands.package_step(command)
        return commands.execute([step], state)
    except (Exception, KeyboardInterrupt) as exc:
        return commands.failed(exc, debug)


def query(root: Path, as_json: bool, command: str) -> int:
    from transactional_update.cli.status import show_list, show_status
    from transactional_update.config import conffile
    from transactional_update.errors import report
    from transactional_update.snapshots.system import open_root

    try:
        # The configuration is validated as the full command line does, but its module (frozen
        # dataclasses) is imported only when some file sets something: most systems have none.
        values = conffile.read(root)
        name = conffile.DEFAULT_SNAPPER_CONFIG
        if values:
            from transactional_update.config import settings as config

            name = config.build(values).snapper_config
        managed = open_root(root, name)
        print(show_status(managed, as_json) if command == "status" else show_list(managed, as_json))
    except Exception as exc:
        return report(exc)
    return 0


def main() -> None:
    quick = parse_query(sys.argv[1:])
    if quick is not None:
        sys.exit(query(*quick))
    transaction = parse_transaction(sys.argv[1:])
    if transaction is not None:
        sys.exit(quick_transaction(*transaction))
    from transactional_update.cli.app import main as full

    full()
