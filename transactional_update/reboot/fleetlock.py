"""A FleetLock client: the protocol Zincati speaks to airlock, so an existing server works as is.

The protocol (coreos/airlock's ``docs/protocol.md``): two endpoints, each a ``POST`` with the
header ``fleet-lock-protocol: true`` and the JSON body
``{"client_params": {"id": ID, "group": GROUP}}``:

* ``/v1/pre-reboot``: take a reboot slot of GROUP for ID (taking it again while held is fine);
* ``/v1/steady-state``: give ID's slot back (also fine when it holds none).

``200`` is yes; anything else is no, with a JSON body ``{"kind": …, "value": …}`` that says why.
A server that does not answer is a no as well: a machine reboots only on a ``200``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

PROTOCOL_HEADER = "fleet-lock-protocol"
TIMEOUT = 15.0  # seconds for one request; the caller retries with its back-off


@dataclass(frozen=True)
class Answer:
    ok: bool
    why: str  # what the server said, or why it could not be asked
    reachable: bool = True


@dataclass(frozen=True)
class Call:
    """One request, as built before anything is sent (pure)."""

    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


def build(base_url: str, endpoint: str, node_id: str, group: str) -> Call:
    body = {"client_params": {"id": node_id, "group": group}}
    return Call(
        f"{base_url.rstrip('/')}/v1/{endpoint}",
        ((PROTOCOL_HEADER, "true"), ("content-type", "application/json")),
        json.dumps(body).encode(),
    )


def refusal(status: int, text: str) -> str:
    """The server's reason from its error body (``kind``: ``value``), else the status."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and ("kind" in data or "value" in data):
        return f"{data.get('kind', 'error')}: {data.get('value', '')}".strip()
    return f"HTTP {status}" + (f": {text.strip()[:200]}" if text.strip() else "")


def send(call: Call, timeout: float = TIMEOUT) -> Answer:
    # The URL is FLEETLOCK_URL's, checked to be http(s) when the configuration was read.
    request = urllib.request.Request(call.url, data=call.body, method="POST")  # noqa: S310
    for name, value in call.headers:
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status = response.status
            text = response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return Answer(False, refusal(exc.code, exc.read().decode(errors="replace")))
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        return Answer(False, f"{call.url} is unreachable: {reason}", reachable=False)
    if status == 200:
        return Answer(True, "granted")
    return Answer(False, refusal(status, text))


class FleetLock:
    """The slots of GROUP on the FleetLock server at *url*."""

    def __init__(self, url: str, group: str) -> None:
        self.url = url
        self.group = group

    def describe(self) -> str:
        return f"FleetLock server {self.url} (group {self.group})"

    def acquire(self, node_id: str) -> Answer:
        return send(build(self.url, "pre-reboot", node_id, self.group))

    def release(self, node_id: str) -> Answer:
        return send(build(self.url, "steady-state", node_id, self.group))
