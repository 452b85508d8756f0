"""Snapshot metadata read straight from snapper's ``info.xml``, behind ``status`` and ``list``.

Both snapper backends return the :class:`Snapshot` defined here.  This module imports nothing
heavier than :mod:`re` and :mod:`datetime` (no dataclasses, logging or typing at run time),
because ``status`` and ``list`` are what monitoring calls every minute, and on a system with a
thousand snapshots they must stay cheaper than ``snapper list`` itself (see bench/).
"""

from __future__ import annotations

import os
import pwd
import re
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from transactional_update.errors import NotManagedError, SnapshotError, SystemError_
from transactional_update.paths import join_under

TYPE_CHECKING = False  # typing itself is not imported: it costs status ~3 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

SNAPSHOTS_DIR = ".snapshots"
IN_PROGRESS = "transactional-update-in-progress"
FAILED = "transactional-update-failed"  # a failed transaction's snapshot kept with --keep
_U32_MAX = 2**32 - 1
_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


def _number(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() else None


def snapshot_number(subvol_path: str) -> int | None:
    """N for a subvolume path ending in ``.snapshots/N/snapshot``, else None."""
    head, sep, tail = subvol_path.rpartition(".snapshots/")
    if not sep or (head and not head.endswith("/")):
        return None
    number, _, rest = tail.partition("/")
    return _number(number) if rest == "snapshot" else None


class SnapshotType(StrEnum):
    SINGLE = "single"
    PRE = "pre"
    POST = "post"


class Snapshot:
    """One snapshot's metadata, the same from both backends; immutable.

    A hand-written record rather than a dataclass: importing :mod:`dataclasses` (and with it
    :mod:`inspect`) would cost ``status`` about a third of its run time.
    """

    __slots__ = (
        "cleanup",
        "date",
        "description",
        "number",
        "pre_number",
        "type",
        "user",
        "userdata",
    )
    number: int
    type: SnapshotType
    pre_number: int | None
    date: datetime | None  # timezone-aware UTC; None for snapshot 0 ("current")
    user: str  # user name (D-Bus gives a uid; mapped through the managed root's /etc/passwd)
    description: str
    cleanup: str
    userdata: Mapping[str, str]

    def __init__(
        self,
        number: int,
        type: SnapshotType,
        pre_number: int | None,
        date: datetime | None,
        user: str,
        description: str,
        cleanup: str,
        userdata: Mapping[str, str] | None = None,
    ) -> None:
        setter = object.__setattr__
        setter(self, "number", number)
        setter(self, "type", type)
        setter(self, "pre_number", pre_number)
        setter(self, "date", date)
        setter(self, "user", user)
        setter(self, "description", description)
        setter(self, "cleanup", cleanup)
        setter(self, "userdata", userdata or {})

    _FIELDS = ("number", "type", "pre_number", "date", "user", "description", "cleanup", "userdata")

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._FIELDS)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Snapshot is immutable (cannot set {name})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Snapshot):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values()[:7])

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._FIELDS)
        return f"Snapshot({fields})"


def check_number(number: int, *, allow_current: bool = False) -> int:
    """*number* as a snapshot number snapper can take (an unsigned 32-bit integer)."""
    if isinstance(number, bool) or not isinstance(number, int):
        raise SnapshotError(f"invalid snapshot number {number!r}", "snapshot numbers are integers")
    low = 0 if allow_current else 1
    if not low <= number <= _U32_MAX:
        if number == 0:
            raise SnapshotError(
                "snapshot 0 is the running system, not a snapshot",
                "give the number of a real snapshot",
            )
        raise SnapshotError(f"invalid snapshot number {number}", "snapshot numbers start at 1")
    return number


def parse_passwd(text: str) -> dict[int, str]:
    """uid -> first user name, from passwd(5) text."""
    users: dict[int, str] = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 3 or not fields[0] or fields[0].startswith(("#", "+", "-")):
            continue
        if fields[2].isdigit():
            users.setdefault(int(fields[2]), fields[0])
    return users


