"""The server mesh (WIRE §4.1-§4.3): joining through an introducer, welcoming joiners, announces, direct
links between every pair of servers, duplicate-link resolution, reconnection and heartbeats.

Cost, for n servers: a join costs the introducer one SERVER_WELCOME listing n servers (O(n) bytes) and the
joiner one SERVER_ANNOUNCE, which the introducer relays to its other links (n - 2 frames, one signature check
each at the receivers); the joiner then dials the others and opens each link with its own SERVER_ANNOUNCE
(signed once, checked once per receiver). So a join is O(n) frames and signature checks for the joiner and
the introducer, O(1) for every other server; each new link then carries the ``link_up`` snapshots (see
presence, public, registry). The join wait is at least 10 s (``ServerSettings.join_wait_ms``): thirty joiners
at once make an introducer slow, and one that gives up early only adds to the queue; a join that timed out
retries after a jittered backoff, so that joiners do not come back in step.

Heartbeats (WIRE §4.7 as amended): one HEARTBEAT frame per interval, ``to: "*"``, made and signed **once** and
sent on every server link that carried nothing else since the previous round (:meth:`Mesh.heartbeat`): at most
one signature per server per interval whatever n (n per interval for the mesh, where one frame per link meant
n(n - 1) once signatures cover the envelope), at most n - 1 frames and, at each receiver, one signature check
per linked server per interval. Liveness itself is :mod:`socp.server.liveness`.

Admission (PROTOCOL.md §4.1.1): a SERVER_HELLO_JOIN must be signed by the key it announces (proof of
possession); an unsigned or badly signed join is refused without a welcome. A closed federation admits a
joiner, or a server that opens a direct link under an id nobody vouched for, only when its key is listed
(``admit_keys``) or its join / announce carries ``join_mac``, an HMAC-SHA256 under the federation's join token
over the canonical envelope (the token itself never travels). Both checks cost no RSA operation, and run
before the signature check, so that a stranger is refused cheaply. A bare node runs open admission (the
standard's) and says so in its log.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from socp import crypto
from socp import envelope as env
from socp.actions import IdentityAssigned, LinkDown, LinkId, LinkUp
from socp.codec import b64url_encode, canonical_json
from socp.envelope import BROADCAST, Envelope, FrameType
from socp.errors import AuthFailed, BadFrame, BadKey, InvalidSignature, ProtocolError
from socp.features import SERVER_FEATURES, announced, wire_list
from socp.interop import LEGACY_SIG_HINT
from socp.presence import Directory
from socp.replay import ReplayCache
from socp.server.config import ServerSettings
from socp.server.hooks import Hooks
from socp.server.links import Link, LinkRole, LinkTable
from socp.server.outbox import Outbox
from socp.server.peers import ServerBook, ServerInfo


class Mesh:
    """Joining, linking and keeping links alive; owns the join state, introducers and heartbeat timer."""

    def __init__(self, settings: ServerSettings, out: Outbox, links: LinkTable, book: ServerBook,
                 directory: Directory, replay: ReplayCache, hooks: Hooks, rng: random.Random, now: int,
                 lost: Callable[[LinkId, int, str], None]) -> None:
        self._settings = settings
        self._out = out
        self._links = links
        self._book = book
        self._directory = directory
        self._replay = replay
        self._hooks = hooks
        self._rng = rng
        self._lost = lost
        self._introducers: set[str] = set()
        self._link_openers: dict[bytes, int] = {}
        own_address = (settings.advertise_host, settings.advertise_port)
        # A shared bootstrap file lists every introducer, this one too: joining ourselves makes no sense.
        self._bootstrap = tuple(entry for entry in settings.bootstrap if (entry.host, entry.port) != own_address)
        # Introducers that share a bootstrap list must not all found networks of their own: the first listed
        # founds at once, the k-th only after k rounds in which no fellow introducer welcomed it.
        listed = [(entry.host, entry.port) for entry in settings.bootstrap]
        self._founder_rank = listed.index(own_address) if own_address in listed else 1
        self.joined = settings.introducer and (not self._bootstrap or self._founder_rank == 0)
        """True once this server is part of a network (welcomed, or founding it as an introducer)."""
        self._join_index = 0
        self._join_attempt = 0
        self._join_due: int | None = None
        self._next_heartbeat = now + settings.heartbeat_interval_ms
        self._last_round = now
        self.heartbeat_signatures = 0
        """HEARTBEAT frames made (one signature each under the envelope rule of WIRE §2; at most one per
        heartbeat interval, whatever the number of links)."""
        self.refused_admissions = 0
        """Joins and direct announces refused: unsigned, badly signed, or not admitted."""
        if settings.admission == "open":
            out.log.warning("admission: OPEN (the standard's): any server that signs its join is welcomed; "
                            "use --join-token or --admit-keys for a closed federation")
        else:
            out.log.info("admission: closed (%s; %d listed keys)", settings.admission, len(settings.admit_keys))

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self, now: int) -> None:
        """Begin joining the network through the bootstrap list."""
        if self._bootstrap and not self.joined:
            self._join_due = now

    def dial_succeeded(self, link: Link, now: int) -> None:
        """An outbound Dial connected: send the link's first frame."""
        link.last_seen = now
        if link.target:
            if self._book.get(link.target) is None:
                self._out.close(link, "server forgotten while dialing")
                return
            # Addressed to the server we dial (PROTOCOL.md §3.6): a copy cannot open a link anywhere else.
            self._out.send(link, self._opener(FrameType.SERVER_ANNOUNCE, link.target, now))
            self._identify(link, link.target, now)
        else:
            entry = self._bootstrap[link.bootstrap_index]
            link.role = LinkRole.JOINING
            self._out.send(link, self._opener(FrameType.SERVER_HELLO_JOIN, f"{entry.host}:{entry.port}", now))

    def link_closed(self, link: Link, now: int, reason: str) -> None:
        """A non-user link went away (already out of the link table): retry a join, or repair a server link."""
        if link.role in (LinkRole.JOINING, LinkRole.DIALING) and not link.target:
            self._join_failed(now, busy=reason == "no welcome")
            return
        server_id = link.peer or link.target
        bound = self._links.server_link_id(server_id) if server_id else None
        if not server_id or (bound is not None and bound != link.link_id):
            return
        if bound == link.link_id:
            self._links.unbind_server(server_id)
            dropped = self._directory.drop_server(server_id)
            self._hooks.link_down.fire(server_id, dropped, now)
            self._out.emit(LinkDown(server_id, link.link_id, reason, len(dropped)))
            self._out.log.info("link to server %s down (%s); %d users unreachable", server_id[:8], reason,
                               len(dropped))
            if self._settings.introducer and not link.outbound:
                # The registry stops listing servers whose link died (the key pin stays); they come back by
                # joining again.
                self._book[server_id].host = ""
                return
        info = self._book.get(server_id)
        if info is not None and info.host:
            self._book.schedule_reconnect(info, now)

    def handle_timer(self, now: int) -> None:
        """Joins, reconnects, liveness of every link (in this order); heartbeats come last, see
        :meth:`heartbeat`."""
        if self._join_due is not None and now >= self._join_due:
            self._join_due = None
            self._dial_introducer(now)
        for server_id, info in self._book.due_reconnects(now):
            if not self._links.is_linked(server_id):
                info.reconnect_due = None
                self._dial_server(server_id, info, now)
        self._links.check_liveness(now, self._out.close, self._lost, self._out.log)

    def heartbeat(self, now: int) -> None:
        """A heartbeat round when due, the last thing of a timer run (so that frames other components sent in
        the same run, e.g. presence snapshots, make the HEARTBEAT on their links unnecessary).

        One HEARTBEAT frame, ``to: "*"``, made and signed once, goes on every server link that carried nothing
        else since the previous round (WIRE §4.7); then every link starts the next interval empty.
        """
        if now < self._next_heartbeat:
            return
        interval = self._settings.heartbeat_interval_ms
        self._next_heartbeat = now + interval
        # A frame counts only if the previous round was about one interval ago: after a stall of ours, what a
        # link carried before it is old news at the far end.
        recent = now - self._last_round <= interval + interval // 2
        self._last_round = now
        links = [link for link in self._links.server_links() if not link.closing]
        idle = [link for link in links if not (link.carried and recent)]
        if idle:
            beat = self._out.make(FrameType.HEARTBEAT, BROADCAST, now, {})
            self.heartbeat_signatures += 1
            text = beat.to_wire()
            for link in idle:
                self._out.send_text(link, text)
        for link in links:
            link.carried = False

    def next_deadline(self) -> int:
        """The earliest heartbeat, join or reconnection deadline."""
        deadlines = [self._next_heartbeat]
        if self._join_due is not None:
            deadlines.append(self._join_due)
        if (reconnect := self._book.next_deadline()) is not None:
            deadlines.append(reconnect)
        return min(deadlines)

    def sweep(self, now: int) -> None:
        """``sweep`` subscriber: forget link openers that could no longer pass the freshness check."""
        self._link_openers = {key: expiry for key, expiry in self._link_openers.items() if expiry >= now}

    # --- frame handlers ----------------------------------------------------------------------------

    def on_hello_join(self, link: Link, frame: Envelope, now: int) -> None:
        """SERVER_HELLO_JOIN on a new connection (introducer side): assign an id, pin, welcome, link.

        Verification and replay are special: the join must be signed by the key it announces (proof of
        possession; an unsigned one is refused, never welcomed: a welcome starts the registry and presence
        snapshots), the joiner must be admitted (:meth:`_admits`, checked first: it costs no RSA operation),
        and the frame enters the replay cache only once verified; a replayed join is refused (fatal).
        """
        if not self.joined:
            # Welcoming servers before we are part of the network would found a separate island.
            raise BadFrame("this server has not joined the network yet; try another introducer or retry",
                           msg_ref=frame.msg_ref, fatal=True)
        key_text = crypto.normalize_public_key(frame.payload["pubkey"])
        if not frame.sig:
            self._refuse_admission(frame, key_text, "unsigned")
            raise InvalidSignature("SERVER_HELLO_JOIN must be signed with the key it announces",
                                   msg_ref=frame.msg_ref, fatal=True)
        if not self._admits(frame, key_text):
            self._refuse_admission(frame, key_text, "not admitted")
            raise AuthFailed("this federation admits only listed server keys or holders of its join token",
                             msg_ref=frame.msg_ref, fatal=True)
        if not self._out.verify(frame, key_text, link):
            self._refuse_admission(frame, key_text, "bad signature")
            raise InvalidSignature(f"SERVER_HELLO_JOIN signature does not verify with its pubkey{self._sig_hint()}",
                                   msg_ref=frame.msg_ref, fatal=True)
        if not self._replay.admit(frame, now):
            raise BadFrame("replayed SERVER_HELLO_JOIN", msg_ref=frame.msg_ref, fatal=True)
        requested = frame.sender
        pinned = self._book.get(requested)
        # A known id is granted again only to its pinned key: another key could otherwise take over another
        # server's id and registered address.
        if not env.is_uuid(requested) or requested == self._out.server_id or (
                pinned is not None and pinned.pubkey != key_text):
            assigned = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
            self._out.log.info("join request for id %s reassigned to %s (id taken or invalid)", requested[:8],
                               assigned[:8])
        else:
            assigned = requested
        self._book.pin(assigned, key_text, trusted=True)
        info = self._book[assigned]
        info.host, info.port = frame.payload["host"], frame.payload["port"]
        info.proven = True
        info.features = announced(frame.payload)
        settings = self._settings
        servers = [_server_entry(self._out.server_id, self._out.pubkey, settings.advertise_host,
                                 settings.advertise_port, settings.introducer, frozenset(wire_list(SERVER_FEATURES)))]
        servers += [_server_entry(sid, s.pubkey, s.host, s.port, sid in self._introducers, s.features)
                    for sid, s in sorted(self._book.items())
                    if sid != assigned and self._links.is_linked(sid) and s.host and s.proven]
        payload = {"assigned_id": assigned, "servers": servers, "features": wire_list(SERVER_FEATURES),
                   # extras for implementations that learn the introducer's key only from these (docs/INTEROP.md)
                   "server_id": self._out.server_id, "server_pub": self._out.pubkey, "pubkey": self._out.pubkey,
                   "clients": [{"user_id": s["server_id"], "host": s["host"], "port": s["port"],
                                "pubkey": s["pubkey"]} for s in servers]}
        self._out.send(link, self._out.make(FrameType.SERVER_WELCOME, assigned, now, payload))
        link.joined_through = True
        self._identify(link, assigned, now)

    def on_direct_announce(self, link: Link, frame: Envelope, now: int) -> None:
        """SERVER_ANNOUNCE / SERVER_HELLO_LINK opening a direct link (self-signature checked by the route).

        Replay is special: one announce opens at most one direct link, or a captured copy could hijack the
        link; and it must be addressed to us (a relayed ``"*"`` announce, or one sent to another server, is
        refused unless the legacy-interop switch is on). In a closed federation a server id nobody vouched for
        yet (no pin from a welcome or a relay) must be admitted like a joiner (:meth:`_admits`).
        """
        key_text = crypto.normalize_public_key(frame.payload["pubkey"])
        if self._book.get(frame.sender) is None and not self._admits(frame, key_text):
            self._refuse_admission(frame, key_text, "not admitted")
            raise AuthFailed("this federation admits only listed server keys or holders of its join token",
                             msg_ref=frame.msg_ref, fatal=True)
        self._replay.check_fresh(frame, now)
        if frame.to != self._out.server_id and not (self._settings.legacy_interop and frame.to == BROADCAST):
            # A link opener is bound to the server it opens a link with (PROTOCOL.md §3.6): a joiner's relayed
            # "*" announce, or an opener sent to another server, copied here must not open a link (hijack).
            raise BadFrame(f"{frame.type} opening a link must be addressed to this server ({self._out.server_id})",
                           msg_ref=frame.msg_ref, fatal=True)
        if frame.replay_key in self._link_openers:
            raise BadFrame(f"replayed {frame.type}", msg_ref=frame.msg_ref, fatal=True)
        self._link_openers[frame.replay_key] = frame.ts + self._settings.replay_window_ms
        self._replay.admit(frame, now)
        if not env.is_uuid(frame.sender) or frame.sender == self._out.server_id:
            raise BadFrame("server id must be a UUID other than ours", msg_ref=frame.msg_ref, fatal=True)
        self._book.pin(frame.sender, key_text, trusted=False, msg_ref=frame.msg_ref)
        info = self._book[frame.sender]
        _learn_address(info, frame.payload)
        info.features = announced(frame.payload)
        self._identify(link, frame.sender, now)

    def on_join_error(self, link: Link, frame: Envelope, now: int) -> None:
        """ERROR in answer to our SERVER_HELLO_JOIN: the introducer refused us; try the next one."""
        self._out.log.warning("introducer refused our join: %s %s", frame.payload.get("code"),
                              frame.payload.get("detail"))
        self._out.close(link, "join refused")

    def on_welcome(self, link: Link, frame: Envelope, now: int) -> None:
        """SERVER_WELCOME: adopt the assigned id, pin every listed server, announce ourselves, dial the rest.

        Verification is special: the signature is checked against the bootstrap pin of the introducer, or
        (trust on first use) against the key the welcome lists for it. No replay check: it answers the join
        this link just sent.
        """
        entry = self._bootstrap[link.bootstrap_index]
        entries = _welcome_entries(frame)
        introducer_key = entry.pubkey
        if introducer_key is None:
            offered = [e["pubkey"] for e in entries if e["server_id"] == frame.sender]
            if not offered:
                raise BadKey("unpinned introducer did not list its own key in SERVER_WELCOME",
                             msg_ref=frame.msg_ref, fatal=True)
            introducer_key = offered[0]
            self._out.log.warning("TRUST ON FIRST USE: introducer %s at %s:%d pinned to key %s without a "
                                  "configured pubkey; pin it in the bootstrap file", frame.sender[:8], entry.host,
                                  entry.port, crypto.key_fingerprint(crypto.normalize_public_key(introducer_key)))
        introducer_key = crypto.normalize_public_key(introducer_key)
        if not self._out.verify(frame, introducer_key, link):
            raise InvalidSignature(f"SERVER_WELCOME is not signed by the pinned introducer key{self._sig_hint()}",
                                   msg_ref=frame.msg_ref, fatal=True)
        assigned = frame.payload["assigned_id"]
        if not env.is_uuid(assigned):
            raise BadFrame("assigned_id is not a UUID", msg_ref=frame.msg_ref, fatal=True)
        if assigned != self._out.server_id:
            self._out.log.warning("introducer assigned us id %s instead of %s", assigned, self._out.server_id)
            self._out.rename(assigned)
            self._out.emit(IdentityAssigned(assigned))
        self._book.pin(frame.sender, introducer_key, trusted=True)
        info = self._book[frame.sender]
        info.host, info.port = entry.host, entry.port
        info.features = announced(frame.payload)
        for item in entries:
            if item["server_id"] in (self._out.server_id, frame.sender):
                continue
            try:
                self._book.pin(item["server_id"], crypto.normalize_public_key(item["pubkey"]), trusted=True)
            except ProtocolError as exc:
                self._out.log.warning("welcome entry for %s refused: %s", item["server_id"][:8], exc)
                continue
            known = self._book[item["server_id"]]
            known.host, known.port = item["host"], item["port"]
            known.features = item["features"]
            if item["introducer"]:
                self._introducers.add(item["server_id"])
        self.joined = True
        self._join_attempt = 0
        self._introducers.add(frame.sender)
        self._out.log.info("joined the network through %s (%d other servers)", frame.sender[:8], len(entries) - 1)
        self._identify(link, frame.sender, now)
        # The introducer relays this announce to the servers it knows (WIRE §4.3).
        self._out.send(link, self._opener(FrameType.SERVER_ANNOUNCE, BROADCAST, now))
        for server_id, known in self._book.items():
            if not self._links.is_linked(server_id) and known.host and server_id != self._out.server_id:
                self._dial_server(server_id, known, now)

    def on_heartbeat(self, link: Link, frame: Envelope, now: int) -> None:
        """HEARTBEAT on a server link: its verification (by the route) is what keeps the link alive.

        Addressed to us or to ``"*"`` (one frame serves all of the sender's links, WIRE §4.7); freshness and
        duplicates are the route's replay rule.
        """
        if frame.to not in (self._out.server_id, BROADCAST):
            raise BadFrame(f"HEARTBEAT addressed to {frame.to}, not to this server or '*'", msg_ref=frame.msg_ref)

    def on_mesh_announce(self, link: Link, frame: Envelope, now: int) -> None:
        """SERVER_ANNOUNCE on a server link: the peer's own (relayed onwards if it joined through us), or one
        an introducer relays (self-signature and replay checked by the route)."""
        key_text = crypto.normalize_public_key(frame.payload["pubkey"])
        if frame.sender == self._out.server_id:
            return
        if frame.sender != link.peer and link.peer not in self._introducers:
            raise BadFrame("only an introducer may relay another server's SERVER_ANNOUNCE",
                           msg_ref=frame.msg_ref)
        self._book.pin(frame.sender, key_text, trusted=frame.sender != link.peer, msg_ref=frame.msg_ref)
        info = self._book[frame.sender]
        info.proven = True
        _learn_address(info, frame.payload)
        info.features = announced(frame.payload)
        if frame.sender == link.peer and link.joined_through:
            for other in self._links.server_links():
                if other.link_id != link.link_id:
                    # Self-signed by the newcomer: it proves nothing of us to the receiver.
                    self._out.send_text(other, frame.to_wire(), proves_life=False)

    # --- helpers -----------------------------------------------------------------------------------

    def announce_payload(self) -> dict[str, Any]:
        """Our SERVER_ANNOUNCE / SERVER_HELLO_JOIN payload (``server_id``/``server_pub``: harmless extras some
        implementations read the key from, docs/INTEROP.md)."""
        return {"host": self._settings.advertise_host, "port": self._settings.advertise_port,
                "pubkey": self._out.pubkey, "features": wire_list(SERVER_FEATURES),
                "server_id": self._out.server_id, "server_pub": self._out.pubkey}

    def _opener(self, frame_type: FrameType, to: str, now: int) -> Envelope:
        """Our SERVER_HELLO_JOIN or link-opening SERVER_ANNOUNCE, with ``join_mac`` in a closed federation."""
        payload = self.announce_payload()
        if self._settings.join_token:
            payload[JOIN_MAC] = join_mac(self._settings.join_token, frame_type, self._out.server_id, to, now,
                                         payload)
        return self._out.make(frame_type, to, now, payload)

    def _admits(self, frame: Envelope, key_text: str) -> bool:
        """Admission control: open admission, a listed key, or a ``join_mac`` made with our join token."""
        settings = self._settings
        if settings.admission == "open" or key_text in settings.admit_keys:
            return True
        mac = frame.payload.get(JOIN_MAC)
        if not settings.join_token or not isinstance(mac, str):
            return False
        expected = join_mac(settings.join_token, frame.type, frame.sender, frame.to, frame.ts, frame.payload)
        return hmac.compare_digest(mac.encode(), expected.encode())

    def _sig_hint(self) -> str:
        """What a strict node adds to a handshake signature refusal (docs/INTEROP.md)."""
        return "" if self._settings.legacy_interop else f" ({LEGACY_SIG_HINT})"

    def _refuse_admission(self, frame: Envelope, key_text: str, why: str) -> None:
        self.refused_admissions += 1
        self._out.log.warning("refused %s from %s (key %s): %s (admission %s)", frame.type, frame.sender[:8],
                              crypto.key_fingerprint(key_text), why, self._settings.admission)

    def _identify(self, link: Link, server_id: str, now: int) -> None:
        existing = self._links.server_link(server_id)
        if existing is not None and existing.link_id != link.link_id:
            # Both ends keep the connection dialed by the lower server id, so they agree which survives.
            keep_new = link.outbound == (self._out.server_id < server_id)
            loser = existing if keep_new else link
            self._out.log.info("duplicate link with %s: closing link %d", server_id[:8], loser.link_id)
            loser.peer = server_id
            loser.role = LinkRole.SERVER
            self._out.close(loser, "duplicate server link", again=True)
            if not keep_new:
                return
        link.role, link.peer = LinkRole.SERVER, server_id
        self._links.bind_server(server_id, link)
        info = self._book[server_id]
        info.ever_linked = True
        info.reconnect_due = None
        self._out.emit(LinkUp(server_id, link.link_id))
        self._out.log.info("linked with server %s (link %d, %s)", server_id[:8], link.link_id,
                           "outbound" if link.outbound else "inbound")
        self._hooks.link_up.fire(link, now)

    def _dial_introducer(self, now: int) -> None:
        entry = self._bootstrap[self._join_index % len(self._bootstrap)]
        link = self._links.new(outbound=True, role=LinkRole.DIALING, now=now)
        link.bootstrap_index = self._join_index % len(self._bootstrap)
        self._out.log.info("joining through introducer %s:%d", entry.host, entry.port)
        self._out.dial(link.link_id, entry.host, entry.port)

    def _join_failed(self, now: int, *, busy: bool = False) -> None:
        """The join attempt failed: try the next introducer at once, or after a jittered backoff once every
        introducer failed in this round. ``busy``: the introducer accepted us but sent no welcome within the
        join wait (overloaded, most likely by other joiners): the next attempt waits a jittered backoff too,
        so that joiners that timed out together do not all come back together."""
        if self.joined:
            return
        self._join_index += 1
        if self._join_index % len(self._bootstrap) == 0:
            # Every introducer failed once: back off before the next round.
            self._join_attempt += 1
            if self._settings.introducer and self._join_attempt >= self._founder_rank:
                self.joined = True
                self._out.log.warning("no fellow introducer welcomed us in %d rounds; founding the network",
                                      self._join_attempt)
                return
            self._join_due = now + self._book.backoff(self._join_attempt)
            self._out.log.warning("no introducer reachable; retrying in %d ms", self._join_due - now)
        elif busy:
            self._join_due = now + self._book.backoff(self._join_attempt + 1)
        else:
            self._join_due = now

    def _dial_server(self, server_id: str, info: ServerInfo, now: int) -> None:
        if any(link.target == server_id and link.role is LinkRole.DIALING for link in self._links):
            return
        link = self._links.new(outbound=True, role=LinkRole.DIALING, now=now)
        link.target = server_id
        self._out.dial(link.link_id, info.host, info.port)


