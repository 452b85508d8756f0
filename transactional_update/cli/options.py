"""Every option of the command line, in one table, and the grammar both parsers share.

The click command line (:mod:`cli.app`) generates its options from :data:`OPTIONS`; the quick
path of the executable (:mod:`cli.entry`) parses the same table by hand.  Global options (those
with no ``commands``) apply to every command and may stand before or after it, as with openSUSE's
getopt-based tool: :func:`arrange` moves them in front, where click expects them.  ``--help`` and
``--version`` are click's own (each command has its own ``--help``) and are not in the table.

This module is imported by every start of the executable, ``status`` included, so it imports
nothing that start-up does not load anyway (``enum`` comes with ``pathlib``).
"""

from __future__ import annotations

from enum import StrEnum

TYPE_CHECKING = False  # typing itself is not imported: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Sequence


class Kind(StrEnum):
    """How an option takes its value."""

    FLAG = "flag"  # present or not
    COUNT = "count"  # each occurrence adds one (-vv)
    VALUE = "value"  # the next argument (or after "="), whatever it looks like
    OPTIONAL_NUMBER = "optional-number"  # -c [N]: a number only when one follows
    SWITCH = "switch"  # --enable/--no-enable; neither leaves it None


class ValueType(StrEnum):
    """What a VALUE option's argument must be (click checks it)."""

    TEXT = "text"
    PATH = "path"
    FILE = "file"  # an existing file
    SECONDS = "seconds"  # a number of seconds, at least 0.1