class UserNames:
    """uid -> name through ROOT/etc/passwd, then the host's, then snapper's "unknown (UID)"."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._table: dict[int, str] | None = None

    def __call__(self, uid: int) -> str:
        if self._table is None:
            try:
                text = join_under(self.root, "etc/passwd").read_text(errors="replace")
            except OSError:
                text = ""
            self._table = parse_passwd(text)
        name = self._table.get(uid)
        if name is not None:
            return name
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            # The same text `snapper list` prints for a uid it cannot name.
            return f"unknown ({uid})"


def parse_utc(text: str) -> datetime | None:
    """Snapper's ``YYYY-MM-DD HH:MM:SS`` (UTC: info.xml, or ``--utc`` output); '' -> None."""
    text = text.strip()
    if not text:
        return None
    try:
        return datetime.strptime(text, _DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError as exc:
        raise SystemError_(
            f"snapper gave an unreadable date {text!r}", "check the snapshot's info.xml"
        ) from exc


def epoch_to_utc(seconds: int) -> datetime | None:
    """snapperd's date (seconds since the epoch; -1 for snapshot 0) as a UTC datetime."""
    if seconds < 0:
        return None
    return datetime.fromtimestamp(seconds, tz=UTC)


def _pre_number(snapshot_type: SnapshotType, value: int | None) -> int | None:
    # D-Bus reports pre_number 0 for singles; only a post snapshot has a real one.
    if snapshot_type is SnapshotType.POST and value:
        return value
    return None


# --------------------------------------------------------------------------------------------
# info.xml


# snapper (libxml2) writes info.xml as flat elements with escaped text and no attributes,
# comments or CDATA; such a file is read with one regex, ~10x faster than building a tree, which
# is what keeps `list` with 1,000 snapshots faster than `snapper list`.  Anything else goes to
# ElementTree, so both readers always agree.
_FLAT_FIELD = re.compile(r"<(\w+)>([^<]*)</\1>|<(\w+)\s*/>")
_NOT_FLAT = re.compile(
    r"<!|<\?(?!xml )|<\w+\s+[^>/]|&(?!(?:amp|lt|gt|quot|apos|#\d+|#x[0-9a-fA-F]+);)"
)
# The five entities and the character references libxml2 writes; html.unescape would do, but
# importing html (and its 2,000-entry table) costs more than all of status's own work.
_ENTITY = r"&(amp|lt|gt|quot|apos|#\d+|#x[0-9a-fA-F]+);"  # compiled on first use (re caches)
_NAMED = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}


def xml_unescape(text: str) -> str:
    if "&" not in text:
        return text

    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        if name[0] != "#":
            return _NAMED[name]
        code = int(name[2:], 16) if name[1] in "xX" else int(name[1:])
        return chr(code) if 0 < code <= 0x10FFFF else "\ufffd"

    return re.sub(_ENTITY, one, text)


_TYPES = {t.value: t for t in SnapshotType}


def _flat_date(text: str) -> datetime | None:
    """snapper's ``YYYY-MM-DD HH:MM:SS`` (UTC), exactly that form, else None."""
    if len(text) != 19 or text[4] + text[7] + text[10] + text[13] + text[16] != "-- ::":
        return None
    try:
        return datetime.fromisoformat(text + "+00:00")  # C speed, unlike strptime
    except ValueError:
        return None


def _parse_flat_info(text: str, user_name: Callable[[int], str]) -> Snapshot | None:
    """The fast reader; None when the text is not the plain form snapper writes."""
    if "<snapshot>" not in text or _NOT_FLAT.search(text):
        return None
    escaped = "&" in text
    fields: dict[str, str] = {}
    userdata: dict[str, str] = {}
    key: str | None = None
    for tag, raw, empty in _FLAT_FIELD.findall(text):
        name = tag or empty
        value = xml_unescape(raw) if escaped else raw
        if name == "key":
            key = value
        elif name == "value":
            if key:
                userdata[key] = value
            key = None
        elif name in fields:
            return None  # a repeated element: let the full parser decide
        else:
            fields[name] = value
    snapshot_type = _TYPES.get(fields.get("type", "").strip())
    number = _number(fields.get("num", ""))
    uid = _number(fields.get("uid", "0"))
    pre = _number(fields.get("pre_num", "0"))
    date = _flat_date(fields.get("date", "").strip())
    if snapshot_type is None or number is None or uid is None or pre is None or date is None:
        return None
    return Snapshot(
        number,
        snapshot_type,
        _pre_number(snapshot_type, pre),
        date,
        user_name(uid),
        fields.get("description", ""),
        fields.get("cleanup", ""),
        userdata,
    )


