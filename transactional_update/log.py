"""Logging set-up: stderr for the admin, the managed root's log file for the record.

By default stderr shows warnings and errors (results go to stdout); ``-v`` adds progress steps
(INFO), ``-vv``/``--debug`` every command (DEBUG), ``--quiet`` only errors.  The log file
always gets INFO and above, with timestamps, so an admin can read what a nightly run did.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("transactional_update")

LOG_FILE = "var/log/transactional-update.log"


def setup(verbosity: int, quiet: bool = False) -> None:
    """Send our log records to stderr at a level chosen by ``-v``/``-q``."""
    if quiet:
        level = logging.ERROR
    else:
        level = (logging.WARNING, logging.INFO)[verbosity] if verbosity < 2 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.setLevel(level)
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False


def attach_file(root: Path) -> None:
    """Also log to ``ROOT/var/log/transactional-update.log`` (skipped when it is not writable)."""
    path = root / LOG_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError:
        log.debug("cannot write %s; logging to stderr only", path)
        return
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(message)s"))
    handler.setLevel(logging.INFO)
    log.addHandler(handler)


@contextmanager
def step(message: str) -> Iterator[None]:
    """Log a progress step and, at debug level, how long it took."""
    log.info("%s", message)
    start = time.monotonic()
    try:
        yield
    finally:
        log.debug("%s: %.0f ms", message, (time.monotonic() - start) * 1000)
