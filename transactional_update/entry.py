"""The ``transactional-update`` executable: a click-free path for the read-only queries.

``status`` and ``list`` are what monitoring and admins' scripts call most, often every minute; they
run here without importing click or the transaction machinery (half of the start-up time).
Anything beyond ``[--root PATH] [--json] status|list`` goes to the full command line in :mod:`cli`.
"""

from __future__ import annotations

import sys
from pathlib import Path

TYPE_CHECKING = False  # typing itself is not imported: it costs status ~3 ms
if TYPE_CHECKING:
    from collections.abc import Sequence


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


def query(root: Path, as_json: bool, command: str) -> int:
    from transactional_update import conffile
    from transactional_update.errors import report
    from transactional_update.status import show_list, show_status
    from transactional_update.system import open_root

    try:
        # The configuration is validated as the full command line does, but its module (frozen
        # dataclasses) is imported only when some file sets something: most systems have none.
        values = conffile.read(root)
        name = conffile.DEFAULT_SNAPPER_CONFIG
        if values:
            from transactional_update import config

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
    from transactional_update.cli import main as full

    full()
