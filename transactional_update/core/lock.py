"""The transaction lock: one transaction per snapshot store at a time.

The lock is ``flock(2)`` on ``/.snapshots/.transactional-update.lock`` of the managed root, so it
guards exactly what a transaction changes, also when two invocations reach the same filesystem
through
different ``--root`` paths.  flock dies with its holder, so a stale file from a killed process never
blocks; the file is opened with ``O_NOFOLLOW`` and must be a regular root-owned file, so a symlink
planted there cannot redirect our write.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from pathlib import Path
from types import TracebackType

from transactional_update.errors import LockedError, SystemError_

LOCK_NAME = ".transactional-update.lock"


def noted_forks(text: str) -> list[int]:
    """Every fork number the lock file mentions (``snapshot N`` or ``stale N``), newest last."""
    forks = []
    for line in text.splitlines():
        word, _, number = line.strip().partition(" ")
        if word in ("stale", "snapshot") and number.isascii() and number.isdigit():
            forks.append(int(number))
    return forks


def stale_notes(text: str) -> list[str]:
    """``stale N`` lines for every fork a dead holder noted (``snapshot N`` or ``stale N``)."""
    numbers = dict.fromkeys(noted_forks(text))
    return [f"stale {n}\n" for n in list(numbers)[-20:]]


def is_locked(path: Path) -> bool:
    """Whether some process holds an exclusive flock on *path* now (without taking it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class Lock:
    def __init__(self, snapshots_dir: Path, wait: float = 0.0) -> None:
        self.path = snapshots_dir / LOCK_NAME
        self.wait = wait
        self.fd: int | None = None
        self._stale: list[str] = []

    def read(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def holder(self) -> str:
        """What the lock file says about the transaction holding it (pid, start, snapshot)."""
        lines = [x.strip() for x in self.read().splitlines() if x.strip()]
        return ", ".join(x for x in lines if not x.startswith("stale ")) or "unknown"

    def acquire(self) -> None:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise LockedError(
                    f"lock file {self.path} is a symbolic link; refusing to follow it",
                    f"remove {self.path} (nothing legitimate creates a link there)",
                ) from exc
            raise SystemError_(
                f"cannot open lock file {self.path}: {exc.strerror}",
                "check that /.snapshots is writable",
            ) from exc
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_nlink != 1:
            os.close(fd)
            raise LockedError(
                f"lock file {self.path} is not a plain root-owned file",
                f"remove {self.path} and retry",
            )
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LockedError(
                        f"another transaction is running ({self.holder()})",
                        "wait for it to finish; check with: transactional-update status",
                    ) from None
                time.sleep(0.1)
        # Whatever the file still says was written by a holder that died: its fork may still
        # exist, so its number is kept as "stale N" for status until cleanup has run.
        self._stale = stale_notes(os.pread(fd, 65536, 0).decode(errors="replace"))
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, "".join([f"pid {os.getpid()} since {started}\n", *self._stale]).encode())
        self.fd = fd

    def note(self, text: str) -> None:
        """Add *text* (e.g. the fork's number) to what :meth:`holder` reports."""
        if self.fd is not None:
            os.write(self.fd, f"{text}\n".encode())

    def is_held(self) -> bool:
        """Whether some process holds the lock now (without taking it)."""
        return is_locked(self.path)

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, "".join(self._stale).encode(), 0)
            os.close(self.fd)  # closing drops the flock; the file stays (unlinking would race)
            self.fd = None

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
