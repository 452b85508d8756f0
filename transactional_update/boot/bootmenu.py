"""The GRUB boot menu of a managed system: a model built from the snapshots, rendered for GRUB.

The menu has a main entry that boots the btrfs *default subvolume* with the default snapshot's own
kernel and initrd, and a submenu listing every bootable snapshot (newest first, up to
``BOOT_MENU_LIMIT``; the booted and the default snapshot always, if need be beyond it), each
booting that snapshot with its own kernel and initrd and
``rootflags=subvol=@/.snapshots/N/snapshot``.

Facts this design rests on:

* upstream GRUB (Debian's) resolves btrfs paths from the *top level* subvolume, not from the
  default one, so every path names its snapshot: ``/@/.snapshots/N/snapshot/boot/vmlinuz-X``;
  openSUSE's patched GRUB resolves them from the default subvolume when ``btrfs_relative_path``
  is ``y`` (its ``00_header`` sets that), so each entry sets it to ``n`` (upstream ignores it);
* the main entry pins its snapshot with ``rootflags=subvol=`` too, although the kernel would
  mount the default subvolume without it: kernel and root must come from the same snapshot
  also when a power cut lands between the commit of a new default (btrfs) and the rewrite of
  this menu (ext4), and an unpinned entry would then start the old kernel on the new root.
  The commit makes the btrfs side durable first, so the menu never names a snapshot that is not
  the default on disk; a menu left behind is reported (``status``) and refreshed by the next
  commit, rollback or cleanup;
* Debian's ``10_linux`` adds ``rootflags=subvol=<the root it ran in>`` to all its entries, which
  would pin one snapshot: a managed system diverts ``10_linux`` away (see :mod:`.grub`) and this
  menu replaces its entries.

Everything from users and packages (descriptions, file names, kernel arguments, OS names) reaches
the script only through :func:`grub_quote` - the template environment quotes every value that is
not explicitly :class:`Raw`, so a forgotten filter cannot open a hole.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shlex
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transactional_update.boot import menustate
from transactional_update.config import conffile
from transactional_update.paths import resolve_under
from transactional_update.record import bootstate, changelog
from transactional_update.snapshots import btrfs, etcvol
from transactional_update.snapshots.snapinfo import Snapshot, read_all_info
from transactional_update.snapshots.system import FAILED, IN_PROGRESS, ManagedRoot

if TYPE_CHECKING:
    from transactional_update.config.settings import Config

SUBMENU_ID = "tu-snapshots"
# Debian's initramfs reboots after this many seconds instead of waiting at its shell when it
# cannot find the root, and so does the kernel when it panics: a snapshot that cannot reach user
# space uses up its tries by itself, with nobody at the console.
PANIC_REBOOT = "panic=10"
MAIN_ID = menustate.MAIN_ID


def entry_id(number: int) -> str:
    return f"tu-snapshot-{number}"


def next_entry_for(number: int) -> str:
    """GRUB's ``default``/``next_entry`` value that selects snapshot *number* in the submenu."""
    return f"{SUBMENU_ID}>{entry_id(number)}"


class Flavour(StrEnum):
    UPSTREAM = "upstream"  # Debian, Ubuntu, Arch: btrfs paths from the top level
    PATCHED = "opensuse"  # openSUSE's btrfs patches (btrfs_relative_path, default subvolume)


# --- quoting -------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]")


def one_line(text: str) -> str:
    """*text* as one line: control characters (newlines, tabs, escapes) become spaces."""
    return _CONTROL.sub(" ", text)


def grub_quote(text: str) -> str:
    """*text* as one GRUB script word that means exactly *text*.

    Inside single quotes GRUB takes every character literally (``$``, ``;``, ``}``, ``\\``,
    newlines); a single quote itself ends the quoting, so it is written ``'\\''`` as in the shell
    (what grub-mkconfig_lib's ``grub_quote`` does too).
    """
    return "'" + text.replace("'", "'\\''") + "'"


class Raw(str):
    """Text the template emits unquoted: only what this module writes itself (ids, comments)."""

    __slots__ = ()


def _finalize(value: Any) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, bool) or value is None:
        raise TypeError(f"refusing to put {value!r} into a GRUB script")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return grub_quote(value)
    raise TypeError(f"refusing to put a {type(value).__name__} into a GRUB script")


# --- the model -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kernel:
    version: str
    linux: str  # path inside the snapshot, e.g. /boot/vmlinuz-6.1.0-28-amd64
    initrd: str | None


