"""The one error base class and the documented exit codes.

Every failure the tool foresees is a :class:`TUError`: it carries the exit code, a one-line message
naming the problem and a hint naming the fix.  The CLI prints ``error: MESSAGE`` and ``hint: HINT``
and exits with the code; a traceback is shown only with ``--debug``.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of ``transactional-update`` (also listed in the README and ``--help``).

    ``run`` passes the command's own non-zero exit code through instead of ``FAILED``.
    """

    OK = 0
    FAILED = 1  # the transaction failed; the snapshot was discarded (or kept with --keep)
    USAGE = 2  # bad command line (click uses 2 as well)
    NOT_MANAGED = 3  # the root is not a btrfs/snapper system this tool can manage
    LOCKED = 4  # another transaction holds the lock
    BAD_SNAPSHOT = 5  # unknown, in-progress or foreign snapshot number
    CONFIG = 6  # unreadable or invalid configuration file
    SYSTEM = 7  # btrfs, snapper or mount operation failed
    NO_SPACE = 8  # the filesystem ran out of space; nothing was changed
    INTERRUPTED = 130  # SIGINT/SIGTERM/SIGHUP; the snapshot was discarded


class TUError(Exception):
    """A failure with an exit code, a one-line message and a hint for the fix."""

    code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, hint: str = "", *, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code: int = int(self.code if code is None else code)

    def __str__(self) -> str:
        return self.message


class UsageError(TUError):
    code = ExitCode.USAGE


class NotManagedError(TUError):
    code = ExitCode.NOT_MANAGED


class LockedError(TUError):
    code = ExitCode.LOCKED


class SnapshotError(TUError):
    code = ExitCode.BAD_SNAPSHOT


class ConfigError(TUError):
    code = ExitCode.CONFIG


class SystemError_(TUError):  # noqa: N801 - avoid shadowing the builtin SystemError
    code = ExitCode.SYSTEM


class NoSpaceError(TUError):
    code = ExitCode.NO_SPACE


class CommandFailed(TUError):
    """The command run in the snapshot failed; its exit code becomes ours."""

    code = ExitCode.FAILED


class Interrupted(TUError):
    code = ExitCode.INTERRUPTED


def report(exc: BaseException) -> int:
    """Print *exc* as ``error:``/``hint:`` lines on stderr; returns the exit code to use."""
    import sys

    if isinstance(exc, TUError):
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    print(f"error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
    print("hint: rerun with --debug for the traceback and report it", file=sys.stderr)
    return int(ExitCode.FAILED)
