"""Unit tests for :mod:`transactional_update.snapshots.snapper`: no root, no snapper, no bus.

The sample outputs below were captured from snapper 0.10.4 (Debian 12) on a scratch btrfs image.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from testkit.systems import REPO
from transactional_update import proc
from transactional_update.errors import (
    ConfigError,
    NoSpaceError,
    NotManagedError,
    SnapshotError,
    SystemError_,
    TUError,
    UsageError,
)
from transactional_update.snapshots import snapinfo as si
from transactional_update.snapshots import snapper as sn
from transactional_update.snapshots.snapinfo import Snapshot, SnapshotType
from transactional_update.snapshots.snapper import Backend, SnapshotFlags

# jeepney ships no type information; import_module keeps mypy --strict quiet either way.
jeepney: Any = importlib.import_module("jeepney")

# `snapper --no-dbus --root R -c root --utc --iso --jsonout list` (trimmed "subvolume" etc. kept)
CLI_LIST_JSON = """{
  "root": [
    {"subvolume": "/", "number": 0, "default": false, "active": false, "type": "single",
     "pre-number": null, "date": "", "user": "root", "used-space": null, "cleanup": "",
     "description": "current", "userdata": null},
    {"subvolume": "/", "number": 1, "default": true, "active": true, "type": "single",
     "pre-number": null, "date": "2026-11-26 05:00:00", "user": "root", "used-space": null,
     "cleanup": "", "description": "first root filesystem", "userdata": null},
    {"subvolume": "/", "number": 2, "default": false, "active": false, "type": "single",
     "pre-number": null, "date": "2026-11-26 05:04:04", "user": "root", "used-space": null,
     "cleanup": "number", "description": "test x", "userdata": {"a": "b"}},
    {"subvolume": "/", "number": 3, "default": false, "active": false, "type": "pre",
     "pre-number": null, "date": "2026-11-26 06:00:00", "user": "root", "used-space": null,
     "cleanup": "", "description": "he said \\"hi\\"\\n$HOME; `x`", "userdata": null},
    {"subvolume": "/", "number": 4, "default": false, "active": false, "type": "post",
     "pre-number": 3, "date": "2026-11-26 06:00:01", "user": "unknown (4321)",
     "used-space": null, "cleanup": "", "description": "", "userdata": null}
  ]
}"""

# ROOT/.snapshots/2/info.xml as snapper 0.10.4 writes it
INFO_XML_2 = """<?xml version="1.0"?>
<snapshot>
  <type>single</type>
  <num>2</num>
  <date>2026-11-26 05:04:04</date>
  <description>test x</description>
  <cleanup>number</cleanup>
  <userdata>
    <key>a</key>
    <value>b</value>
  </userdata>