def parse_info_xml(text: str | bytes, user_name: Callable[[int], str]) -> Snapshot:
    """A :class:`Snapshot` from the text of snapper's ``info.xml``; ValueError if malformed."""
    decoded = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
    fast = _parse_flat_info(decoded, user_name)
    if fast is not None:
        return fast
    try:
        # info.xml lives under ROOT/.snapshots and is written only by root (snapper); expat
        # resolves no external entities, so a plain parse is safe here.
        # Only unusual files get here (see _parse_flat_info), so the import is paid rarely.
        import xml.etree.ElementTree as ET

        element = ET.fromstring(text)  # noqa: S314
    except ET.ParseError as exc:
        raise ValueError(f"not XML: {exc}") from exc
    if element.tag != "snapshot":
        raise ValueError(f"root element is <{element.tag}>, not <snapshot>")

    def child(name: str, default: str | None = None) -> str:
        node = element.find(name)
        if node is None:
            if default is None:
                raise ValueError(f"<{name}> is missing")
            return default
        # An empty element (<description></description>) has text None.
        return node.text or ""

    try:
        snapshot_type = SnapshotType(child("type").strip())
        number = int(child("num"))
        uid = int(child("uid", "0"))
        pre = int(child("pre_num", "0"))
    except ValueError as exc:
        raise ValueError(f"bad field: {exc}") from exc
    userdata: dict[str, str] = {}
    for node in element.findall("userdata"):
        key = node.findtext("key") or ""
        if key:
            userdata[key] = node.findtext("value") or ""
    try:
        date = parse_utc(child("date"))
    except SystemError_ as exc:
        raise ValueError(exc.message) from exc
    return Snapshot(
        number=number,
        type=snapshot_type,
        pre_number=_pre_number(snapshot_type, pre),
        date=date,
        user=user_name(uid),
        description=child("description", ""),
        cleanup=child("cleanup", ""),
        userdata=userdata,
    )


def info_path(root: Path, number: int) -> Path:
    return root / SNAPSHOTS_DIR / str(number) / "info.xml"


def read_info(
    root: Path, number: int, *, user_name: Callable[[int], str] | None = None
) -> Snapshot:
    """Snapshot *number* of the system at *root*, read straight from its ``info.xml``.

    Much cheaper than asking snapper (which reads every snapshot's ``info.xml`` first), and the
    same :class:`Snapshot` the backends return.  Raises :class:`SnapshotError` if the snapshot has
    no readable ``info.xml``.
    """
    check_number(number)
    path = info_path(root, number)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise SnapshotError(f"snapshot {number} does not exist ({path} is missing)", "") from exc
    except OSError as exc:
        raise SnapshotError(f"cannot read {path}: {exc.strerror}", "run as root") from exc
    try:
        snapshot = parse_info_xml(data, user_name or UserNames(root))
    except ValueError as exc:
        raise SnapshotError(
            f"snapshot {number} has an unreadable info.xml ({exc})",
            f"inspect or remove {path.parent}",
        ) from exc
    if snapshot.number != number:
        raise SnapshotError(
            f"{path} describes snapshot {snapshot.number}, not {number}",
            f"inspect {path}; snapper ignores such a snapshot",
        )
    return snapshot


def read_all_info(root: Path) -> list[Snapshot]:
    """Every snapshot of the system at *root* from its info.xml, by number, as snapper lists them.

    This is what ``snapper --no-dbus list`` itself reads; snapshots whose info.xml is missing or
    unreadable, or whose subvolume is gone, are skipped as snapper skips them.  Plain string
    paths and one passwd table keep 1,000 snapshots well under what ``snapper list`` takes.
    """
    names = UserNames(root)
    store = os.path.join(root, SNAPSHOTS_DIR)
    found = []
    try:
        entries = os.listdir(store)
    except OSError as exc:
        raise NotManagedError(f"cannot read {store}: {exc.strerror}", "run as root") from exc
    for name in entries:
        if not name.isdigit() or name == "0":
            continue
        base = f"{store}/{name}"
        try:
            with open(f"{base}/info.xml", "rb") as f:
                text = f.read().decode("utf-8", errors="replace")
            snap = _parse_flat_info(text, names) or parse_info_xml(text, names)
        except (OSError, ValueError):
            continue
        if snap.number == int(name) and os.path.isdir(f"{base}/snapshot"):
            found.append(snap)
    found.sort(key=lambda s: s.number)
    return found
