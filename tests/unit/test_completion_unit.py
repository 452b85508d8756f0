"""Shell completion: the shipped bash and zsh scripts, run in real shells.

bash: the script is sourced, COMP_WORDS/COMP_CWORD set as readline sets them, the function called,
COMPREPLY read.  zsh: the script is checked with ``zsh -n`` and its function run with stand-ins
for the completion system's builtins (``compadd``, ``_describe``, ``_files``, ``_normal``), which
print what would be offered.  Snapshot numbers come from a fake ``transactional-update`` on PATH
that prints ``list --json`` as :func:`status.list_json` makes it, and records its arguments.
(Drift between the scripts and the option table: ``test_manpage_unit.py``.)
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from testkit.systems import REPO
from transactional_update.cli import completion, reference
from transactional_update.cli import options as table
from transactional_update.cli.commands import PKG_ACTIONS
from transactional_update.cli.status import dump_json, list_json
from transactional_update.snapshots.snapinfo import Snapshot, SnapshotType

BASH = REPO / "completions/bash/transactional-update"
ZSH = REPO / "completions/zsh/_transactional-update"
NUMBERS = ["1", "4", "12"]


def _list_json() -> str:
    when = datetime(2024, 5, 1, tzinfo=UTC)
    snaps = [
        Snapshot(int(n), SnapshotType.SINGLE, None, when, "root", f"snap {n}", "number", {})
        for n in NUMBERS
    ]
    # userdata and pre_number hold numbers too, deeper or under another key: not snapshots.
    snaps[1] = Snapshot(4, SnapshotType.POST, 1, when, "root", "x", "", {"number": "99"})
    return dump_json(list_json(snaps, 1, 12))


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "list.json").write_text(_list_json() + "\n")
    tool = bin_dir / "transactional-update"
    tool.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/calls\ncat {tmp_path}/list.json\n')
    tool.chmod(0o755)
    return bin_dir


def _calls(fake_bin: Path) -> list[str]:
    path = fake_bin.parent / "calls"
    return path.read_text().splitlines() if path.exists() else []


def bash_complete(line: str, fake_bin: Path, cwd: Path | None = None) -> list[str]:
    """What bash offers for the last word of *line* (``""`` after a trailing space)."""
    words = shlex.split(line) + ([""] if line.endswith(" ") else [])
    script = (
        f"source {shlex.quote(str(BASH))}\n"
        f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        "_transactional_update\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    r = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        env={"PATH": f"{fake_bin}:/usr/bin:/bin"},
    )
    assert r.returncode == 0 and r.stderr == "", r.stderr
    return [w for w in r.stdout.splitlines() if w]


def test_list_json_has_the_shape_the_scripts_read() -> None:
    """Each snapshot's "number" at an indent of four: what the scripts' sed program takes."""
    r = subprocess.run(
        ["sed", "-n", completion.NUMBERS_SED],
        input=_list_json(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert r.stdout.split() == NUMBERS
    assert [s["number"] for s in json.loads(_list_json())] == [int(n) for n in NUMBERS]


def test_bash_commands_after_the_program(fake_bin: Path) -> None:
    assert bash_complete("transactional-update ", fake_bin) == reference.command_names()
    assert bash_complete("transactional-update ro", fake_bin) == ["rollback"]
    assert _calls(fake_bin) == []  # no snapshot numbers where none are wanted


def test_bash_options_after_a_dash(fake_bin: Path) -> None:
    global_ = [n for o in reference.global_options() for n in o.names]
    assert bash_complete("transactional-update -", fake_bin) == global_
    assert "--json" in global_ and "--root" in global_ and "--help" in global_
    # A command's own options besides the global ones, also after its argument.
    offered = bash_complete("transactional-update create-system img --", fake_bin)
    own = [n for o in table.for_command("create-system") for n in o.names]
    assert set(own) <= set(offered)
    assert "--json" in offered
    assert "--prune-only" not in offered
    assert bash_complete("transactional-update cleanup --pr", fake_bin) == ["--prune-only"]


def test_bash_pkg_actions(fake_bin: Path) -> None:
    assert sorted(bash_complete("transactional-update pkg ", fake_bin)) == sorted(PKG_ACTIONS)
    assert bash_complete("transactional-update -n pkg i", fake_bin) == ["in", "install"]
    assert bash_complete("transactional-update pkg install ", fake_bin) == []


def test_bash_snapshot_numbers(fake_bin: Path) -> None:
    offered = bash_complete("transactional-update rollback ", fake_bin)
    assert set(NUMBERS) | {"last"} <= set(offered)
    assert "99" not in offered
    assert bash_complete("transactional-update rollback 1", fake_bin) == ["1", "12"]
    assert bash_complete("transactional-update changelog ", fake_bin) == NUMBERS
    assert bash_complete("transactional-update diff 4 ", fake_bin) == NUMBERS
    assert bash_complete("transactional-update boot-once 1", fake_bin) == ["1", "12"]
    assert set(NUMBERS) <= set(bash_complete("transactional-update log ", fake_bin))
    assert set(NUMBERS) <= set(bash_complete("transactional-update -c ", fake_bin))
    assert bash_complete("transactional-update --continue 1", fake_bin) == ["1", "12"]
    assert _calls(fake_bin) == ["list --json"] * 8


def test_bash_honours_an_earlier_root(fake_bin: Path) -> None:
    bash_complete("transactional-update --root /mnt/sys rollback ", fake_bin)
    bash_complete("transactional-update --root=/mnt/b changelog ", fake_bin)
    bash_complete("transactional-update --root = /mnt/c changelog ", fake_bin)  # split at "="
    assert _calls(fake_bin) == [
        "--root /mnt/sys list --json",
        "--root /mnt/b list --json",
        "--root /mnt/c list --json",
    ]


def test_bash_chains_and_arguments(fake_bin: Path, tmp_path: Path) -> None:
    commands = reference.command_names()
    # After a command's arguments, the next command of the chain.
    assert bash_complete("transactional-update rollback 4 ", fake_bin) == commands
    assert bash_complete("transactional-update cleanup ", fake_bin) == commands
    assert bash_complete("transactional-update -c 4 ", fake_bin) == commands
    assert bash_complete("transactional-update --description up ", fake_bin) == commands
    assert sorted(bash_complete("transactional-update reboot-manager c", fake_bin)) == [
        "cancel",
        "changelog",
        "cleanup",
        "config",
        "create-system",
    ]
    # Paths for path values and arguments.
    (tmp_path / "work").mkdir()
    (tmp_path / "work/disk.img").touch()
    (tmp_path / "work/dir").mkdir()
    cwd = tmp_path / "work"
    assert sorted(bash_complete("transactional-update --root ", fake_bin, cwd)) == [
        "dir",
        "disk.img",
    ]
    assert sorted(bash_complete("transactional-update create-system d", fake_bin, cwd)) == [
        "dir",
        "disk.img",
    ]
    assert bash_complete("transactional-update install-units --unit-dir ", fake_bin, cwd) == ["dir"]
    # After run: a command, then its own words (files), never our options.
    assert "bash" in bash_complete("transactional-update run ba", fake_bin)
    assert bash_complete("transactional-update run -- ls --ro", fake_bin) == []
    assert sorted(bash_complete("transactional-update run ls d", fake_bin, cwd)) == [
        "dir",
        "disk.img",
    ]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="needs zsh (apt-get install zsh)")
def test_zsh_script_parses() -> None:
    r = subprocess.run(["zsh", "-n", str(ZSH)], capture_output=True, text=True, check=False)
    assert (r.returncode, r.stderr) == (0, "")
    assert ZSH.read_text().startswith("#compdef transactional-update\n")


def zsh_complete(line: str, fake_bin: Path) -> list[str]:
    """What the zsh function offers for the last word of *line*, through stand-ins that print
    ``kind: word`` for each candidate."""
    words = shlex.split(line) + ([""] if line.endswith(" ") else [])
    script = (
        f"source {shlex.quote(str(ZSH))}\n"
        'compadd() { [[ $1 == -a ]] && for w in ${(P)2}; do print -r -- "word: $w"; done }\n'
        '_describe() { for w in ${(P)4}; do print -r -- "$3: ${w%%:*}"; done }\n'
        '_files() { print -r -- "files: $*" }\n'
        '_normal() { print -r -- "normal: ${words[CURRENT]} of ${words[*]}" }\n'
        "compset() { PREFIX=${PREFIX#--root=} }\n"
        f"words=({' '.join(shlex.quote(w) for w in words)})\n"
        f"CURRENT={len(words)}\n"
        "_transactional-update\n"
    )
    r = subprocess.run(
        ["zsh", "-f", "-c", script],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": f"{fake_bin}:/usr/bin:/bin"},
    )
    assert r.stderr == "", r.stderr
    return r.stdout.splitlines()


@pytest.mark.skipif(shutil.which("zsh") is None, reason="needs zsh (apt-get install zsh)")
def test_zsh_offers_what_bash_offers(fake_bin: Path) -> None:
    commands = [f"command: {n}" for n in reference.command_names()]
    assert zsh_complete("transactional-update ", fake_bin) == commands
    options = zsh_complete("transactional-update cleanup -", fake_bin)
    assert "option: --prune-only" in options and "option: --root" in options
    assert zsh_complete("transactional-update pkg ", fake_bin) == [
        f"word: {w}" for w in sorted(PKG_ACTIONS)
    ]
    offered = zsh_complete("transactional-update --root /mnt rollback ", fake_bin)
    assert offered == [*commands, "word: last", *(f"word: {n}" for n in NUMBERS)]
    assert zsh_complete("transactional-update changelog ", fake_bin) == [
        f"word: {n}" for n in NUMBERS
    ]
    assert zsh_complete("transactional-update rollback 4 ", fake_bin) == commands
    assert zsh_complete("transactional-update --root ", fake_bin) == ["files: "]
    assert zsh_complete("transactional-update install-units --unit-dir ", fake_bin) == ["files: -/"]
    assert zsh_complete("transactional-update -n run apt-get ", fake_bin) == [
        "normal:  of apt-get "
    ]
    assert _calls(fake_bin) == ["--root /mnt list --json", "list --json"]