JOIN_MAC = "join_mac"
"""Payload field of SERVER_HELLO_JOIN / SERVER_ANNOUNCE in a closed federation (PROTOCOL.md §4.1.1)."""


def join_mac(token: str, frame_type: str, sender: str, to: str, ts: int, payload: Mapping[str, Any]) -> str:
    """HMAC-SHA256 under the join token over the canonical envelope (``payload`` without ``join_mac``):
    proves knowledge of the token without sending it, bound to this key, id, address and moment."""
    body = {key: value for key, value in payload.items() if key != JOIN_MAC}
    data = canonical_json({"type": str(frame_type), "from": sender, "to": to, "ts": ts, "payload": body})
    return b64url_encode(hmac.new(token.encode("utf-8"), data, hashlib.sha256).digest())


def _learn_address(info: ServerInfo, payload: Mapping[str, Any]) -> None:
    """Take the address an announce gives; an address-less one (interop: ``host`` ``""``) keeps the address we
    know (the introducer we dialed, say), which would otherwise be forgotten and never redialled."""
    if payload["host"]:
        info.host, info.port = payload["host"], payload["port"]


def _server_entry(server_id: str, pubkey: str, host: str, port: int, introducer: bool,
                  features: frozenset[str]) -> dict[str, Any]:
    # ``introducer`` and ``features`` are our extensions (others ignore them): relays from any introducer are
    # trusted; ``features`` is what that server announced to the introducer (WIRE §7).
    return {"server_id": server_id, "host": host, "port": port, "pubkey": pubkey, "introducer": introducer,
            "features": sorted(features)}


def _welcome_entries(frame: Envelope) -> list[dict[str, Any]]:
    raw = frame.payload.get("servers")
    if not isinstance(raw, list):
        raw = frame.payload.get("clients")
    if not isinstance(raw, list):
        raise BadFrame("SERVER_WELCOME needs a 'servers' or 'clients' list", msg_ref=frame.msg_ref, fatal=True)
    entries = []
    for item in raw:
        if not isinstance(item, dict):
            raise BadFrame("SERVER_WELCOME entries must be objects", msg_ref=frame.msg_ref, fatal=True)
        server_id = item.get("server_id", item.get("user_id"))
        host, port, pubkey = item.get("host"), item.get("port"), item.get("pubkey")
        if not (isinstance(server_id, str) and isinstance(host, str) and isinstance(port, int)
                and isinstance(pubkey, str)):
            raise BadFrame("SERVER_WELCOME entry needs server_id, host, port, pubkey", msg_ref=frame.msg_ref,
                           fatal=True)
        entries.append({"server_id": server_id, "host": host, "port": port, "pubkey": pubkey,
                        "introducer": item.get("introducer") is True, "features": announced(item)})
    return entries