class Option:
    """One option: its names, where its value goes, and the commands it applies to.

    A class with ``__slots__`` rather than a frozen dataclass: importing ``dataclasses`` (it
    imports ``inspect``) costs ``status`` 9-17 ms, more than the rest of its imports.  Assignment
    after construction is refused as a frozen dataclass refuses it.
    """

    __slots__ = (
        "commands",
        "default",
        "dest",
        "help",
        "kind",
        "metavar",
        "multiple",
        "names",
        "negation",
        "show_default",
        "value_type",
    )

    names: tuple[str, ...]
    dest: str
    kind: Kind
    help: str
    metavar: str | None
    commands: tuple[str, ...]  # empty: a global option
    value_type: ValueType
    default: object
    show_default: bool
    multiple: bool
    negation: str | None  # SWITCH: the name that turns it off

    def __init__(
        self,
        names: tuple[str, ...],
        dest: str,
        kind: Kind,
        help: str,
        *,
        metavar: str | None = None,
        commands: tuple[str, ...] = (),
        value_type: ValueType = ValueType.TEXT,
        default: object = None,
        show_default: bool = False,
        multiple: bool = False,
        negation: str | None = None,
    ) -> None:
        values = {
            "names": names,
            "dest": dest,
            "kind": kind,
            "help": help,
            "metavar": metavar,
            "commands": commands,
            "value_type": value_type,
            "default": default,
            "show_default": show_default,
            "multiple": multiple,
            "negation": negation,
        }
        for key, value in values.items():
            object.__setattr__(self, key, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Option is frozen: cannot set {name}")

    def __repr__(self) -> str:
        return f"Option({'/'.join(self.names)})"

    @property
    def is_global(self) -> bool:
        return not self.commands

    @property
    def takes_value(self) -> bool:
        """The next argument is this option's value (unless given as ``--name=value``)."""
        return self.kind is Kind.VALUE


F, C, V = Kind.FLAG, Kind.COUNT, Kind.VALUE

OPTIONS: tuple[Option, ...] = (
    # Global options, in the order --help lists them.
    Option(
        ("--root",),
        "root",
        V,
        "Manage the system mounted at PATH (like snapper --root).",
        value_type=ValueType.PATH,
        default="/",
        show_default=True,
    ),
    Option(("-v", "--verbose"), "verbose", C, "More output; -vv shows every command.", default=0),
    Option(("--debug",), "debug", F, "Show debug output and tracebacks.", default=False),
    Option(
        ("-q", "--quiet"),
        "quiet",
        F,
        "Nothing on stdout but what the commands print; only errors on stderr.",
        default=False,
    ),
    Option(
        ("-n", "--non-interactive"),
        "non_interactive",
        F,
        "Never ask (default for run).",
        default=False,
    ),
    Option(("-i", "--interactive"), "interactive", F, "Let package managers ask.", default=False),
    Option(
        ("--refresh",),
        "refresh",
        F,
        "Refresh repository metadata even within REFRESH_DELAY.",
        default=False,
    ),
    Option(
        ("-c", "--continue"),
        "continue_from",
        Kind.OPTIONAL_NUMBER,
        "Build on snapshot N (without N: the default, as without --continue).",
        metavar="[N]",
    ),
    Option(
        ("--from-booted",),
        "from_booted",
        F,
        "Build on the booted snapshot, not on the default: a pending default's changes do "
        "not boot next.",
        default=False,
    ),
    Option(
        ("-d", "--drop-if-no-change"),
        "drop_if_no_change",
        F,
        "Leave no snapshot when the transaction changed no file.",
        default=False,
    ),
    Option(
        ("-k", "--keep"),
        "keep",
        F,
        "Keep a failed snapshot for inspection (never as default).",
        default=False,
    ),
    Option(
        ("--description",), "description", V, "Description of the new snapshot.", metavar="TEXT"
    ),
    Option(("--json",), "json", F, "Machine-readable output (status, list).", default=False),
    Option(
        ("--no-selfupdate",),
        "no_selfupdate",
        F,
        "Accepted for openSUSE's clients; this tool never updates itself.",
        default=False,
    ),
    # Options of one command.
    Option(
        ("--unit-dir",),
        "unit_dir",
        V,
        "Write the units into DIR (packaging) instead of a new snapshot of the root.",
        metavar="DIR",
        value_type=ValueType.PATH,
        commands=("install-units",),
    ),
    Option(
        ("--exec",),
        "exec_path",
        V,
        "The transactional-update the units start (default: /usr/bin/transactional-update).",
        metavar="PATH",
        commands=("install-units",),
    ),
    Option(
        ("--enable",),
        "enable",
        Kind.SWITCH,
        "Also enable the timers and the reboot manager (default; not with --unit-dir).",
        negation="--no-enable",
        commands=("install-units",),
    ),
    Option(
        ("--poll",),
        "poll",
        V,
        "Seconds between looks for new or cancelled reboot requests (run).",
        value_type=ValueType.SECONDS,
        default=60.0,
        show_default=True,
        commands=("reboot-manager",),
    ),
    Option(
        ("--id",),
        "node",
        V,
        "release: the machine whose reboot slot to free (its fleet ID, as status shows it).",
        metavar="ID",
        commands=("reboot-manager",),
    ),
    Option(
        ("--prune-only",),
        "prune_only",
        F,
        "Remove no snapshot: only drop the changelog and boot menu entries of deleted ones "
        "(snapper's cleanup unit runs this after it); skips while a transaction runs.",
        default=False,
        commands=("cleanup",),
    ),
    Option(
        ("--no-reboot",),
        "no_reboot",
        F,
        "After rolling an unhealthy snapshot back, leave the reboot to the admin.",
        default=False,
        commands=("boot-check",),
    ),
    Option(
        ("--allow-replacement",),
        "allow_replacement",
        F,
        "Also apply a change that replaces or deletes files running programs may use "
        "(package upgrades and removals).",
        default=False,
        commands=("apply",),
    ),
    Option(
        ("--restart-services",),
        "restart_services",
        F,
        "Restart the units whose processes still use replaced files (never systemd, the "
        "D-Bus daemon, sessions, consoles, or APPLY_NO_RESTART's units).",
        default=False,
        commands=("apply",),
    ),
    Option(
        ("--size",),
        "size",
        V,
        "Create TARGET as a sparse image file (e.g. 8G).",
        metavar="SIZE",
        commands=("create-system",),
    ),
    Option(
        ("--rootfs",),
        "rootfs",
        V,
        "Root filesystem tarball (default: built with mmdebstrap and cached).",
        value_type=ValueType.FILE,
        commands=("create-system",),
    ),
    Option(
        ("--suite",),
        "suite",
        V,
        "Debian suite to build (default: the host's).",
        commands=("create-system",),
    ),
    Option(
        ("--kernel",),
        "kernel",
        V,
        "Kernel package.",
        default="linux-image-amd64",
        show_default=True,
        commands=("create-system",),
    ),
    Option(
        ("--include",),
        "include",
        V,
        "More packages.",
        metavar="PKG",
        multiple=True,
        commands=("create-system",),
    ),
    Option(
        ("--serial-console",),
        "serial_console",
        F,
        "GRUB and kernel on ttyS0 too.",
        default=False,
        commands=("create-system",),
    ),
    Option(
        ("--kernel-args",),
        "kernel_args",
        V,
        "Extra kernel command line.",
        metavar="ARGS",
        default="",
        commands=("create-system",),
    ),
    Option(
        ("--force",),
        "force",
        F,
        "Erase a target that holds data.",
        default=False,
        commands=("create-system",),
    ),
)
del F, C, V

# The commands and how many arguments each takes after its options: None for any number (the
# rest of the command line; a chain cannot continue after them), RAW for ``run``, whose
# arguments are the command it runs and never options of ours.
RAW = -1
COMMANDS: dict[str, int | None] = {
    "run": RAW,
    "shell": 0,
    "up": 0,
    "dup": 0,
    "patch": 0,
    "pkg": None,
    "config": 0,
    "auto-update": 0,
    "reboot": 0,
    "install-units": 0,
    "reboot-manager": 1,
    "status": 0,
    "list": 0,
    "log": 1,
    "changelog": 1,
    "diff": None,
    "rollback": 1,
    "cleanup": 0,
    "delete": None,
    "boot-menu": 0,
    "grub.cfg": 0,
    "bootloader": 0,
    "setup-boot-fs": 0,
    "setup-etc": 0,
    "sync-etc": 0,
    "health": 0,
    "boot-check": 0,
    "apply": 0,
    "boot-once": 1,
    "create-system": 1,
    "register": None,
    "migration": None,
}

# The commands whose arguments are snapshot numbers, and the words they take besides: what the
# shell completions offer there (cli/reference.py); the man page and --help show the metavars.
SNAPSHOT_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "log": (),
    "changelog": (),
    "diff": (),
    "rollback": ("last",),
    "delete": (),
    "boot-once": (),
}

