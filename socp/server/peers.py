"""The servers this server knows: pinned keys, addresses, reconnection backoff, and server-frame checks.

Cost: verifying a server frame is one RSA-4096 signature check (keys decoded once, cached by the outbox); the
book holds one entry per known server, O(n) memory; reconnect deadlines are scanned in O(n) per timer run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from socp import crypto
from socp.actions import ServerPinned
from socp.envelope import Envelope
from socp.errors import BadFrame, BadKey, InvalidSignature
from socp.server.config import ServerSettings
from socp.server.links import Link
from socp.server.outbox import Outbox


@dataclass(slots=True)
class ServerInfo:
    """What is known of one server."""

    pubkey: str
    host: str = ""
    port: int = 0
    ever_linked: bool = False
    proven: bool = True                  # signed something with its key (an unsigned join has not, yet)
    reconnect_attempt: int = 0
    reconnect_due: int | None = None
    features: frozenset[str] = frozenset()
    """Extensions it announced (WIRE §7); empty for a server that announced none."""


class ServerBook:
    """Server id → :class:`ServerInfo`: the key pins (never rebound) and when to dial each server again."""

    def __init__(self, settings: ServerSettings, out: Outbox, rng: random.Random,
                 pinned: dict[str, str] | None = None) -> None:
        self._settings = settings
        self._out = out
        self._rng = rng
        self._servers: dict[str, ServerInfo] = {server_id: ServerInfo(pubkey=pubkey)
                                                for server_id, pubkey in (pinned or {}).items()}

    def get(self, server_id: str) -> ServerInfo | None:
        """What is known of ``server_id``, or None."""
        return self._servers.get(server_id)

    def __getitem__(self, server_id: str) -> ServerInfo:
        return self._servers[server_id]

    def items(self) -> list[tuple[str, ServerInfo]]:
        """Every known server, in the order they became known."""
        return list(self._servers.items())

    @property
    def known_servers(self) -> list[str]:
        """Ids of every server this node knows an address for."""
        return sorted(server_id for server_id, info in self._servers.items() if info.host)

    def all_linked_once(self) -> bool:
        """True when every server with an address was linked at least once."""
        return all(info.ever_linked or not info.host for info in self._servers.values())

    def pin(self, server_id: str, key_text: str, *, trusted: bool, msg_ref: str | None = None) -> None:
        """Bind ``server_id`` to ``key_text``; raises BadKey (fatal) when it is pinned to another key."""
        info = self._servers.get(server_id)
        if info is None:
            self._servers[server_id] = ServerInfo(pubkey=key_text)
            self._out.emit(ServerPinned(server_id, key_text, trusted))
            if not trusted:
                self._out.log.warning("server %s pinned on first direct announce (key %s)", server_id[:8],
                                      crypto.key_fingerprint(key_text))
        elif info.pubkey != key_text:
            self._out.log.error("IMPERSONATION ATTEMPT: server %s presented key %s, pinned key is %s",
                                server_id[:8], crypto.key_fingerprint(key_text), crypto.key_fingerprint(info.pubkey))
            raise BadKey(f"server {server_id} is pinned to another key", msg_ref=msg_ref, fatal=True)

    def verify(self, link: Link, frame: Envelope, now: int, *, relayable: bool) -> None:
        """Check origin and signature of a frame on a server link (the route table's pinned-server rule).

        ``relayable``: the frame may originate at another server than the linked one (gossip).
        """
        if not relayable and frame.sender != link.peer:
            raise BadFrame(f"{frame.type} must come from the linked server {link.peer}", msg_ref=frame.msg_ref)
        info = self._servers.get(frame.sender)
        if info is None:
            raise BadKey(f"no pinned key for server {frame.sender}", msg_ref=frame.msg_ref)
        if not self._out.verify(frame, info.pubkey, link):
            raise InvalidSignature(f"{frame.type} signature does not verify with the pinned key of "
                                   f"{frame.sender}", msg_ref=frame.msg_ref)
        info.proven = True
        # Garbage or forgeries must not keep a link alive, nor a link that never carries a verified frame
        # reset the reconnection backoff: only now does the peer count as alive.
        link.last_seen = now
        self._servers[link.peer].reconnect_attempt = 0

    # --- reconnection ------------------------------------------------------------------------------

    def schedule_reconnect(self, info: ServerInfo, now: int) -> None:
        """Dial ``info``'s server again after the next backoff delay."""
        info.reconnect_attempt += 1
        info.reconnect_due = now + self.backoff(info.reconnect_attempt)

    def backoff(self, attempt: int) -> int:
        """Delay before attempt ``attempt`` (doubling, capped, with jitter)."""
        base = min(self._settings.backoff_max_ms, self._settings.backoff_initial_ms * 2 ** min(attempt - 1, 20))
        # Jitter spreads reconnect storms after a partition heals.
        return int(base * (0.75 + 0.5 * self._rng.random()))

    def due_reconnects(self, now: int) -> list[tuple[str, ServerInfo]]:
        """Servers whose reconnection deadline has passed (the caller clears it when it dials)."""
        due = []
        for server_id, info in list(self._servers.items()):
            if info.reconnect_due is not None and now >= info.reconnect_due:
                due.append((server_id, info))
        return due

    def next_deadline(self) -> int | None:
        """The earliest reconnection deadline, or None."""
        return min((info.reconnect_due for info in self._servers.values() if info.reconnect_due is not None),
                   default=None)
