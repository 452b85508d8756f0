"""The command line's grammar: one option table, two parsers that agree, global options anywhere.

The agreement test is generated from :data:`options.OPTIONS`: every option, before and after
every command it applies to, through click and (where it handles the command) the quick path of
:mod:`entry`.  Pure parsing: nothing runs, no root is needed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from testkit.systems import REPO
from transactional_update.cli import app, entry, options
from transactional_update.cli.options import Kind, Option, ValueType, arrange
from transactional_update.errors import ExitCode

# A valid command line of each command, after its name.
EXAMPLES: dict[str, list[str]] = {
    "run": ["true"],
    "shell": [],
    "up": [],
    "dup": [],
    "patch": [],
    "pkg": ["install", "hello"],
    "config": [],
    "auto-update": [],
    "reboot": [],
    "install-units": [],
    "reboot-manager": ["status"],
    "status": [],
    "list": [],
    "log": ["4"],
    "changelog": ["4"],
    "diff": ["1", "2"],
    "rollback": ["3"],
    "cleanup": [],
    "boot-menu": [],
    "grub.cfg": [],
    "bootloader": [],
    "setup-boot-fs": [],
    "setup-etc": [],
    "delete": ["3"],
    "sync-etc": [],
    "health": [],
    "boot-check": [],
    "apply": [],
    "boot-once": ["3"],
    "create-system": ["/tmp/img"],
    "register": [],
    "migration": [],
}
QUERIES = ("status", "list")
QUICK_TRANSACTIONS = ("run", "pkg", "up", "dup", "patch")


def _samples(opt: Option) -> Iterator[tuple[list[str], object]]:
    """Ways to give *opt* and the value click gives its destination for each."""
    if opt.kind is Kind.FLAG:
        for name in opt.names:
            yield [name], True
    elif opt.kind is Kind.COUNT:
        for name in opt.names:
            yield [name], 1
            yield [name, name], 2
        yield [f"-{opt.names[0][1] * 2}"], 2
    elif opt.kind is Kind.SWITCH:
        yield [opt.names[0]], True
        yield [str(opt.negation)], False
    elif opt.kind is Kind.OPTIONAL_NUMBER:
        for name in opt.names:
            yield [name], "default"
            yield [name, "3"], "3"
            yield [f"{name}=3"] if name.startswith("--") else [f"{name}3"], "3"
    else:
        text, value = {
            ValueType.TEXT: ("a 'b' -v", "a 'b' -v"),
            ValueType.PATH: ("/mnt", Path("/mnt")),
            ValueType.FILE: (__file__, Path(__file__)),
            ValueType.SECONDS: ("5", 5.0),
        }[opt.value_type]
        expected = (value,) if opt.multiple else value
        for name in opt.names:
            yield [name, text], expected
            yield [f"{name}={text}"], expected


def _cases() -> Iterator[Any]:
    for opt in options.OPTIONS:
        for tokens, expected in _samples(opt):
            for command in opt.commands or tuple(options.COMMANDS):
                example = [command, *EXAMPLES[command]]
                positions = {"after": [*example, *tokens]}
                if opt.is_global:
                    positions["before"] = [*tokens, *example]
                # "-c 4": a number that follows is -c's, so "changelog -c 4" is not "changelog 4".
                bare_c = opt.kind is Kind.OPTIONAL_NUMBER and tokens[-1] in opt.names
                number_follows = EXAMPLES[command][:1] != [] and EXAMPLES[command][0].isdigit()
                if (EXAMPLES[command] or not opt.is_global) and not (bare_c and number_follows):
                    positions["inside"] = [command, *tokens, *EXAMPLES[command]]
                for where, argv in positions.items():
                    yield pytest.param(opt, argv, expected, id=f"{where}:{' '.join(argv)}")


def _click_defaults() -> dict[str, object]:
    out = options.defaults()
    out["root"] = Path(str(out["root"]))
    return out


def _click_args(command: str, params: dict[str, Any]) -> list[str]:
    """The arguments the quick path returns, from click's parameters of *command*."""
    if command == "run":
        return list(params["command"])
    if command == "pkg":
        return [params["action"], *params["names"]]
    return []


def _quick(argv: list[str]) -> tuple[dict[str, Any], str, list[str]] | None:
    """What the quick path makes of *argv*, in the shape of :func:`app.parse` (None: click's)."""
    query = entry.parse_query(argv)
    transaction = entry.parse_transaction(argv)
    assert query is None or transaction is None, "one quick path only"
    if query is not None:
        root, as_json, command = query
        return {**_click_defaults(), "root": root, "json": as_json}, command, []
    return transaction


