"""A typed client for snapper: its D-Bus API (``org.opensuse.Snapper``) or ``snapper --no-dbus``.

CONTRACT (implemented by the snapper work package; other modules rely on exactly this):

- :class:`Snapshot` — one snapshot's metadata, the same from both backends.
- :class:`Snapper` — the protocol both backends implement.
- :func:`connect` — picks the backend for a managed root.

Snapper stays the owner of snapshot numbering and metadata (``info.xml``); the two things Debian
12's snapper 0.10.4 cannot do (set the btrfs default subvolume, set the read-only flag) live in
:mod:`.btrfs`.

Backends:

- :class:`DBusSnapper` talks to ``snapperd`` over the system bus with jeepney (imported lazily, so
  that a start-up that ends up on the CLI backend does not pay for it).  For the root ``/`` it uses
  the config named by the caller; for any other managed root it uses the config whose ``SUBVOLUME``
  is that root (this is how the tests point a private ``snapperd`` at a loop-mounted image).
- :class:`CliSnapper` runs ``snapper --no-dbus --root ROOT -c CONFIG ...`` through
  :func:`transactional_update.proc.run`, with argument lists only (never a shell).
- :func:`read_info` parses ``ROOT/.snapshots/N/info.xml`` directly: a few snapshots without paying
  for ``snapper list`` on a system with a thousand of them.

Backend choice: ``connect(root, backend=Backend.AUTO)`` uses D-Bus when the system bus is reachable
and snapperd has a config for *root* (named *config* for ``/``, or whose SUBVOLUME is *root*),
otherwise the CLI.  The environment variable ``TU_SNAPPER_BACKEND=dbus|cli|auto`` overrides the
AUTO choice (an explicit *backend* argument still wins).

Both backends check descriptions and userdata the same way before calling snapper, because snapper
itself loses data silently in a few cases (see :func:`check_text` and :func:`check_userdata`).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, NamedTuple, Protocol, Self

from transactional_update import proc
from transactional_update.config.settings import Backend
from transactional_update.errors import (
    ConfigError,
    NoSpaceError,
    NotManagedError,
    SnapshotError,
    SystemError_,
    TUError,
    UsageError,
)
from transactional_update.paths import join_under
from transactional_update.snapshots import btrfs
from transactional_update.snapshots.snapinfo import (
    SNAPSHOTS_DIR,
    Snapshot,
    SnapshotType,
    UserNames,
    _pre_number,
    check_number,
    epoch_to_utc,
    parse_utc,
    read_info,
)

log = logging.getLogger(__name__)

__all__ = [
    "BACKEND_ENV",
    "Backend",
    "CliSnapper",
    "DBusSnapper",
    "Snapper",
    "Snapshot",
    "SnapshotType",
    "connect",
    "read_info",
]

BACKEND_ENV = "TU_SNAPPER_BACKEND"

DBUS_NAME = "org.opensuse.Snapper"
DBUS_PATH = "/org/opensuse/Snapper"
DBUS_INTERFACE = "org.opensuse.Snapper"
# Creating or deleting a snapshot is quick on btrfs, but snapperd may first have to wait for the
# config lock held by another client; a hung daemon must not hang us forever.
DBUS_TIMEOUT = 300.0
CONNECT_TIMEOUT = 30.0
DEFAULT_SYSTEM_BUS = "unix:path=/run/dbus/system_bus_socket"

SNAPPER = "snapper"
SNAPPER_CONFIGS_DIR = "etc/snapper/configs"
# snapper prints translated messages; we parse them, so force the untranslated ones.
CLI_LOCALE = "C.UTF-8"


class Snapper(Protocol):
    """What the rest of the tool needs from snapper.  Errors raise TUError subclasses."""

    config: str
    backend: Backend

    def list_snapshots(self) -> list[Snapshot]: ...

    def get_snapshot(self, number: int) -> Snapshot: ...

    def create_snapshot(
        self,
        parent: int,
        *,
        read_only: bool,
        description: str,
        cleanup: str,
        userdata: Mapping[str, str],
    ) -> int: ...

    def set_snapshot(
        self,
        number: int,
        *,
        description: str | None = None,
        cleanup: str | None = None,
        userdata: Mapping[str, str] | None = None,
    ) -> None: ...

    def delete_snapshots(self, numbers: Sequence[int]) -> None: ...


class SnapshotFlags(NamedTuple):
    """Which snapshots snapper refuses to delete besides 0: the default and the active one."""

    default: int | None
    active: int | None


# --------------------------------------------------------------------------------------------
# Validation shared by both backends


def _hint_list(config: str) -> str:
    return f"list the snapshots with: snapper -c {config} list"


def _missing(number: int, config: str, *, parent: bool = False) -> str:
    return (
        f"{'parent ' if parent else ''}snapshot {number} does not exist (snapper config {config!r})"
    )


def _no_space(root: Path, what: str) -> NoSpaceError:
    return NoSpaceError(
        f"snapper {what} failed: no space left on the filesystem of {root}",
        "free space on the btrfs filesystem (delete old snapshots), then retry",
    )


def out_of_space(path: Path, minimum: int = 1 << 20) -> bool:
    """Whether the filesystem of *path* has less than *minimum* bytes available."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < minimum


