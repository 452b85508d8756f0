"""The ``transactional-update`` executable: click-free paths for the most frequent invocations.

``status`` and ``list`` are what monitoring and admins' scripts call most, often every minute; they
run here without importing click or the transaction machinery (half of the start-up time).
``run CMD…``, ``pkg …``, ``up``, ``dup`` and ``patch`` are what scripts, configuration management
and the nightly job call for every change; they run here without click (a third of a no-op
transaction's start-up), through the same steps as :mod:`.app`.
Anything else (``-c``, chained commands, ``--help``, any option of a command, bad input) goes to
the full command line in :mod:`.app`, which parses it with click.  Both read the options from one
table, :mod:`.options`.
"""

from __future__ import annotations

import sys
from pathlib import Path

TYPE_CHECKING = False  # typing itself is not imported: it costs status ~3 ms
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any


# The two options a status or list query may carry.  Spelled here rather than looked up in
# cli.options: status runs every minute on monitored machines, and importing the table is a
# twentieth of its run time.  A unit test holds them to the table (same names, same dests).
QUERY_OPTIONS = {"--json": "json", "--root": "root"}


def parse_query(argv: Sequence[str]) -> tuple[Path, bool, str] | None:
    """``(root, json, command)`` when *argv* is a plain status/list query, else None.

    Only ``--root`` and ``--json`` are handled here, before or after the command; anything else
    goes to the full command line.
    """
    root, as_json, command = Path("/"), False, None
    args = list(argv)
    while args:
        arg = args.pop(0)
        dest = QUERY_OPTIONS.get(arg.partition("=")[0])
        if dest == "json" and arg == "--json":
            as_json = True
        elif dest == "root":
            value = _value(arg, args)
            if not value:
                return None
            root = Path(value)
        elif arg in ("status", "list") and command is None:
            command = arg
        else:
            return None
    return (root.absolute(), as_json, command) if command else None


def _value(arg: str, args: list[str]) -> str | None:
    """The value of the option *arg* (``--name=value``, or the next of *args*, taken)."""
    _, eq, value = arg.partition("=")
    if eq:
        return value
    return args.pop(0) if args else None


_PACKAGE_COMMANDS = ("up", "dup", "patch")


def parse_transaction(argv: Sequence[str]) -> tuple[dict[str, Any], str, list[str]] | None:
    """``(options, command, arguments)`` for one transaction command, else None.

    The commands: ``run [--] CMD…``, ``pkg ACTION [NAME…]`` and ``up``, ``dup``, ``patch`` (then
    nothing else: a chain of commands goes to click), with global options before or after them
    (see :func:`options.arrange`); *options* has every global option, by destination, as click
    would give it.  As in the full command line, everything after ``run`` is the command, whose
    first ``--`` ends the options of ``run``; an option of ``run`` itself (``run --help``) goes
    to click (the package manager's options after ``pkg ACTION`` stay here), and so do ``-c``
    (rare; click checks its number) and an option given twice with different values.
    """
    from transactional_update.cli.commands import PKG_ACTIONS
    from transactional_update.cli.options import GLOBAL, Kind, ValueType, arrange, defaults

    opts: dict[str, Any] = defaults()
    opts["root"] = Path(str(opts["root"]))
    seen = set()
    args = arrange(argv)
    while args:
        arg = args.pop(0)
        if arg == "run":
            if args and args[0] == "--":
                args.pop(0)
            elif args and args[0].startswith("-"):
                return None
            break
        if arg == "pkg":
            # The package manager's options (forwarded or refused alike by package_step) stay
            # here; after "--", click's reading (which drops it) decides.
            if not args or args[0] not in PKG_ACTIONS or {"--", "--help", "-h"} & set(args):
                return None
            break
        if arg in _PACKAGE_COMMANDS:
            if args:
                return None
            break
        opt = GLOBAL.get(arg.partition("=")[0] if arg.startswith("--") else arg)
        if opt is None or opt.kind is Kind.OPTIONAL_NUMBER:
            if not arg.startswith("-") or arg.startswith("--") or len(arg) < 3:
                return None
            for c in arg[1:]:  # -vv, -nd: bundled short flags
                bundled = GLOBAL.get(f"-{c}")
                if bundled is None or bundled.kind not in (Kind.FLAG, Kind.COUNT):
                    return None
                args.insert(0, f"-{c}")
        elif opt.kind is Kind.VALUE:
            value = _value(arg, args)
            if not value or opt.dest in seen:
                return None
            seen.add(opt.dest)
            opts[opt.dest] = Path(value) if opt.value_type is ValueType.PATH else value
        elif opt.kind is Kind.COUNT and "=" not in arg:
            opts[opt.dest] += 1
        elif opt.kind is Kind.FLAG and "=" not in arg:
            opts[opt.dest] = True
        else:
            return None
    else:
        return None
    return (opts, arg, args) if arg != "run" or args else None


def quick_transaction(opts: dict[str, Any], command: str, args: list[str]) -> int:
    from transactional_update.cli import commands

    debug = bool(opts["debug"])
    try:
        state = commands.begin(opts)
        steps: list[commands.Change | commands.Step]
        if command == "run":
            steps = [commands.run_step(args)]
        elif command == "pkg":
            steps = commands.pkg_steps(args[0], args[1:])
        else:
            steps = [commands.package_step(command)]
        return commands.execute(steps, state)
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