def _quick_handles(opt: Option, command: str, argv: list[str]) -> bool:
    if command in QUERIES:
        return opt.dest in ("root", "json")
    if argv[0] == "run":  # then it is the command's argv; an option of run itself is click's
        return not argv[1].startswith("-")
    return command in QUICK_TRANSACTIONS and opt.is_global and opt.kind is not Kind.OPTIONAL_NUMBER


def check_agreement(opt: Option, argv: list[str], expected: object) -> None:
    """Click parses *argv* as expected, and the quick path the same or leaves it to click."""
    command = next(a for a in argv if a in options.COMMANDS)
    globals_, chain = app.parse(argv)
    assert [name for name, _ in chain] == [command], argv
    params = chain[0][1]
    want = _click_defaults()
    if argv[0] == "run":
        # After run, our options are the command's: untouched.
        assert params["command"] == tuple(argv[1:]), argv
    elif opt.is_global:
        want[opt.dest] = expected
    else:
        assert params[opt.dest] == expected, argv
    assert globals_ == want, argv

    quick = _quick(argv)
    if not _quick_handles(opt, command, argv):
        assert quick is None, f"{argv}: the quick path took what it does not handle"
        return
    assert quick is not None, f"{argv}: the quick path left it to click"
    assert quick == (globals_, command, _click_args(command, params)), argv


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(("opt", "argv", "expected"), list(_cases()))
def test_every_option_everywhere_parses_alike_in_both_parsers(
    opt: Option, argv: list[str], expected: object
) -> None:
    check_agreement(opt, argv, expected)


