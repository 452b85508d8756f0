"""The one helper that runs subprocesses on the host.

Argument lists are built by pure functions elsewhere; this module only executes them, and logs one
readable line when a command fails.  Commands inside a snapshot go through :mod:`core.chroot`
instead.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from transactional_update.errors import NoSpaceError, SystemError_

if TYPE_CHECKING:
    import subprocess

log = logging.getLogger(__name__)


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    capture: bool = True,
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
    what: str = "",
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run *argv*; on failure with *check*, raise :class:`SystemError_` naming the command.

    *what* is a short human description ("create snapshot") used in the error message.  A
    command still running after *timeout* seconds is killed and is a failure (also without
    *check*).
    """
    import subprocess  # here, not at the top: the read-only queries never spawn anything

    cmdline = shlex.join(argv)
    log.debug("run: %s", cmdline)
    try:
        proc = subprocess.run(
            list(argv),
            check=False,
            capture_output=capture,
            text=True,
            env=dict(env) if env is not None else None,
            input=input_text,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise SystemError_(
            f"{what or argv[0]} did not end within {timeout:g} s and was killed",
            f"check that {argv[0]} does not wait for input",
        ) from exc
    except FileNotFoundError as exc:
        raise SystemError_(
            f"{argv[0]}: command not found", f"install the package that provides {argv[0]}"
        ) from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip().splitlines()
        last = detail[-1] if detail else f"exit code {proc.returncode}"
        log.error("command failed (exit %d): %s: %s", proc.returncode, cmdline, last)
        message = f"{what or argv[0]} failed: {last}"
        if "No space left" in last:
            raise NoSpaceError(message, "free space on the btrfs filesystem, then retry")
        raise SystemError_(message, f"run with --debug to see the full command ({argv[0]})")
    return proc
