"""Who is online (WIRE §4.5): local users attaching and leaving, USER_ADVERTISE / USER_REMOVE gossip, and
SERVER_PRESENCE_SYNC anti-entropy snapshots; owns the local users and the presence directory's updates.

**The relay rule: the origin tells every server it is linked to; nobody relays.** WIRE §4.5 asks a receiver to
relay a presence frame only to linked servers that may lack a link to the origin. This core keeps no link
state of other servers, so it never knows of such a server, and relays to none. Nothing is lost by it:

- Routing needs a direct link to the user's server (§4.6; :mod:`socp.server.routing` refuses a location it
  has no link to), so a record learned through a third server could be listed but never used.
- A server that lacks a link to the origin, or loses and regains one (a partition healing), gets the
  origin's full SERVER_PRESENCE_SYNC snapshot when the link comes up, and again every sync interval
  (anti-entropy): that repairs every advert and removal it missed.
- Hence the directory holds the users of servers we are linked to (and a record that another
  implementation relays for a server we have no link to is ignored: nothing would ever remove it).

**Users no server can steal** (PROTOCOL.md §4.5.1). A server places a user on itself only with the user's own
proof: the ``attest`` object of its USER_HELLO, a signature by the user's key over ``{user_id, server_id,
ts}``. The home server carries it in USER_ADVERTISE and in snapshot entries; a receiver takes a remote user
only with an attestation that names the advertising server, verifies with the key bound to that user id
(first binding wins: registry, else directory) and is not older than the newest it holds for that user (kept
per user, so an unchanged attestation in the next snapshot costs no second check). A rogue server that
re-advertises someone else's user therefore captures nothing; USER_REMOVE applies only to the server the
user currently maps to.

Cost, for n servers in a full mesh and u local users: a user joining or leaving is signed once here (one
frame text) and sent on n - 1 links; each receiver verifies it once and sends nothing on: n - 1 frames and
n - 1 signature checks network-wide per join or leave, O(1) per receiver (it was O(n²) frames when every
receiver relayed). Every local user is also pushed the change (one signature, u frames). Each sync round every
server sends one snapshot of its local users per link (one signature: the payload is the same on every link):
O(n) frames and O(n) checks per server per interval, O(n²) network-wide, each O(local users) bytes; a
snapshot also stands in for that interval's HEARTBEAT on its link.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from socp import crypto
from socp import envelope as env
from socp.actions import UserJoined, UserLeft
from socp.envelope import BROADCAST, Envelope, FrameType
from socp.errors import BadFrame, BadKey, InvalidSignature, NameInUse, UserNotFound
from socp.features import SERVER_FEATURES, wire_list
from socp.interop import Variant
from socp.presence import Attestation, Directory, UserRecord, display_label, meta_of
from socp.replay import ReplayCache
from socp.server.config import ServerSettings
from socp.server.hooks import Hooks, Local
from socp.server.links import Link, LinkRole, LinkTable
from socp.server.outbox import Outbox
from socp.server.registry import Registry
from socp.settings import delivery_bound_ms

SERVER_UNREACHABLE = "server_unreachable"
"""``USER_REMOVE.reason`` pushed to our users when a user's server link died (PROTOCOL.md §10)."""

MAX_REFUSALS_LOGGED = 10_000
"""Distinct refused records remembered so that each is logged at WARNING once (then DEBUG)."""


MAX_KEYLESS = 10_000
"""Most users advertised without a key awaiting their PUBKEY_RESPONSE (interop profile)."""


