"""Which snapshot a transaction forks: the default, so changes stack until the reboot."""

from __future__ import annotations

import logging

import pytest

from transactional_update.core.transaction import choose_base
from transactional_update.errors import SnapshotError
from transactional_update.snapshots.system import CONTINUE_DEFAULT


def test_the_default_is_the_base_and_a_pending_one_is_kept() -> None:
    assert choose_base(2, 2, None, False) == (2, logging.DEBUG, "")
    base, level, why = choose_base(2, 5, None, False)
    assert (base, level) == (5, logging.INFO)
    assert why.startswith("building on the pending default snapshot 5 (not booted yet)")
    assert choose_base(2, 5, CONTINUE_DEFAULT, False)[0] == 5


def test_continue_n_and_from_booted_choose_otherwise() -> None:
    assert choose_base(2, 5, 3, False) == (3, logging.DEBUG, "")
    base, level, why = choose_base(2, 5, None, True)
    assert (base, level) == (2, logging.WARNING)
    assert "(--from-booted) and supersedes it" in why
    assert choose_base(2, 2, None, True) == (2, logging.DEBUG, "")


def test_a_default_that_is_no_snapshot() -> None:
    base, level, why = choose_base(2, None, None, False)
    assert (base, level) == (2, logging.WARNING)
    assert why.endswith("this transaction starts from the booted snapshot 2")
    with pytest.raises(SnapshotError, match="the default subvolume is not a snapper snapshot"):
        choose_base(2, None, CONTINUE_DEFAULT, False)