# openSUSE's other names of commands (``transactional-update update``, ``package in x``):
# :func:`arrange` writes the command's own name where a command stands.  ``pkg``'s action words
# (``in``, ``rm``, ``up``, …) are its argument, not commands: :data:`commands.PKG_ACTIONS`.
ALIASES: dict[str, str] = {
    "update": "up",
    "dist-upgrade": "dup",
    "package": "pkg",
}

# What a command line with no command at all runs: openSUSE's tool runs UPDATE_METHOD then.
NO_COMMAND = "auto-update"


# Name ("-v", "--verbose", "--no-enable") -> option: the global ones, and each command's own.
GLOBAL: dict[str, Option] = {}
OWN: dict[str, dict[str, Option]] = {}
for _opt in OPTIONS:  # one pass: this runs at every start
    for _scope in _opt.commands or (None,):
        _names = GLOBAL if _scope is None else OWN.setdefault(_scope, {})
        for _name in (*_opt.names, _opt.negation) if _opt.negation else _opt.names:
            _names[_name] = _opt
del _opt, _scope, _names, _name


def for_command(command: str | None) -> list[Option]:
    """The options of *command* (None: the global options), in table order."""
    return [o for o in OPTIONS if (o.commands == () if command is None else command in o.commands)]


def defaults() -> dict[str, object]:
    """The value of each global option when it is not given, by destination."""
    return {o.dest: o.default for o in OPTIONS if o.is_global}


def _is_number(arg: str) -> bool:
    return arg.isascii() and arg.isdigit()


def _take(argv: Sequence[str], i: int, names: dict[str, Option]) -> tuple[list[str], int] | None:
    """The tokens of the option at ``argv[i]`` (normalized for -c) and how many it spans.

    None when ``argv[i]`` is not an option of *names*, or one that lacks its value.  A bundle of
    short options (``-nd``, ``-vv``) counts when every letter is a flag or count; one ending with
    ``-c`` as well (``-nc``, ``-nc 3``, ``-c3``), rewritten to separate options.
    """
    arg = argv[i]
    nxt = argv[i + 1] if i + 1 < len(argv) else None
    name, eq, _ = arg.partition("=")
    opt = names.get(name if arg.startswith("--") else arg)
    if opt is not None:
        if opt.kind is Kind.OPTIONAL_NUMBER and not eq:
            if nxt is not None and _is_number(nxt):
                return [f"--continue={nxt}"], 2
            return ["--continue=default"], 1
        if opt.takes_value and not eq:
            # Without its value it stays where it is, for click to say which option lacks one.
            return None if nxt is None else ([arg, nxt], 2)
        return [arg], 1
    if not arg.startswith("-") or arg.startswith("--") or len(arg) < 3:
        return None
    flags = ""
    for k, c in enumerate(arg[1:], 1):
        opt = names.get(f"-{c}")
        if opt is None:
            return None
        if opt.kind is Kind.OPTIONAL_NUMBER:
            before = [f"-{flags}"] if flags else []
            attached = arg[k + 1 :]
            if attached:
                return ([*before, f"--continue={attached}"], 1) if _is_number(attached) else None
            taken, span = _take(["-c", *argv[i + 1 : i + 2]], 0, names) or ([], 1)
            return [*before, *taken], span
        if opt.kind not in (Kind.FLAG, Kind.COUNT):
            return None
        flags += c
    return [arg], 1


