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
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


@dataclass
class Semaphores:
    slots: int
    holders: dict[str, list[str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, group: str, node: str) -> bool:
        with self.lock:
            held = self.holders.setdefault(group, [])
            if node in held:
                return True
            if len(held) >= self.slots:
                return False
            held.append(node)
            return True

    def give(self, group: str, node: str) -> None:
        with self.lock:
            held = self.holders.setdefault(group, [])
            if node in held:
                held.remove(node)


class FleetLockServer:
    def __init__(self, slots: int = 1) -> None:
        self.semaphores = Semaphores(slots)
        self.seen: list[Seen] = []
        self.mode = "normal"
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

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
                if self.path == "/v1/pre-reboot":
                    if server.semaphores.take(group, node):
                        self._answer(200)
                    else:
                        self._error(409, "failed_lock", f"all reboot slots of {group} are taken")
                else:
                    server.semaphores.give(group, node)
                    self._answer(200)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
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