def _bad_char(text: str) -> str | None:
    for char in text:
        code = ord(char)
        # snapper stores metadata in XML 1.0: libxml2 drops the whole string on a control
        # character ("char out of range"), and any XML reader turns \r into \n.
        if (code < 0x20 and char not in "\t\n") or 0xD800 <= code <= 0xDFFF:
            return char
        if code in (0xFFFE, 0xFFFF):
            return char
    return None


def check_text(text: str, what: str) -> str:
    """*text* if snapper can store it exactly; otherwise a :class:`UsageError`.

    Anything printable round-trips (quotes, ``$``, ``;``, newlines, tabs, leading and trailing
    spaces); control characters other than tab and newline do not.
    """
    if not isinstance(text, str):
        raise UsageError(f"the snapshot {what} must be text, not {type(text).__name__}")
    bad = _bad_char(text)
    if bad is not None:
        raise UsageError(
            f"the snapshot {what} contains the control character {bad!r}",
            "snapper stores metadata as XML, which cannot hold it; remove it",
        )
    return text


def check_userdata(userdata: Mapping[str, str]) -> dict[str, str]:
    """A plain copy of *userdata* if both snapper backends store it exactly; else UsageError.

    libsnapper rejects ``,`` and ``=`` in keys and values (``error.invalid_userdata``); the CLI
    also trims spaces around keys and values and treats an empty value as "remove the key".
    """
    result: dict[str, str] = {}
    for key, value in userdata.items():
        check_text(key, "userdata key")
        check_text(value, f"userdata value of {key!r}")
        if not key:
            raise UsageError("snapshot userdata has an empty key", "give every value a key")
        for item, text in (("key", key), ("value", value)):
            if "," in text or "=" in text:
                raise UsageError(
                    f"snapshot userdata {item} {text!r} contains ',' or '='",
                    "snapper cannot store ',' or '=' in userdata; choose other characters",
                )
            if text != text.strip():
                raise UsageError(
                    f"snapshot userdata {item} {text!r} has leading or trailing whitespace",
                    "snapper's command line strips it; remove it",
                )
        if not value:
            raise UsageError(
                f"snapshot userdata key {key!r} has an empty value",
                "snapper cannot store empty userdata values; leave the key out instead",
            )
        result[key] = value
    return result


def check_config_name(config: str) -> str:
    if not config or "/" in config or config.startswith(".") or _bad_char(config) is not None:
        raise NotManagedError(
            f"invalid snapper config name {config!r}", "use a plain name such as 'root'"
        )
    return config


def _unique(numbers: Iterable[int]) -> list[int]:
    seen: dict[int, None] = {}
    for number in numbers:
        seen[check_number(number)] = None
    return list(seen)


def deletion_refusal(number: int, flags: SnapshotFlags) -> str | None:
    """Why snapper would refuse to delete *number*, or None."""
    if number == flags.active:
        return "it is the active snapshot (the running system)"
    if number == flags.default:
        return "it is the default snapshot (booted next)"
    return None


# --------------------------------------------------------------------------------------------
# Users and dates


# --------------------------------------------------------------------------------------------
# D-Bus: pure helpers


def dbus_escape(text: str) -> str:
    """*text* escaped the way snapper's D-Bus layer expects every string.

    snapper sends ``\\\\`` for a backslash and ``\\xNN`` for each byte above 127, and unescapes
    every string it receives: an unescaped backslash fails the call (``error.dbus.marshalling``),
    and non-ASCII text comes back escaped even when it was sent raw.
    """
    out: list[str] = []
    for byte in text.encode("utf-8", errors="surrogateescape"):
        if byte == 0x5C:
            out.append("\\\\")
        elif byte > 0x7F:
            out.append(f"\\x{byte:02x}")
        else:
            out.append(chr(byte))
    return "".join(out)


