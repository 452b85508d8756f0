"""The man page ``transactional-update(8)``, generated as roff (man(7) macros).

The commands, options, configuration keys, exit codes and files come from the tables the tool
itself uses (see :mod:`.reference`); only the prose around them is written here.  Shipped as
``man/transactional-update.8`` (``python -m transactional_update.cli.generate`` rewrites it;
a test fails when it differs from :func:`render`).
"""

from __future__ import annotations

import re

from transactional_update.cli import reference
from transactional_update.cli.reference import Command, Opt

SEE_ALSO = (("snapper", 8), ("btrfs", 8), ("grub-mkconfig", 8))


def esc(text: str) -> str:
    """*text* for a roff text line: backslashes and hyphens escaped (so that options are typed
    as minus signs), other than ASCII as ``\\[uXXXX]``, ```code``` in bold."""
    out = []
    for ch in text.replace("\\", "\\e").replace("-", "\\-"):
        out.append(ch if ch.isascii() else f"\\[u{ord(ch):04X}]")
    return re.sub(r"`([^`]*)`", r"\\fB\1\\fR", "".join(out))


def text(paragraph: str) -> str:
    """A text line; a leading ``.`` or ``'`` would make it a request."""
    line = esc(paragraph)
    return f"\\&{line}" if line.startswith((".", "'")) else line


def bold(word: str) -> str:
    return f"\\fB{esc(word)}\\fR"


