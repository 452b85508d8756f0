"""A three-way merge of the account files (passwd, group, shadow, gshadow) by entry.

A line merge would get these wrong: a user added live and a system user added by a package both
land at the end of passwd, a textual conflict, yet both must survive.  So an entry (a line, keyed
by its first field, the name) is the unit:

* the same on both sides, or changed on one side only: that side's entry (adding and deleting
  are changes: an entry added on either side survives, one deleted on one side and unchanged on
  the other goes);
* changed differently on both sides (also: added on both with different fields, deleted on one
  and changed on the other): a conflict, reported by name, and theirs' entry is kept.  Theirs is
  the system the package manager just built; its accounts match the files it installed;
* group and gshadow entries changed on both sides merge field by field: the member list (the 4th
  field of both) becomes both sides' members minus those either side removed, in theirs' order
  then ours' additions; any other field changed differently on both sides is a conflict;
* an entry added live whose id (passwd's uid, group's gid) an entry of another name holds in the
  result is a conflict and left out: two names on one id would share files and permissions.

Order: theirs' entries in theirs' order, then the entries added live in ours' order.  Files with
a name twice (which shadow-utils never writes) are not merged at all (None): which line counts
would be a guess.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from transactional_update.etc.lines import split_lines

ACCOUNT_FILES = frozenset({"passwd", "group", "shadow", "gshadow"})
# The field holding a comma-separated member list, per file.
_MEMBERS = {"group": 3, "gshadow": 3}
# The field holding the numeric id that must stay unique, per file.
_ID = {"passwd": 2, "group": 2}


@dataclass(frozen=True)
class AccountsMerge:
    text: str
    conflicts: tuple[str, ...]  # the names whose entry is theirs despite a live change


def _entries(text: str) -> dict[str, str] | None:
    out: dict[str, str] = {}
    for line in split_lines(text):
        entry = line.rstrip("\n")
        name = entry.split(":", 1)[0]
        if name in out:
            return None
        out[name] = entry
    return out


def _members(field: str) -> list[str]:
    return [m for m in field.split(",") if m]


def _merge_members(base: str, ours: str, theirs: str) -> str:
    b, o, t = _members(base), _members(ours), _members(theirs)
    removed = (set(b) - set(o)) | (set(b) - set(t))
    merged = [m for m in t if m not in removed]
    merged += [m for m in o if m not in removed and m not in merged]
    return ",".join(merged)


def _merge_fields(kind: str, base: str, ours: str, theirs: str) -> str | None:
    """A group or gshadow entry changed on both sides, merged field by field (None: conflict)."""
    bf, of, tf = base.split(":"), ours.split(":"), theirs.split(":")
    if not len(bf) == len(of) == len(tf):
        return None
    out = []
    for n, (b, o, t) in enumerate(zip(bf, of, tf, strict=True)):
        if n == _MEMBERS[kind]:
            out.append(_merge_members(b, o, t))
        elif o in (t, b):
            out.append(t)
        elif t == b:
            out.append(o)
        else:
            return None
    return ":".join(out)


def _ids(kind: str, entries: Iterable[str]) -> dict[str, str]:
    """id -> name of the entries of a file whose ids must be unique."""
    out: dict[str, str] = {}
    for entry in entries:
        fields = entry.split(":")
        if len(fields) > _ID[kind]:
            out.setdefault(fields[_ID[kind]], fields[0])
    return out


def merge_accounts(kind: str, base: str, ours: str, theirs: str) -> AccountsMerge | None:
    """Merge account file *kind* (``passwd``, ``group``, ``shadow``, ``gshadow``) by entry."""
    if kind not in ACCOUNT_FILES:
        raise ValueError(f"not an account file: {kind}")
    b, o, t = _entries(base), _entries(ours), _entries(theirs)
    if b is None or o is None or t is None:
        return None
    conflicts: list[str] = []

    def decide(name: str) -> str | None:
        bn, on, tn = b.get(name), o.get(name), t.get(name)
        if on in (tn, bn):
            return tn
        if tn == bn:
            return on
        if kind in _MEMBERS and bn is not None and on is not None and tn is not None:
            merged = _merge_fields(kind, bn, on, tn)
            if merged is not None:
                return merged
        conflicts.append(name)
        return tn

    merged = [e for e in (decide(name) for name in t) if e is not None]
    added = [name for name in o if name not in t and name not in b]
    if kind in _ID:
        taken = _ids(kind, merged)
        for name in added:
            fields = o[name].split(":")
            uid = fields[_ID[kind]] if len(fields) > _ID[kind] else None
            if uid is not None and taken.get(uid, name) != name:
                conflicts.append(name)
                continue
            merged.append(o[name])
            if uid is not None:
                taken.setdefault(uid, name)
    else:
        merged += [o[name] for name in added]
    # Deleted on theirs' side, changed on ours: reported, and theirs (no entry) kept.
    for name in o:
        if name not in t and name in b and o[name] != b[name]:
            conflicts.append(name)
    text = "".join(e + "\n" for e in merged)
    return AccountsMerge(text, tuple(conflicts))