@dataclass(frozen=True)
class Entry:
    number: int
    id: str
    title: str  # one line, shown literally
    kernel: Kernel
    linux_path: str  # as GRUB reads it: from the btrfs top level
    initrd_path: str | None
    args: tuple[str, ...]  # kernel command line, one word each
    date: str = ""
    description: str = ""
    default: bool = False
    booted: bool = False
    important: bool = False
    known_good: bool = False
    failed_boot: bool = False


@dataclass(frozen=True)
class LeftOut:
    number: int
    reason: str  # fixed text of this module only: it goes into a comment of the script


@dataclass(frozen=True)
class Counting:
    """GRUB's count-down for the default snapshot on trial (see :mod:`.counting`)."""

    trial: int  # the snapshot the main entry boots
    tries: int  # BOOT_TRIES: where the count starts
    fallback: int  # the known-good snapshot
    fallback_entry: str  # its submenu entry, as GRUB's ``default`` names it

    def steps(self) -> list[tuple[int, int]]:
        """(tries left, after this boot) from the top down: GRUB has no arithmetic."""
        return [(n, n - 1) for n in range(self.tries, 1, -1)]


@dataclass(frozen=True)
class Menu:
    fs_uuid: str
    flavour: Flavour
    main: Entry | None
    submenu_title: str
    entries: tuple[Entry, ...]
    limit: int
    left_out: tuple[LeftOut, ...] = ()
    notes: tuple[str, ...] = field(default=())  # fixed text of this module only
    counting: Counting | None = None


# --- pure helpers --------------------------------------------------------------------------------


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key like ``sort -V``: digit runs compare as numbers, the rest as text."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part)
        for part in re.findall(r"\d+|[^\d]+", version)
    )


KERNEL_PREFIXES = ("vmlinuz-", "vmlinux-", "kernel-")
# initrd names by distribution: Debian/Ubuntu, openSUSE, Fedora/Arch
INITRD_NAMES = ("initrd.img-{v}", "initrd-{v}", "initramfs-{v}.img", "initrd-{v}.img")


def pick_kernel(files: Iterable[str], boot: str = "/boot") -> Kernel | None:
    """The newest kernel among the regular files *files* of */boot*, with its initrd if any.

    Names with control characters are never picked: they could not be shown or typed safely.
    """
    names = {f for f in files if not _CONTROL.search(f)}
    found: list[tuple[str, str]] = []
    for name in names:
        for prefix in KERNEL_PREFIXES:
            if name.startswith(prefix) and len(name) > len(prefix):
                found.append((name[len(prefix) :], name))
                break
    if not found:
        return None
    version, linux = max(found, key=lambda vf: (version_key(vf[0]), vf[1]))
    initrd = next(
        (n for pattern in INITRD_NAMES if (n := pattern.format(v=version)) in names), None
    )
    return Kernel(version, f"{boot}/{linux}", f"{boot}/{initrd}" if initrd else None)


_ASSIGN = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
CMDLINE_KEYS = ("GRUB_CMDLINE_LINUX", "GRUB_CMDLINE_LINUX_DEFAULT")


def parse_grub_defaults(texts: Sequence[str]) -> dict[str, str]:
    """``GRUB_CMDLINE_LINUX*`` from ``/etc/default/grub`` and ``grub.d/*.cfg`` texts, in order.

    Read without running them (grub-mkconfig sources them; a boot menu built for another root
    must not run its code): plain assignments with shell quoting, and ``$VAR``/``${VAR}`` of
    these keys (``X="$X console=ttyS0"`` is the usual way to add to them).  Anything needing
    real shell evaluation (``$(...)``, backquotes) is taken as the literal text.
    """
    values: dict[str, str] = {}
    for text in texts:
        for line in text.splitlines():
            m = _ASSIGN.match(line)
            if not m or m.group(1) not in CMDLINE_KEYS:
                continue
            try:
                words = shlex.split(m.group(2), comments=True)
            except ValueError:
                continue
            raw = " ".join(words)
            values[m.group(1)] = _VAR.sub(
                lambda v: values.get(v.group(1) or v.group(2) or "", ""), raw
            )
    return values


