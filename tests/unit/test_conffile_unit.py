"""The one KEY=VALUE parser, in its three ways of taking lines that are not an assignment."""

from __future__ import annotations

import pytest

from transactional_update.config.conffile import Lines, parse, values
from transactional_update.errors import ConfigError

TEXT = 'A=1\n# comment\n\nB="two words"\nnot an assignment\nC=3\n'


def test_strict_refuses_what_is_not_an_assignment() -> None:
    with pytest.raises(ConfigError, match=r"^f:5: expected KEY=VALUE, got 'not an assignment'$"):
        parse(TEXT, "f")
    assert parse("A=1\nB='x y' # why\n", "f") == {"A": ("1", "f:1"), "B": ("x y", "f:2")}


def test_foreign_skips_other_lines_but_not_bad_quoting() -> None:
    assert values(TEXT, "f", Lines.FOREIGN) == {"A": "1", "B": "two words", "C": "3"}
    with pytest.raises(ConfigError, match=r"^f:2: No closing quotation$"):
        values('A=1\nB="open\n', "f", Lines.FOREIGN)


def test_lenient_skips_everything_it_cannot_read() -> None:
    assert values(TEXT + 'D="open\nE=5\n', "f", Lines.LENIENT) == {
        "A": "1",
        "B": "two words",
        "C": "3",
        "E": "5",
    }


def test_os_release_and_state_use_it() -> None:
    from transactional_update.boot.bootmenu import os_name
    from transactional_update.record.state import parse as parse_state

    release = 'NAME="Debian GNU/Linux"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n'
    assert os_name(release) == "Debian GNU/Linux 12 (bookworm)"
    assert os_name('NAME="Debian GNU/Linux"\nPRETTY_NAME="broken\n') == "Debian GNU/Linux"
    assert parse_state("LAST_WORKING_SNAPSHOTS='3 2'\ngarbage 'x\n") == {
        "LAST_WORKING_SNAPSHOTS": "3 2"
    }
