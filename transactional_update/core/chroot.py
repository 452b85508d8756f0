"""Run commands inside a snapshot: private mount and PID namespaces, API filesystems, chroot.

:class:`ChrootSession` is the only way the tool runs anything in a snapshot.  Entering it forks a
*holder* process that unshares a mount namespace and a PID namespace, mounts what the chroot needs
under the snapshot, chroots itself there and then starts each requested command (``posix_spawn``)
until it is closed; it unmounts in reverse order before it exits.

Why a holder process rather than ``mount`` calls in the tool itself:

* mounts live only in the holder's private namespace, so the host never sees them and nothing can
  leak: if the tool is killed, the namespace dies with its last process and the kernel drops them;
* the holder is the only child of PID 1 of its PID namespace (a waiting process outside the
  chroot, see :func:`_namespace_init`): when it dies, so does PID 1, and the kernel kills every
  process left in the namespace (daemons a package script forked); every process in the chain
  carries ``PR_SET_PDEATHSIG`` so ``kill -9`` of the tool tears the whole transaction down.

The mount plan (:func:`plan_mounts`) is a pure function of the managed root's mount table, so it is
unit-tested without privileges.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import signal
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

from transactional_update.errors import SystemError_, TUError
from transactional_update.paths import resolve_under
from transactional_update.snapshots import btrfs
from transactional_update.snapshots.system import USERSPACE

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 0x2
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

# Debian's invoke-rc.d and deb-systemd-invoke ask this script before starting a service; exit 101
# means "forbidden", which keeps package scripts from starting daemons inside the snapshot.
POLICY_RC_D = "/usr/sbin/policy-rc.d"
POLICY_RC_D_TEXT = (
    "#!/bin/sh\n# transactional-update: no services start inside a snapshot\nexit 101\n"
)

# The shell's rc file: the user's usual ones first (they may set PS1), then a prompt that says
# where the admin is, as openSUSE's tool does.
SHELL_RC = "/run/transactional-update/bashrc"
SHELL_RC_TEXT = """\
[ -f /etc/bash.bashrc ] && . /etc/bash.bashrc
[ -f ~/.bashrc ] && . ~/.bashrc
PS1='transactional update \\w# '
"""

# State that package managers share between snapshots although it lives under a separate /var:
# downloaded packages, logs and repository metadata (not the package databases themselves).
SHARED_VAR = (
    "/var/cache",
    "/var/log",
    "/var/lib/apt",  # lists and extended_states (auto-install marks)
    "/var/lib/zypp",
    "/var/lib/ca-certificates",
)
# Package-database links that must look the same inside the chroot as on the booted system.
VAR_LINKS = ("/var/lib/dpkg", "/var/lib/rpm")
ALWAYS_BIND = ("/root",)
NEVER_SHADOW = ("/proc", "/sys", "/dev", "/run", "/tmp", "/.snapshots")
# Mounted exactly there, these are apply's binds of the live snapshot's own directories (the fork
# has its own); what is mounted below them (/usr/local) is shadowed as anywhere else.
APPLIED = frozenset(f"/{name}" for name in USERSPACE)


class Kind(StrEnum):
    BIND = "bind"  # bind a directory or file of the host (recursive for /dev and /sys)
    RBIND = "rbind"
    TMPFS = "tmpfs"
    PROC = "proc"
    SHADOW = "shadow"  # a tmpfs over a directory the booted system mounts from elsewhere
    LINK = "link"  # a symlink created inside a shadow tmpfs
    FILE = "file"  # a file with the given text bound over the target (created if missing)
    TEXT = "text"  # a file with the given text written inside one of our tmpfs mounts


@dataclass(frozen=True)
class Mount:
    kind: Kind
    target: str  # absolute path inside the chroot
    source: str = ""  # host path for BIND/RBIND, link target for LINK, text for FILE
    read_only: bool = False


@dataclass
class RunResult:
    returncode: int
    duration: float


@dataclass
class CloseReport:
    shadowed_writes: list[str] = field(default_factory=list)
    # Nothing in the snapshot changed while it was open (see _Holder.setup): the changelog
    # need not ask btrfs what changed.
    untouched: bool = False


def parse_mountinfo(text: str) -> list[str]:
    """Mount points from ``/proc/self/mountinfo`` text (octal escapes decoded)."""
    points = []
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) > 4:
            points.append(fields[4].encode().decode("unicode_escape"))
    return points


def plan_mounts(
    root: PurePosixPath,
    host_mounts: Iterable[str],
    bind_dirs: Sequence[str],
    existing: Iterable[str] = (),
    var_links: Mapping[str, str] | None = None,
    resolv_conf: str | None = None,
    file_mounts: Iterable[str] = (),
) -> list[Mount]:
    """The mounts of a chroot into a snapshot of the system at *root*, in mounting order.

    *host_mounts* are the mount points of the host; those below *root* tell which directories the
    booted system gets from other subvolumes.  Those are *shadowed*: a write there would land in the
    snapshot's own (hidden) directory, so the chroot gets a tmpfs there instead and the tool reports
    what was written.  Shared package-manager state under them (*SHARED_VAR*), ``/root``, ``/boot``
    mounts and *bind_dirs* are bound from the live system.  *existing* lists which of those exist
    on the live system (only they are bound); *var_links* maps package-database links (e.g.
    ``/var/lib/dpkg``) to their targets so they resolve inside the snapshot as on the live system.
    *file_mounts* are host mount points that are files, not directories: systemd binds a file
    from /run over an empty ``/etc/machine-id`` on a read-only root.  They are left alone (no
    tmpfs can shadow a file): the snapshot keeps its own file.
    """
    below: list[str] = []
    skip = set(file_mounts)
    for point in host_mounts:
        if point in skip:
            continue
        p = PurePosixPath(point)
        if p != root and root in p.parents:
            rel = "/" + str(p.relative_to(root))
            never = any(rel == n or rel.startswith(n + "/") for n in NEVER_SHADOW)
            if not never and rel not in APPLIED:
                below.append(rel)
    exist = set(existing)
    binds = {d for d in [*ALWAYS_BIND, *bind_dirs] if d in exist}
    binds |= {b for b in below if b == "/boot" or b.startswith("/boot/")}
    # Top-most mount points only: a bound or shadowed directory covers what is mounted below it.
    tops = sorted({b for b in below if not any(b.startswith(o + "/") for o in below)})
    shadows = [t for t in tops if t not in binds and not any(t.startswith(b + "/") for b in binds)]

    plan = [
        Mount(Kind.PROC, "/proc"),
        Mount(Kind.RBIND, "/sys", "/sys"),
        Mount(Kind.RBIND, "/dev", "/dev"),
        Mount(Kind.TMPFS, "/run"),
        Mount(Kind.TMPFS, "/tmp"),
        Mount(Kind.BIND, "/.snapshots", str(root / ".snapshots")),
    ]
    plan += [Mount(Kind.SHADOW, s) for s in shadows]
    if "/var" in shadows:  # package managers stage files in /var/tmp (zypper creates it)
        plan.append(Mount(Kind.TMPFS, "/var/tmp"))
    for s in shadows:
        for link, target in sorted((var_links or {}).items()):
            if link.startswith(s + "/"):
                plan.append(Mount(Kind.LINK, link, target))
    shared = [v for v in SHARED_VAR if v in exist and any(v.startswith(s + "/") for s in shadows)]
    for target in sorted(binds) + shared:
        plan.append(Mount(Kind.BIND, target, str(root / target.lstrip("/"))))
    if resolv_conf is not None:
        plan.append(Mount(Kind.FILE, "/etc/resolv.conf", resolv_conf, read_only=True))
    plan.append(Mount(Kind.FILE, POLICY_RC_D, POLICY_RC_D_TEXT, read_only=True))
    plan.append(Mount(Kind.TEXT, SHELL_RC, SHELL_RC_TEXT))
    return plan


def command_env(
    host_env: Mapping[str, str], extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a command in the snapshot: minimal, marked, services kept down."""
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": host_env.get("LANG", "C.UTF-8"),
        "TRANSACTIONAL_UPDATE": "true",
        # openSUSE's rpm scripts honour this; systemctl in offline mode refuses to start units.
        "DISABLE_RESTART_ON_UPDATE": "yes",
        "SYSTEMD_OFFLINE": "1",
    }
    for key in ("TERM", "LC_ALL", "COLUMNS", "LINES", "http_proxy", "https_proxy", "no_proxy"):
        if key in host_env:
            env[key] = host_env[key]
    env.update(extra or {})
    return env


