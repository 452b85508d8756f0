"""Per-run state: the managed root, its configuration and a snapper client, built once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transactional_update import config as config_mod
from transactional_update.config import Config
from transactional_update.snapper import Snapper, connect
from transactional_update.system import ManagedRoot, open_root


@dataclass
class Context:
    root: Path
    config: Config
    managed: ManagedRoot
    _snapper: Snapper | None = field(default=None, repr=False)

    @property
    def snapper(self) -> Snapper:
        # Connected on first use: status and --help never pay for a bus connection.
        if self._snapper is None:
            self._snapper = connect(
                self.root, self.config.snapper_config, self.config.snapper_backend
            )
        return self._snapper


def open_context(root: Path) -> Context:
    cfg = config_mod.load(root)
    return Context(root=root, config=cfg, managed=open_root(root, cfg.snapper_config))
