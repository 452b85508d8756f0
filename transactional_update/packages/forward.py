"""Options after ``pkg ACTION`` that are the package manager's: which ones are forwarded, as what.

openSUSE's tool hands every word after ``pkg ACTION`` to zypper, and its clients use that:
cloud-init runs ``pkg install --auto-agree-with-licenses PKGS``, Salt passes its ``args``.  Here
the root's package manager may be apt, zypper or dnf, and an option goes through only when this
table says what it means for that manager; anything else is refused with one line before any
snapshot exists (a typo must not reach a package manager as a package name).

A client writes zypper's spelling; each manager's own spelling of the same thing is accepted
too.  A value of ``()`` accepts the option and passes nothing: the manager has nothing to say it
with and does it anyway, or never asks (apt and dnf have no licences to agree to).  Options that
take a value (``--from REPO``) are not forwarded: their value would be read as a package name.

Global options of the tool (``-n``, ``-d``, ``-c`` …) never get here: :func:`cli.options.arrange`
takes them first, wherever they stand.
"""

from __future__ import annotations

from collections.abc import Sequence

from transactional_update.config.settings import Manager
from transactional_update.errors import UsageError
from transactional_update.packages.model import Action

_INSTALL = frozenset({Action.INSTALL, Action.UPDATE})
_REMOVE = frozenset({Action.REMOVE})
_ALL = _INSTALL | _REMOVE

# manager -> option as given -> (the pkg actions it applies to, the manager's arguments)
FORWARD: dict[Manager, dict[str, tuple[frozenset[Action], tuple[str, ...]]]] = {
    Manager.ZYPPER: {
        "--auto-agree-with-licenses": (_INSTALL, ("--auto-agree-with-licenses",)),
        "-l": (_INSTALL, ("--auto-agree-with-licenses",)),
        "--auto-agree-with-product-licenses": (
            _INSTALL,
            ("--auto-agree-with-product-licenses",),
        ),
        "--no-recommends": (_INSTALL, ("--no-recommends",)),
        "--recommends": (_INSTALL, ("--recommends",)),
        "-y": (_ALL, ("--no-confirm",)),
        "--no-confirm": (_ALL, ("--no-confirm",)),
        "--force-resolution": (_ALL, ("--force-resolution",)),
        "--no-force-resolution": (_ALL, ("--no-force-resolution",)),
        "--oldpackage": (_INSTALL, ("--oldpackage",)),
        "--replacefiles": (_INSTALL, ("--replacefiles",)),
        "--clean-deps": (_REMOVE, ("--clean-deps",)),
        "-u": (_REMOVE, ("--clean-deps",)),
        "--no-clean-deps": (_REMOVE, ("--no-clean-deps",)),
    },
    Manager.APT: {
        "--auto-agree-with-licenses": (_INSTALL, ()),
        "-l": (_INSTALL, ()),
        "--auto-agree-with-product-licenses": (_INSTALL, ()),
        "--no-recommends": (_INSTALL, ("--no-install-recommends",)),
        "--no-install-recommends": (_INSTALL, ("--no-install-recommends",)),
        "--recommends": (_INSTALL, ("--install-recommends",)),
        "--install-recommends": (_INSTALL, ("--install-recommends",)),
        "-y": (_ALL, ("-y",)),
        "--no-confirm": (_ALL, ("-y",)),
        "--yes": (_ALL, ("-y",)),
        "--oldpackage": (_INSTALL, ("--allow-downgrades",)),
        "--allow-downgrades": (_INSTALL, ("--allow-downgrades",)),
        "--clean-deps": (_REMOVE, ("--auto-remove",)),
        "-u": (_REMOVE, ("--auto-remove",)),
        "--auto-remove": (_REMOVE, ("--auto-remove",)),
        "--purge": (_REMOVE, ("--purge",)),
    },
    Manager.DNF: {
        "--auto-agree-with-licenses": (_INSTALL, ()),
        "-l": (_INSTALL, ()),
        "--auto-agree-with-product-licenses": (_INSTALL, ()),
        "--no-recommends": (_INSTALL, ("--setopt=install_weak_deps=False",)),
        "--recommends": (_INSTALL, ("--setopt=install_weak_deps=True",)),
        "-y": (_ALL, ("-y",)),
        "--no-confirm": (_ALL, ("-y",)),
        "--assumeyes": (_ALL, ("-y",)),
        "--force-resolution": (_ALL, ("--allowerasing",)),
        "--allowerasing": (_ALL, ("--allowerasing",)),
        "--best": (_INSTALL, ("--best",)),
        "--nobest": (_INSTALL, ("--nobest",)),
        # dnf removes dependencies nobody needs any more by default (clean_requirements_on_remove).
        "--clean-deps": (_REMOVE, ()),
        "-u": (_REMOVE, ()),
    },
}


def split(words: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The words after ``pkg ACTION``: (package names, options for the package manager)."""
    return (
        tuple(w for w in words if not w.startswith("-")),
        tuple(w for w in words if w.startswith("-")),
    )


def translate(manager: Manager, action: Action, given: Sequence[str]) -> tuple[str, ...]:
    """The package manager's arguments for the options *given* after ``pkg ACTION``.

    :class:`UsageError` names the first option that *manager* does not get for *action*.
    """
    table = FORWARD[manager]
    out: list[str] = []
    for opt in given:
        actions, args = table.get(opt, (frozenset(), ()))
        if action not in actions:
            known = sorted(o for o, (a, _) in table.items() if action in a)
            raise UsageError(
                f"option {opt!r} is not forwarded to {manager} (pkg {action})",
                f"forwarded for pkg {action} with {manager}: {', '.join(known)}; "
                "`run -- COMMAND` runs any command in a new snapshot",
            )
        out += [a for a in args if a not in out]
    return tuple(out)