# --- the holder process (runs in the child; never returns) -------------------------------------

_libc: Any = None


def _c() -> Any:
    global _libc  # noqa: PLW0603 - one CDLL handle per process
    if _libc is None:
        _libc = ctypes.CDLL("libc.so.6", use_errno=True)  # find_library would spawn ldconfig
    return _libc


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(
    source: str, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    _check(
        _c().mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {source} on {target}",
    )


def _umount(target: str) -> None:
    if _c().umount2(target.encode(), 0) != 0:
        _c().umount2(target.encode(), MNT_DETACH)


# Dispositions a command must not inherit: the holder ignores the terminal's signals (the tool
# decides), and Python ignores SIGPIPE.
CHILD_DEFAULT_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGTSTP,
    signal.SIGTTOU,
    signal.SIGTTIN,
    signal.SIGPIPE,
)


def _which(name: str, search: str) -> str:
    """*name* looked up like ``execvp`` does, in the (chrooted) caller's file system."""
    if "/" in name:
        return name
    for d in search.split(":") if search else ("/usr/bin", "/bin"):
        candidate = os.path.join(d or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


def _die_with_parent(parent: int | None) -> None:
    _check(_c().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
    # The parent may have died before prctl took effect.  PID 1 of a new PID namespace sees
    # getppid() == 0 and cannot check; it notices a dead tool by EOF on its socket instead.
    if parent is not None and os.getppid() != parent:
        os._exit(1)


class _Holder:
    """The child of the namespaces' PID 1 in the chroot: mounts, runs commands, unmounts."""

    def __init__(self, sock: socket.socket, plan: list[Mount]) -> None:
        self.sock = sock
        self.fork_dir = Path()  # the snapshot, named by the setup request
        self.plan = plan
        self.mounted: list[str] = []
        self.created: list[Path] = []
        self.shadows: list[str] = []
        self.scaffold: set[str] = set()
        self.baseline = -1
        self.way_back: int | None = None  # the host's root while the holder is chrooted

    def host(self, target: str) -> Path:
        # Mount targets are resolved inside the snapshot: a symlink there must not lead outside.
        return resolve_under(self.fork_dir, target)

    def ensure(self, path: Path, is_dir: bool) -> None:
        if path.exists() or path.is_symlink():
            return
        missing = [p for p in [path, *path.parents] if not p.exists()]
        path.parent.mkdir(parents=True, exist_ok=True)
        if is_dir:
            path.mkdir()
        else:
            path.touch()
        # Only remember what we created in the snapshot itself, not inside our own tmpfs.
        if not any(str(path).startswith(str(self.host(s)) + "/") for s in self.shadows):
            self.created += [p for p in reversed(missing) if str(p).startswith(str(self.fork_dir))]

    def setup(self) -> None:
        _mount("none", "/", None, MS_REC | MS_PRIVATE)
        # The snapshot as a mount point of its own, so "/" is in the chroot's mountinfo:
        # grub-probe (update-grub, run by kernel packages) and findmnt / fail without it.
        _mount(str(self.fork_dir), str(self.fork_dir), None, MS_BIND)
        self.mounted.append(str(self.fork_dir))
        # Reading a file must not change the snapshot: with relatime, running anything updated
        # access times and so the snapshot's generation (see untouched()).
        _mount("none", str(self.fork_dir), None, MS_BIND | MS_REMOUNT | MS_NOATIME)
        for m in self.plan:
            target = self.host(m.target)
            if m.kind is Kind.TEXT:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(m.source, encoding="utf-8")
                continue
            if m.kind is Kind.LINK:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(m.source, target)
                self.scaffold.add(m.target)
                continue
            is_dir = m.kind is not Kind.FILE and not (
                m.kind is Kind.BIND and Path(m.source).is_file()
            )
            self.ensure(target, is_dir)
            self.scaffold.update(str(p) for p in PurePosixPath(m.target).parents)
            self.scaffold.add(m.target)
            if m.kind is Kind.PROC:
                _mount("proc", str(target), "proc", MS_NOSUID | MS_NODEV)
            elif m.kind in (Kind.TMPFS, Kind.SHADOW):
                _mount("tmpfs", str(target), "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
                if m.kind is Kind.SHADOW:
                    self.shadows.append(m.target)
                elif m.target in ("/tmp", "/var/tmp"):
                    os.chmod(target, 0o1777)  # noqa: S103 - /tmp is world-writable and sticky
            elif m.kind in (Kind.BIND, Kind.RBIND):
                _mount(
                    m.source, str(target), None, MS_BIND | (MS_REC if m.kind is Kind.RBIND else 0)
                )
            elif m.kind is Kind.FILE:
                text_dir = self.host("/run/transactional-update")
                text_dir.mkdir(exist_ok=True)
                text_file = text_dir / PurePosixPath(m.target).name
                text_file.write_text(m.source, encoding="utf-8")
                text_file.chmod(0o755)
                _mount(str(text_file), str(target), None, MS_BIND)
                if m.read_only:
                    _mount("none", str(target), None, MS_BIND | MS_REMOUNT | MS_RDONLY)
            self.mounted.append(str(target))
        # The transaction that holds the mount points created above (removed again at teardown):
        # a snapshot whose generation is no later at close was changed by no command.  Starting
        # the commit is enough; waiting for it would cost every transaction a few ms here.
        self.baseline = btrfs.start_sync(self.fork_dir)

    def untouched(self) -> bool:
        """Whether no command changed the snapshot (call after every process is gone)."""
        try:
            if btrfs.committed_generation(self.fork_dir) > self.baseline:
                return False
            # The snapshot's own /etc is a subvolume of its own, with its own generation.
            etc = self.fork_dir / "etc"
            return not btrfs.is_subvolume(etc) or btrfs.generation(etc) <= self.baseline
        except TUError:
            return False  # the changelog then asks btrfs send, which reports its own error

    def shadowed_writes(self) -> list[str]:
        found = []
        for shadow in self.shadows:
            base = self.host(shadow)
            for dirpath, dirnames, filenames in os.walk(base):
                rel_dir = "/" + str(Path(dirpath).relative_to(self.fork_dir))
                for name in sorted(
                    filenames + [d for d in dirnames if os.path.islink(Path(dirpath, d))]
                ):
                    rel = f"{rel_dir}/{name}"
                    if rel not in self.scaffold:
                        found.append(rel)
                for d in list(dirnames):
                    rel = f"{rel_dir}/{d}"
                    if str(Path(dirpath, d)) in self.mounted:
                        dirnames.remove(d)
                    elif rel not in self.scaffold and not os.listdir(Path(dirpath, d)):
                        found.append(rel + "/")
        return sorted(found)

    def kill_all(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)  # every process left in our PID namespace
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break

    def teardown(self) -> None:
        self.leave()  # the mount points and the created files are host paths
        self.kill_all()
        for target in reversed(self.mounted):
            _umount(target)
        for path in reversed(self.created):
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()

    def enter(self) -> None:
        """Chroot the holder itself into the snapshot, keeping a way back for the teardown.

        Commands are then started with ``posix_spawn`` (a vfork): forking this Python process
        for every command copied its page tables and then page after page on the way to
        ``exec`` - a few ms per command, several commands per package transaction.
        """
        self.way_back = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
        os.chroot(self.fork_dir)
        os.chdir("/")

    def leave(self) -> None:
        if self.way_back is not None:
            os.fchdir(self.way_back)
            os.chroot(".")
            os.close(self.way_back)
            self.way_back = None

    def run(self, request: dict[str, Any], fds: list[int]) -> int:
        argv, env = request["argv"], request["env"]
        try:
            try:
                os.chdir(request.get("cwd", "/"))
                pid = os.posix_spawn(
                    _which(argv[0], env.get("PATH", "")),
                    argv,
                    env,
                    file_actions=[
                        *((os.POSIX_SPAWN_DUP2, fd, i) for i, fd in enumerate(fds[:3])),
                        *((os.POSIX_SPAWN_CLOSE, fd) for fd in fds if fd > 2),
                    ],
                    setsigdef=CHILD_DEFAULT_SIGNALS,
                )
            except OSError as exc:
                err = fds[2] if len(fds) > 2 else 2
                os.write(
                    err, f"transactional-update: cannot run {argv[0]}: {exc.strerror}\n".encode()
                )
                return 127
            finally:
                os.chdir("/")
        finally:
            for fd in fds:
                os.close(fd)
        while True:
            done, status = os.waitpid(pid, 0)
            if done == pid:
                break
        return (
            os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
        )

    def serve(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGTSTP, signal.SIGTTOU):
            signal.signal(sig, signal.SIG_IGN)  # the tool decides; we die with it (PDEATHSIG)
        try:
            data = self.sock.recv(1 << 20)
        except OSError:
            data = b""
        if not data:  # the tool went away before there was a snapshot: nothing to undo
            return
        self.fork_dir = Path(json.loads(data)["fork_dir"])
        try:
            self.setup()
            self.enter()
        except Exception as exc:
            # Undone before the error is sent: the tool kills this process once it reads it.
            with contextlib.suppress(Exception):
                self.teardown()
            self._send({"error": f"{type(exc).__name__}: {exc}"})
            return
        self._send({"ready": True})
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.sock, 1 << 20, 3)
            except OSError:
                data, fds = b"", []
            if not data:  # the tool went away: tear down
                break
            request = json.loads(data)
            if request["op"] == "run":
                self._send({"rc": self.run(request, fds)})
            elif request["op"] == "close":
                self.leave()
                report = self.shadowed_writes()
                self.kill_all()  # a daemon left running could still write
                untouched = self.untouched()
                self.teardown()
                self._send({"shadowed": report, "untouched": untouched})
                return
        self.teardown()

    def _send(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            self.sock.send(json.dumps(message).encode())


def _namespace_init(sock: socket.socket, plan: list[Mount]) -> None:
    """PID 1 of the new PID namespace: forks the holder, waits for it, and exits with it.

    It stays outside the chroot, as a host's init does: a command's ``/proc/1/mountinfo`` (PID
    1's mounts, seen from PID 1's root) then differs from its ``/proc/self/mountinfo``, which is
    how Debian's ``ischroot`` and Salt's ``in_transaction`` tell that they run in a chroot, and
    so inside a transaction (a chrooted PID 1 made both the same).  Its exit ends the
    namespace: the kernel kills whatever is left in it.  The holder is a child subreaper, so
    daemons that package scripts leave behind are still the holder's to kill and reap.
    """
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGTSTP, signal.SIGTTOU):
        signal.signal(sig, signal.SIG_IGN)  # the tool decides; we die with it (PDEATHSIG)
    pid = os.fork()
    if pid == 0:
        _die_with_parent(None)
        _check(_c().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl")
        _Holder(sock, plan).serve()
        os._exit(0)
    sock.close()
    while True:
        done, status = os.waitpid(-1, 0)
        if done == pid:
            break
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def _holder_main(sock: socket.socket, plan: list[Mount], tool_pid: int) -> None:
    """First child: join new namespaces, fork PID 1 of the new PID namespace, wait for it."""
    _die_with_parent(tool_pid)
    keep = {0, 1, 2, sock.fileno()}
    for fd in os.listdir("/proc/self/fd"):
        if int(fd) not in keep:
            with contextlib.suppress(OSError):
                os.close(int(fd))  # the transaction lock and bus connections stay with the tool
    _check(_c().unshare(CLONE_NEWNS | CLONE_NEWPID), "unshare")
    pid = os.fork()
    if pid == 0:
        _die_with_parent(None)
        _namespace_init(sock, plan)
        os._exit(0)
    _pid, status = os.waitpid(pid, 0)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


class ChrootSession:
    """A snapshot with its chroot mounts, ready to run commands; closing unmounts everything.

    :meth:`start` prepares the holder's namespaces before the snapshot exists (the transaction
    does so while snapper creates it); :meth:`open` mounts the snapshot's chroot.
    """

    def __init__(self, fork_dir: Path | None, plan: list[Mount]) -> None:
        self.fork_dir = fork_dir
        self.plan = plan
        self.pid: int | None = None
        self.sock: socket.socket | None = None
        self.report = CloseReport()

    def __enter__(self) -> ChrootSession:
        self.open()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if t is None:
            self.close()
        else:
            self.kill()

    def start(self) -> None:
        """Fork the holder; it makes its namespaces and waits for :meth:`open`."""
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        tool_pid = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            try:
                parent_sock.close()
                _holder_main(child_sock, self.plan, tool_pid)
            except BaseException as exc:
                try:
                    child_sock.send(json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode())
                finally:
                    os._exit(1)
            os._exit(1)
        child_sock.close()
        self.pid, self.sock = pid, parent_sock

    def open(self, fork_dir: Path | None = None) -> None:
        """Mount the chroot of *fork_dir* (or the snapshot given at creation)."""
        if fork_dir is not None:
            self.fork_dir = fork_dir
        assert self.fork_dir is not None
        if self.sock is None:
            self.start()
        assert self.sock is not None
        # A holder that failed has sent its error and gone: the reply below reads it.
        with contextlib.suppress(OSError):
            self.sock.send(json.dumps({"op": "setup", "fork_dir": str(self.fork_dir)}).encode())
        reply = self._recv()
        if "error" in reply:
            self.kill()
            raise SystemError_(
                f"cannot prepare the chroot of {self.fork_dir}: {reply['error']}",
                "check the kernel log (dmesg) and that the snapshot is intact",
            )

    def _recv(self) -> dict[str, Any]:
        assert self.sock is not None
        data = self.sock.recv(1 << 20)
        if not data:
            raise SystemError_(
                "the chroot holder process died unexpectedly",
                "see the kernel log (dmesg); rerun with --debug",
            )
        result: dict[str, Any] = json.loads(data)
        return result

    def run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        cwd: str = "/",
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
    ) -> RunResult:
        """Run *argv* chrooted into the snapshot; returns its exit code (128+N for signal N)."""
        assert self.sock is not None
        fds = [
            0 if stdin is None else stdin,
            1 if stdout is None else stdout,
            2 if stderr is None else stderr,
        ]
        start = time.monotonic()
        request = {"op": "run", "argv": list(argv), "env": dict(env), "cwd": cwd}
        socket.send_fds(self.sock, [json.dumps(request).encode()], fds)
        reply = self._recv()
        return RunResult(int(reply["rc"]), time.monotonic() - start)

    def close(self) -> CloseReport:
        if self.sock is None:
            return self.report
        self.sock.send(json.dumps({"op": "close"}).encode())
        reply = self._recv()
        self.report = CloseReport(
            shadowed_writes=list(reply.get("shadowed", [])),
            untouched=bool(reply.get("untouched", False)),
        )
        self._reap()
        return self.report

    def kill(self) -> None:
        """Tear down at once: the holder's death kills every process in the namespace."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def plan_for(root: Path, bind_dirs: Sequence[str]) -> list[Mount]:
    """Read the live mount table and the root's links, then :func:`plan_mounts`."""
    mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text(encoding="utf-8"))
    candidates = [*ALWAYS_BIND, *bind_dirs, *SHARED_VAR]
    existing = [c for c in candidates if (root / c.lstrip("/")).is_dir()]
    links = {}
    for link in VAR_LINKS:
        p = root / link.lstrip("/")
        if p.is_symlink():
            links[link] = os.readlink(p)
    resolv = Path("/etc/resolv.conf")
    resolv_text = resolv.read_text(encoding="utf-8") if resolv.is_file() else None
    root_pp = PurePosixPath(os.path.realpath(root))
    files = [m for m in mounts if os.path.isfile(m)]
    return plan_mounts(root_pp, mounts, bind_dirs, existing, links, resolv_text, files)


def describe(plan: Sequence[Mount]) -> list[dict[str, Any]]:
    """The plan as plain data, for ``--debug`` logs and tests."""
    return [{k: (str(v) if k == "kind" else v) for k, v in asdict(m).items()} for m in plan]