def kernel_args(fs_uuid: str, subvol: str | None, defaults: dict[str, str]) -> tuple[str, ...]:
    """The kernel command line: root by UUID, read-only, the snapshot's own GRUB_CMDLINE_LINUX*.

    *subvol* pins a snapshot (``rootflags=subvol=...``); None leaves the root flags without any
    subvolume, so the kernel mounts the default subvolume.  Subvolume options the admin put into
    ``rootflags`` are dropped either way: they would pin one snapshot for every entry.
    """
    words: list[str] = []
    for key in CMDLINE_KEYS:
        try:
            words += shlex.split(defaults.get(key, ""))
        except ValueError:
            words += defaults.get(key, "").split()
    flags: list[str] = [f"subvol={subvol}"] if subvol else []
    rest: list[str] = []
    for w in words:
        if w.startswith("rootflags="):
            flags += [
                o
                for o in w.removeprefix("rootflags=").split(",")
                if o and not o.startswith(("subvol=", "subvolid="))
            ]
        else:
            rest.append(one_line(w))
    args = [f"root=UUID={fs_uuid}", "ro"]
    if flags:
        args.append("rootflags=" + ",".join(one_line(f) for f in flags))
    return tuple(args + rest)


def entry_title(
    s: Snapshot,
    summary: str | None,
    default: bool,
    booted: bool,
    known_good: bool = False,
    failed_boot: bool = False,
) -> str:
    desc = s.description
    if summary and summary not in desc:
        desc = f"{desc} · {summary}" if desc else summary
    marks = [m for m, on in (("booted", booted), ("default", default)) if on]
    if s.userdata.get("important") == "yes":
        marks.append("important")
    if known_good:
        marks.append("known-good")
    if failed_boot:
        marks.append("failed boot")
    date = s.date.strftime("%Y-%m-%d %H:%M") if s.date else ""
    parts = [f"Snapshot {s.number}", date, desc]
    title = " · ".join(p for p in parts if p)
    if marks:
        title += f" ({', '.join(marks)})"
    return one_line(title)


# --- reading the root ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotFiles:
    """What the menu needs from inside one snapshot."""

    kernel: Kernel | None
    boot_dir: str  # /boot resolved inside the snapshot (a link is followed there)
    defaults: dict[str, str]
    os_name: str
    # False: the snapshot has no /etc (a plain `snapper create` of a root whose /etc is a
    # subvolume of its own leaves an empty placeholder there) and cannot boot.
    has_etc: bool = True


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def os_name(os_release: str) -> str:
    values = conffile.values(os_release, "os-release", conffile.Lines.LENIENT)
    return values.get("PRETTY_NAME") or values.get("NAME") or "Linux"


def read_snapshot(snap: Path) -> SnapshotFiles:
    boot = resolve_under(snap, "/boot")
    boot_rel = "/" + str(boot.relative_to(snap)) if boot != snap else ""
    files = []
    try:
        for name in os.listdir(boot):
            st = os.lstat(boot / name)
            # Only regular files: GRUB would follow a link from the top level, not the snapshot.
            if stat.S_ISREG(st.st_mode) and st.st_size > 0:
                files.append(name)
    except OSError:
        pass
    grub_d = resolve_under(snap, "/etc/default/grub.d")
    texts = [_read(resolve_under(snap, "/etc/default/grub"))]
    with contextlib.suppress(OSError):
        texts += [_read(grub_d / n) for n in sorted(os.listdir(grub_d)) if n.endswith(".cfg")]
    return SnapshotFiles(
        kernel=pick_kernel(files, boot_rel),
        boot_dir=boot_rel,
        defaults=parse_grub_defaults(texts),
        os_name=os_name(
            _read(resolve_under(snap, "/etc/os-release"))
            or _read(resolve_under(snap, "/usr/lib/os-release"))
        ),
        has_etc=not etcvol.lacks_etc(snap),
    )


def build(
    snapshots: Sequence[Snapshot],
    files: Callable[[int], SnapshotFiles],
    summaries: Callable[[int], str | None],
    *,
    fs_uuid: str,
    store: str,
    booted: int | None,
    default: int | None,
    flavour: Flavour,
    title: str,
    limit: int,
    known_good: int | None = None,
    failed_boots: frozenset[int] = frozenset(),
    boot_tries: int = 0,
) -> Menu:
    """The menu from the snapshots and what is inside them (pure: unit-tested with fakes).

    *store* is the snapper store's path from the top level (``@/.snapshots``).  With
    *boot_tries*, a default other than *known_good* is counted down and falls back to it.
    """
    src = _Sources(
        {s.number: s for s in snapshots},
        functools.cache(files),
        summaries,
        fs_uuid,
        store,
        booted,
        default,
        known_good,
        failed_boots,
        boot_tries > 0,
    )
    bootable, unfinished = _bootable(snapshots)
    main, notes = _main_entry(src, bootable)
    listed, no_kernel = _listed(src, bootable, limit)
    entries = _submenu(src, listed)
    return Menu(
        fs_uuid=fs_uuid,
        flavour=flavour,
        main=main,
        submenu_title=title,
        entries=entries,
        limit=limit,
        left_out=tuple(sorted([*unfinished, *no_kernel], key=lambda x: x.number)),
        notes=notes,
        counting=_counting(main, entries, known_good, boot_tries),
    )