class Presence:
    """Local users and the directory of remote ones, kept in step with the other servers."""

    def __init__(self, settings: ServerSettings, out: Outbox, links: LinkTable, directory: Directory,
                 replay: ReplayCache, registry: Registry, hooks: Hooks, now: int) -> None:
        self._settings = settings
        self._out = out
        self._links = links
        self._directory = directory
        self._replay = replay
        self._registry = registry
        self._hooks = hooks
        self._locals: dict[str, Local] = {}
        self._version = 0
        self._legacy_peers: set[str] = set()
        self._attests: dict[str, Attestation] = {}
        """The newest verified location attestation of each user (local users: the one of their hello)."""
        self._keyless: dict[str, tuple[str, dict[str, Any]]] = {}
        """Interop profile: users advertised without a key whose key we asked their server for (PUBKEY_REQUEST):
        user id → (server id, advert payload). Bounded by :data:`MAX_KEYLESS`."""
        self.refused_adverts = 0
        self._refusals_logged: set[tuple[str, str, str]] = set()
        """Gossiped user records refused: another key than the one bound, or no valid, fresh attestation."""
        self._next_sync = now + settings.presence_sync_interval_ms

    # --- queries -----------------------------------------------------------------------------------

    def local(self, user_id: str) -> Local | None:
        """The local user ``user_id``, or None."""
        return self._locals.get(user_id)

    @property
    def local_ids(self) -> list[str]:
        """Ids of users attached to this server, sorted."""
        return sorted(self._locals)

    def local_users(self) -> list[Local]:
        """Every local user, in the order they attached."""
        return list(self._locals.values())

    def push(self, frame_type: FrameType, now: int, payload: Mapping[str, Any], exclude: str | None = None) -> None:
        """Send one frame to every local user (but ``exclude``): addressed to ``"*"``, so that one signature
        over the envelope serves every copy."""
        text = ""
        for local in list(self._locals.values()):
            if local.user_id != exclude:
                text = text or self._out.make(frame_type, BROADCAST, now, payload).to_wire()
                self._out.send_text(self._links[local.link_id], text)

    # --- users attaching and leaving ---------------------------------------------------------------

    def on_user_hello(self, link: Link, frame: Envelope, now: int) -> None:
        """USER_HELLO on a new connection: check the user's key binding, then fire ``user_joined``.

        Verification and replay are special: the proof-of-possession signature is by the key the hello
        announces (optional under ``allow_unsigned_hello``), a ``login_nonce`` must match a login granted on
        this connection, and only then does the frame enter the replay cache (a duplicate is dropped
        silently; the connection then times out).
        """
        user_id = frame.sender
        if not env.is_uuid(user_id):
            raise BadFrame("user id must be a UUID", msg_ref=frame.msg_ref, fatal=True)
        # Interop profile: a client that does not know our id yet addresses its hello to its own id
        # (fengyuan213/Secure-Programming-Group); bound to no server, exactly as a hello to "*" is.
        to_self = self._settings.interop and frame.to == user_id
        if (frame.to != self._out.server_id and not (self._settings.legacy_interop and frame.to == BROADCAST)
                and not to_self):
            # Bound to this server (PROTOCOL.md §3.6): a hello captured on its way to another server, or one
            # addressed to "*", must not log anyone in here. The unsigned answer names our id so that an
            # honest client can sign its hello again, addressed to us; the connection stays open for it, a
            # full peer timeout from now, once (a loaded client may need a while for that signature).
            if link.pending_until == 0:
                link.pending_until = now + self._settings.peer_timeout_ms
            self._out.fault(link, BadFrame(f"USER_HELLO must be addressed to this server: to = "
                                           f"{self._out.server_id}", msg_ref=frame.msg_ref), now,
                            extra={"server_id": self._out.server_id})
            return
        if to_self:
            self._out.log.warning("interop: accepted variant '%s' from %s (link %d)", Variant.HELLO_TO_SELF,
                                  user_id[:8], link.link_id)
        key_text = crypto.normalize_public_key(frame.payload["pubkey"])
        enc_key = frame.payload.get("enc_pubkey")
        if enc_key is not None:
            crypto.decode_public_key(enc_key)
        if frame.sig:
            if not self._out.verify(frame, key_text, link):
                raise InvalidSignature("USER_HELLO signature does not verify with its pubkey",
                                       msg_ref=frame.msg_ref, fatal=True)
        elif not self._settings.allow_unsigned_hello:
            raise InvalidSignature("USER_HELLO must be signed with the user's key", msg_ref=frame.msg_ref,
                                   fatal=True)
        login_nonce = frame.payload.get("login_nonce")
        if login_nonce is not None and not (link.login_granted and login_nonce == link.login_nonce
                                            and user_id == link.login_user):
            raise BadFrame("USER_HELLO login_nonce does not match a granted login on this connection",
                           msg_ref=frame.msg_ref, fatal=True)
        attest = self._hello_attestation(frame, key_text)
        if not self._replay.admit(frame, now):
            return  # a replayed hello is dropped silently like every duplicate; the link times out
        registration = self._registry.registration(user_id)
        registered = registration.pubkey if registration is not None else None
        known = self._directory.get(user_id)
        if (registered and registered != key_text) or (known and known.pubkey != key_text):
            raise BadKey(f"user {user_id} is registered under another key", msg_ref=frame.msg_ref, fatal=True)
        if user_id in self._locals:
            raise NameInUse(f"user {user_id} is already connected to this server", msg_ref=frame.msg_ref)
        meta = _without_key(meta_of(frame.payload))
        local = Local(user_id, link.link_id, key_text, meta)
        if attest is not None:
            self._attests[user_id] = attest
        else:
            # Another implementation's client: served here, but no other server will place it on us.
            self._attests.pop(user_id, None)
            self._out.log.info("user %s sent no location attestation: other servers will not list it", user_id[:8])
        self._hooks.user_joined.fire(link, local, now)
        label = display_label(user_id, meta)
        self._out.emit(UserJoined(user_id, label))
        self._out.log.info("user %s (%s) connected", user_id[:8], label)

    def attach(self, link: Link, local: Local, now: int) -> None:
        """``user_joined`` subscriber: attach the user, welcome it with the directory, advertise it."""
        server_id = self._out.server_id
        link.role, link.peer = LinkRole.USER, local.user_id
        self._locals[local.user_id] = local
        record = UserRecord(local.user_id, server_id, local.pubkey, local.meta)
        self._directory.advertise(record)
        self._version += 1
        self._out.send(link, self._out.make(FrameType.ACK, local.user_id, now,
                                            {"msg_ref": "USER_HELLO", "server_id": server_id,
                                             "server_pub": self._out.pubkey,
                                             "features": wire_list(SERVER_FEATURES),
                                             "delivery_bound_ms": delivery_bound_ms(self._settings.peer_timeout_ms)}))
        for known_record in self._directory.listing():
            self._out.send(link, self._out.make(FrameType.USER_ADVERTISE, local.user_id, now,
                                                self._advert_payload(known_record)))
        advert = self._out.make(FrameType.USER_ADVERTISE, BROADCAST, now, self._advert_payload(record))
        self._replay.admit(advert, now)
        for server_link in self._links.server_links():
            self._out.send_text(server_link, advert.to_wire())
        self.push(FrameType.USER_ADVERTISE, now, self._advert_payload(record), exclude=local.user_id)

    def link_closed(self, link: Link, now: int) -> None:
        """A user connection went away: fire ``user_left`` (if it had attached)."""
        local = self._locals.get(link.peer)
        if local is None:
            return
        self._hooks.user_left.fire(local, now)
        label = display_label(local.user_id, local.meta)
        self._out.emit(UserLeft(local.user_id, label))
        self._out.log.info("user %s (%s) disconnected", local.user_id[:8], label)

    def detach(self, local: Local, now: int) -> None:
        """``user_left`` subscriber: forget the user and tell every server and local user."""
        del self._locals[local.user_id]
        self._version += 1
        server_id = self._out.server_id
        self._directory.remove(local.user_id, server_id)
        payload = {"user_id": local.user_id, "server_id": server_id}
        removal = self._out.make(FrameType.USER_REMOVE, BROADCAST, now, payload)
        self._replay.admit(removal, now)
        for server_link in self._links.server_links():
            self._out.send_text(server_link, removal.to_wire())
        self.push(FrameType.USER_REMOVE, now, payload)

    # --- frame handlers ----------------------------------------------------------------------------

    def on_list_request(self, link: Link, frame: Envelope, now: int) -> None:
        """LIST_REQUEST from a local user: every user known online."""
        users = [record.to_wire() for record in self._directory.listing()]
        self._out.send(link, self._out.make(FrameType.LIST_RESPONSE, link.peer, now, {"users": users}))

    def on_user_advertise(self, link: Link, frame: Envelope, now: int) -> None:
        """USER_ADVERTISE gossip (verified and de-duplicated by the route): record, tell our users; never
        relayed (see the module docstring). A record relayed for a server we have no link to is ignored."""
        payload = frame.payload
        if payload["server_id"] != frame.sender:
            raise BadFrame("USER_ADVERTISE server_id must be its signer", msg_ref=frame.msg_ref)
        if not self._links.is_linked(frame.sender):
            self._out.log.debug("ignoring advert of user %s relayed for unlinked server %s",
                                str(payload["user_id"])[:8], frame.sender[:8])
            return
        meta = meta_of(payload)
        if self._settings.interop and payload.get("pubkey") is None and meta.get("pubkey") is None:
            self._keyless_advert(frame, now)
            return
        self._record_advert(frame, payload, now)

    def _record_advert(self, frame: Envelope, payload: Mapping[str, Any], now: int) -> None:
        """Record a (verified) advert's user for its signer and tell our users; a bad key is logged, dropped."""
        meta = meta_of(payload)
        pubkey = self._gossiped_user_key(payload, meta, frame, frame.sender)
        if pubkey is None:
            return
        record = UserRecord(payload["user_id"], frame.sender, pubkey, _without_key(meta))
        if record.user_id in self._locals:
            self._out.log.info("user %s advertised by %s but attached here; keeping local", record.user_id[:8],
                               frame.sender[:8])
            return
        self._directory.advertise(record)
        self.push(FrameType.USER_ADVERTISE, now, self._advert_payload(record))

    def on_user_remove(self, link: Link, frame: Envelope, now: int) -> None:
        """USER_REMOVE gossip (verified and de-duplicated by the route): forget, tell our users; never relayed."""
        if frame.payload["server_id"] != frame.sender:
            raise BadFrame("USER_REMOVE server_id must be its signer", msg_ref=frame.msg_ref)
        user_id = frame.payload["user_id"]
        if self._directory.remove(user_id, frame.sender) is None:
            if self._directory.location(user_id) not in (None, frame.sender):
                self._out.log.warning("server %s sent USER_REMOVE for user %s, hosted by %s: ignored",
                                      frame.sender[:8], str(user_id)[:8], str(self._directory.location(user_id))[:8])
        else:
            self.push(FrameType.USER_REMOVE, now, {"user_id": frame.payload["user_id"], "server_id": frame.sender})

    def on_presence_sync(self, link: Link, frame: Envelope, now: int) -> None:
        """SERVER_PRESENCE_SYNC from the linked server: its users replace what we held for it."""
        if frame.payload["server_id"] != link.peer:
            raise BadFrame("SERVER_PRESENCE_SYNC must describe its sender", msg_ref=frame.msg_ref)
        records = []
        for item in frame.payload["users"]:
            if not isinstance(item, dict) or not isinstance(item.get("user_id"), str):
                raise BadFrame("SERVER_PRESENCE_SYNC users entries need user_id", msg_ref=frame.msg_ref)
            meta = meta_of(item)
            if item["user_id"] in self._locals:
                continue
            pubkey = self._gossiped_user_key(item, meta, frame, link.peer)
            if pubkey is None:
                continue
            records.append(UserRecord(item["user_id"], link.peer, pubkey, _without_key(meta)))
        added, removed = self._directory.replace_server(link.peer, records)
        for record in added:
            self.push(FrameType.USER_ADVERTISE, now, self._advert_payload(record))
        for record in removed:
            self.push(FrameType.USER_REMOVE, now, {"user_id": record.user_id, "server_id": link.peer})

    # --- timers and hooks --------------------------------------------------------------------------

    def handle_timer(self, now: int) -> None:
        """A sync round when due: a snapshot on every server link, then the ``sweep`` housekeeping."""
        if now >= self._next_sync:
            self._next_sync = now + self._settings.presence_sync_interval_ms
            for link in self._links.server_links():
                self.send_sync(link, now)
            self._hooks.sweep.fire(now)

    def next_deadline(self) -> int:
        """When the next sync round is due."""
        return self._next_sync

    def send_sync(self, link: Link, now: int) -> None:
        """Our local users to one server: a snapshot, or one advert each for a peer without snapshots."""
        if link.peer in self._legacy_peers:
            for local in self._locals.values():
                record = UserRecord(local.user_id, self._out.server_id, local.pubkey, local.meta)
                self._out.send(link, self._out.make(FrameType.USER_ADVERTISE, BROADCAST, now,
                                                    self._advert_payload(record)))
            return
        users = []
        for local in self._locals.values():
            entry: dict[str, Any] = {"user_id": local.user_id, "pubkey": local.pubkey, "meta": dict(local.meta)}
            if (attest := self._attests.get(local.user_id)) is not None:
                entry["attest"] = attest.to_wire()
            users.append(entry)
        self._out.send(link, self._out.make(FrameType.SERVER_PRESENCE_SYNC, link.peer, now,
                                            {"server_id": self._out.server_id, "users": users,
                                             "version": self._version}))

    def server_lost(self, server_id: str, dropped: list[UserRecord], now: int) -> None:
        """``link_down`` subscriber: tell our users that the dead server's users are gone (``reason`` is our
        extension, ignored by others: they did not leave, their server stopped answering)."""
        for record in dropped:
            self.push(FrameType.USER_REMOVE, now, {"user_id": record.user_id, "server_id": server_id,
                                                   "reason": SERVER_UNREACHABLE})

    def peer_lacks(self, link: Link, frame_type: str, now: int) -> None:
        """``peer_lacks`` subscriber: a peer without SERVER_PRESENCE_SYNC gets adverts instead."""
        if frame_type == FrameType.SERVER_PRESENCE_SYNC.value:
            # A peer without snapshots gets our users one advert at a time (WIRE §4.5).
            self._legacy_peers.add(link.peer)
            self.send_sync(link, now)

    def _gossiped_user_key(self, item: Mapping[str, Any], meta: Mapping[str, Any], frame: Envelope,
                           server_id: str) -> str | None:
        """The user key of a record gossiped for ``server_id``, or None (logged) when it is weak or malformed,
        contradicts the key bound to the user id, or lacks the user's attestation (:meth:`_attested`).

        One bad record must not cost the whole server link, which would be re-sent the same snapshot forever.
        """
        user_id = str(item.get("user_id"))
        try:
            key_text = crypto.normalize_public_key(item.get("pubkey") or meta.get("pubkey"))
        except BadKey as exc:
            self._out.log.warning("ignoring user %s gossiped by %s: %s", user_id[:8], frame.sender[:8], exc.detail)
            return None
        # A user id stays bound to its first key (registry, else directory): a server that gossips another
        # key for a known user is attempting to take that user over, and its record is refused.
        registration = self._registry.registration(user_id)
        known = registration.pubkey if registration is not None else None
        if known is None and (record := self._directory.get(user_id)) is not None:
            known = record.pubkey
        if known is not None and known != key_text:
            self.refused_adverts += 1
            self._out.log.error("IMPERSONATION ATTEMPT: server %s gossiped user %s with key %s, bound to %s",
                                frame.sender[:8], user_id[:8], crypto.key_fingerprint(key_text),
                                crypto.key_fingerprint(known))
            return None
        return key_text if self._attested(user_id, item.get("attest"), server_id, key_text) else None

    def _attested(self, user_id: str, raw: object, server_id: str, key_text: str) -> bool:
        """Whether ``raw`` is the user's own attestation of being on ``server_id``, and the newest known."""
        newest = self._attests.get(user_id)
        try:
            attest = Attestation.from_wire(user_id, raw) if raw is not None else None
        except BadFrame as exc:
            attest, why = None, exc.detail
        else:
            why = "no attestation"
        if attest is not None and attest == newest and attest.server_id == server_id:
            return True  # verified before (a snapshot repeats it every round)
        if raw is None and newest is None and self._settings.legacy_interop:
            # Another implementation's server or client attests nothing: under the (loudly logged) interop
            # switch its users are listed, but never over a location a user attested itself.
            return True
        if attest is not None:
            if attest.server_id != server_id:
                why = f"its attestation names server {attest.server_id[:8]}"
            elif newest is not None and attest.ts < newest.ts:
                why = f"its attestation is older than the user's latest, for server {newest.server_id[:8]}"
            elif not attest.verify(self._out.public_key(key_text)):
                why = "its attestation does not verify with the user's key"
            else:
                self._attests[user_id] = attest
                return True
        self.refused_adverts += 1
        # A snapshot repeats a refused record every sync round: say it once per (user, server, reason).
        seen = (user_id, server_id, why)
        if seen not in self._refusals_logged:
            if len(self._refusals_logged) >= MAX_REFUSALS_LOGGED:
                self._refusals_logged.clear()
            self._refusals_logged.add(seen)
            self._out.log.warning("refused server %s's record of user %s: %s", server_id[:8], user_id[:8], why)
        else:
            self._out.log.debug("refused server %s's record of user %s again: %s", server_id[:8], user_id[:8], why)
        return False

    def _hello_attestation(self, frame: Envelope, key_text: str) -> Attestation | None:
        """The ``attest`` of a USER_HELLO (None when absent): it must name this server, carry the hello's
        ``ts`` and verify with the hello's key (one signature check)."""
        raw = frame.payload.get("attest")
        if raw is None:
            return None
        try:
            attest = Attestation.from_wire(frame.sender, raw)
        except BadFrame as exc:
            raise BadFrame(f"USER_HELLO {exc.detail}", msg_ref=frame.msg_ref, fatal=True) from None
        if attest.server_id != self._out.server_id or attest.ts != frame.ts:
            raise BadFrame("USER_HELLO attest must name this server and the hello's ts", msg_ref=frame.msg_ref,
                           fatal=True)
        if not attest.verify(self._out.public_key(key_text)):
            raise InvalidSignature("USER_HELLO attest does not verify with the user's key", msg_ref=frame.msg_ref,
                                   fatal=True)
        return attest

    def _advert_payload(self, record: UserRecord) -> dict[str, Any]:
        """A USER_ADVERTISE payload, with the user's attestation when we hold one for that location."""
        payload = _advert_payload(record)
        if self._settings.interop:
            # The key in meta as well: fengyuan213/Secure-Programming-Group's client reads a user's key only
            # from ``meta.pubkey`` (docs/INTEROP.md §1); the same key, under the same signature, never read back
            # by us. Interop profile only: it makes every advert and snapshot entry ~740 characters longer.
            payload["meta"] = {**payload["meta"], "pubkey": record.pubkey}
        attest = self._attests.get(record.user_id)
        if attest is not None and attest.server_id == record.server_id:
            payload["attest"] = attest.to_wire()
        return payload

    # --- keys on demand (interop profile, docs/INTEROP.md) ---------------------------------------------

    def _keyless_advert(self, frame: Envelope, now: int) -> None:
        """An advert with ``{user_id, server_id}`` only: use the key bound here already, else ask its server."""
        payload = dict(frame.payload)
        user_id = str(payload["user_id"])
        known = self.pinned_key(user_id)
        if known is not None:
            self._record_advert(frame, {**payload, "pubkey": known}, now)
            return
        link = self._links.server_link(frame.sender)
        if link is None or (user_id not in self._keyless and len(self._keyless) >= MAX_KEYLESS):
            self._out.log.info("interop: no key for user %s advertised by %s; not listed", user_id[:8],
                               frame.sender[:8])
            return
        self._keyless[user_id] = (frame.sender, payload)
        self._out.send(link, self._out.make(FrameType.PUBKEY_REQUEST, frame.sender, now, {"user_id": user_id}))

    def on_pubkey_request(self, link: Link, frame: Envelope, now: int) -> None:
        """PUBKEY_REQUEST {user_id} from a server or a user: the key bound here, signed by us (the same trust
        as an advert: our transport signature); ``USER_NOT_FOUND`` when none is."""
        user_id = frame.payload["user_id"]
        key = self.pinned_key(user_id)
        if key is None:
            raise UserNotFound(f"no key known for user {user_id}", msg_ref=frame.msg_ref)
        location = self._directory.location(user_id) or (self._out.server_id if user_id in self._locals else "")
        self._out.send(link, self._out.make(FrameType.PUBKEY_RESPONSE, link.peer, now, {
            "user_id": user_id, "pubkey": key, "server_id": location, "msg_ref": frame.msg_ref}))

    def on_pubkey_response(self, link: Link, frame: Envelope, now: int) -> None:
        """PUBKEY_RESPONSE from the server that advertised a user without a key: record the user as if the
        advert had carried it (same checks: key binding, attestation rules). Unasked answers are ignored."""
        user_id = frame.payload["user_id"]
        pending = self._keyless.get(user_id)
        if pending is None or pending[0] != frame.sender:
            self._out.log.debug("ignoring unasked PUBKEY_RESPONSE for %s from %s", str(user_id)[:8],
                                frame.sender[:8])
            return
        del self._keyless[user_id]
        self._record_advert(frame, {**pending[1], "pubkey": frame.payload["pubkey"]}, now)

    def pinned_key(self, user_id: str) -> str | None:
        """The key bound to ``user_id`` here (registry, else directory), or None."""
        registration = self._registry.registration(user_id)
        if registration is not None:
            return registration.pubkey
        record = self._directory.get(user_id)
        return record.pubkey if record is not None else None


def _without_key(meta: Mapping[str, Any]) -> dict[str, Any]:
    """``meta`` as stored: without ``pubkey`` (the record holds the key; adverts add it back, _advert_payload)."""
    return {k: v for k, v in meta.items() if k != "pubkey"}


def _advert_payload(record: UserRecord) -> dict[str, Any]:
    return {"user_id": record.user_id, "server_id": record.server_id, "pubkey": record.pubkey,
            "meta": dict(record.meta)}