</snapshot>
"""

# snapperd's GetSnapshot reply body for the same snapshot, and for snapshot 0
DBUS_SNAPSHOT_2: tuple[Any, ...] = (2, 0, 0, 1795669444, 0, "test x", "number", {"a": "b"})
DBUS_SNAPSHOT_0: tuple[Any, ...] = (0, 0, 0, -1, 0, "current", "", {})

NASTY = "he said \"hi\"\n$HOME; rm -rf / `x` 'q' <x>&amp; \t tab  \n\n trailing  \n\\x41 é ü"


def users(uid: int) -> str:
    return {0: "root", 1000: "alice"}.get(uid, f"unknown ({uid})")


# --------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize("number", [1, 2, 2**32 - 1])
def test_check_number_accepts(number: int) -> None:
    assert si.check_number(number) == number


@pytest.mark.parametrize("number", [0, -1, 2**32, True])
def test_check_number_rejects(number: int) -> None:
    with pytest.raises(SnapshotError):
        si.check_number(number)


def test_check_number_current_only_when_allowed() -> None:
    assert si.check_number(0, allow_current=True) == 0
    with pytest.raises(SnapshotError, match="snapshot 0"):
        si.check_number(0)


@pytest.mark.parametrize("text", ["", "plain", NASTY, "é ü 日本", "-d --foo", "back\\slash"])
def test_check_text_accepts_what_round_trips(text: str) -> None:
    assert sn.check_text(text, "description") == text


@pytest.mark.parametrize("text", ["a\x01b", "a\rb", "nul\x00", "esc\x1b[0m", "\ud800"])
def test_check_text_rejects_what_xml_cannot_hold(text: str) -> None:
    with pytest.raises(UsageError, match="control character"):
        sn.check_text(text, "description")


def test_check_userdata_returns_plain_dict() -> None:
    class Frozen(Mapping[str, str]):
        def __getitem__(self, key: str) -> str:
            return {"k": "v"}[key]

        def __iter__(self) -> Any:
            return iter(["k"])

        def __len__(self) -> int:
            return 1

    result = sn.check_userdata(Frozen())
    assert result == {"k": "v"}
    assert type(result) is dict


@pytest.mark.parametrize(
    ("userdata", "match"),
    [
        ({"a,b": "x"}, "',' or '='"),
        ({"a=b": "x"}, "',' or '='"),
        ({"a": "x,y"}, "',' or '='"),
        ({"a": "x=y"}, "',' or '='"),
        ({" a": "x"}, "whitespace"),
        ({"a": "x "}, "whitespace"),
        ({"": "x"}, "empty key"),
        ({"a": ""}, "empty value"),
        ({"a": "x\x01"}, "control character"),
    ],
)
def test_check_userdata_rejects(userdata: dict[str, str], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        sn.check_userdata(userdata)


def test_check_userdata_allows_inner_spaces_and_symbols() -> None:
    data = {"important": "yes", "tu.command": "apt-get install -y foo; bar", "note": "a b"}
    assert sn.check_userdata(data) == data


@pytest.mark.parametrize("name", ["", "a/b", "..", ".hidden", "x\x00"])
def test_check_config_name_rejects(name: str) -> None:
    with pytest.raises(NotManagedError):
        sn.check_config_name(name)


def test_deletion_refusal() -> None:
    flags = SnapshotFlags(default=5, active=1)
    assert sn.deletion_refusal(1, flags) is not None
    assert "default" in (sn.deletion_refusal(5, flags) or "")
    assert sn.deletion_refusal(7, flags) is None
    assert sn.deletion_refusal(7, SnapshotFlags(None, None)) is None


# --------------------------------------------------------------------------------------------
# users and dates


def test_parse_passwd() -> None:
    text = "root:x:0:0:root:/root:/bin/bash\n#c:x:5:5\n+nis\nbad\nalice:x:1000:1000::/h:/bin/sh\n"
    assert si.parse_passwd(text) == {0: "root", 1000: "alice"}


def test_user_names_prefers_the_managed_roots_passwd(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("admin:x:0:0::/root:/bin/sh\nbob:x:4000001:1::/:/bin/sh\n")
    names = si.UserNames(tmp_path)
    assert names(0) == "admin"
    assert names(4000001) == "bob"


def test_user_names_falls_back_like_snapper(tmp_path: Path) -> None:
    names = si.UserNames(tmp_path)  # no etc/passwd: the host's, then snapper's "unknown (UID)"
    assert names(0) == "root"
    assert names(3999999) == "unknown (3999999)"


def test_dates_agree_between_formats() -> None:
    from_text = si.parse_utc("2026-11-26 05:04:04")
    assert from_text == datetime(2026, 11, 26, 5, 4, 4, tzinfo=UTC)
    assert si.epoch_to_utc(1795669444) == from_text
    assert from_text is not None and from_text.tzinfo is not None
    assert si.parse_utc("") is None
    assert si.epoch_to_utc(-1) is None
    with pytest.raises(SystemError_):
        si.parse_utc("Thu Nov 26 05:04:04 2026")


# --------------------------------------------------------------------------------------------
# info.xml


def test_parse_info_xml() -> None:
    snap = si.parse_info_xml(INFO_XML_2, users)
    assert snap == Snapshot(
        number=2,
        type=SnapshotType.SINGLE,
        pre_number=None,
        date=datetime(2026, 11, 26, 5, 4, 4, tzinfo=UTC),
        user="root",
        description="test x",
        cleanup="number",
        userdata={"a": "b"},
    )


def test_parse_info_xml_minimal_post_with_uid_and_escapes() -> None:
    text = (
        "<?xml version='1.0'?>\n<snapshot><type>post</type><num>9</num>"
        "<date>2026-01-02 03:04:05</date><uid>1000</uid><pre_num>8</pre_num>"
        "<description>a &lt;b&gt; &amp;amp; &#xE9;\n  x  </description></snapshot>"
    )
    snap = si.parse_info_xml(text.encode(), users)
    assert snap.type is SnapshotType.POST
    assert snap.pre_number == 8
    assert snap.user == "alice"
    assert snap.description == "a <b> &amp; é\n  x  "
    assert snap.cleanup == ""
    assert snap.userdata == {}


def test_parse_info_xml_empty_description_element() -> None:
    text = INFO_XML_2.replace("<description>test x</description>", "<description></description>")
    assert si.parse_info_xml(text, users).description == ""


@pytest.mark.parametrize(
    "text",
    [
        "not xml",
        "<other/>",
        "<snapshot><type>single</type><date>2026-01-01 00:00:00</date></snapshot>",
        "<snapshot><type>weird</type><num>1</num><date>2026-01-01 00:00:00</date></snapshot>",
        "<snapshot><type>single</type><num>x</num><date>2026-01-01 00:00:00</date></snapshot>",
        "<snapshot><type>single</type><num>1</num><date>yesterday</date></snapshot>",
    ],
)
def test_parse_info_xml_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        si.parse_info_xml(text, users)


def _write_info(root: Path, number: int, text: str) -> None:
    directory = root / ".snapshots" / str(number)
    directory.mkdir(parents=True)
    (directory / "info.xml").write_text(text)


def test_read_info(tmp_path: Path) -> None:
    _write_info(tmp_path, 2, INFO_XML_2)
    snap = si.read_info(tmp_path, 2)
    assert snap.number == 2
    assert snap.userdata == {"a": "b"}
    assert snap == sn.snapshot_from_dbus(DBUS_SNAPSHOT_2, si.UserNames(tmp_path))


def test_read_info_missing(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="snapshot 7 does not exist"):
        si.read_info(tmp_path, 7)


def test_read_info_corrupt_or_foreign(tmp_path: Path) -> None:
    _write_info(tmp_path, 3, "<snapshot>")
    with pytest.raises(SnapshotError, match="unreadable"):
        si.read_info(tmp_path, 3)
    _write_info(tmp_path, 4, INFO_XML_2)
    with pytest.raises(SnapshotError, match="describes snapshot 2, not 4"):
        si.read_info(tmp_path, 4)


# --------------------------------------------------------------------------------------------
# D-Bus: pure helpers


def test_snapshot_from_dbus() -> None:
    snap = sn.snapshot_from_dbus(DBUS_SNAPSHOT_2, users)
    assert snap == si.parse_info_xml(INFO_XML_2, users)
    assert type(snap.userdata) is dict


def test_snapshot_from_dbus_current_and_post() -> None:
    current = sn.snapshot_from_dbus(DBUS_SNAPSHOT_0, users)
    assert current.number == 0
    assert current.date is None
    post = sn.snapshot_from_dbus((5, 2, 4, 1795669444, 1000, "", "", {}), users)
    assert post.type is SnapshotType.POST
    assert post.pre_number == 4
    assert post.user == "alice"
    with pytest.raises(SystemError_):
        sn.snapshot_from_dbus((5, 7, 0, 0, 0, "", "", {}), users)


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ('plain ASCII; $x "q"\n', 'plain ASCII; $x "q"\n'),
        ("é", "\\xc3\\xa9"),
        ("back\\slash", "back\\\\slash"),
        ("日\\", "\\xe6\\x97\\xa5\\\\"),
        ("\\x41", "\\\\x41"),
    ],
)
def test_dbus_escaping(text: str, escaped: str) -> None:
    assert sn.dbus_escape(text) == escaped
    assert sn.dbus_unescape(escaped) == text


def test_dbus_unescape_reply_as_snapperd_sends_it() -> None:
    # GetSnapshot reply from snapperd 0.10.4 for a description "x é" with userdata ü=1
    body = ((5, 0, 0, 1795669444, 0, "x \\xc3\\xa9", "", {"\\xc3\\xbc": "1"}),)
    snap = sn.snapshot_from_dbus(sn.dbus_unescape_value(body)[0], users)
    assert snap.description == "x é"
    assert snap.userdata == {"ü": "1"}


def test_dbus_escape_value_keeps_types() -> None:
    args = ("root", 1, True, "é", {"k": "ü"}, [3, 4])
    escaped = ("root", 1, True, "\\xc3\\xa9", {"k": "\\xc3\\xbc"}, [3, 4])
    assert sn.dbus_escape_value(args) == escaped


def test_select_config() -> None:
    configs = [("root", "/"), ("test", "/tmp/x/mnt"), ("home", "/home")]
    assert sn.select_config(configs, Path("/"), "root") == "root"
    assert sn.select_config(configs, Path("/"), "home") == "home"
    assert sn.select_config(configs, Path("/"), "nope") is None
    assert sn.select_config(configs, Path("/tmp/x/mnt"), "root") == "test"
    assert sn.select_config(configs, Path("/tmp/x/mnt/"), "root") == "test"
    assert sn.select_config(configs, Path("/tmp/other"), "root") is None
    two = [("b", "/m"), ("a", "/m"), ("root", "/m")]
    assert sn.select_config(two, Path("/m"), "root") == "root"
    assert sn.select_config(two, Path("/m"), "zzz") == "a"


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("error.unknown_config", NotManagedError),
        ("error.illegal_snapshot", SnapshotError),
        ("error.snapshot_in_use", SnapshotError),
        ("error.invalid_userdata", UsageError),
        ("error.no_permissions", SystemError_),
        ("error.config_locked", SystemError_),
        ("error.free_space", NoSpaceError),
        ("error.quota", NoSpaceError),
        ("error.io_error", SystemError_),
        ("error.something", SystemError_),
        ("org.freedesktop.DBus.Error.ServiceUnknown", SystemError_),
    ],
)
def test_map_dbus_error_classes(name: str, cls: type[TUError]) -> None:
    error = sn.map_dbus_error(
        name, "org.freedesktop.DBus.Error.Failed", config="root", illegal="snapshot 9 is bad"
    )
    assert type(error) is cls
    assert error.message
    assert "\n" not in error.message
    assert "org.freedesktop.DBus.Error.Failed" not in error.message


def test_map_dbus_error_messages() -> None:
    illegal = sn.map_dbus_error("error.illegal_snapshot", "", config="root", illegal="snap 9 gone")
    assert illegal.message == "snap 9 gone"
    assert "snapper -c root list" in illegal.hint
    unknown = sn.map_dbus_error("error.unknown_config", "", config="tst", illegal="")
    assert "'tst'" in unknown.message
    assert unknown.hint


def test_map_dbus_error_no_space() -> None:
    # What snapperd 0.10.4 sends when the disk is full while it writes info.xml.
    args: dict[str, Any] = {"config": "root", "illegal": "", "what": "create"}
    full = sn.map_dbus_error("error.io_error", "xmlDocFormatDump failed", no_space=True, **args)
    assert isinstance(full, NoSpaceError)
    not_full = sn.map_dbus_error("error.io_error", "xmlDocFormatDump failed", **args)
    assert type(not_full) is SystemError_
    assert "xmlDocFormatDump failed" in not_full.message
    errno = sn.map_dbus_error("error.io_error", "write: No space left on device", **args)
    assert isinstance(errno, NoSpaceError)


def test_system_bus_reachable(tmp_path: Path) -> None:
    sock = tmp_path / "bus"
    sock.touch()
    assert sn.system_bus_reachable({"DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={sock}"})
    missing = {"DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path}/none"}
    assert not sn.system_bus_reachable(missing)
    two = {"DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path}/none;unix:path={sock}"}
    assert sn.system_bus_reachable(two)
    assert sn.system_bus_reachable({"DBUS_SYSTEM_BUS_ADDRESS": "tcp:host=localhost,port=1"})


# --------------------------------------------------------------------------------------------
# CLI: argv and parsing


ROOT = Path("/mnt/sys")
BASE = ["snapper", "--no-dbus", "--root", "/mnt/sys", "-c", "root"]


def test_cli_list_argv_asks_for_utc_json() -> None:
    argv = sn.cli_list_argv(ROOT, "root")
    assert argv[: len(BASE)] == BASE
    assert {"--utc", "--jsonout"} <= set(argv)
    assert argv.index("--utc") < argv.index("list")


def test_cli_create_argv() -> None:
    argv = sn.cli_create_argv(
        ROOT,
        "root",
        1,
        read_only=False,
        description=NASTY,
        cleanup="number",
        userdata={"a": "1", "b": "2"},
    )
    assert argv == [
        *BASE,
        "create",
        "--type",
        "single",
        "--from",
        "1",
        "--read-write",
        "--print-number",
        "--description",
        NASTY,
        "--cleanup-algorithm",
        "number",
        "--userdata",
        "a=1,b=2",
    ]


def test_cli_create_argv_read_only_without_extras() -> None:
    argv = sn.cli_create_argv(
        ROOT, "root", 7, read_only=True, description="-x", cleanup="", userdata={}
    )
    assert "--read-only" in argv
    assert "--read-write" not in argv
    assert "--cleanup-algorithm" not in argv
    assert "--userdata" not in argv
    assert argv[argv.index("--description") + 1] == "-x"


def test_userdata_changes() -> None:
    old = {"a": "1", "b": "2", "c": "3"}
    new = {"b": "2", "c": "4", "d": "5"}
    assert sn.userdata_changes(old, new) == {"a": "", "c": "4", "d": "5"}
    assert sn.userdata_changes(old, old) == {}
    assert sn.userdata_changes(old, {}) == {"a": "", "b": "", "c": ""}
    assert sn.format_userdata({"a": "", "c": "4"}) == "a=,c=4"


def test_cli_modify_argv() -> None:
    argv = sn.cli_modify_argv(
        ROOT, "root", 5, description="", cleanup=None, changes={"a": "", "b": "x"}
    )
    assert argv == [*BASE, "modify", "--description", "", "--userdata", "a=,b=x", "5"]
    bare = sn.cli_modify_argv(ROOT, "root", 5, description=None, cleanup="number", changes={})
    assert bare == [*BASE, "modify", "--cleanup-algorithm", "number", "5"]


def test_cli_delete_argv() -> None:
    assert sn.cli_delete_argv(ROOT, "root", [3, 4]) == [*BASE, "delete", "3", "4"]


def test_parse_cli_list() -> None:
    entries = sn.parse_cli_list(CLI_LIST_JSON, "root")
    assert [e.snapshot.number for e in entries] == [0, 1, 2, 3, 4]
    current, first, second, pre, post = entries
    assert current.snapshot.date is None
    assert first.default
    assert first.active
    assert not second.default
    assert second.snapshot == si.parse_info_xml(INFO_XML_2, users)
    assert first.snapshot.userdata == {}
    assert pre.snapshot.description == 'he said "hi"\n$HOME; `x`'
    assert pre.snapshot.type is SnapshotType.PRE
    assert post.snapshot.pre_number == 3
    assert post.snapshot.user == "unknown (4321)"
    assert sn._flags(entries) == SnapshotFlags(default=1, active=1)


@pytest.mark.parametrize("text", ["", "[]", "{}", '{"root": [{"number": 1}]}', "not json"])
def test_parse_cli_list_rejects(text: str) -> None:
    with pytest.raises(SystemError_, match="snapper list"):
        sn.parse_cli_list(text, "root")


# stderr of snapper 0.10.4 for each failure we map
@pytest.mark.parametrize(
    ("stderr", "what", "cls", "match"),
    [
        ("Snapshot '99' not found.\n", "modify", SnapshotError, "snapshot 99 does not exist"),
        ("Snapshot '99' not found.\n", "create", SnapshotError, "parent snapshot 99"),
        ("Illegal snapshot.\n", "modify", SnapshotError, "ILLEGAL"),
        (
            "Cannot delete snapshot 1 since it is the currently mounted snapshot.\n",
            "delete",
            SnapshotError,
            "snapshot 1 cannot be deleted: it is the currently mounted snapshot$",
        ),
        ("Config 'nope' not found.\n", "list", NotManagedError, "'nope' not found under"),
        ("Error (invalid userdata).\n", "create", UsageError, "userdata"),
        (
            "I/O error : No space left on device\nI/O error : write error\n"
            "IO error (xmlDocFormatDump failed).\n",
            "create",
            NoSpaceError,
            "no space left",
        ),
        ("Config is locked.\n", "create", SystemError_, "locked"),
        ("something odd\nreally odd.\n", "create", SystemError_, "really odd"),
    ],
)
def test_map_cli_error(stderr: str, what: str, cls: type[TUError], match: str) -> None:
    error = sn.map_cli_error(stderr, config="root", root=ROOT, illegal="ILLEGAL", what=what)
    assert type(error) is cls
    assert error.message == str(error)
    assert "\n" not in error.message
    assert re.search(match, error.message), error.message


# --------------------------------------------------------------------------------------------
# choosing a backend


def test_resolve_backend() -> None:
    assert sn.resolve_backend(Backend.AUTO, None) is Backend.AUTO
    assert sn.resolve_backend(Backend.AUTO, "") is Backend.AUTO
    assert sn.resolve_backend(Backend.AUTO, "cli") is Backend.CLI
    assert sn.resolve_backend(Backend.AUTO, " DBus ") is Backend.DBUS
    assert sn.resolve_backend(Backend.CLI, "dbus") is Backend.CLI  # explicit wins
    with pytest.raises(ConfigError, match="TU_SNAPPER_BACKEND"):
        sn.resolve_backend(Backend.AUTO, "zfs")


def _managed_root(tmp_path: Path) -> Path:
    configs = tmp_path / "etc/snapper/configs"
    configs.mkdir(parents=True)
    (configs / "root").write_text('SUBVOLUME="/"\nFSTYPE="btrfs"\n')
    return tmp_path


def test_connect_env_selects_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _managed_root(tmp_path)
    monkeypatch.setenv(sn.BACKEND_ENV, "cli")
    client = sn.connect(root)
    assert isinstance(client, sn.CliSnapper)
    assert client.backend is Backend.CLI
    assert client.config == "root"


def test_connect_cli_without_config(tmp_path: Path) -> None:
    with pytest.raises(NotManagedError, match="no snapper config 'root'"):
        sn.connect(tmp_path, backend=Backend.CLI)


def test_connect_auto_without_bus_uses_cli_and_skips_jeepney(tmp_path: Path) -> None:
    root = _managed_root(tmp_path)
    code = (
        "import sys; from pathlib import Path\n"
        "from transactional_update.snapshots import snapper\n"
        f"c = snapper.connect(Path({str(root)!r}))\n"
        "assert type(c).__name__ == 'CliSnapper', c\n"
        "assert 'jeepney' not in sys.modules\n"
    )
    env = {
        **os.environ,
        "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path}/no-bus",
        "PYTHONPATH": str(REPO),
    }
    env.pop(sn.BACKEND_ENV, None)
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_connect_dbus_without_bus_fails_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")
    with pytest.raises(SystemError_, match="system bus"):
        sn.connect(tmp_path, backend=Backend.DBUS)


# --------------------------------------------------------------------------------------------
# CliSnapper with a fake `snapper`


class FakeRun:
    """Stands in for proc.run: records argv, answers from a queue of (rc, stdout, stderr)."""

    def __init__(self, *answers: tuple[int, str, str]) -> None:
        self.answers = list(answers)
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert kwargs.get("check") is False
        assert kwargs["env"]["LC_ALL"] == sn.CLI_LOCALE
        self.calls.append(list(argv))
        rc, out, err = self.answers.pop(0)
        return subprocess.CompletedProcess(list(argv), rc, out, err)


def _write_info_2(root: Path) -> None:
    (root / ".snapshots/2").mkdir(parents=True, exist_ok=True)
    (root / ".snapshots/2/info.xml").write_text(INFO_XML_2)


def _cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeRun) -> sn.CliSnapper:
    monkeypatch.setattr(proc, "run", fake)
    return sn.CliSnapper(_managed_root(tmp_path))


def test_cli_list_and_get(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRun((0, CLI_LIST_JSON, ""))
    client = _cli(tmp_path, monkeypatch, fake)
    assert [s.number for s in client.list_snapshots()] == [1, 2, 3, 4]
    # get_snapshot reads info.xml, as `snapper --no-dbus` itself does: no further process.
    _write_info_2(tmp_path)
    assert client.get_snapshot(2).userdata == {"a": "b"}
    assert len(fake.calls) == 1
    with pytest.raises(SnapshotError, match="snapshot 9 does not exist"):
        client.get_snapshot(9)


def test_cli_create(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRun((0, "5\n", ""), (1, "", "Snapshot '9' not found.\n"))
    client = _cli(tmp_path, monkeypatch, fake)
    number = client.create_snapshot(
        1, read_only=True, description=NASTY, cleanup="", userdata={"k": "v"}
    )
    assert number == 5
    assert fake.calls[0][fake.calls[0].index("--description") + 1] == NASTY
    with pytest.raises(SnapshotError, match="parent snapshot 9 does not exist"):
        client.create_snapshot(9, read_only=True, description="", cleanup="", userdata={})


def test_cli_create_validates_before_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeRun()
    client = _cli(tmp_path, monkeypatch, fake)
    with pytest.raises(UsageError):
        client.create_snapshot(
            1, read_only=False, description="", cleanup="", userdata={"a": "x,y"}
        )
    with pytest.raises(UsageError):
        client.create_snapshot(1, read_only=False, description="\x07", cleanup="", userdata={})
    assert fake.calls == []


def test_cli_set_snapshot_replaces_userdata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeRun((0, "", ""))
    client = _cli(tmp_path, monkeypatch, fake)
    _write_info_2(tmp_path)
    client.set_snapshot(2, userdata={"c": "d"})
    modify = [*sn.cli_base(tmp_path, "root"), "modify", "--userdata", "a=,c=d", "2"]
    assert fake.calls == [modify]


def test_cli_set_snapshot_description_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRun((0, "", ""))
    client = _cli(tmp_path, monkeypatch, fake)
    client.set_snapshot(2, description="new")
    assert fake.calls == [[*sn.cli_base(tmp_path, "root"), "modify", "--description", "new", "2"]]


def test_cli_delete_checks_everything_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeRun((0, CLI_LIST_JSON, ""), (0, CLI_LIST_JSON, ""))
    client = _cli(tmp_path, monkeypatch, fake)
    with pytest.raises(SnapshotError, match="snapshot 1 cannot be deleted"):
        client.delete_snapshots([2, 1])
    with pytest.raises(SnapshotError, match="snapshot 9 does not exist"):
        client.delete_snapshots([2, 9])
    assert all("delete" not in call for call in fake.calls)


def test_cli_delete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRun((0, CLI_LIST_JSON, ""), (0, "", ""))
    client = _cli(tmp_path, monkeypatch, fake)
    client.delete_snapshots([3, 4, 3])
    assert fake.calls[1][-3:] == ["delete", "3", "4"]
    client.delete_snapshots([])
    assert len(fake.calls) == 2


def test_cli_delete_refusal_with_exit_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # snapper 0.10.4 prints the refusal but exits 0 (here: a race after our own check).
    refusal = "Cannot delete snapshot 2 since it is the currently mounted snapshot.\n"
    fake = FakeRun((0, CLI_LIST_JSON, ""), (0, "", refusal))
    client = _cli(tmp_path, monkeypatch, fake)
    with pytest.raises(SnapshotError, match="snapshot 2 cannot be deleted"):
        client.delete_snapshots([2])


def test_cli_delete_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = _cli(tmp_path, monkeypatch, FakeRun())
    with pytest.raises(SnapshotError, match="snapshot 0"):
        client.delete_snapshots([0])


# --------------------------------------------------------------------------------------------
# DBusSnapper with a fake snapperd


def _strict_unescape(value: Any) -> Any:
    if isinstance(value, str):
        if re.search(r"\\(?!x[0-9a-f]{2})", value.replace("\\\\", "")):
            raise LookupError("error.dbus.marshalling")
        return sn.dbus_unescape(value)
    if isinstance(value, dict):
        return {_strict_unescape(k): _strict_unescape(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_strict_unescape(v) for v in value)
    return value


class FakeSnapperd:
    """A jeepney-connection double that behaves like snapperd 0.10.4 for one config."""

    def __init__(self, subvolume: str = "/") -> None:
        self.configs = [("root", subvolume, {"SUBVOLUME": subvolume, "FSTYPE": "btrfs"})]
        self.snapshots: dict[int, tuple[Any, ...]] = {0: DBUS_SNAPSHOT_0, 2: DBUS_SNAPSHOT_2}
        self.snapshots[1] = (1, 0, 0, 1795669200, 0, "first root filesystem", "", {})
        self.default = 1
        self.active = 1
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.closed = False
        self.handlers = {
            "ListConfigs": self.list_configs,
            "ListSnapshots": self.list_snapshots,
            "GetSnapshot": self.get_snapshot,
            "GetDefaultSnapshot": self.get_default,
            "GetActiveSnapshot": self.get_active,
            "SetSnapshot": self.set_snapshot,
            "CreateSingleSnapshotV2": self.create,
            "DeleteSnapshots": self.delete,
        }

    def close(self) -> None:
        self.closed = True

    def send_and_get_reply(self, msg: Any, *, timeout: float | None = None) -> Any:
        member = msg.header.fields[jeepney.HeaderFields.member]
        try:
            # snapper unescapes every string it receives and escapes every string it sends
            body = tuple(_strict_unescape(msg.body))
            self.calls.append((member, body))
            signature, result = self.handlers[member](body)
        except LookupError as exc:
            return jeepney.new_error(
                msg, str(exc.args[0]), "s", ("org.freedesktop.DBus.Error.Failed",)
            )
        return jeepney.new_method_return(msg, signature, sn.dbus_escape_value(result))

    def _config(self, name: str) -> None:
        if name != "root":
            raise LookupError("error.unknown_config")

    def _snap(self, number: int) -> tuple[Any, ...]:
        if number not in self.snapshots:
            raise LookupError("error.illegal_snapshot")
        return self.snapshots[number]

    def list_configs(self, args: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
        return "a(ssa{ss})", (self.configs,)

    def list_snapshots(self, args: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
        self._config(args[0])
        return "a(uquxussa{ss})", ([self.snapshots[n] for n in sorted(self.snapshots)],)

    def get_snapshot(self, args: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
        config, number = args
        self._config(config)
        return "(uquxussa{ss})", (self._snap(number),)

    def get_default(self, args: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
        return "bu", (True, self.default)

    def get_active(self, args: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
        return "bu", (True, self.active)

    def set_snapshot(self, args: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
        _config, number, description, cleanup, userdata = args
        old = self._snap(number)
        self.snapshots[number] = (*old[:5], description, cleanup, dict(userdata))
        return "", ()

    def create(self, args: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
        _config, parent, _read_only, description, cleanup, userdata = args
        self._snap(parent)
        number = max(self.snapshots) + 1
        self.snapshots[number] = (number, 0, 0, 1795669500, 0, description, cleanup, userdata)
        return "u", (number,)

    def delete(self, args: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
        for number in args[1]:  # like snapperd: in order, stopping at the first bad one
            if number in (0, self.default, self.active):
                raise LookupError("error.illegal_snapshot")
            self._snap(number)
            del self.snapshots[number]
        return "", ()


def _dbus(root: Path = Path("/"), daemon: FakeSnapperd | None = None) -> sn.DBusSnapper:
    return sn.DBusSnapper(root, "root", connection=daemon or FakeSnapperd())


def test_dbus_list_get_and_close() -> None:
    daemon = FakeSnapperd()
    with _dbus(daemon=daemon) as client:
        assert client.backend is Backend.DBUS
        assert [s.number for s in client.list_snapshots()] == [1, 2]
        assert client.get_snapshot(2) == si.parse_info_xml(INFO_XML_2, si.UserNames(Path("/")))
        assert client.get_snapshot(0).date is None
        with pytest.raises(SnapshotError, match="snapshot 9 does not exist"):
            client.get_snapshot(9)
        assert client.default_and_active() == SnapshotFlags(1, 1)
    assert daemon.closed
    with pytest.raises(SystemError_, match="closed"):
        client.list_snapshots()


def test_dbus_config_by_subvolume(tmp_path: Path) -> None:
    client = _dbus(tmp_path, FakeSnapperd(subvolume=str(tmp_path)))
    assert client.config == "root"
    daemon = FakeSnapperd(subvolume="/elsewhere")
    with pytest.raises(NotManagedError, match="SUBVOLUME"):
        _dbus(tmp_path, daemon)
    assert daemon.closed
    with pytest.raises(NotManagedError, match="no config 'other'"):
        sn.DBusSnapper(Path("/"), "other", connection=FakeSnapperd())


def test_dbus_create_and_set() -> None:
    daemon = FakeSnapperd()
    client = _dbus(daemon=daemon)
    number = client.create_snapshot(
        1, read_only=True, description=NASTY, cleanup="number", userdata={"a": "1", "b": "2"}
    )
    assert daemon.calls[-1] == (
        "CreateSingleSnapshotV2",
        ("root", 1, True, NASTY, "number", {"a": "1", "b": "2"}),
    )
    client.set_snapshot(number, userdata={"c": "3"})
    snap = client.get_snapshot(number)
    assert snap.userdata == {"c": "3"}
    assert snap.description == NASTY
    assert snap.cleanup == "number"
    client.set_snapshot(number, description="d", cleanup="")
    snap = client.get_snapshot(number)
    assert (snap.description, snap.cleanup, snap.userdata) == ("d", "", {"c": "3"})
    with pytest.raises(SnapshotError, match="parent snapshot 9 does not exist"):
        client.create_snapshot(9, read_only=True, description="", cleanup="", userdata={})
    with pytest.raises(UsageError):
        client.set_snapshot(number, userdata={"a=b": "c"})


def test_dbus_delete_checks_everything_first() -> None:
    daemon = FakeSnapperd()
    daemon.snapshots[3] = (3, 0, 0, 1795669500, 0, "", "", {})
    client = _dbus(daemon=daemon)
    with pytest.raises(SnapshotError, match="snapshot 9 does not exist"):
        client.delete_snapshots([3, 9])
    with pytest.raises(SnapshotError, match="snapshot 1 cannot be deleted"):
        client.delete_snapshots([3, 1])
    assert 3 in daemon.snapshots
    client.delete_snapshots([3, 2, 3])
    assert sorted(daemon.snapshots) == [0, 1]
    assert daemon.calls[-1] == ("DeleteSnapshots", ("root", [3, 2]))


def test_snapshots_from_both_backends_are_equal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = _cli(tmp_path, monkeypatch, FakeRun((0, CLI_LIST_JSON, "")))
    dbus = _dbus(tmp_path, FakeSnapperd(subvolume=str(tmp_path)))
    _write_info(tmp_path, 2, INFO_XML_2)
    assert cli.get_snapshot(2) == dbus.get_snapshot(2) == si.read_info(tmp_path, 2)


def test_protocol_is_satisfied(tmp_path: Path) -> None:
    def accepts(client: sn.Snapper) -> str:
        return client.config

    assert accepts(sn.CliSnapper(_managed_root(tmp_path))) == "root"
    assert accepts(_dbus()) == "root"


@pytest.mark.parametrize(
    "description",
    [NASTY, "", "plain", "a & b < c > d", "&amp; literally", "<tag> in text", "multi\nline\n"],
)
def test_fast_info_reader_agrees_with_elementtree(description: str) -> None:
    from xml.sax.saxutils import escape

    text = INFO_XML_2.replace(
        "<description>test x</description>", (f"<description>{escape(description)}</description>")
    )
    fast = si._parse_flat_info(text, lambda uid: "root")
    assert fast is not None
    assert fast.description == description
    slow = si.parse_info_xml(
        text.replace("<snapshot>", "<snapshot><!-- force -->"), lambda u: "root"
    )
    assert fast == slow


@pytest.mark.parametrize(
    "text",
    [
        INFO_XML_2.replace("<snapshot>", '<snapshot x="1">'),
        INFO_XML_2.replace("test x", "<![CDATA[x]]>"),
        INFO_XML_2.replace("test x", "&unknown;"),
        INFO_XML_2.replace("<num>2</num>", "<num>2</num><num>3</num>"),
        INFO_XML_2.replace("2026-11-26 05:04:04", "yesterday"),
    ],
)
def test_fast_info_reader_declines_unusual_files(text: str) -> None:
    assert si._parse_flat_info(text, lambda uid: "root") is None


def test_read_all_info_skips_broken_and_missing(tmp_path: Path) -> None:
    for n in (2, 3, 5):
        (tmp_path / f".snapshots/{n}/snapshot").mkdir(parents=True)
    (tmp_path / ".snapshots/2/info.xml").write_text(INFO_XML_2)
    (tmp_path / ".snapshots/3/info.xml").write_text("not xml")
    (tmp_path / ".snapshots/4").mkdir()
    (tmp_path / ".snapshots/4/info.xml").write_text(INFO_XML_2.replace(">2<", ">4<"))
    (tmp_path / ".snapshots/5/info.xml").write_text(INFO_XML_2.replace("<num>2", "<num>6"))
    # 3 unreadable, 4 has no subvolume, 5 describes another number: snapper skips all three.
    assert [s.number for s in si.read_all_info(tmp_path)] == [2]
