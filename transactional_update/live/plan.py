"""What ``apply`` would change on the running system, and whether it may: the plan.

The change from the live snapshot to the default is read from the changelog, composed over every
transaction between them (each entry holds the packages and files its transaction changed), or,
where an entry is missing or could not compare files, from the snapshots themselves (a
metadata-only ``btrfs send``: its cost follows the size of the change).  Then it is sorted:

* **additions** (new packages, new files): applied as they are;
* **replacement** (a file replaced or deleted, a package upgraded, downgraded or removed): the
  running programs may still use the old files, so only with ``--allow-replacement``;
* **kernel**: a new kernel, initrd or module tree only starts with the next reboot (``/boot`` and
  the running kernel's modules are not swapped under it).  A change to the running kernel's own
  module tree (Debian rebuilds a kernel under the same release name) is kept from the running
  system until then: modules of another build refuse to load into the running kernel, or worse.
  Only a removed tree cannot be kept, and counts as a replacement.

Files that every package operation rewrites (the package databases, ``ld.so.cache``, the caches
that triggers regenerate), documentation and manual pages, and ``/etc`` (merged by the live
``/etc`` rules, never mapped as code) are bookkeeping, not replacements: an ``apt install`` of a
new package stays an addition.  A kernel package's upgrade (the ``linux-image-amd64``
metapackage) is judged by its files: it adds a kernel, it does not replace running code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from transactional_update.snapshots.system import USERSPACE

_BOOKKEEPING_PREFIXES = (
    "/etc/",
    "/usr/share/dpkg/database/",
    "/var/lib/dpkg/",
    "/usr/lib/sysimage/rpm/",
    "/var/lib/rpm/",
    "/usr/share/mime/",
)
_DOCS = ("/usr/share/doc/", "/usr/share/man/")  # read by people, never mapped by programs
_BOOKKEEPING_FILES = frozenset(
    {
        "/usr/share/info/dir",
        "/usr/share/applications/mimeinfo.cache",
        "/usr/share/glib-2.0/schemas/gschemas.compiled",
    }
)
_BOOKKEEPING_NAMES = frozenset({"icon-theme.cache", "giomodule.cache", "loaders.cache"})
_KERNEL_PACKAGES = ("linux-image-", "kernel-default", "kernel-core", "kernel-")


class ChangeClass(StrEnum):
    NONE = "none"
    ADDITIONS = "additions"
    REPLACEMENT = "replacement"


@dataclass(frozen=True)
class Plan:
    """The change from snapshot *live* (running) to *target* (the default), sorted."""

    live: int
    target: int
    chain: tuple[int, ...]  # the snapshots after *live* up to *target*, oldest first
    source: str  # "changelog" or "snapshots": where the change was read
    packages: tuple[Mapping[str, Any], ...]  # {"name", "kind", "old", "new"}, net
    added: tuple[str, ...]  # files new in *target*
    replaced: tuple[str, ...]  # files modified or deleted: running programs may map them
    bookkeeping: int  # changed files that count as neither (databases, caches, /etc)
    kernel: tuple[str, ...]  # kernel, initrd and module paths that wait for the reboot
    elsewhere: tuple[str, ...]  # changes outside /usr and /etc, live only after the reboot
    # The running kernel's module tree, changed by the target: kept from the running system,
    # as (directory apply binds, the tree's path in it): ("usr", "lib/modules/6.1.0-28-amd64").
    keep: tuple[tuple[str, str], ...] = ()

    @property
    def change_class(self) -> ChangeClass:
        if self.replaced or any(
            p["kind"] != "added" and not _is_kernel_package(p["name"]) for p in self.packages
        ):
            return ChangeClass.REPLACEMENT
        if self.added or self.packages or self.bookkeeping:
            return ChangeClass.ADDITIONS
        return ChangeClass.NONE

    @property
    def kernel_pending(self) -> bool:
        return bool(self.kernel) or any(_is_kernel_package(p["name"]) for p in self.packages)

    def summary(self) -> str:
        """``2 packages added, 1 upgraded; 14 files added, 3 replaced`` (what the admin reads)."""
        kinds: dict[str, int] = {}
        for p in self.packages:
            kinds[p["kind"]] = kinds.get(p["kind"], 0) + 1
        parts = []
        if kinds:
            words = [f"{n} {kind}" for kind, n in kinds.items()]
            parts.append(f"{sum(kinds.values())} package(s): " + ", ".join(words))
        parts.append(f"{len(self.added)} file(s) added, {len(self.replaced)} replaced or deleted")
        return "; ".join(parts)


def _is_kernel_package(name: str) -> bool:
    return name.startswith(_KERNEL_PACKAGES) and "headers" not in name and "devel" not in name


def _bookkeeping(path: str) -> bool:
    return (
        path.startswith(_BOOKKEEPING_PREFIXES)
        or path in _BOOKKEEPING_FILES
        or path == "/etc"
        or path.rsplit("/", 1)[-1] in _BOOKKEEPING_NAMES
        or path.endswith((".sqlite-shm", ".db-shm", "/ld.so.cache"))
    )


def _kernel(path: str) -> bool:
    """A path the next boot's kernel brings: ``/boot``, and the module trees."""
    return path in ("/boot", "/usr/lib/modules", "/lib/modules") or path.startswith(
        ("/boot/", "/usr/lib/modules/", "/lib/modules/")
    )


