"""The one error base class and the documented exit codes.

Every failure the tool foresees is a :class:`TUError`: it carries the exit code, a one-line message
naming the problem and a hint naming the fix.  The CLI prints ``error: MESSAGE`` and ``hint: HINT``
and exits with the code; a traceback is shown only with ``--debug``.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of ``transactional-update``, each with its meaning.

    The one list of them: ``--help`` prints it and a test holds the README's table to it.
    """

    meaning: str

    def __new__(cls, value: int, meaning: str) -> ExitCode:
        member = int.__new__(cls, value)
        member._value_ = value
        member.meaning = meaning
        return member

    OK = 0, "success"
    FAILED = (
        1,
        "the transaction failed; the snapshot was discarded "
        "(`run` and `shell` pass the command's own non-zero code through)",
    )
    USAGE = (
        2,
        "usage error (bad option, nested invocation); `apply`: not applied (refused, or failed "
        "and undone: the running system is as it was)",
    )
    NOT_MANAGED = (
        3,
        "not a managed system (not btrfs, no `/.snapshots`, no snapper config, "
        "root not a snapshot)",
    )
    LOCKED = (
        4,
        "another transaction holds the lock (`reboot-manager`: another reboot manager runs)",
    )
    BAD_SNAPSHOT = 5, "bad snapshot: unknown, snapshot 0, in progress, or not snapper's"
    CONFIG = 6, "bad configuration file (the message names file and line)"
    SYSTEM = 7, "a btrfs, snapper or mount operation failed"
    NO_SPACE = 8, "the filesystem is full; nothing was changed"
    UNHEALTHY = 9, "`health`, `boot-check`: a required health check failed"
    INTERRUPTED = 130, "interrupted (SIGINT, SIGTERM, SIGHUP); the snapshot was discarded"


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


class ApplyError(TUError):
    """``apply`` refused or failed; openSUSE's tool exits 2 then too."""

    code = ExitCode.USAGE


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
