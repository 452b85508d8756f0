"""The man page transactional-update(8): generated from the option table, shipped as generated,
valid roff, and listing what ``--help`` lists.

The shipped completions are held to their generators here too (one drift test for every
generated file); their behaviour is tested in ``test_completion_unit.py``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib

import pytest

from testkit.systems import REPO
from transactional_update.cli import app, generate, manpage, reference
from transactional_update.cli import options as table
from transactional_update.config import conffile, settings
from transactional_update.errors import ExitCode


@pytest.fixture(scope="module")
def page() -> str:
    return manpage.render()


def _plain(roff: str) -> str:
    """Roff text without font changes and escapes, as a reader sees its words."""
    out = re.sub(r"\\f[BIRP]", "", roff).replace("\\-", "-").replace("\\&", "").replace("\\e", "\\")
    return re.sub(r"\\\[u([0-9A-F]{4})\]", lambda m: chr(int(m.group(1), 16)), out)


def _section(page: str, name: str) -> list[str]:
    return page.split(f"\n.SH {name}\n", 1)[1].split("\n.SH ", 1)[0].splitlines()


def _entries(lines: list[str]) -> list[tuple[int, str]]:
    """``(depth, header)`` of every ``.TP`` entry: depth 1 inside ``.RS``/``.RE``."""
    out, depth = [], 0
    for i, line in enumerate(lines):
        if line == ".RS":
            depth += 1
        elif line == ".RE":
            depth -= 1
        elif line == ".TP":
            out.append((depth, lines[i + 1]))
    return out


def _bold_words(header: str) -> list[str]:
    return [_plain(w) for w in re.findall(r"\\fB(.*?)\\fR", header)]


def man_options(page: str) -> tuple[set[str], dict[str, set[str]], list[str]]:
    """The global options, each command's own options, and the commands (in order), as the
    man page lists them."""
    own: dict[str, set[str]] = {}
    commands: list[str] = []
    for depth, header in _entries(_section(page, "COMMANDS")):
        words = _bold_words(header)
        if depth == 0:
            commands.append(words[0])
            own[words[0]] = set()
        else:
            own[commands[-1]] |= set(words)
    global_ = {w for _, h in _entries(_section(page, "OPTIONS")) for w in _bold_words(h)}
    return global_, own, commands


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    try:
        app.main([*argv, "--help"])
    except SystemExit as exited:  # click's standalone_mode=False returns after --help
        assert exited.code in (0, None)
    return capsys.readouterr().out


def _help_options(text: str) -> set[str]:
    block = text.split("\nOptions:\n", 1)[1].split("\n\n", 1)[0]
    names: set[str] = set()
    for line in block.splitlines():
        m = re.match(r"  (-[^ ,/]+(?:(?:, | ?/ ?)-[^ ,/]+)*)", line)  # -k, --keep; --a / --no-a
        if m:
            names |= set(re.split(r", | ?/ ?", m.group(1)))
    return names


def _help_commands(text: str) -> set[str]:
    block = text.split("\nCommands:\n", 1)[1].split("\n\n", 1)[0]
    return {line.split()[0] for line in block.splitlines() if line.startswith("  ")}


def test_the_shipped_files_are_what_the_generators_make() -> None:
    stale = generate.stale(REPO)
    assert stale == [], (
        f"{', '.join(stale)} differ from the option table; regenerate: "
        f"cd {REPO} && {sys.executable} -m transactional_update.cli.generate"
    )


def test_the_shipped_files_are_installed_with_the_tool() -> None:
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    files = data["tool"]["setuptools"]["data-files"]
    assert files["share/man/man8"] == ["man/transactional-update.8"]
    assert files["share/bash-completion/completions"] == ["completions/bash/transactional-update"]
    assert files["share/zsh/vendor-completions"] == ["completions/zsh/_transactional-update"]
    assert {f for v in files.values() for f in v} >= set(generate.SHIPPED)


def test_help_and_man_page_list_the_same_commands_and_options(
    page: str, capsys: pytest.CaptureFixture[str]
) -> None:
    global_, own, commands = man_options(page)
    top = _help([], capsys)
    assert _help_options(top) == global_
    listed = _help_commands(top)
    assert listed <= set(reference.command_names())
    assert set(commands) == {c.name for c in reference.commands()}
    for name in commands:
        assert _help_options(_help([name], capsys)) - {"-h", "--help"} == own[name], name
    # What the table holds, the page shows: every option name and every command.
    for opt in table.OPTIONS:
        names = {*opt.names, *([opt.negation] if opt.negation else [])}
        shown = global_ if opt.is_global else set().union(*(own[c] for c in opt.commands))
        assert names <= shown, opt
    # openSUSE's register and migration are refused (hidden in --help, absent from the page).
    refused = {"register", "migration"}
    assert set(table.COMMANDS) - refused <= set(reference.command_names())
    assert not refused & set(reference.command_names())
    assert set(table.ALIASES) <= set(reference.command_names())


def test_the_man_page_names_every_config_key_exit_code_and_file(page: str) -> None:
    config = [_bold_words(h)[0] for _, h in _entries(_section(page, "CONFIGURATION"))]
    assert config == [k.name for k in settings.KEYS]
    codes = [_plain(h).removeprefix(".B ") for _, h in _entries(_section(page, "EXIT STATUS"))]
    assert codes == [str(int(c)) for c in ExitCode]
    plain = _plain(page)
    for code in ExitCode:
        assert _plain(manpage.text(code.meaning)) in plain
    files = "\n".join(_section(page, "FILES"))
    for rel in conffile.CONFIG_FILES:
        assert manpage.esc(f"/{rel}") in files
    for path in (
        "/var/lib/misc/transactional-update.state",
        "/var/lib/transactional-update/changelog/N.json",
        "/var/log/transactional-update.log",
    ):
        assert manpage.esc(path) in files
    see_also = _plain("\n".join(_section(page, "SEE ALSO")))
    for ref in ("snapper (8)", "btrfs (8)", "grub-mkconfig (8)"):
        assert ref in see_also


def test_defaults_and_allowed_values_of_the_keys_are_shown(page: str) -> None:
    text = _plain("\n".join(_section(page, "CONFIGURATION")))
    assert "UPDATE_METHOD\nup, dup, patch. Default: up." in text
    assert "REFRESH_DELAY\na duration (10m, 1h, 90s); 0: always refresh. Default: 10m." in text
    assert "PACKAGE_MANAGER\napt, zypper, dnf; empty: detect. Default: empty." in text


def test_escaping() -> None:
    assert manpage.text(".hidden request") == "\\&.hidden request"
    assert manpage.text("'quote") == "\\&'quote"
    assert manpage.esc("a\\b --root `x` \u2192") == "a\\eb \\-\\-root \\fBx\\fR \\[u2192]"


def test_start_up_never_imports_the_generators() -> None:
    code = (
        "import sys\n"
        "from transactional_update.cli import app, entry\n"
        "gen = ('.manpage', '.completion', '.reference', '.generate')\n"
        "bad = [m for m in sys.modules if m.endswith(gen)]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(
    shutil.which("groff") is None, reason="needs groff (apt-get install groff-base)"
)
def test_groff_renders_the_man_page_without_warnings() -> None:
    r = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", str(REPO / "man/transactional-update.8")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (r.returncode, r.stderr) == (0, "")
    out = subprocess.run(
        ["groff", "-man", "-Tutf8", "-P-cbou", str(REPO / "man/transactional-update.8")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for heading in ("NAME", "SYNOPSIS", "COMMANDS", "OPTIONS", "EXIT STATUS", "FILES"):
        assert f"\n{heading}\n" in out
    assert "--drop-if-no-change" in out  # typed with minus signs, copied as such


@pytest.mark.skipif(shutil.which("man") is None, reason="needs man-db (apt-get install man-db)")
def test_man_reads_the_shipped_page() -> None:
    r = subprocess.run(
        ["man", "--warnings", "-l", "-Tutf8", str(REPO / "man/transactional-update.8")],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "MANPAGER": "cat", "LANG": "C.UTF-8"},
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert "TRANSACTIONAL-UPDATE(8)" in r.stdout