def _counting(
    main: Entry | None, entries: tuple[Entry, ...], good: int | None, tries: int
) -> Counting | None:
    """The count-down when the main entry boots another snapshot than the listed known-good."""
    if tries <= 0 or main is None or good is None or main.number == good:
        return None
    if not any(e.number == good for e in entries):
        return None  # no entry to fall back to: counting down would only delay the same boot
    return Counting(main.number, tries, good, next_entry_for(good))


@dataclass(frozen=True)
class _Sources:
    """What the entries are made of: the snapshots, what is inside them, and the facts."""

    by_number: dict[int, Snapshot]
    files: Callable[[int], SnapshotFiles]  # each snapshot is read once
    summaries: Callable[[int], str | None]
    fs_uuid: str
    store: str
    booted: int | None
    default: int | None
    known_good: int | None = None
    failed_boots: frozenset[int] = frozenset()
    # A panicking kernel reboots (panic=): a snapshot on trial uses its tries up by itself.
    reboot_on_panic: bool = False


def _bootable(snapshots: Sequence[Snapshot]) -> tuple[list[int], list[LeftOut]]:
    """The numbers of the finished snapshots, and why each other one is left out."""
    bootable: list[int] = []
    left_out: list[LeftOut] = []
    for s in snapshots:
        if IN_PROGRESS in s.userdata:
            left_out.append(LeftOut(s.number, "an unfinished transaction"))
        elif FAILED in s.userdata:
            left_out.append(LeftOut(s.number, "a failed transaction kept for inspection"))
        else:
            bootable.append(s.number)
    return bootable, left_out


def _main_entry(src: _Sources, bootable: list[int]) -> tuple[Entry | None, tuple[str, ...]]:
    """The entry that boots the default snapshot, or the note why the menu has none."""
    default = src.default
    if default is None or default not in src.by_number:
        return None, ("no main entry: the default subvolume is not a snapper snapshot",)
    if default not in bootable:
        return None, (f"no main entry: the default snapshot {default} is not finished",)
    main = _entry(src, default, in_submenu=False)
    if main is None:
        return None, (f"no main entry: the default snapshot {default} has no kernel in /boot",)
    return main, ()


def _listed(src: _Sources, bootable: list[int], limit: int) -> tuple[list[int], list[LeftOut]]:
    """The snapshots the submenu lists, and those left out for want of a kernel.

    The default and the booted snapshot are always listed, the others newest first up to
    *limit* in all.
    """
    # Newest first until the limit is reached: only the snapshots that could be listed are
    # looked into, so a thousand snapshots cost no more than the menu's twenty.
    # The known-good snapshot too: GRUB falls back to its entry.
    wanted = (src.default, src.booted, src.known_good)
    keep = [n for n in dict.fromkeys(wanted) if n is not None and n in bootable]
    chosen: list[int] = []
    left_out: list[LeftOut] = []
    for n in [*keep, *sorted(set(bootable) - set(keep), reverse=True)]:
        if n not in keep and len(chosen) >= limit:
            break
        if src.files(n).kernel is None:
            left_out.append(LeftOut(n, "no kernel in /boot"))
        elif not src.files(n).has_etc:
            left_out.append(LeftOut(n, "no /etc (a plain snapper create does not copy it)"))
        else:
            chosen.append(n)
    return chosen, left_out


def _submenu(src: _Sources, listed: list[int]) -> tuple[Entry, ...]:
    """The submenu's entries, newest first."""
    return tuple(e for n in sorted(listed, reverse=True) if (e := _entry(src, n, in_submenu=True)))


