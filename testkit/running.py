"""A managed test system standing in for the running one, for ``apply``.

``apply`` binds over the running system's ``/usr`` and ``/etc``; a test must not do that to the
host.  :func:`run_steps` runs a list of steps in a private mount namespace (``unshare --mount
--propagation private``) where the test system's ``ROOT/run`` is a tmpfs, as a running system's
``/run`` is: every mount made there goes with the namespace, also when a step fails or the test
is killed.  The steps print what they saw as one JSON list, read by the test after the
namespace is gone (the files on disk stay for it to check).

``apply`` itself refuses ``--root`` (it changes the running system); here its flow is called
with the test root, and its errors become the exit code and message the command prints.

Steps: ``["apply", {"allow_replacement": bool, "restart_services": bool}]``, ``["tu", [ARG…]]``
(the CLI with ``--root``), ``["read", REL]``, ``["write", REL, TEXT]``, ``["hold", REL]`` (a
process that maps the shared library REL), ``["cwd", REL]`` (a process working in REL),
``["mounts"]`` (mount points below the root), ``["systemd"]`` (``ROOT/run/systemd/system``:
systemd seems to run), ``["lock"]`` (another
process holds the transaction lock), ``["cut", NAME, {OPTS}]`` (an apply killed the moment
``ROOT/NAME`` is bound; OPTS as apply's, optional), ``["tmpfs", REL]`` (a mount in the running
system).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HOLD = (
    "import ctypes, sys, time\n"
    "ctypes.CDLL(sys.argv[1])\n"
    "print('held', flush=True)\n"
    "time.sleep(3600)\n"
)
# An apply in a process of its own, killed (SIGKILL) the moment its first bind is in place.
APPLY = (
    "import json, sys\n"
    "from pathlib import Path\n"
    "from transactional_update.core.context import open_context\n"
    "from transactional_update.live import flow\n"
    "flow.apply(open_context(Path(sys.argv[1])), **json.loads(sys.argv[2]))\n"
)
LOCK = (
    "import fcntl, os, sys, time\n"
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "os.write(fd, b'pid %d (a test holds the lock)\\n' % os.getpid())\n"
    "print('locked', flush=True)\n"
    "time.sleep(3600)\n"
)


def run_steps(root: Path, steps: list[list[Any]], timeout: float = 600) -> list[Any]:
    """Run *steps* against *root* as the running system; what each step saw."""
    proc = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            sys.executable,
            "-m",
            "testkit.running",
            str(root),
            json.dumps(steps),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parent.parent,
        check=False,
    )
    assert proc.returncode == 0, f"the steps failed:\n{proc.stdout}\n{proc.stderr}"
    out: list[Any] = json.loads(proc.stdout.splitlines()[-1])
    return out


def _apply(root: Path, opts: dict[str, bool]) -> dict[str, Any]:
    from transactional_update.core.context import open_context
    from transactional_update.errors import TUError
    from transactional_update.live import flow

    said: list[str] = []
    try:
        result = flow.apply(open_context(root), say=said.append, **opts)
    except TUError as exc:
        return {"rc": exc.exit_code, "error": exc.message, "hint": exc.hint, "said": said}
    return {"rc": 0, "result": result.as_json(), "said": said, "report": flow.report(result)}


def _mounts(root: Path) -> list[str]:
    below = str(root) + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split(" ")[4]
        if point.startswith(below):
            points.append(point[len(below) :])
    return points


def _cut(root: Path, first: str, opts: dict[str, bool]) -> dict[str, Any]:
    """Run an apply and kill it with its children once ROOT/*first* is a mount point."""
    import signal

    child = subprocess.Popen(
        [sys.executable, "-c", APPLY, str(root), json.dumps(opts)], start_new_session=True
    )
    target = f"{root}/{first}"
    cut = False
    while child.poll() is None:
        points = [
            line.split(" ")[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
        ]
        if target in points:
            os.killpg(child.pid, signal.SIGKILL)
            cut = True
            break
    child.wait()
    return {"cut": cut, "rc": child.returncode, "mounts": _mounts(root)}


def main(root: Path, steps: list[list[Any]]) -> None:
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", str(root / "run")], check=True
    )
    # As systemd sets a running system up: every mount shared (new peer groups of this private
    # namespace, so nothing reaches the host), where a careless bind would leak its unmounts.
    subprocess.run(["mount", "--make-rshared", str(root)], check=True)
    children: list[subprocess.Popen[str]] = []
    seen: list[Any] = []
    try:
        for step in steps:
            what, args = step[0], step[1:]
            if what == "apply":
                seen.append(_apply(root, args[0] if args else {}))
            elif what == "tu":
                r = subprocess.run(
                    [sys.executable, "-m", "transactional_update", "--root", str(root), *args[0]],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                seen.append({"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr})
            elif what == "read":
                path = root / args[0]
                seen.append(path.read_text() if path.exists() else None)
            elif what == "write":
                (root / args[0]).parent.mkdir(parents=True, exist_ok=True)
                (root / args[0]).write_text(args[1])
                seen.append(None)
            elif what in ("hold", "lock"):
                from transactional_update.core.lock import LOCK_NAME

                held = root / args[0] if what == "hold" else root / ".snapshots" / LOCK_NAME
                code = HOLD if what == "hold" else LOCK
                child = subprocess.Popen(
                    [sys.executable, "-c", code, str(held)], stdout=subprocess.PIPE, text=True
                )
                children.append(child)
                assert child.stdout is not None
                seen.append({"pid": child.pid, "ready": child.stdout.readline().strip()})
            elif what == "cwd":
                child = subprocess.Popen(["sleep", "3600"], cwd=root / args[0], text=True)
                children.append(child)
                seen.append({"pid": child.pid})
            elif what == "cut":
                seen.append(_cut(root, args[0], args[1] if len(args) > 1 else {}))
            elif what == "mounts":
                seen.append(_mounts(root))
            elif what == "tmpfs":
                subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(root / args[0])], check=True)
                seen.append(None)
            elif what == "systemd":
                (root / "run/systemd/system").mkdir(parents=True)
                seen.append(None)
            else:
                raise ValueError(f"unknown step {step!r}")
    finally:
        for child in children:
            child.kill()
            child.wait()
    print(json.dumps(seen))


if __name__ == "__main__":
    os.environ.pop("TRANSACTIONAL_UPDATE", None)
    main(Path(sys.argv[1]), json.loads(sys.argv[2]))
