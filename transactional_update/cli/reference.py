"""The command line as data, for the man page and the shell completions.

Everything comes from what the executable itself uses: the options from the table in
:mod:`.options` (its global options, each command's own, their kinds and value types), the
commands with their help texts and arguments from the click app in :mod:`.app` (built from that
table), click's own ``--help`` and ``--version`` from click.  So the man page
(:mod:`.manpage`) and the completions (:mod:`.completion`) cannot drift from the command line:
a new option or command in the table appears in them when they are regenerated
(``python -m transactional_update.cli.generate``, :mod:`.generate`), and a test fails until
they are.

Never imported at start-up: only the generators and the tests use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import click

from transactional_update.cli import options as table

PROG = "transactional-update"
REGENERATE = "python -m transactional_update.cli.generate"

# How a word is completed: from a list of words, the system's snapshot numbers, file names,
# directory names, command names ($PATH), or not at all.
FILE, DIR, SNAPSHOT, EXECUTABLE, NONE = "file", "dir", "snapshot", "executable", "none"


@dataclass(frozen=True)
class Opt:
    """One option as shown and completed: all its names (a switch's negation too)."""

    names: tuple[str, ...]
    help: str
    metavar: str | None  # None: takes no value
    hint: str  # how its value is completed (FILE, DIR, SNAPSHOT, NONE)
    default: str | None  # shown as "default: ..."
    repeatable: bool  # -vv, --include A --include B
    optional_value: bool  # -c [N]: a number only when one follows

    @property
    def takes_value(self) -> bool:
        """The next word is this option's value."""
        return self.metavar is not None and not self.optional_value


@dataclass(frozen=True)
class Slot:
    """One positional argument of a command."""

    metavar: str
    required: bool
    many: bool  # any number of them (nargs=-1)
    words: tuple[str, ...]  # fixed words it takes (choices, "last")
    hint: str  # how else it is completed


@dataclass(frozen=True)
class Command:
    name: str
    aliases: tuple[str, ...]
    help: str  # paragraphs separated by blank lines
    short: str  # the first sentence, as --help lists it
    usage: str  # the arguments, as click's usage line shows them
    arity: int | None  # as options.COMMANDS: None any number, options.RAW the rest of the line
    slots: tuple[Slot, ...]
    options: tuple[Opt, ...]


def _metavar(opt: table.Option) -> str | None:
    if opt.kind is table.Kind.OPTIONAL_NUMBER:
        return opt.metavar or "N"
    if opt.kind is not table.Kind.VALUE:
        return None
    return opt.metavar or opt.value_type.value.upper()


def _hint(opt: table.Option) -> str:
    if opt.kind is table.Kind.OPTIONAL_NUMBER:
        return SNAPSHOT
    if opt.kind is not table.Kind.VALUE:
        return NONE
    if opt.metavar == "DIR":
        return DIR
    if opt.value_type in (table.ValueType.PATH, table.ValueType.FILE) or opt.metavar == "PATH":
        return FILE
    return NONE


def from_table(opt: table.Option) -> Opt:
    names = (*opt.names, opt.negation) if opt.negation else opt.names
    metavar = _metavar(opt)
    return Opt(
        names=names,
        help=opt.help,
        metavar=metavar.strip("[]") if metavar else None,
        hint=_hint(opt),
        default=str(opt.default) if opt.show_default else None,
        repeatable=opt.kind is table.Kind.COUNT or opt.multiple,
        optional_value=opt.kind is table.Kind.OPTIONAL_NUMBER,
    )


def from_click(param: click.Option) -> Opt:
    """An option click adds itself (``--help``, ``--version``)."""
    return Opt(
        names=(*param.opts, *param.secondary_opts),
        help=param.help or "",
        metavar=None,
        hint=NONE,
        default=None,
        repeatable=False,
        optional_value=False,
    )


def root_context() -> click.Context:
    from transactional_update.cli.app import cli

    return click.Context(cli, info_name=PROG, **cli.context_settings)


def _click_only(command: click.Command, ctx: click.Context) -> list[Opt]:
    """The options click adds to *command* that the table does not hold."""
    known = {name for opt in table.OPTIONS for name in opt.names}
    return [
        from_click(p)
        for p in command.get_params(ctx)
        if isinstance(p, click.Option) and not known.intersection(p.opts)
    ]


def global_options() -> tuple[Opt, ...]:
    ctx = root_context()
    return (
        *(from_table(o) for o in table.for_command(None)),
        *_click_only(ctx.command, ctx),
    )


def _paragraphs(text: str) -> str:
    """Click's help text without its markers, each paragraph on one line."""
    paras = []
    for block in text.split("\n\n"):
        lines = [line.strip() for line in block.splitlines() if line.strip() != "\b"]
        if lines:
            paras.append(" ".join(line for line in lines if line))
    return "\n\n".join(paras)


def _slot(name: str, param: click.Argument) -> Slot:
    words: tuple[str, ...] = ()
    if isinstance(param.type, click.Choice):
        words = tuple(str(c) for c in param.type.choices)
    hint = NONE
    if table.COMMANDS.get(name) == table.RAW:
        hint = EXECUTABLE
    elif name in table.SNAPSHOT_ARGUMENTS:
        hint = SNAPSHOT
        words += table.SNAPSHOT_ARGUMENTS[name]
    elif isinstance(param.type, click.Path):
        hint = FILE
    return Slot(
        metavar=param.metavar or (param.name or "ARG").upper(),
        required=param.required,
        many=param.nargs == -1,
        words=words,
        hint=hint,
    )


def commands() -> tuple[Command, ...]:
    """Every command in the order of :data:`options.COMMANDS`, aliases (names click resolves to
    the same command, and openSUSE's other names in :data:`options.ALIASES`) with the first.
    Hidden commands (openSUSE's ``register``, refused here) are left out."""
    ctx = root_context()
    group = ctx.command
    assert isinstance(group, click.Group)
    names = [*table.COMMANDS, *(n for n in group.list_commands(ctx) if n not in table.COMMANDS)]
    resolved: dict[int, tuple[click.Command, list[str]]] = {}
    for name in names:
        cmd = group.get_command(ctx, name)
        assert cmd is not None, f"{name} is in options.COMMANDS but click has no such command"
        resolved.setdefault(id(cmd), (cmd, []))[1].append(name)
    out = []
    for cmd, found in resolved.values():
        if cmd.hidden:
            continue
        primary = cmd.name if cmd.name in found else found[0]
        assert primary is not None
        sub = click.Context(cmd, info_name=primary, parent=ctx, **cmd.context_settings)
        usage = " ".join(p for p in cmd.collect_usage_pieces(sub) if p != "[OPTIONS]")
        own = [from_table(o) for o in table.for_command(primary)]
        own += [o for o in _click_only(cmd, sub) if o.names != ("-h", "--help")]
        out.append(
            Command(
                name=primary,
                aliases=(
                    *(n for n in found if n != primary),
                    *(a for a, target in table.ALIASES.items() if target == primary),
                ),
                help=_paragraphs(cmd.help or ""),
                short=cmd.get_short_help_str(limit=1000),
                usage=usage,
                arity=table.COMMANDS.get(primary, 0),
                slots=tuple(_slot(primary, p) for p in cmd.params if isinstance(p, click.Argument)),
                options=tuple(own),
            )
        )
    return tuple(out)


def command_names() -> list[str]:
    """Every name a command answers to, aliases included."""
    return [n for c in commands() for n in (c.name, *c.aliases)]
