"""The refresh delay: the decision, the stamp's text, the configuration digest (pure), and what
the configuration reader reads from a snapshot."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from transactional_update.config.settings import Manager
from transactional_update.packages.refresh import (
    Decision,
    Stamp,
    decide,
    digest,
    format_stamp,
    parse_stamp,
    read_config,
)

NOW = 1_700_000_000.0
TEN_MIN = timedelta(minutes=10)
CONFIG = digest([("etc/apt/sources.list", b"deb http://deb.debian.org/debian trixie main\n")])


def test_fresh_stamp_with_the_same_configuration_skips() -> None:
    d = decide(Stamp(NOW - 42.4, CONFIG), CONFIG, NOW, TEN_MIN)
    assert d == Decision(
        False,
        "repository metadata refreshed 42 s ago; not refreshing (REFRESH_DELAY=10m)",
        pytest.approx(42.4),  # type: ignore[arg-type]
    )
    assert decide(Stamp(NOW, CONFIG), CONFIG, NOW, TEN_MIN).refresh is False  # this very second


def test_stale_stamp_refreshes_from_the_delay_on() -> None:
    assert decide(Stamp(NOW - 599, CONFIG), CONFIG, NOW, TEN_MIN).refresh is False
    d = decide(Stamp(NOW - 600, CONFIG), CONFIG, NOW, TEN_MIN)
    assert (d.refresh, d.why) == (True, "the last refresh is 600 s old")
    hour = decide(Stamp(NOW - 3599, CONFIG), CONFIG, NOW, timedelta(hours=1))
    assert hour.why == "repository metadata refreshed 3599 s ago; not refreshing (REFRESH_DELAY=1h)"


def test_changed_configuration_refreshes_however_fresh() -> None:
    other = digest([("etc/apt/sources.list", b"deb http://deb.debian.org/debian forky main\n")])
    d = decide(Stamp(NOW - 1, CONFIG), other, NOW, TEN_MIN)
    assert (d.refresh, d.why) == (
        True,
        "the repository configuration changed since the last refresh",
    )


def test_missing_stamp_future_stamp_and_delay_zero_refresh() -> None:
    assert decide(None, CONFIG, NOW, TEN_MIN) == Decision(True, "no record of an earlier refresh")
    # The clock went back: the stamp's age is unknown, so it is old.
    assert decide(Stamp(NOW + 5, CONFIG), CONFIG, NOW, TEN_MIN) == Decision(
        True, "the last refresh is dated in the future"
    )
    assert decide(Stamp(NOW - 1, CONFIG), CONFIG, NOW, timedelta(0)) == Decision(
        True, "REFRESH_DELAY=0"
    )


def test_stamp_round_trip_and_garbled_stamps() -> None:
    stamp = Stamp(NOW + 0.25, CONFIG)
    assert parse_stamp(format_stamp(stamp)) == stamp
    assert parse_stamp('{"time": 1700000000, "config": "ab"}') == Stamp(1.7e9, "ab")
    for garbled in (
        "",
        "1700000000",
        "not json",
        '{"time": 1700000000',  # cut short by a full disk before write_atomic existed
        '["time", 1]',
        '{"config": "ab"}',
        '{"time": "yesterday", "config": "ab"}',
        '{"time": true, "config": "ab"}',
        '{"time": NaN, "config": "ab"}',
        '{"time": Infinity, "config": "ab"}',
        '{"time": 1700000000, "config": ""}',
        '{"time": 1700000000, "config": 7}',
    ):
        assert parse_stamp(garbled) is None, garbled


def test_digest_covers_names_contents_and_framing_not_order() -> None:
    a = [("x", b"1"), ("y", b"2")]
    assert digest(a) == digest(list(reversed(a)))
    assert digest(a) != digest([("x", b"1"), ("y", b"3")])
    assert digest(a) != digest([("x", b"1"), ("z", b"2")])  # a renamed file
    assert digest(a) != digest([("x", b"1")])  # a removed file
    assert digest([("a", b"bc")]) != digest([("a", b""), ("b", b"c")])


def _write(root: Path, rel: str, text: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)


def test_read_config_reads_each_managers_files_inside_the_snapshot(tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    _write(snap, "etc/apt/sources.list", "deb file:/repo ./\n")
    _write(snap, "etc/apt/sources.list.d/extra.sources", "Types: deb\n")
    _write(snap, "etc/apt/apt.conf.d/90proxy", 'Acquire::http::Proxy "http://p";\n')
    (snap / "etc/apt/sources.list.d/sub").mkdir()  # a directory is not configuration
    _write(snap, "usr/share/dpkg/database/arch", "amd64\ni386\n")
    (snap / "var/lib").mkdir(parents=True)
    # Absolute links resolve inside the snapshot, as in the chroot, never on the host.
    os.symlink("/usr/share/dpkg/database", snap / "var/lib/dpkg")
    _write(tmp_path, "host-secret", "not configuration\n")
    os.symlink("/../../host-secret", snap / "etc/apt/sources.list.d/escape.list")
    assert read_config(snap, Manager.APT) == [
        ("etc/apt/sources.list", b"deb file:/repo ./\n"),
        ("etc/apt/sources.list.d/extra.sources", b"Types: deb\n"),
        ("etc/apt/apt.conf.d/90proxy", b'Acquire::http::Proxy "http://p";\n'),
        ("var/lib/dpkg/arch", b"amd64\ni386\n"),
    ]
    _write(snap, "etc/zypp/repos.d/local.repo", "[local]\n")
    _write(snap, "etc/os-release", "VERSION_ID=16.0\n")
    assert read_config(snap, Manager.ZYPPER) == [
        ("etc/zypp/repos.d/local.repo", b"[local]\n"),
        ("etc/os-release", b"VERSION_ID=16.0\n"),
    ]
    _write(snap, "etc/yum.repos.d/local.repo", "[local]\n")
    _write(snap, "etc/dnf/dnf.conf", "[main]\n")
    assert [p for p, _ in read_config(snap, Manager.DNF)] == [
        "etc/yum.repos.d/local.repo",
        "etc/dnf/dnf.conf",
        "etc/os-release",
    ]
    assert read_config(tmp_path / "empty", Manager.DNF) == []