def _entry(src: _Sources, n: int, in_submenu: bool) -> Entry | None:
    """Snapshot *n*'s entry (None: it has no kernel): in the submenu, or the main entry."""
    f = src.files(n)
    if f.kernel is None:
        return None
    top = f"/{src.store.strip('/')}/{n}/snapshot"
    s = src.by_number[n]
    good, failed = n == src.known_good, n in src.failed_boots
    args = kernel_args(src.fs_uuid, top.lstrip("/"), f.defaults)
    if src.reboot_on_panic and not any(a.startswith("panic=") for a in args):
        args += (PANIC_REBOOT,)
    return Entry(
        number=n,
        id=entry_id(n) if in_submenu else MAIN_ID,
        title=(
            entry_title(s, src.summaries(n), n == src.default, n == src.booted, good, failed)
            if in_submenu
            else one_line(f.os_name)
        ),
        kernel=f.kernel,
        linux_path=top + f.kernel.linux,
        initrd_path=top + f.kernel.initrd if f.kernel.initrd else None,
        args=args,
        date=s.date.isoformat() if s.date else "",
        description=s.description,
        default=n == src.default,
        booted=n == src.booted,
        important=s.userdata.get("important") == "yes",
        known_good=good,
        failed_boot=failed,
    )


def detect_flavour(root: Path) -> Flavour:
    """openSUSE's patched GRUB if its btrfs module knows ``btrfs_relative_path``, else upstream.

    The module is what actually reads the filesystem at boot, so it decides - not the
    distribution's name nor the tools' names (Fedora has ``grub2-*`` without the patches).
    """
    for libdir in ("usr/lib/grub", "usr/lib/grub2", "usr/share/grub2"):
        base = root / libdir
        try:
            platforms = sorted(os.listdir(base))
        except OSError:
            continue
        for platform in platforms:
            try:
                data = (base / platform / "btrfs.mod").read_bytes()
            except OSError:
                continue
            return Flavour.PATCHED if b"btrfs_relative_path" in data else Flavour.UPSTREAM
    return Flavour.UPSTREAM


def menu_for(managed: ManagedRoot, config: Config) -> Menu:
    """Read the managed root and build its menu."""
    root = managed.root
    health = bootstate.load(root)
    return build(
        read_all_info(root),
        lambda n: read_snapshot(managed.snapshot_dir(n)),
        lambda n: e.summary() if (e := changelog.load(root, n)) else None,
        fs_uuid=btrfs.fs_uuid(root),
        store=btrfs.subvolume_path(managed.snapshots_dir),
        booted=managed.booted(),
        default=managed.default(),
        flavour=detect_flavour(root),
        title=config.boot_menu_title,
        limit=config.boot_menu_limit,
        known_good=bootstate.known_good(health),
        failed_boots=frozenset(bootstate.failures(health)),
        boot_tries=config.boot_tries,
    )


# --- rendering -----------------------------------------------------------------------------------


def render(menu: Menu) -> str:
    """The menu as GRUB script (what the grub.d script prints)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("transactional_update.boot", "templates"),
        finalize=_finalize,
        autoescape=False,  # noqa: S701 - GRUB script, not HTML: _finalize quotes every value
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template("menu.cfg.j2").render(
        menu=menu,
        raw=Raw,
        main_id=Raw(MAIN_ID),
        submenu_id=Raw(SUBMENU_ID),
        left_out=[(x.number, Raw(x.reason)) for x in menu.left_out],
        notes=[Raw(n) for n in menu.notes],
        counting=menu.counting,
    )


def to_json(menu: Menu) -> dict[str, Any]:
    def entry(e: Entry) -> dict[str, Any]:
        return {
            "number": e.number,
            "id": e.id,
            "title": e.title,
            "kernel_version": e.kernel.version,
            "linux": e.linux_path,
            "initrd": e.initrd_path,
            "args": list(e.args),
            "date": e.date or None,
            "description": e.description,
            "default": e.default,
            "booted": e.booted,
            "important": e.important,
            "known_good": e.known_good,
            "failed_boot": e.failed_boot,
            "next_entry": next_entry_for(e.number) if e.id != MAIN_ID else MAIN_ID,
        }

    return {
        "fs_uuid": menu.fs_uuid,
        "grub": str(menu.flavour),
        "main": entry(menu.main) if menu.main else None,
        "submenu": {"title": menu.submenu_title, "id": SUBMENU_ID, "limit": menu.limit},
        "entries": [entry(e) for e in menu.entries],
        "left_out": [{"number": x.number, "reason": x.reason} for x in menu.left_out],
        "notes": list(menu.notes),
        "counting": (
            {
                "trial": menu.counting.trial,
                "tries": menu.counting.tries,
                "fallback": menu.counting.fallback,
                "fallback_entry": menu.counting.fallback_entry,
            }
            if menu.counting
            else None
        ),
    }