def _leading(argv: Sequence[str]) -> tuple[list[str], int]:
    """The options before the first command (-c normalized), and the index of that command."""
    front: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--" or not arg.startswith("-") or arg == "-":
            break
        taken = _take(argv, i, GLOBAL)
        if taken is None:
            front.append(arg)
            i += 1
        else:
            front += taken[0]
            i += taken[1]
    return front, i


def leading(argv: Sequence[str]) -> list[str]:
    """The options before the first command of *argv*: all global ones once it is arranged."""
    return _leading(argv)[0]


def arrange(argv: Sequence[str]) -> list[str]:
    """*argv* with the global options of every command moved in front, as click wants them.

    The grammar, as openSUSE's getopt-based tool and most command lines have it:

    * Global options may stand before or after a command (``status --json``, ``changelog 4
      --json``, ``cleanup up -n``); they keep their order, those before the first command first.
    * ``-c``/``--continue`` takes a number only when one follows (``-c 3 run …``, ``-c run …``);
      it becomes ``--continue=N`` or ``--continue=default`` (and ``-nc`` becomes ``-n`` and that).
    * An option's value stays with its option, whatever it looks like (``--description -v``).
    * Everything after ``run`` is the command's argv and is never touched (``run sh -c 'exit
      3'`` keeps its ``-c``, ``run -- grep -v x f`` its ``-v``).
    * ``--`` ends the options: what follows is left as it is.
    * A command's own options (and unknown ones, ``--help``) move before its arguments
      (``create-system img --size 8G``): click parses a chained command's options only before
      its arguments.  Not for ``pkg`` and ``diff``, which take any number of arguments.
    * A command takes as many arguments as :data:`COMMANDS` says; the next word starts the next
      command of the chain (``rollback 3 cleanup -n``).
    * After ``pkg ACTION``, each word is one of three: a global option of this table is ours
      (``pkg install hello -n`` installs hello non-interactively; ``-n``, ``-d``, ``-c``, ``-k``,
      ``-i``, ``-q``, ``--root`` … mean what they mean before the command, even where zypper
      has an option of that name); any other word that starts with ``-`` is an option for the
      package manager, forwarded when :mod:`packages.forward` has it for the root's manager
      (``--auto-agree-with-licenses``, ``--no-recommends``, ``-y`` …) and refused with one
      line otherwise; the rest are package names (they never start with ``-``).  After ``pkg
      install --`` even ``-n`` is the package manager's, and ``-n`` is not forwarded.
    * An alias of a command (:data:`ALIASES`: ``update``, ``dist-upgrade``, ``package``) becomes
      the command's name wherever a command stands (``pkg update`` stays: it is an action).
    * No command at all is :data:`NO_COMMAND` (``transactional-update -n`` updates with
      UPDATE_METHOD, as openSUSE's tool does), unless ``--help``/``-h``/``--version`` asks
      for something else.
    * ``run`` after ``pkg ACTION NAME…`` starts the next command (``pkg install x run cmd -c``:
      ``-c`` is the command's).

    Anything not understood (unknown options, a missing value) is left where it was, for click
    to report.  Applying it twice gives the same as once.
    """
    front, i = _leading(argv)
    if i == len(argv) and not any(a in ("--help", "-h", "--version") for a in front):
        return [*front, NO_COMMAND]
    rest: list[str] = []
    while i < len(argv):  # one command of the chain
        arg = ALIASES.get(argv[i], argv[i])
        if arg == "--" or COMMANDS.get(arg) == RAW:
            rest += argv[i:]
            break
        arity = COMMANDS.get(arg, 0)
        own = OWN.get(arg, {})
        opts: list[str] = [arg]
        words: list[str] = []
        i += 1
        stopped = False
        while i < len(argv):
            arg = argv[i]
            if arg == "--":
                words += argv[i:]
                i = len(argv)
                stopped = True
                break
            if arg.startswith("-") and arg != "-":
                taken = _take(argv, i, GLOBAL)
                if taken is not None:
                    front += taken[0]
                    i += taken[1]
                    continue
                taken = _take(argv, i, own)
                if taken is not None:
                    opts += taken[0]
                    i += taken[1]
                    continue
                # Unknown: before the arguments click names it (and shows a command's --help);
                # for pkg a package name, which pkg refuses with its own message.
                (words if arity is None else opts).append(arg)
                i += 1
                continue
            if arity is not None and sum(not w.startswith("-") for w in words) >= arity:
                break  # the next command of the chain
            if opts[0] == "pkg" and arg == "run" and len(words) > 1:
                break  # pkg ACTION NAME… run COMMAND…: the command is run's (cli.commands)
            words.append(arg)
            i += 1
        rest += opts + words
        if stopped:
            break
    return front + rest
