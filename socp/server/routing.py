"""Routing user frames (WIRE §4.6): direct messages and file frames to a local recipient or, wrapped in
SERVER_DELIVER, to the recipient's server; USER_NOT_FOUND bounces back to the origin; server ERROR and ACK.
With servers that announced delivery receipts, forwards are kept until acknowledged (:mod:`socp.server.receipts`).

Cost: a routed frame is one frame on one link, plus one signature by this server (the transport signature of
the re-made frame; forwards of distinct payloads are not cached usefully) and, for MSG_DIRECT, one content
signature check: O(1) per message, independent of n. A bounce is one ERROR back on the same link. Receipts add
at most one signed ACK at the far server and one signed ACK to the sender (when its client asked for receipts),
coalesced per link within a short batch (:data:`socp.settings.RECEIPT_BATCH_MS`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from socp import crypto
from socp import envelope as env
from socp.envelope import BROADCAST, PUBLIC_GROUP, Envelope, FrameType
from socp.errors import BadFrame, BadKey, ErrorCode, InvalidSignature, ProtocolError, TooLarge, UserNotFound
from socp.presence import Directory
from socp.replay import ReplayCache
from socp.server.config import ServerSettings
from socp.server.hooks import Hooks
from socp.server.links import Link, LinkTable
from socp.server.outbox import Outbox
from socp.server.presence import Presence
from socp.server.public import PublicChannel
from socp.server.receipts import InFlight, Receipts, digest_of

Bounce = Callable[[int], bool]
"""Called with ``now`` when a forward bounces; False when the sender was already told (stay quiet)."""


@dataclass(slots=True)
class Forward:
    """A user frame this server forwarded to another server, kept to route a bounce back to its sender."""

    sender: str          # local user who sent it
    user_msg_ref: str    # msg_ref of the user's original frame
    expires: int
    on_bounce: Bounce | None = None
    recipient: str = ""
    digest: str | None = None          # in flight awaiting a receipt (a server with delivery receipts)
    user_payload: Any = None           # the user frame's payload fields a receipt repeats (file_id, index)


class Routing:
    """Routes user frames and handles what comes back; owns the forwards awaiting a possible bounce."""

    def __init__(self, settings: ServerSettings, out: Outbox, links: LinkTable, directory: Directory,
                 presence: Presence, public: PublicChannel, hooks: Hooks, replay: ReplayCache,
                 receipts: Receipts) -> None:
        self._settings = settings
        self._out = out
        self._links = links
        self._directory = directory
        self._presence = presence
        self._public = public
        self._hooks = hooks
        self._replay = replay
        self.receipts = receipts
        self._forwards: dict[str, list[Forward]] = {}
        self.refused_deliveries = 0
        """SERVER_DELIVER frames refused because their sender key is not the sender's pinned key."""

    def sweep(self, now: int) -> None:
        """``sweep`` subscriber: forget forwards too old to bounce."""
        self._forwards = {ref: live for ref, forwards in self._forwards.items()
                          if (live := [fwd for fwd in forwards if fwd.expires > now])}

    def next_deadline(self) -> int | None:
        """When :meth:`handle_timer` has work: the earliest receipt deadline or batch flush, or None."""
        return self.receipts.next_deadline()

    def handle_timer(self, now: int, *, backlog: bool = False) -> None:
        """Send parked frames whose recipient is back; tell the sender of each forward whose receipt did not
        come within the bound: ``ERROR TIMEOUT``; send the receipt batches that are due (``backlog``: input is
        waiting, let them grow: :meth:`Receipts.flush`)."""
        ready, parked_out = self.receipts.unpark(now, self._directory.location)
        for entry, location in ready:
            forward = self._take_forward(entry)
            if forward is None:
                continue
            made = entry.frame
            if location != entry.server_id:  # back elsewhere: the same user frame, to another server
                made = self._out.make_at(FrameType.SERVER_DELIVER, self._out.server_id, location, made.ts,
                                         made.payload)
            forward.digest = self.receipts.forward(location, made, now, deadline=entry.deadline, resent=True)
            self._forwards.setdefault(made.msg_ref, []).append(forward)
        for entry in [*self.receipts.expire(now), *parked_out]:
            forward = self._take_forward(entry)
            if forward is None:
                continue
            self._out.log.info("no receipt from server %s within %d ms for %s", entry.server_id[:8],
                               self.receipts.bound_ms, forward.user_msg_ref)
            if forward.on_bounce is not None and not forward.on_bounce(now):
                continue
            self._tell_sender(forward, ErrorCode.TIMEOUT.value,
                              f"no delivery receipt from the recipient's server within "
                              f"{self.receipts.bound_ms / 1000:g} s (server {entry.server_id[:8]} unreachable)", now)
        self.receipts.flush(now, backlog=backlog)

    # --- from local users --------------------------------------------------------------------------

    def on_direct(self, link: Link, frame: Envelope, now: int) -> None:
        """MSG_DIRECT from a local user."""
        self.route(link, frame, now)

    def route(self, link: Link, frame: Envelope, now: int, on_bounce: Bounce | None = None) -> None:
        """Deliver a user frame to its recipient here, or forward it to the recipient's server."""
        local_sender = self._presence.local(link.peer)
        assert local_sender is not None, "user frames arrive on attached links only"
        payload = frame.payload
        if frame.type is FrameType.MSG_DIRECT:
            if crypto.normalize_public_key(payload["sender_pub"]) != local_sender.pubkey:
                raise BadFrame("sender_pub is not the key this user registered", msg_ref=frame.msg_ref)
            if crypto.rsa_block_count(payload["ciphertext"]) > crypto.MAX_DIRECT_BLOCKS:
                raise TooLarge(f"a direct message may carry at most {crypto.MAX_DIRECT_BLOCKS} RSA blocks "
                               f"({crypto.MAX_DIRECT_BLOCKS * crypto.OAEP_MAX_PLAINTEXT} bytes); send a file",
                               msg_ref=frame.msg_ref, fatal=False)
            if not crypto.verify_direct(self._out.public_key(local_sender.pubkey), payload["content_sig"],
                                        payload["ciphertext"], frame.sender, frame.to, frame.ts):
                raise InvalidSignature("content_sig does not verify", msg_ref=frame.msg_ref)
        recipient = frame.to
        location = self._directory.location(recipient) or self.receipts.held_location(recipient, now)
        if location is None:
            raise UserNotFound(f"user {recipient} is not online", msg_ref=frame.msg_ref)
        out = self._out
        if location == out.server_id:
            local = self._presence.local(recipient)
            assert local is not None
            target = self._links[local.link_id]
            if frame.type is FrameType.MSG_DIRECT:
                made = out.make_at(FrameType.USER_DELIVER, out.server_id, recipient, frame.ts,
                                   {"ciphertext": payload["ciphertext"], "sender": frame.sender,
                                    "sender_pub": payload["sender_pub"], "content_sig": payload["content_sig"]})
            else:
                made = out.make_at(frame.type, frame.sender, recipient, frame.ts, payload)
            out.send(target, made)
            if self.receipts.wants_receipts(local_sender):
                self.receipts.receipt_to(link, frame.msg_ref, payload, now)
            return
        server_link = self._links.server_link(location)
        capable = self.receipts.capable(location)
        if server_link is None and not capable:
            raise UserNotFound(f"user {recipient} is on server {location}, which is unreachable",
                               msg_ref=frame.msg_ref)
        body = {k: v for k, v in payload.items() if k not in ("user_id", "kind", "sender")}
        body.update({"user_id": recipient, "sender": frame.sender})
        if frame.type is not FrameType.MSG_DIRECT:
            body["kind"] = frame.type.value
        made = out.make_at(FrameType.SERVER_DELIVER, out.server_id, location, frame.ts, body)
        digest = None
        if capable:
            # Kept until the far server's receipt; sent now if the link is up, else when it is back.
            digest = self.receipts.forward(location, made, now)
        else:
            assert server_link is not None
            out.send(server_link, made)
        receipt_payload = payload if capable and self.receipts.wants_receipts(local_sender) else None
        self._forwards.setdefault(made.msg_ref, []).append(
            Forward(frame.sender, frame.msg_ref, now + self._settings.replay_window_ms, on_bounce, recipient,
                    digest, receipt_payload))

    def on_user_heartbeat(self, link: Link, frame: Envelope, now: int) -> None:
        """HEARTBEAT from a user: nothing to do."""

    def on_user_reply(self, link: Link, frame: Envelope, now: int) -> None:
        """ACK or ERROR from a user: logged only."""
        self._out.log.debug("user %s sent %s %s", link.peer[:8], frame.type, dict(frame.payload))

    # --- from servers ------------------------------------------------------------------------------

    def on_server_deliver(self, link: Link, frame: Envelope, now: int) -> None:
        """SERVER_DELIVER for one of our users (or ``public``): check the payload, deliver, or bounce.

        Replay is special: a server with delivery receipts sends a frame again when it had no receipt (a link
        lost, this node restarted), so a repeat of a frame delivered here is ACKed again, not dropped silently
        and not delivered twice; a repeat of one that bounced is judged again. From any other server, and for
        ``public``, a duplicate is dropped silently (the route's usual ONCE rule).
        """
        out = self._out
        payload = dict(frame.payload)
        recipient = payload.pop("user_id")
        # A public frame is one signed SERVER_DELIVER to "*" for every server (socp.server.public.fan_out).
        if frame.to != out.server_id and not (frame.to == BROADCAST and recipient == PUBLIC_GROUP):
            raise BadFrame("SERVER_DELIVER addressed to another server", msg_ref=frame.msg_ref)
        capable = recipient != PUBLIC_GROUP and self.receipts.capable(link.peer)
        digest = digest_of(frame) if capable else None
        if digest is not None and self.receipts.delivered_before(digest):
            self._out.log.debug("repeat of delivered %s from %s: ACKed again", frame.msg_ref, link.peer[:8])
            self.receipts.acknowledge(link, frame, digest, now)
            return
        if not self._replay.admit(frame, now) and digest is None:
            return
        kind_name = payload.pop("kind", FrameType.MSG_DIRECT.value)
        self._check_sender_key(link, frame, payload)
        if recipient == PUBLIC_GROUP:
            self._public.on_deliver(frame, kind_name, payload, now)
            return
        local = self._presence.local(recipient)
        if local is None:
            # ``user_id`` and ``sender`` (our extension) tell the origin which of several forwards sharing this
            # msg_ref (same servers, same millisecond) bounced.
            out.send(link, out.make(FrameType.ERROR, link.peer, now, {
                "code": ErrorCode.USER_NOT_FOUND.value, "detail": f"user {recipient} is not attached to this server",
                "msg_ref": frame.msg_ref, "user_id": recipient, "sender": payload.get("sender", "")}))
            return
        sender = payload.get("sender", "")
        # A malformed forward is refused here, so that the ERROR reaches the origin (and its sender) instead of
        # our user silently dropping a frame it cannot read.
        if kind_name == FrameType.MSG_DIRECT.value:
            env.check_payload(FrameType.USER_DELIVER, payload, frame.msg_ref)
            made = out.make_at(FrameType.USER_DELIVER, out.server_id, recipient, frame.ts, payload)
        else:
            try:
                kind = FrameType(kind_name)
            except ValueError:
                raise BadFrame(f"unknown SERVER_DELIVER kind {kind_name!r}", msg_ref=frame.msg_ref) from None
            if not isinstance(sender, str) or not sender:
                raise BadFrame(f"SERVER_DELIVER of {kind} needs the sending user in 'sender'", msg_ref=frame.msg_ref)
            payload.pop("sender", None)
            env.check_payload(kind, payload, frame.msg_ref)
            made = out.make_at(kind, sender, recipient, frame.ts, payload)
        out.send(self._links[local.link_id], made)
        if digest is not None:
            self.receipts.acknowledge(link, frame, digest, now)

    def _check_sender_key(self, link: Link, frame: Envelope, payload: dict[str, Any]) -> None:
        """The key a forwarded user frame carries (``sender_pub``, or ``creator_pub`` of a key share) must be
        the key bound to its sending user here: a server cannot speak for a user under another key (issue 11,
        finding 2). A frame naming a sender whose key we never learnt is refused too."""
        claimed = payload.get("sender_pub", payload.get("creator_pub"))
        if claimed is None:
            return  # chunks and ends: their FILE_START carried (and had checked) the key
        sender = payload.get("sender")
        if not isinstance(sender, str) or not sender:
            raise BadFrame("SERVER_DELIVER needs the sending user in 'sender'", msg_ref=frame.msg_ref)
        pinned = self._presence.pinned_key(sender)
        try:
            matches = pinned is not None and crypto.normalize_public_key(claimed) == pinned
        except ProtocolError:
            matches = False
        if not matches:
            self._out.log.error("IMPERSONATION ATTEMPT: server %s forwarded a %s from user %s under key %s, "
                                "pinned key %s", link.peer[:8], payload.get("kind", FrameType.MSG_DIRECT.value),
                                sender[:8], _fingerprint(claimed),
                                crypto.key_fingerprint(pinned) if pinned else "none")
            self.refused_deliveries += 1
            raise BadKey(f"sender key of {sender} is not the key pinned for that user", msg_ref=frame.msg_ref)

    def on_server_error(self, link: Link, frame: Envelope, now: int) -> None:
        """ERROR from a server: bounce it to the local sender of the forward it names (once per file)."""
        ref = frame.payload.get("msg_ref")
        forwards = self._forwards.get(ref, []) if isinstance(ref, str) else []
        about_user, about_sender = frame.payload.get("user_id"), frame.payload.get("sender")
        matching = [f for f in forwards if about_user in (None, f.recipient) and about_sender in (None, f.sender)]
        forward = matching[0] if matching else (forwards[0] if forwards else None)
        if forward is not None:
            entry = self.receipts.settle(forward.digest)
            if (entry is not None and entry.resent and entry.deadline > now
                    and frame.payload.get("code") == ErrorCode.USER_NOT_FOUND):
                # Sent again to a server that restarted: its users reconnect in a moment. Wait for the
                # recipient (the forward stays), within the same bound, instead of bouncing.
                self.receipts.park(entry, now)
                return
            forwards.remove(forward)
        if isinstance(ref, str) and not forwards:
            self._forwards.pop(ref, None)
        if frame.payload.get("code") == ErrorCode.UNKNOWN_TYPE:
            # Another implementation without one of our extensions: msg_ref names the frame type it lacks.
            frame_type, colon, _ = str(ref).partition(":")
            if colon:
                self._hooks.peer_lacks.fire(link, frame_type, now)
        if forward is not None and forward.on_bounce is not None and not forward.on_bounce(now):
            return
        self._out.log.info("server %s reported %s: %s", link.peer[:8], frame.payload.get("code"),
                           frame.payload.get("detail"))
        if forward is not None:
            self._tell_sender(forward, str(frame.payload.get("code")), str(frame.payload.get("detail", "")), now)

    def _take_forward(self, entry: InFlight) -> Forward | None:
        """Remove and return the forward of a frame in flight."""
        forwards = self._forwards.get(entry.msg_ref, [])
        forward = next((f for f in forwards if f.digest == entry.digest), None)
        if forward is not None:
            forwards.remove(forward)
        if not forwards:
            self._forwards.pop(entry.msg_ref, None)
        return forward

    def _tell_sender(self, forward: Forward, code: str, detail: str, now: int) -> None:
        """``ERROR {code, detail, msg_ref}`` about a forward to its sender, if still attached here."""
        local = self._presence.local(forward.sender)
        if local is None:
            return
        payload: dict[str, Any] = {"code": code, "detail": detail}
        if forward.user_msg_ref:
            payload["msg_ref"] = forward.user_msg_ref
        self._out.send(self._links[local.link_id], self._out.make(FrameType.ERROR, forward.sender, now, payload))

    def on_server_ack(self, link: Link, frame: Envelope, now: int) -> None:
        """ACK from a server: a delivery receipt (``digest``, or every one of a coalesced ``digests``) settles
        frames in flight and, when a sender's client asked for receipts, queues the receipt of the sender's own
        frame (see :meth:`Receipts.receipt_to`); other ACKs need nothing."""
        digests = frame.payload.get("digests")
        if not isinstance(digests, list):
            digests = [frame.payload.get("digest")]  # the single form
        for digest in digests:
            # Only the server a frame went to settles it; unknown digests are not ours, or already settled
            # (a repeat's second receipt, a bounce, a timeout).
            entry = self.receipts.settle(digest, link.peer) if isinstance(digest, str) else None
            forward = self._take_forward(entry) if entry is not None else None
            if forward is None:
                continue
            local = self._presence.local(forward.sender)
            if local is not None and forward.user_payload is not None:
                self.receipts.receipt_to(self._links[local.link_id], forward.user_msg_ref, forward.user_payload, now)


def _fingerprint(key: object) -> str:
    try:
        return crypto.key_fingerprint(crypto.normalize_public_key(key))
    except ProtocolError:
        return "unusable"
