"""Per-run state: the managed root, its configuration, snapper, and who follows the default.

The core changes which snapshot boots next (a commit, a rollback, a cleanup that removes
snapshots) but knows nothing of boot loaders or services.  What has to follow the default (GRUB's
menu; later features add theirs) subscribes through :attr:`Context.after_default`, which the
command line fills when it opens the context.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from transactional_update.config import settings
from transactional_update.config.settings import Config
from transactional_update.snapshots.snapper import Snapper, connect
from transactional_update.snapshots.system import ManagedRoot, open_root

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Followup:
    """What one subscriber did after the default changed."""

    key: str  # its name in --json output, e.g. "boot_menu"
    what: str  # its name in text, e.g. "the boot menu"
    done: bool | None  # None: nothing to follow on this system; False: failed, and said why
    notes: Mapping[str, str] = field(default_factory=dict)  # fields for the commit's changelog


# Called with the lock held, after the new default is durable.  It must not raise: the change it
# follows is made and reported; a failure is a warning and a record (``done=False``).
AfterDefault = Callable[["Context"], Followup]


@dataclass
class Context:
    root: Path
    config: Config
    managed: ManagedRoot
    after_default: tuple[AfterDefault, ...] = ()
    _snapper: Snapper | None = field(default=None, repr=False)

    @property
    def snapper(self) -> Snapper:
        # Connected on first use: status and --help never pay for a bus connection.
        if self._snapper is None:
            self._snapper = connect(
                self.root, self.config.snapper_config, self.config.snapper_backend
            )
        return self._snapper

    def default_changed(self) -> list[Followup]:
        """Run every subscriber of :attr:`after_default`; what each did."""
        done = []
        for follow in self.after_default:
            try:
                done.append(follow(self))
            except Exception as exc:  # a bug in a subscriber must not undo a reported change
                log.warning("after the default changed: %s failed: %s", follow.__name__, exc)
                done.append(Followup(follow.__name__, follow.__name__, False))
        return done


def open_context(root: Path, after_default: tuple[AfterDefault, ...] = ()) -> Context:
    cfg = settings.load(root)
    return Context(
        root=root,
        config=cfg,
        managed=open_root(root, cfg.snapper_config),
        after_default=after_default,
    )
