"""A FleetLock server written from the protocol's specification, for the client's tests.

coreos/airlock's ``docs/protocol.md``: ``POST /v1/pre-reboot`` and ``POST /v1/steady-state``,
each with the header ``fleet-lock-protocol: true`` and a JSON body
``{"client_params": {"id": ID, "group": GROUP}}``; ``200`` when the lock is taken (or held
already) or released (or not held), otherwise an error status with ``{"kind": …, "value": …}``.
Like airlock, it keeps a counting semaphore per group (``slots`` holders).

It checks what a client sends (the method, the path, the header, the body) as strictly as the
specification asks, records every request, and can misbehave on purpose: ``mode`` ``"refuse"``
answers 500 with an error body, ``"garbage"`` 502 with a non-JSON body, ``"down"`` drops the
connection without an answer.  ``stop()`` makes it unreachable.

With *state*, the holders outlive the process: loaded at start, written atomically (a
temporary file, fsync, rename) on every change, together with the history of the changes
(who was granted or gave back a slot, when).  Run alone it serves until it is killed, with only
the standard library (the VM tests copy this file into a guest, testkit/vm.py ``fleetlock``):
``python3 fleetlock_server.py PORT SLOTS STATEFILE`` on 127.0.0.1:PORT, one line per request on
stderr, and ``READY=1`` to systemd once it listens (``Type=notify``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

GROUP = re.compile(r"^[a-zA-Z0-9.-]+$")


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def _lower(headers: Any) -> dict[str, str]:
    """Header names as HTTP has them: case-insensitive (urllib sends Fleet-lock-protocol)."""
    return {k.lower(): v for k, v in headers.items()}


def write_atomic(path: Path, text: str) -> None:
    """*path* holds the old text or the new one, whatever happens (a power cut included)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Semaphores:
    slots: int
    holders: dict[str, list[str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # With a state file: the holders (and the history of changes) persist across restarts.
    path: Path | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.path is not None and self.path.exists():
            data = json.loads(self.path.read_text(encoding="utf-8"))
            self.holders = {g: list(ids) for g, ids in data.get("holders", {}).items()}
            self.history = list(data.get("history", []))

    def _changed(self, event: str, group: str, node: str) -> None:
        """Record a change (the caller holds the lock) and persist it before answering."""
        self.history.append({"at": time.time(), "event": event, "group": group, "id": node})
        if self.path is not None:
            state = {"slots": self.slots, "holders": self.holders, "history": self.history}
            write_atomic(self.path, json.dumps(state, indent=1) + "\n")

    def take(self, group: str, node: str) -> bool:
        with self.lock:
            held = self.holders.setdefault(group, [])
            if node in held:
                return True
            if len(held) >= self.slots:
                return False
            held.append(node)
            self._changed("granted", group, node)
            return True

    def give(self, group: str, node: str) -> None:
        with self.lock:
            held = self.holders.setdefault(group, [])
            if node in held:
                held.remove(node)
                self._changed("released", group, node)


class FleetLockServer:
    """Serves on 127.0.0.1:*port* (0: any free port, see :attr:`url`) in a daemon thread;
    *state* persists the holders, *log* gets one line per answered request."""

    def __init__(
        self,
        slots: int = 1,
        state: Path | None = None,
        port: int = 0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.semaphores = Semaphores(slots, path=state)
        self.seen: list[Seen] = []
        self.mode = "normal"
        # When set: a grant is made (and persisted), then the answer waits until it is set, so
        # that a test can kill the client between the server's grant and the client's record.
        self.answer_gate: threading.Event | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                if log is not None:
                    log(f"{self.command} {self.path} {getattr(self, 'who', '-')}: {code}")

            def _answer(self, status: int, body: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, kind: str, value: str) -> None:
                self._answer(status, {"kind": kind, "value": value})

            def do_GET(self) -> None:
                server.seen.append(Seen("GET", self.path, _lower(self.headers), b""))
                self._error(405, "method_not_allowed", "only POST")

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                server.seen.append(Seen("POST", self.path, _lower(self.headers), body))
                if server.mode == "down":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if server.mode == "refuse":
                    self._error(500, "internal_error", "the lock store is unavailable")
                    return
                if server.mode == "garbage":
                    self.send_response(502)
                    self.end_headers()
                    self.wfile.write(b"<html>bad gateway</html>")
                    return
                if self.path not in ("/v1/pre-reboot", "/v1/steady-state"):
                    self._error(404, "not_found", self.path)
                    return
                if self.headers.get("fleet-lock-protocol") != "true":
                    self._error(400, "missing_header", "fleet-lock-protocol: true is required")
                    return
                try:
                    params = json.loads(body)["client_params"]
                    node, group = params["id"], params["group"]
                except (ValueError, KeyError, TypeError):
                    self._error(400, "bad_body", "client_params with id and group required")
                    return
                if not isinstance(node, str) or not node or not GROUP.match(str(group)):
                    self._error(400, "bad_body", "invalid id or group")
                    return
                self.who = f"{group}/{node}"
                if self.path == "/v1/pre-reboot":
                    if server.semaphores.take(group, node):
                        if server.answer_gate is not None:
                            server.answer_gate.wait(60)
                        self._answer(200)
                    else:
                        self._error(409, "failed_lock", f"all reboot slots of {group} are taken")
                else:
                    server.semaphores.give(group, node)
                    self._answer(200)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def holders(self, group: str = "default") -> list[str]:
        with self.semaphores.lock:
            return list(self.semaphores.holders.get(group, []))

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def notify_ready() -> None:
    """``READY=1`` to systemd's ``NOTIFY_SOCKET`` (``Type=notify``), if it gave one."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):  # the abstract namespace
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(address)
        s.sendall(b"READY=1")


def main(argv: list[str]) -> int:
    if len(argv) != 3 or not argv[0].isdigit() or not argv[1].isdigit():
        print("usage: fleetlock_server.py PORT SLOTS STATEFILE", file=sys.stderr)
        return 2
    port, slots, state = int(argv[0]), int(argv[1]), Path(argv[2])

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    server = FleetLockServer(slots, state=state, port=port, log=log)
    held = {g: ids for g, ids in server.semaphores.holders.items() if ids}
    log(f"FleetLock server on {server.url}, {slots} slot(s) per group, holders {held}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    notify_ready()
    try:
        while True:
            signal.pause()
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