def test_the_agreement_test_fails_when_the_quick_path_misses_an_option(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    refresh = options.GLOBAL["--refresh"]
    monkeypatch.setattr(
        options, "GLOBAL", {k: v for k, v in options.GLOBAL.items() if v is not refresh}
    )
    with pytest.raises(AssertionError, match="left it to click"):
        check_agreement(refresh, ["--refresh", "up"], True)


def test_the_agreement_test_fails_when_click_misses_an_option(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frob = Option(("--frob",), "frob", Kind.FLAG, "Not in click.", default=False)
    monkeypatch.setattr(options, "OPTIONS", (*options.OPTIONS, frob))
    monkeypatch.setattr(options, "GLOBAL", {**options.GLOBAL, "--frob": frob})
    with pytest.raises(click.NoSuchOption):
        check_agreement(frob, ["--frob", "up"], True)


def test_the_table_matches_the_click_commands() -> None:
    assert set(EXAMPLES) == set(options.COMMANDS) == set(app.cli.commands)
    for name, command in app.cli.commands.items():
        arguments = [p for p in command.params if isinstance(p, click.Argument)]
        arity = options.COMMANDS[name]
        if arity is None or arity == options.RAW:
            assert arguments and arguments[-1].nargs == -1, name
        else:
            assert sum(a.nargs for a in arguments) == arity, name
        own = {p.name for p in command.params if isinstance(p, click.Option)} - {"help"}
        assert own == {o.dest for o in options.for_command(name)}, name
    assert {p.name for p in app.cli.params} - {"help", "version"} == {
        o.dest for o in options.for_command(None)
    }


def test_no_name_means_two_options() -> None:
    for command in (None, *options.COMMANDS):
        names = [
            n
            for o in options.OPTIONS
            if o.is_global or command in o.commands
            for n in (*o.names, *([o.negation] if o.negation else []))
        ]
        assert len(names) == len(set(names)), command
    for opt in options.OPTIONS:
        assert set(opt.commands) <= set(options.COMMANDS), opt
        assert opt.kind is not Kind.SWITCH or opt.negation, opt


@pytest.mark.parametrize(
    ("argv", "arranged"),
    [
        (["-v", "status", "--json"], ["-v", "--json", "status"]),
        (["list", "-v"], ["-v", "list"]),
        (["changelog", "4", "--json"], ["--json", "changelog", "4"]),
        (["-v", "changelog", "4", "--json"], ["-v", "--json", "changelog", "4"]),
        (["diff", "1", "2", "--json"], ["--json", "diff", "1", "2"]),
        (["cleanup", "up", "reboot", "-nd"], ["-nd", "cleanup", "up", "reboot"]),
        (["rollback", "3", "cleanup", "-q"], ["-q", "rollback", "3", "cleanup"]),
        # run's argv is the command's, "--" included, and so is anything after "--".
        (["run", "sh", "-c", "exit 3"], ["run", "sh", "-c", "exit 3"]),
        (["-c", "2", "run", "sh", "-c", "exit 3"], ["--continue=2", "run", "sh", "-c", "exit 3"]),
        (["run", "--", "grep", "-v", "x", "f"], ["run", "--", "grep", "-v", "x", "f"]),
        (["cleanup", "run", "sh", "-c", "x"], ["cleanup", "run", "sh", "-c", "x"]),
        (["cleanup", "--", "-v"], ["cleanup", "--", "-v"]),
        # -c takes a number only when one follows, wherever it stands.
        (["up", "-c"], ["--continue=default", "up"]),
        (["up", "-c", "3"], ["--continue=3", "up"]),
        (["rollback", "-c", "last"], ["--continue=default", "rollback", "last"]),
        (["up", "-nc", "3"], ["-n", "--continue=3", "up"]),
        (["up", "-c3"], ["--continue=3", "up"]),
        # A value stays with its option.
        (["--description", "-c", "run", "true"], ["--description", "-c", "run", "true"]),
        (["up", "--description", "-v"], ["--description", "-v", "up"]),
        (["install-units", "--exec", "-v"], ["install-units", "--exec", "-v"]),
        (["status", "--root"], ["status", "--root"]),  # no value: click names it
        # A command's options go before its arguments; unknown ones too, for click to name.
        (
            ["create-system", "img", "--size", "8G", "-v"],
            ["-v", "create-system", "--size", "8G", "img"],
        ),
        (["reboot-manager", "status", "--help"], ["reboot-manager", "--help", "status"]),
        # pkg: global options are ours, anything else that starts with - a refused package name.
        (["pkg", "install", "hello", "-n"], ["-n", "pkg", "install", "hello"]),
        (["pkg", "install", "--no-recommends", "x"], ["pkg", "install", "--no-recommends", "x"]),
        (["pkg", "install", "--", "-n"], ["pkg", "install", "--", "-n"]),
    ],
)
def test_arrange(argv: list[str], arranged: list[str]) -> None:
    assert arrange(argv) == arranged
    assert arrange(arranged) == arranged


@pytest.mark.parametrize(
    "argv",
    [
        ["--frobnicate", "status"],
        ["status", "--frobnicate"],
        ["--frobnicate", "up"],
        ["up", "--frobnicate"],
        ["changelog", "4", "--frobnicate"],
        ["-vx", "run", "true"],
        ["list", "-vx"],
    ],
)
@pytest.mark.parametrize("main", [entry.main, app.main], ids=["entry", "click"])
def test_unknown_options_are_one_error_and_one_hint(
    main: Any, argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["transactional-update", *argv])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == ExitCode.USAGE
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 2, lines
    assert re.fullmatch(r"error: No such option '-[-a-z]+'.*", lines[0]), lines
    assert lines[1].startswith("hint: see: transactional-update"), lines


def test_readme_lists_the_exit_codes() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Exit codes\n", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.*) \|$", section, re.MULTILINE)
    assert rows == [(str(int(code)), code.meaning) for code in ExitCode]


def test_help_lists_the_exit_codes() -> None:
    for code in ExitCode:
        assert f"  {int(code):<3}  {code.meaning.replace('`', '')}" in app.exit_codes_epilog()


def test_quick_paths_import_neither_click_nor_slow_modules() -> None:
    """The quick paths' parsing (and status on a missing root) stays free of click, typing and
    dataclasses, whose imports cost more than the rest of a status."""
    code = (
        "import sys\n"
        "from transactional_update.cli import entry\n"
        "assert entry.parse_transaction(['up', '-n', '--json']) is not None\n"
        "assert entry.parse_transaction(['pkg', 'install', 'hello', '-vv']) is not None\n"
        "sys.argv = ['tu', 'status', '--json', '--root', '/nonexistent']\n"
        "try:\n"
        "    entry.main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "loaded = [m for m in ('click', 'typing', 'dataclasses') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stderr


def test_the_status_query_options_are_the_tables() -> None:
    """The status/list quick path spells its two options itself; they must be the table's."""
    for name, dest in entry.QUERY_OPTIONS.items():
        opt = options.GLOBAL[name]
        assert (opt.dest, opt.is_global) == (dest, True), name
    assert entry.parse_query(["status", "--root", "/x", "--json"]) == (Path("/x"), True, "status")
    assert entry.parse_query(["--json", "list", "-v"]) is None  # -v: the full command line
