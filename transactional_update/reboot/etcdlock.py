"""Reboot slots in etcd: a counting semaphore per group, for fleets with etcd and no lock server.

One key per group, ``/transactional-update/reboot/GROUP``, holds the holders (JSON: machine ID
-> since when).  Taking and giving back a slot is compare-and-swap on the key's revision in one
etcd transaction: read the key and its ``mod_revision``, decide, and write only if the
revision is still the one read; a machine that lost the race reads again.  So at most
``REBOOT_SLOTS`` machines hold a slot, whatever the interleaving, and a slot is never given to
two machines by one free place.

No lease: a holder that crashed mid-reboot keeps its slot until it comes back up healthy and
gives it back (a machine that does not come back should stop the fleet's reboots, not be
forgotten after a timeout), or until an admin releases it by ID
(``transactional-update reboot-manager release ID``).  A machine that cannot reach etcd
(a partition) gets no slot and does not reboot.

The client is etcd3gw (etcd v3's JSON gateway, maintained with OpenStack), imported only here.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from transactional_update.reboot.fleetlock import Answer

log = logging.getLogger(__name__)

PREFIX = "/transactional-update/reboot/"
ROUNDS = 50  # compare-and-swap attempts before a busy key counts as "try later"
TIMEOUT = 10.0


def _b64(data: str) -> str:
    return base64.b64encode(data.encode()).decode()


def decide_acquire(
    holders: dict[str, Any], node_id: str, slots: int, now: str
) -> tuple[dict[str, Any] | None, str]:
    """The holders after *node_id* takes a slot (None: no slot is free), and why (pure)."""
    if node_id in holders:
        return holders, "granted (held already)"
    if len(holders) >= slots:
        taken = ", ".join(sorted(holders))
        return None, f"all {slots} slot(s) are taken (by {taken})"
    return {**holders, node_id: {"since": now}}, "granted"


def decide_release(holders: dict[str, Any], node_id: str) -> tuple[dict[str, Any] | None, str]:
    """The holders after *node_id* gives its slot back (None: it held none, nothing to write)."""
    if node_id not in holders:
        return None, "released (held none)"
    return {k: v for k, v in holders.items() if k != node_id}, "released"


def compare_and_put(key: str, revision: int, value: str) -> dict[str, Any]:
    """The etcd transaction that writes *value* only if *key* is still at *revision* (0: absent)."""
    compare = (
        {"key": _b64(key), "result": "EQUAL", "target": "VERSION", "version": "0"}
        if revision == 0
        else {"key": _b64(key), "result": "EQUAL", "target": "MOD", "mod_revision": str(revision)}
    )
    return {
        "compare": [compare],
        "success": [{"request_put": {"key": _b64(key), "value": _b64(value)}}],
    }


class EtcdSemaphore:
    """``slots`` reboot slots of *group* in the etcd cluster at *endpoints*."""

    def __init__(self, endpoints: Sequence[str], group: str, slots: int) -> None:
        self.endpoints = list(endpoints)
        self.group = group
        self.slots = slots
        self.key = PREFIX + group

    def describe(self) -> str:
        return f"etcd {', '.join(self.endpoints)} (group {self.group}, {self.slots} slot(s))"

    def _clients(self) -> list[Any]:
        import etcd3gw

        out = []
        for url in self.endpoints:
            parts = urlsplit(url)
            out.append(
                etcd3gw.Etcd3Client(
                    host=parts.hostname or "localhost",
                    port=parts.port or 2379,
                    protocol=parts.scheme,
                    timeout=TIMEOUT,
                )
            )
        return out

    def _read(self, client: Any) -> tuple[dict[str, Any], int]:
        found = client.get(self.key, metadata=True)
        if not found:
            return {}, 0
        value, meta = found[0]
        try:
            holders = json.loads(value)
        except ValueError:
            holders = None
        if not isinstance(holders, dict):
            log.warning("%s holds no holder list; it is replaced", self.key)
            holders = {}
        return holders, int(meta["mod_revision"])

    def _change(self, decide: Any) -> Answer:
        from etcd3gw import exceptions

        last = "no etcd endpoint configured (ETCD_ENDPOINTS)"
        for client in self._clients():
            try:
                for _ in range(ROUNDS):
                    holders, revision = self._read(client)
                    after, why = decide(holders)
                    if after is None:
                        return Answer(why.startswith(("granted", "released")), why)
                    txn = compare_and_put(self.key, revision, json.dumps(after, sort_keys=True))
                    if client.transaction(txn).get("succeeded"):
                        return Answer(True, why)
                return Answer(False, f"the slots of group {self.group} changed too often; later")
            except (exceptions.Etcd3Exception, OSError, ValueError, KeyError) as exc:
                detail = str(exc).strip() or type(exc).__name__
                last = f"etcd at {client.base_url} is unreachable: {detail}"
                log.info("%s", last)
        return Answer(False, last, reachable=False)

    def acquire(self, node_id: str) -> Answer:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        return self._change(lambda h: decide_acquire(h, node_id, self.slots, now))

    def release(self, node_id: str) -> Answer:
        return self._change(lambda h: decide_release(h, node_id))

    def holders(self) -> dict[str, Any]:
        for client in self._clients():
            try:
                return self._read(client)[0]
            except Exception as exc:  # any endpoint failure: try the next
                log.info("etcd at %s: %s", client.base_url, exc)
        return {}