def _running_tree(path: str, running_release: str) -> tuple[str, str] | None:
    """(directory apply binds, tree) where *path* lies in the running kernel's module tree."""
    for top, prefix in (("usr", "/usr/lib/modules/"), ("lib", "/lib/modules/")):
        if path.startswith(prefix) and path[len(prefix) :].split("/", 1)[0] == running_release:
            return top, f"{prefix[len(top) + 2 :]}{running_release}"
    return None


# (what the earlier transactions did, what a later one did) -> the net change, or None: no change
_FOLD: dict[tuple[str, str], str | None] = {
    ("added", "added"): "added",
    ("added", "modified"): "added",
    ("added", "deleted"): None,
    ("modified", "added"): "modified",
    ("modified", "modified"): "modified",
    ("modified", "deleted"): "deleted",
    ("deleted", "added"): "modified",
    ("deleted", "modified"): "modified",
    ("deleted", "deleted"): "deleted",
}


def compose_files(steps: Iterable[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """The net file changes of consecutive transactions' lists (``{"path", "kind", "dir"}``)."""
    net: dict[str, dict[str, Any]] = {}
    for files in steps:
        for f in files:
            before = net.get(f["path"])
            if before is None:
                net[f["path"]] = dict(f)
                continue
            kind = _FOLD.get((before["kind"], f["kind"]), f["kind"])
            if kind is None:
                del net[f["path"]]
            else:
                net[f["path"]] = {**f, "kind": kind}
    return [net[p] for p in sorted(net)]


def compose_packages(steps: Iterable[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """The net package changes of consecutive transactions' lists (first old, last new)."""
    net: dict[str, dict[str, Any]] = {}
    for packages in steps:
        for p in packages:
            before = net.get(p["name"])
            old = p.get("old") if before is None else before.get("old")
            net[p["name"]] = {"name": p["name"], "kind": p["kind"], "old": old, "new": p.get("new")}
    out = []
    for name in sorted(net):
        p = net[name]
        if p["old"] == p["new"]:
            continue
        if p["old"] is None:
            p["kind"] = "added"
        elif p["new"] is None:
            p["kind"] = "removed"
        elif p["kind"] in ("added", "removed"):
            p["kind"] = "upgraded"  # removed and installed again at another version
        out.append(p)
    return out


def classify(
    live: int,
    target: int,
    chain: Sequence[int],
    source: str,
    packages: Sequence[Mapping[str, Any]],
    files: Sequence[Mapping[str, Any]],
    running_release: str,
) -> Plan:
    """Sort the net change of *files* and *packages* into a :class:`Plan` (pure)."""
    added: list[str] = []
    replaced: list[str] = []
    kernel: list[str] = []
    elsewhere: list[str] = []
    bookkeeping = 0
    keep = _rebuilt_trees(files, running_release)
    for f in files:
        path = f["path"]
        if f.get("dir") and f["kind"] == "modified":
            continue  # a directory's own metadata (its time stamps) changed
        tree = _running_tree(path, running_release)
        if tree is not None and f["kind"] == "deleted" and path == f"/{tree[0]}/{tree[1]}":
            replaced.append(path)  # gone from the target: nothing to keep it on
        elif tree is not None and tree in keep:
            kernel.append(path)
        elif tree is not None:
            # Modules added for the running kernel (DKMS builds them for it) load live; the
            # indexes depmod rewrote for them are bookkeeping.
            if f["kind"] == "added":
                added.append(path)
            else:
                bookkeeping += 1
        elif _kernel(path):
            kernel.append(path)
        elif path.lstrip("/").split("/", 1)[0] not in USERSPACE:
            elsewhere.append(path)
        elif _bookkeeping(path):
            bookkeeping += 1
        elif f["kind"] == "added":
            added.append(path)
        elif path.startswith(_DOCS):
            bookkeeping += 1
        elif not f.get("dir") or f["kind"] == "deleted":
            replaced.append(path)
    return Plan(
        live=live,
        target=target,
        chain=tuple(chain),
        source=source,
        packages=tuple(packages),
        added=tuple(added),
        replaced=tuple(replaced),
        bookkeeping=bookkeeping,
        kernel=tuple(kernel),
        elsewhere=tuple(elsewhere),
        keep=tuple(keep),
    )


def _rebuilt_trees(
    files: Sequence[Mapping[str, Any]], running_release: str
) -> list[tuple[str, str]]:
    """The running kernel's module trees whose modules the target replaced or deleted (a
    rebuild under the same release), but not those it removed as a whole."""
    rebuilt: list[tuple[str, str]] = []
    gone = set()
    for f in files:
        tree = _running_tree(f["path"], running_release)
        if tree is None or f.get("dir"):
            if tree is not None and f["kind"] == "deleted" and f["path"] == f"/{tree[0]}/{tree[1]}":
                gone.add(tree)
            continue
        name = f["path"].rsplit("/", 1)[-1]
        if f["kind"] != "added" and not name.startswith("modules.") and tree not in rebuilt:
            rebuilt.append(tree)
    return [t for t in rebuilt if t not in gone]
