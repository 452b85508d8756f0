"""Logging set-up: stderr for the admin, the managed root's log file for the record.

By default stderr shows warnings and errors (results go to stdout); ``-v`` adds progress steps
(INFO), ``-vv``/``--debug`` every command (DEBUG), ``--quiet`` only errors.  The log file
always gets INFO and above, with timestamps, so an admin can read what a nightly run did.
"""

from __future__ import annotations

import contextlib
import logging
import os
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


class _LogFile(logging.FileHandler):
    """The log file; a write that fails (a full disk) ends logging to it, without a word.

    logging's default prints ``--- Logging error ---`` and a traceback on stderr, which would
    bury the one-line error the admin needs (the log file is on the very filesystem that filled
    up); stderr still gets every message.
    """

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        log.removeHandler(self)
        with contextlib.suppress(Exception):
            self.close()


def attach_file(root: Path) -> None:
    """Also log to ``ROOT/var/log/transactional-update.log`` (skipped when it is not writable).

    Readable by root only: it names every command line, which may carry secrets
    (``run -- sh -c 'echo root:pw | chpasswd'``).
    """
    path = root / LOG_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)  # also a file an older version made world-readable
        finally:
            os.close(fd)
        handler = _LogFile(path, encoding="utf-8")
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