def dbus_unescape(text: str) -> str:
    """The inverse of :func:`dbus_escape`: snapperd escapes every string it sends."""
    if "\\" not in text:
        return text
    data = bytearray()
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and text[i + 1 : i + 2] == "\\":
            data.append(0x5C)
            i += 2
        elif char == "\\" and text[i + 1 : i + 2] == "x" and _is_hex(text[i + 2 : i + 4]):
            data.append(int(text[i + 2 : i + 4], 16))
            i += 4
        else:  # not snapper's escaping: keep it as it came
            data.extend(char.encode("utf-8", errors="surrogateescape"))
            i += 1
    return data.decode("utf-8", errors="replace")


def _is_hex(text: str) -> bool:
    return len(text) == 2 and all(c in "0123456789abcdefABCDEF" for c in text)


def dbus_escape_value(value: Any) -> Any:
    """*value* (an argument tuple, list, dict or scalar) with every string escaped."""
    if isinstance(value, str):
        return dbus_escape(value)
    if isinstance(value, dict):
        return {dbus_escape_value(k): dbus_escape_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(dbus_escape_value(v) for v in value)
    return value


def dbus_unescape_value(value: Any) -> Any:
    """*value* (a reply body or part of one) with every string unescaped."""
    if isinstance(value, str):
        return dbus_unescape(value)
    if isinstance(value, dict):
        return {dbus_unescape_value(k): dbus_unescape_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(dbus_unescape_value(v) for v in value)
    return value


def snapshot_from_dbus(value: Sequence[Any], user_name: Callable[[int], str]) -> Snapshot:
    """A :class:`Snapshot` from snapperd's ``(uquxussa{ss})`` tuple (already unescaped)."""
    number, type_code, pre, date, uid, description, cleanup, userdata = value
    try:
        snapshot_type = (SnapshotType.SINGLE, SnapshotType.PRE, SnapshotType.POST)[type_code]
    except IndexError as exc:
        raise SystemError_(f"snapperd reported an unknown snapshot type {type_code}") from exc
    return Snapshot(
        number=int(number),
        type=snapshot_type,
        pre_number=_pre_number(snapshot_type, int(pre)),
        date=epoch_to_utc(int(date)),
        user=user_name(int(uid)),
        description=str(description),
        cleanup=str(cleanup),
        userdata={str(k): str(v) for k, v in dict(userdata).items()},
    )


def same_path(a: str | Path, b: str | Path) -> bool:
    """Whether two absolute paths name the same directory (lexically, or after symlinks)."""
    if os.path.normpath(a) == os.path.normpath(b):
        return True
    return os.path.realpath(a) == os.path.realpath(b)


def is_host_root(root: Path) -> bool:
    return same_path(root, "/")


def select_config(configs: Iterable[tuple[str, str]], root: Path, wanted: str) -> str | None:
    """The config to use among snapperd's ``(name, subvolume)`` pairs, or None.

    For ``/`` that is *wanted*; for another root, a config whose SUBVOLUME is that root (the one
    named *wanted* if several are).
    """
    pairs = list(configs)
    if is_host_root(root):
        return wanted if any(name == wanted for name, _ in pairs) else None
    matches = sorted(name for name, subvolume in pairs if same_path(subvolume, root))
    if not matches:
        return None
    return wanted if wanted in matches else matches[0]


# snapperd's errors that may hide ENOSPC: a full disk while writing info.xml comes back as
# error.io_error "xmlDocFormatDump failed", with no errno.
DBUS_IO_ERRORS = frozenset(
    {
        "error.io_error",
        "error.create_snapshot_failed",
        "error.delete_snapshot_failed",
        "error.something",
    }
)


def map_dbus_error(
    name: str,
    detail: str,
    *,
    config: str,
    illegal: str,
    root: Path = Path("/"),
    what: str = "request",
    no_space: bool = False,
) -> TUError:
    """Our error for snapperd's error reply *name* (e.g. ``error.illegal_snapshot``).

    *illegal* is the message for an unknown or unusable snapshot number in this call; *no_space*
    says that the filesystem is full, which snapperd's I/O errors do not say themselves.
    """
    # snapperd puts "org.freedesktop.DBus.Error.Failed" in the body of most errors: no news.
    info = "" if detail in ("", "org.freedesktop.DBus.Error.Failed") else f" ({detail})"
    if (
        "No space left" in detail
        or name in ("error.free_space", "error.quota")
        or (no_space and name in DBUS_IO_ERRORS)
    ):
        return _no_space(root, what)
    if name == "error.unknown_config":
        return NotManagedError(
            f"snapper has no config {config!r}",
            f"create it with: snapper -c {config} create-config /",
        )
    if name == "error.illegal_snapshot":
        return SnapshotError(illegal, _hint_list(config))
    if name == "error.snapshot_in_use":
        return SnapshotError(
            f"{illegal}: it is in use (mounted by snapper)", "unmount it with: snapper umount N"
        )
    if name == "error.invalid_userdata":
        return UsageError(
            "snapper rejected the snapshot userdata", "keys and values must not contain , or ="
        )
    if name == "error.no_permissions":
        return SystemError_("snapperd refused the request: no permissions", "run as root")
    if name == "error.config_locked":
        return SystemError_(
            f"snapper config {config!r} is locked by another snapper client",
            "wait for it to finish, then retry",
        )
    # ServiceUnknown: snapper's D-Bus service is not installed; Spawn.*: snapperd failed to start
    # (e.g. it aborts when it cannot reach the bus at the default socket path).
    if name in (
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NoReply",
    ) or name.startswith("org.freedesktop.DBus.Error.Spawn."):
        return SystemError_(
            f"snapperd is not available on the system bus{info}",
            f"install snapper, or set {BACKEND_ENV}=cli",
        )
    return SystemError_(
        f"snapper {what} failed: {name}{info}",
        f"see snapperd's log (/var/log/snapper.log) or {BACKEND_ENV}=cli",
    )


def system_bus_reachable(environ: Mapping[str, str] | None = None) -> bool:
    """Cheap check (no connection) that a system bus socket exists."""
    env = os.environ if environ is None else environ
    address = env.get("DBUS_SYSTEM_BUS_ADDRESS") or DEFAULT_SYSTEM_BUS
    for entry in address.split(";"):
        transport, _, params = entry.partition(":")
        options = dict(p.partition("=")[::2] for p in params.split(",") if p)
        if transport == "unix" and "path" in options:
            if os.path.exists(options["path"]):
                return True
        elif transport:
            return True  # abstract sockets, tcp...: only connecting can tell
    return False


# --------------------------------------------------------------------------------------------
# D-Bus backend


_DBUS_WHAT = {
    "CreateSingleSnapshotV2": "create",
    "SetSnapshot": "modify",
    "DeleteSnapshots": "delete",
    "ListSnapshots": "list",
    "GetSnapshot": "list",
}


def _jeepney() -> tuple[ModuleType, ModuleType]:
    # Imported here, not at module level: the CLI backend must not pay for it at start-up.
    # import_module also keeps mypy away from jeepney's missing type information.
    return importlib.import_module("jeepney"), importlib.import_module("jeepney.io.blocking")


class _Closing:
    """``with client:`` closes the client; shared by both backends."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class DBusSnapper(_Closing):
    """:class:`Snapper` over snapperd's D-Bus API; keeps one connection until :meth:`close`."""

    backend = Backend.DBUS

    def __init__(
        self,
        root: Path,
        config: str = "root",
        *,
        timeout: float = DBUS_TIMEOUT,
        connection: Any = None,
    ) -> None:
        """Connect (unless given a jeepney blocking *connection*) and pick the config.

        Raises :class:`SystemError_` if the bus is unreachable, :class:`NotManagedError` if
        snapperd has no config for *root*.
        """
        self.root = Path(root)
        self.config = check_config_name(config)
        self.timeout = timeout
        self._user_name = UserNames(self.root)
        jeepney, blocking = _jeepney()
        self._jeepney = jeepney
        if connection is None:
            try:
                connection = blocking.open_dbus_connection(bus="SYSTEM")
            # OSError (no socket), AuthenticationError (a ValueError), RuntimeError (transport)
            except (OSError, ValueError, RuntimeError) as exc:
                raise SystemError_(
                    f"cannot connect to the D-Bus system bus: {exc}",
                    f"start dbus, or set {BACKEND_ENV}=cli",
                ) from exc
        self._conn: Any = connection
        self._address = jeepney.DBusAddress(DBUS_PATH, bus_name=DBUS_NAME, interface=DBUS_INTERFACE)
        try:
            self.config = self._find_config(config)
        except BaseException:
            self.close()
            raise

    def _find_config(self, wanted: str) -> str:
        # The first call may start snapperd; that takes milliseconds, so do not wait long.
        configs = self._call(
            "ListConfigs", None, (), illegal="", timeout=min(self.timeout, CONNECT_TIMEOUT)
        )[0]
        chosen = select_config(((str(c[0]), str(c[1])) for c in configs), self.root, wanted)
        if chosen is None:
            if is_host_root(self.root):
                raise NotManagedError(
                    f"snapper has no config {wanted!r}",
                    f"create it with: snapper -c {wanted} create-config /",
                )
            raise NotManagedError(
                f"snapperd has no config whose SUBVOLUME is {self.root}",
                f"add one, or set {BACKEND_ENV}=cli to use {self.root}/etc/snapper",
            )
        return chosen

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _call(
        self,
        method: str,
        signature: str | None,
        args: tuple[Any, ...],
        *,
        illegal: str,
        timeout: float | None = None,
    ) -> tuple[Any, ...]:
        if self._conn is None:
            raise SystemError_("the snapper D-Bus connection is closed", "connect again")
        jeepney = self._jeepney
        message = jeepney.new_method_call(self._address, method, signature, dbus_escape_value(args))
        log.debug("snapperd: %s%r", method, args)
        try:
            reply = self._conn.send_and_get_reply(message, timeout=timeout or self.timeout)
        except TimeoutError as exc:
            raise SystemError_(
                f"snapperd did not answer {method} within {timeout or self.timeout:.0f} s",
                "check snapperd (journalctl -u snapperd) and retry",
            ) from exc
        except (OSError, ValueError) as exc:
            raise SystemError_(f"D-Bus call {method} failed: {exc}", "retry") from exc
        if reply.header.message_type == jeepney.MessageType.error:
            name = str(reply.header.fields.get(jeepney.HeaderFields.error_name, ""))
            body = reply.body
            detail = str(body[0]) if body and isinstance(body[0], str) else ""
            log.debug("snapperd: %s failed: %s %s", method, name, detail)
            no_space = name in DBUS_IO_ERRORS and out_of_space(self.root / SNAPSHOTS_DIR)
            raise map_dbus_error(
                name,
                detail,
                config=self.config,
                illegal=illegal,
                root=self.root,
                what=_DBUS_WHAT.get(method, method),
                no_space=no_space,
            )
        return tuple(dbus_unescape_value(reply.body))

    def list_snapshots(self) -> list[Snapshot]:
        body = self._call("ListSnapshots", "s", (self.config,), illegal="")
        return [snapshot_from_dbus(t, self._user_name) for t in body[0] if int(t[0]) != 0]

    def get_snapshot(self, number: int) -> Snapshot:
        check_number(number, allow_current=True)
        body = self._call(
            "GetSnapshot", "su", (self.config, number), illegal=_missing(number, self.config)
        )
        return snapshot_from_dbus(body[0], self._user_name)

    def default_and_active(self) -> SnapshotFlags:
        """The default (booted next) and active (running) snapshot numbers, if any."""
        default = self._call("GetDefaultSnapshot", "s", (self.config,), illegal="")
        active = self._call("GetActiveSnapshot", "s", (self.config,), illegal="")
        return SnapshotFlags(
            default=int(default[1]) if default[0] else None,
            active=int(active[1]) if active[0] else None,
        )

    def create_snapshot(
        self,
        parent: int,
        *,
        read_only: bool,
        description: str,
        cleanup: str,
        userdata: Mapping[str, str],
    ) -> int:
        check_number(parent, allow_current=True)
        args = (
            self.config,
            parent,
            bool(read_only),
            check_text(description, "description"),
            check_text(cleanup, "cleanup algorithm"),
            check_userdata(userdata),
        )
        body = self._call(
            "CreateSingleSnapshotV2",
            "subssa{ss}",
            args,
            illegal=_missing(parent, self.config, parent=True),
        )
        return int(body[0])

    def set_snapshot(
        self,
        number: int,
        *,
        description: str | None = None,
        cleanup: str | None = None,
        userdata: Mapping[str, str] | None = None,
    ) -> None:
        check_number(number)
        new_userdata = None if userdata is None else check_userdata(userdata)
        if description is not None:
            check_text(description, "description")
        if cleanup is not None:
            check_text(cleanup, "cleanup algorithm")
        # SetSnapshot always writes all three fields: fill the unchanged ones from snapperd.
        current = self.get_snapshot(number)
        args = (
            self.config,
            number,
            current.description if description is None else description,
            current.cleanup if cleanup is None else cleanup,
            dict(current.userdata) if new_userdata is None else new_userdata,
        )
        self._call("SetSnapshot", "sussa{ss}", args, illegal=_missing(number, self.config))

    def delete_snapshots(self, numbers: Sequence[int]) -> None:
        wanted = _unique(numbers)
        if not wanted:
            return
        # snapperd deletes in order and stops at the first unknown or protected number, leaving
        # the earlier ones deleted: check them all first so that a refusal changes nothing.
        for number in wanted:
            self.get_snapshot(number)
        flags = self.default_and_active()
        for number in wanted:
            reason = deletion_refusal(number, flags)
            if reason:
                raise SnapshotError(f"snapshot {number} cannot be deleted: {reason}", "")
        with _nested_removed(self.root, wanted):
            self._call(
                "DeleteSnapshots",
                "sau",
                (self.config, wanted),
                illegal=f"snapshots {_join(wanted)} cannot be deleted",
            )


# --------------------------------------------------------------------------------------------
# CLI: pure helpers


def cli_base(root: Path, config: str) -> list[str]:
    return [SNAPPER, "--no-dbus", "--root", str(root), "-c", config]


def cli_list_argv(root: Path, config: str) -> list[str]:
    # --utc: without it the JSON dates are local time with no zone; the JSON date format is the
    # ISO-like "YYYY-MM-DD HH:MM:SS" with or without --iso.
    return [*cli_base(root, config), "--utc", "--iso", "--jsonout", "list", "--disable-used-space"]


def format_userdata(changes: Mapping[str, str]) -> str:
    """The CLI's ``k=v,k2=`` form (an empty value removes the key)."""
    return ",".join(f"{key}={value}" for key, value in changes.items())


def cli_create_argv(
    root: Path,
    config: str,
    parent: int,
    *,
    read_only: bool,
    description: str,
    cleanup: str,
    userdata: Mapping[str, str],
) -> list[str]:
    argv = [
        *cli_base(root, config),
        "create",
        "--type",
        "single",
        "--from",
        str(parent),
        "--read-only" if read_only else "--read-write",
        "--print-number",
        "--description",
        description,
    ]
    if cleanup:
        argv += ["--cleanup-algorithm", cleanup]
    if userdata:
        argv += ["--userdata", format_userdata(userdata)]
    return argv


def userdata_changes(old: Mapping[str, str], new: Mapping[str, str]) -> dict[str, str]:
    """What ``modify --userdata`` needs to turn *old* into *new* (``key=`` removes a key)."""
    changes = {key: "" for key in old if key not in new}
    changes.update({key: value for key, value in new.items() if old.get(key) != value})
    return changes


def cli_modify_argv(
    root: Path,
    config: str,
    number: int,
    *,
    description: str | None,
    cleanup: str | None,
    changes: Mapping[str, str],
) -> list[str]:
    argv = [*cli_base(root, config), "modify"]
    if description is not None:
        argv += ["--description", description]
    if cleanup is not None:
        argv += ["--cleanup-algorithm", cleanup]
    if changes:
        # An empty --userdata is an error ("Empty userdata."), so only pass it with changes.
        argv += ["--userdata", format_userdata(changes)]
    return [*argv, str(number)]


def cli_delete_argv(root: Path, config: str, numbers: Sequence[int]) -> list[str]:
    return [*cli_base(root, config), "delete", *(str(n) for n in numbers)]


class ListEntry(NamedTuple):
    snapshot: Snapshot
    default: bool
    active: bool


def snapshot_from_json(entry: Mapping[str, Any]) -> Snapshot:
    """A :class:`Snapshot` from one entry of ``snapper --utc --jsonout list``."""
    snapshot_type = SnapshotType(entry["type"])
    userdata = entry.get("userdata") or {}
    pre = entry.get("pre-number")
    return Snapshot(
        number=int(entry["number"]),
        type=snapshot_type,
        pre_number=_pre_number(snapshot_type, None if pre is None else int(pre)),
        date=parse_utc(str(entry.get("date") or "")),
        user=str(entry.get("user") or ""),
        description=str(entry.get("description") or ""),
        cleanup=str(entry.get("cleanup") or ""),
        userdata={str(k): str(v) for k, v in userdata.items()},
    )


def parse_cli_list(text: str, config: str) -> list[ListEntry]:
    """Every entry (snapshot 0 included) of ``snapper --jsonout list`` output."""
    try:
        data = json.loads(text)
        entries = data[config] if config in data else next(iter(data.values()))
        return [
            ListEntry(snapshot_from_json(e), bool(e.get("default")), bool(e.get("active")))
            for e in entries
        ]
    except (ValueError, KeyError, TypeError, StopIteration, AttributeError) as exc:
        raise SystemError_(
            f"cannot parse the output of snapper list: {exc}", "run snapper --jsonout list by hand"
        ) from exc


_NOT_FOUND = re.compile(r"Snapshot '(\d+)' not found")
_CANNOT_DELETE = re.compile(r"Cannot delete snapshot (\d+) since (.*?)\.?$", re.MULTILINE)
_NO_CONFIG = re.compile(r"Config '(.*)' not found")


def map_cli_error(stderr: str, *, config: str, root: Path, illegal: str, what: str) -> TUError:
    """Our error for a failed ``snapper`` run, from its (untranslated) stderr."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "no error message"
    # A full disk while writing info.xml ends in "IO error (xmlDocFormatDump failed)."; only
    # libxml2's earlier line says "No space left on device".
    if "No space left" in stderr or "Quota error" in stderr or "Free space error" in stderr:
        return _no_space(root, what)
    match = _NOT_FOUND.search(stderr)
    if match:
        number = int(match.group(1))
        # In `create` the only number snapper looks up is the parent.
        return SnapshotError(_missing(number, config, parent=what == "create"), _hint_list(config))
    match = _CANNOT_DELETE.search(stderr)
    if match:
        return SnapshotError(f"snapshot {match.group(1)} cannot be deleted: {match.group(2)}", "")
    if "Illegal snapshot" in stderr:
        return SnapshotError(illegal, _hint_list(config))
    match = _NO_CONFIG.search(stderr)
    if match:
        return NotManagedError(
            f"snapper config {match.group(1)!r} not found under {root}",
            f"create {join_under(root, SNAPPER_CONFIGS_DIR)}/{match.group(1)}",
        )
    if "nvalid userdata" in stderr:
        return UsageError(
            "snapper rejected the snapshot userdata", "keys and values must not contain , or ="
        )
    if "Config is locked" in stderr:
        return SystemError_(
            f"snapper config {config!r} is locked by another snapper client",
            "wait for it to finish, then retry",
        )
    return SystemError_(f"snapper: {what} failed: {last}", "run with --debug to see the command")


def _join(numbers: Iterable[int]) -> str:
    return ", ".join(str(n) for n in numbers)


# --------------------------------------------------------------------------------------------
# CLI backend


class CliSnapper(_Closing):
    """:class:`Snapper` by running ``snapper --no-dbus --root ROOT -c CONFIG``."""

    backend = Backend.CLI

    def __init__(self, root: Path, config: str = "root") -> None:
        self.root = Path(root)
        self.config = check_config_name(config)
        # Checked here because snapper's own message ("Config 'root' not found.") names no path.
        config_file = join_under(self.root, SNAPPER_CONFIGS_DIR) / self.config
        if not config_file.is_file():
            raise NotManagedError(
                f"{self.root} has no snapper config {self.config!r} ({config_file} is missing)",
                f"create it with: snapper --no-dbus --root {self.root} -c {self.config} "
                "create-config /",
            )

    def close(self) -> None:
        """Nothing to release; here so that both backends can be used the same way."""

    def _run(self, argv: Sequence[str], *, what: str, illegal: str = "") -> str:
        env = {**os.environ, "LC_ALL": CLI_LOCALE}
        result = proc.run(argv, check=False, env=env, what=f"snapper {what}")
        if result.returncode != 0:
            log.debug("snapper failed (exit %d): %s", result.returncode, result.stderr.strip())
            raise map_cli_error(
                result.stderr, config=self.config, root=self.root, illegal=illegal, what=what
            )
        # snapper delete reports a refused number on stderr but still exits 0.
        if _CANNOT_DELETE.search(result.stderr):
            raise map_cli_error(
                result.stderr, config=self.config, root=self.root, illegal=illegal, what=what
            )
        return result.stdout

    def _list(self) -> list[ListEntry]:
        return parse_cli_list(
            self._run(cli_list_argv(self.root, self.config), what="list"), self.config
        )

    def list_snapshots(self) -> list[Snapshot]:
        return [entry.snapshot for entry in self._list() if entry.snapshot.number != 0]

    def get_snapshot(self, number: int) -> Snapshot:
        check_number(number, allow_current=True)
        if number > 0:
            # Without snapperd, info.xml is what `snapper --no-dbus` itself reads: one file
            # instead of listing every snapshot (65-80 ms with 1,000 snapshots).
            return read_info(self.root, number)
        for entry in self._list():
            if entry.snapshot.number == number:
                return entry.snapshot
        raise SnapshotError(
            _missing(number, self.config),
            _hint_list(self.config),
        )

    def default_and_active(self) -> SnapshotFlags:
        """The default (booted next) and active (running) snapshot numbers, if any."""
        return _flags(self._list())

    def create_snapshot(
        self,
        parent: int,
        *,
        read_only: bool,
        description: str,
        cleanup: str,
        userdata: Mapping[str, str],
    ) -> int:
        check_number(parent, allow_current=True)
        argv = cli_create_argv(
            self.root,
            self.config,
            parent,
            read_only=read_only,
            description=check_text(description, "description"),
            cleanup=check_text(cleanup, "cleanup algorithm"),
            userdata=check_userdata(userdata),
        )
        out = self._run(argv, what="create", illegal=_missing(parent, self.config, parent=True))
        try:
            return int(out.strip().splitlines()[-1])
        except (ValueError, IndexError) as exc:
            raise SystemError_(
                f"snapper create printed no snapshot number: {out.strip()!r}",
                "check snapper list for a half-created snapshot",
            ) from exc

    def set_snapshot(
        self,
        number: int,
        *,
        description: str | None = None,
        cleanup: str | None = None,
        userdata: Mapping[str, str] | None = None,
    ) -> None:
        check_number(number)
        if description is not None:
            check_text(description, "description")
        if cleanup is not None:
            check_text(cleanup, "cleanup algorithm")
        changes: dict[str, str] = {}
        if userdata is not None:
            # The CLI only adds or removes keys; "replace all userdata" needs the current ones.
            changes = userdata_changes(self.get_snapshot(number).userdata, check_userdata(userdata))
        argv = cli_modify_argv(
            self.root,
            self.config,
            number,
            description=description,
            cleanup=cleanup,
            changes=changes,
        )
        self._run(argv, what="modify", illegal=_missing(number, self.config))

    def delete_snapshots(self, numbers: Sequence[int]) -> None:
        wanted = _unique(numbers)
        if not wanted:
            return
        # snapper delete skips a protected number (exit 0) and goes on with the others: check
        # them all first so that a refusal changes nothing.
        entries = self._list()
        known = {entry.snapshot.number for entry in entries}
        flags = _flags(entries)
        for number in wanted:
            if number not in known:
                raise SnapshotError(
                    _missing(number, self.config),
                    _hint_list(self.config),
                )
            reason = deletion_refusal(number, flags)
            if reason:
                raise SnapshotError(f"snapshot {number} cannot be deleted: {reason}", "")
        with _nested_removed(self.root, wanted):
            self._run(
                cli_delete_argv(self.root, self.config, wanted),
                what="delete",
                illegal=f"snapshots {_join(wanted)} cannot be deleted",
            )


@contextmanager
def _nested_removed(root: Path, numbers: Sequence[int]) -> Iterator[None]:
    """snapper 0.10.4 cannot delete a snapshot holding a nested subvolume (its /etc, see
    :mod:`snapshots.etcvol`) and has no hook that would: they go first.  Should snapper fail
    after that, a snapshot it left keeps its read-only flag again; without its /etc it is left
    out of the boot menu and refused by rollback, and the next delete finishes it."""
    from transactional_update.snapshots import etcvol

    dirs = [root / SNAPSHOTS_DIR / str(number) / "snapshot" for number in numbers]
    try:
        for snap in dirs:
            etcvol.remove_nested(snap)
        yield
    except BaseException:
        for snap in dirs:
            if btrfs.is_subvolume(snap):
                with contextlib.suppress(TUError):
                    btrfs.set_read_only(snap, True)
                log.error("snapshot %s lost its /etc but was not deleted; delete it again", snap)
        raise


def _flags(entries: Iterable[ListEntry]) -> SnapshotFlags:
    default = active = None
    for entry in entries:
        if entry.default:
            default = entry.snapshot.number
        if entry.active:
            active = entry.snapshot.number
    return SnapshotFlags(default=default, active=active)


# --------------------------------------------------------------------------------------------
# Choosing a backend


def resolve_backend(requested: Backend, env_value: str | None) -> Backend:
    """The backend to use: *requested*, or for AUTO the one ``TU_SNAPPER_BACKEND`` names."""
    if requested is not Backend.AUTO or not env_value:
        return requested
    try:
        return Backend(env_value.strip().lower())
    except ValueError as exc:
        raise ConfigError(
            f"{BACKEND_ENV}={env_value!r} is not one of: auto, dbus, cli",
            f"unset {BACKEND_ENV} or set it to dbus or cli",
        ) from exc


def connect(root: Path, config: str = "root", backend: Backend = Backend.AUTO) -> Snapper:
    """A snapper client for the system at *root* (see the module docstring for the choice).

    Cheap: it lists no snapshots.  The D-Bus client holds a connection; call its ``close()`` (or
    use it as a context manager) when done.
    """
    root = Path(root)
    chosen = resolve_backend(Backend(backend), os.environ.get(BACKEND_ENV))
    if chosen is Backend.CLI:
        return CliSnapper(root, config)
    if chosen is Backend.DBUS:
        return DBusSnapper(root, config)
    if system_bus_reachable():
        try:
            return DBusSnapper(root, config)
        except TUError as exc:
            log.debug("snapper: not using D-Bus for %s: %s", root, exc)
    return CliSnapper(root, config)