def metavar(usage: str) -> str:
    """An argument's usage (``[N|last]``, ``[NAMES]...``): names in italics, brackets roman."""
    return re.sub(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", lambda m: f"\\fI{esc(m.group(0))}\\fR", usage)


def option_header(opt: Opt) -> str:
    names = ", ".join(bold(n) for n in opt.names)
    if opt.metavar is None:
        return names
    value = f"\\fI{esc(opt.metavar)}\\fR"
    return f"{names} [{value}]" if opt.optional_value else f"{names} {value}"


def option_body(opt: Opt) -> str:
    body = opt.help.rstrip(".") + "."
    if opt.optional_value:
        body += " The number is taken only when one follows."
    if opt.default is not None:
        body += f" Default: {opt.default}."
    if opt.repeatable:
        body += " May be given more than once."
    return text(body)


def options_block(opts: tuple[Opt, ...]) -> list[str]:
    lines = []
    for opt in opts:
        lines += [".TP", option_header(opt), option_body(opt)]
    return lines


def _paragraphs(help_text: str) -> list[str]:
    lines: list[str] = []
    for i, para in enumerate(help_text.split("\n\n")):
        if i:
            lines.append(".IP")
        lines.append(text(para))
    return lines


def command_block(cmd: Command) -> list[str]:
    from transactional_update.cli.commands import PKG_ACTIONS

    head = bold(cmd.name) + (f" {metavar(cmd.usage)}" if cmd.usage else "")
    lines = [".TP", head, *_paragraphs(cmd.help)]
    notes = []
    if cmd.aliases:
        notes.append("Also called " + ", ".join(bold(a) for a in cmd.aliases) + ".")
    for slot in cmd.slots:
        if cmd.name == "pkg" and set(slot.words) == set(PKG_ACTIONS):
            by_action: dict[str, list[str]] = {}
            for word, action in PKG_ACTIONS.items():
                by_action.setdefault(action, []).append(word)
            actions = [
                bold(action) + "".join(f" ({bold(w)})" for w in words if w != action)
                for action, words in by_action.items()
            ]
            notes.append("The action: " + ", ".join(actions) + ".")
        elif set(slot.words) - set(re.findall(r"[\w.-]+", cmd.usage)):
            words = ", ".join(bold(w) for w in slot.words)
            notes.append(f"\\fI{esc(slot.metavar)}\\fR is one of {words}.")
    if notes:
        lines += [".IP", " ".join(notes)]
    if cmd.options:
        lines += [".RS", *options_block(cmd.options), ".RE"]
    return lines


def _files_section() -> list[str]:
    from transactional_update import log
    from transactional_update.config import conffile
    from transactional_update.packages import refresh
    from transactional_update.reboot import manager
    from transactional_update.record import state, summary

    lines = []
    for rel in conffile.CONFIG_FILES:
        path = f"/{rel}/*.conf" if rel.endswith(".d") else f"/{rel}"
        lines += [".TP", f"\\fI{esc(path)}\\fR", "Configuration (see \\fBCONFIGURATION\\fR)."]
    described = (
        (
            f"/{state.STATE_FILE}",
            "The state file: the snapshots known to have run this system "
            "(LAST_WORKING_SNAPSHOTS, for `rollback last`), in openSUSE's format.",
        ),
        (
            f"/{summary.STORE}/N.json",
            "The changelog of snapshot N: commands with exit codes, who ran them, when, the "
            "packages and files changed. Readable by root only; pruned with the snapshot.",
        ),
        (
            f"/{log.LOG_FILE}",
            "The log of every run, readable by root only.",
        ),
        (
            f"/{refresh.STAMP_DIR}/refreshed-MANAGER",
            "When the repository metadata was last refreshed, and from which configuration "
            "(see REFRESH_DELAY).",
        ),
        (f"/{manager.STATE_FILE}", "The reboot manager's planned reboot."),
    )
    for path, what in described:
        lines += [".TP", f"\\fI{esc(path)}\\fR", text(what)]
    lines.append(".PP")
    lines.append(
        text(
            "All paths are inside the managed root: under --root PATH when it is given. "
            "The files in /var are shared by all snapshots, so a rollback keeps them."
        )
    )
    return lines


def _configuration() -> list[str]:
    from transactional_update.config import conffile, settings

    lines = [
        text(
            "Shell-style KEY=VALUE lines, read from the managed root in this order, later files "
            "overriding earlier ones key by key:"
        ),
        ".RS",
        ".nf",
        *(
            text("/" + rel + ("/*.conf" if rel.endswith(".d") else ""))
            for rel in conffile.CONFIG_FILES
        ),
        ".fi",
        ".RE",
        ".PP",
        text("`transactional-update config` shows the effective value of each key and its source."),
    ]
    defaults = settings.Config()
    for key in settings.KEYS:
        value = key.show(settings.value_of(defaults, key))
        shown = f"\\fI{esc(value)}\\fR" if value else "empty"
        lines += [".TP", bold(key.name), f"{text(key.allowed)}. Default: {shown}."]
    return lines


def render() -> str:
    from transactional_update.cli.app import cli
    from transactional_update.errors import ExitCode

    prog = reference.PROG
    lines = [
        f'.\\" Generated from the option table by `{reference.REGENERATE}`; do not edit.',
        f'.TH {esc(prog.upper())} 8 "" "{esc(prog)}" "System Administration"',
        ".SH NAME",
        f"{esc(prog)} \\- atomic, reversible changes to a btrfs root in snapper snapshots",
        ".SH SYNOPSIS",
        f".B {esc(prog)}",
        "[\\fIOPTION\\fR]... \\fICOMMAND\\fR [\\fIARGUMENT\\fR]... "
        "[\\fICOMMAND\\fR [\\fIARGUMENT\\fR]...]...",
        ".br",
        f".B {esc(prog)}",
        "[\\fIOPTION\\fR]... \\fBrun\\fR [\\fB\\-\\-\\fR] \\fICOMMAND\\fR [\\fIARGUMENT\\fR]...",
        ".SH DESCRIPTION",
        text(reference._paragraphs(cli.help or "")),
        ".PP",
        text(
            "Every change forks the booted root snapshot, runs in a chroot of the fork, and only "
            "when it succeeded becomes the default subvolume for the next boot. The snapshots "
            "stay in snapper's layout, so `snapper list` shows them too. A failed change leaves "
            "the default as it was."
        ),
        ".PP",
        text(
            "Commands chain and run in the order given (`cleanup up reboot`); the first failure "
            "stops the chain. Options may stand before or after the commands. Everything after "
            "`run` is the command it runs, `--` ends the options, and `-c` takes a number only "
            "when one follows. Each command has its own --help."
        ),
        ".SH COMMANDS",
    ]
    for cmd in reference.commands():
        lines += command_block(cmd)
    lines += [
        ".SH OPTIONS",
        text("These apply to every command and may stand before or after the commands."),
        *options_block(reference.global_options()),
        ".SH CONFIGURATION",
        *_configuration(),
        ".SH EXIT STATUS",
    ]
    for code in ExitCode:
        lines += [".TP", f".B {int(code)}", text(code.meaning)]
    lines += [
        ".PP",
        text(
            "Errors are one line plus a hint (error: ..., hint: ...); tracebacks only with --debug."
        ),
        ".SH FILES",
        *_files_section(),
        ".SH SEE ALSO",
    ]
    refs = [f".BR {esc(name)} ({section})" for name, section in SEE_ALSO]
    lines += [ref + ("," if i < len(refs) - 1 else "") for i, ref in enumerate(refs)]
    return "\n".join(lines) + "\n"
