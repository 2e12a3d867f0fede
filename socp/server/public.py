"""The public channel (WIRE §5): fan-out of public messages and key shares, and the membership every server
announces (PUBLIC_CHANNEL_ADD on a join, a PUBLIC_CHANNEL_UPDATED snapshot on a leave or a new link).

Cost, for n servers and u local users: a public frame from a local user is checked once (one content
signature), signed once and sent on n - 1 server links and to u - 1 local members: O(n + u) frames and one
signature. A membership change is one signed frame on n - 1 links (a snapshot of our members, O(u) bytes, on
a leave).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from socp import crypto
from socp import envelope as env
from socp.actions import PublicChannelVersion, PublicWrapStored
from socp.envelope import BROADCAST, PUBLIC_GROUP, Envelope, FrameType
from socp.errors import BadFrame, BadKey, InvalidSignature
from socp.interop import Variant
from socp.presence import UserRecord
from socp.server.config import MAX_SHARES, PUBLIC_KINDS
from socp.server.hooks import Local
from socp.server.links import Link, LinkTable
from socp.server.outbox import Outbox, logger
from socp.server.presence import Presence

MAX_SHARE_SERVERS_LOGGED = 1024
"""Servers whose key shares were logged once (beyond it, each share is logged)."""


class PublicChannel:
    """The public channel as this server sees it: our membership version, the latest key wrap each local
    member was sent, and the members other servers announced."""

    def __init__(self, out: Outbox, links: LinkTable, presence: Presence, *, version: int = 0,
                 wraps: Mapping[str, str] | None = None, interop: bool = False) -> None:
        self._out = out
        self._interop = interop
        """The interop profile: a server's own PUBLIC_CHANNEL_KEY_SHARE on a server link is accepted."""
        self._share_servers_logged: set[str] = set()
        self._links = links
        self._presence = presence
        self.version = version
        """This server's membership version (one step per local member joining or leaving)."""
        self._latest_wraps: dict[str, str] = dict(wraps or {})
        self._remote_members: dict[str, tuple[int, set[str]]] = {}

    def member_count(self) -> int:
        """Members known network-wide: our local users and those other servers announced."""
        return len(self._presence.local_ids) + sum(len(members) for _, members in self._remote_members.values())

    # --- from local users --------------------------------------------------------------------------

    def on_public_frame(self, link: Link, frame: Envelope, now: int) -> None:
        """A local user's MSG_PUBLIC_CHANNEL or PUBLIC_CHANNEL_KEY_SHARE: check it, then fan it out."""
        sender = self._presence.local(link.peer)
        assert sender is not None, "user frames arrive on attached links only"
        payload = frame.payload
        if frame.type is FrameType.MSG_PUBLIC_CHANNEL:
            if frame.to != PUBLIC_GROUP:
                raise BadFrame("MSG_PUBLIC_CHANNEL must be addressed to 'public'", msg_ref=frame.msg_ref)
            check_sender_pub(sender, payload["sender_pub"], frame)
            if not crypto.verify_public(self._out.public_key(sender.pubkey), payload["content_sig"],
                                        payload["ciphertext"], frame.sender, frame.ts):
                raise InvalidSignature("content_sig does not verify", msg_ref=frame.msg_ref)
        else:
            if frame.to not in (BROADCAST, PUBLIC_GROUP):
                raise BadFrame("PUBLIC_CHANNEL_KEY_SHARE must be addressed to '*'", msg_ref=frame.msg_ref)
            check_sender_pub(sender, payload["creator_pub"], frame)
            shares = _checked_shares(frame)
            if not crypto.verify_key_share(self._out.public_key(sender.pubkey), payload["content_sig"], shares,
                                           payload["creator_pub"]):
                raise InvalidSignature("content_sig does not verify", msg_ref=frame.msg_ref)
            self._record_wraps(shares)
        self.fan_out(frame.type, frame.sender, frame.ts, payload, now)

    def fan_out(self, kind: FrameType, sender: str, ts: int, payload: Mapping[str, Any], now: int) -> None:
        """Hand a verified public frame to every local member but its sender, and to every other server.

        The transport signature covers the whole envelope, so the servers' copy is one SERVER_DELIVER addressed
        to ``"*"`` (one signature for every link; a receiver accepts ``"*"`` only for ``user_id: "public"``).
        """
        self._deliver_locally(kind, sender, ts, payload)
        links = self._links.server_links()
        if not links:
            return
        body = {k: v for k, v in payload.items() if k not in ("user_id", "kind", "sender")}
        body.update({"user_id": PUBLIC_GROUP, "sender": sender, "kind": kind.value})
        out = self._out.make_at(FrameType.SERVER_DELIVER, self._out.server_id, BROADCAST, ts, body)
        text = out.to_wire()
        for server_link in links:
            if logger.isEnabledFor(logging.DEBUG):
                self._out.log.debug("> %s %s on link %d", out.type, out.msg_ref, server_link.link_id)
            self._out.send_text(server_link, text)

    # --- from servers ------------------------------------------------------------------------------

    def on_deliver(self, frame: Envelope, kind_name: str, payload: dict[str, Any], now: int) -> None:
        """A SERVER_DELIVER with ``user_id: "public"``: hand it to every local member (WIRE §4.6)."""
        try:
            kind = FrameType(kind_name)
        except ValueError:
            kind = FrameType.MSG_DIRECT
        if kind not in PUBLIC_KINDS:
            raise BadFrame(f"SERVER_DELIVER to 'public' cannot carry kind {kind_name!r}", msg_ref=frame.msg_ref)
        sender = payload.pop("sender", None)
        if not isinstance(sender, str):
            raise BadFrame("SERVER_DELIVER to 'public' needs the sending user in 'sender'", msg_ref=frame.msg_ref)
        # Our users must only ever get well-formed frames, even from a faulty peer.
        env.check_payload(kind, payload, frame.msg_ref)
        if kind is FrameType.PUBLIC_CHANNEL_KEY_SHARE:
            shares = payload.get("shares")
            if isinstance(shares, list):
                self._record_wraps(shares)
        self._deliver_locally(kind, sender, frame.ts, payload)

    def on_server_key_share(self, link: Link, frame: Envelope, now: int) -> None:
        """PUBLIC_CHANNEL_KEY_SHARE sent by the linked server itself (the standard's §9.3: a server-made group
        key wrapped per member, to ``"*"``). Interop profile only; refused by default with an ERROR that says so.

        The route verified the server's transport signature; ``content_sig`` must verify with ``creator_pub``.
        The wraps for our local members are kept (as for our users' shares) and each named local member gets the
        share, signed by us, ``from`` = that server. Our own clients use sender keys and ignore a server's key
        (docs/INTEROP.md); a client of that design can use it.
        """
        if not self._interop:
            raise BadFrame("PUBLIC_CHANNEL_KEY_SHARE from a server (a server-made group key, the standard's §9.3) "
                           "is accepted only under the interop profile (--interop); this network shares "
                           "public-channel keys user to user, carried in SERVER_DELIVER", msg_ref=frame.msg_ref)
        if frame.to not in (BROADCAST, self._out.server_id):
            raise BadFrame("a server's PUBLIC_CHANNEL_KEY_SHARE must be addressed to '*' or to us",
                           msg_ref=frame.msg_ref)
        shares = _checked_shares(frame)
        payload = frame.payload
        try:
            creator = self._out.public_key(crypto.normalize_public_key(payload["creator_pub"]))
        except BadKey as exc:
            raise BadFrame(f"creator_pub: {exc.detail}", msg_ref=frame.msg_ref) from None
        if not crypto.verify_key_share(creator, payload["content_sig"], shares, payload["creator_pub"]):
            raise InvalidSignature("content_sig does not verify with creator_pub", msg_ref=frame.msg_ref)
        if link.peer not in self._share_servers_logged:
            if len(self._share_servers_logged) < MAX_SHARE_SERVERS_LOGGED:
                self._share_servers_logged.add(link.peer)
            self._out.log.warning("interop: accepted variant '%s' from %s (link %d)", Variant.SERVER_KEY_SHARE,
                                  link.peer[:8], link.link_id)
        self._record_wraps(shares)
        named = {share["member"] for share in shares}
        members = [local for local in self._presence.local_users() if local.user_id in named]
        if members:
            text = self._out.make_at(FrameType.PUBLIC_CHANNEL_KEY_SHARE, frame.sender, BROADCAST, frame.ts,
                                     payload).to_wire()
            for local in members:
                self._out.send_text(self._links[local.link_id], text)

    def on_public_add(self, link: Link, frame: Envelope, now: int) -> None:
        """PUBLIC_CHANNEL_ADD from the linked server: members it gained."""
        added = [user_id for user_id in frame.payload["add"] if isinstance(user_id, str)]
        version, members = self._remote_members.get(link.peer, (0, set()))
        if_version = frame.payload.get("if_version")
        if isinstance(if_version, int) and if_version != version and link.peer in self._remote_members:
            # Out of step (a lost frame); the peer's next PUBLIC_CHANNEL_UPDATED snapshot repairs it.
            self._out.log.debug("PUBLIC_CHANNEL_ADD from %s for version %s, we hold %d", link.peer[:8], if_version,
                                version)
        new_version = if_version + 1 if isinstance(if_version, int) else version + 1
        self._remote_members[link.peer] = (new_version, members | set(added))

    def on_public_updated(self, link: Link, frame: Envelope, now: int) -> None:
        """PUBLIC_CHANNEL_UPDATED from the linked server: a snapshot of its members."""
        members = {item["member_id"] for item in frame.payload["wraps"]
                   if isinstance(item, dict) and isinstance(item.get("member_id"), str)}
        version = frame.payload.get("version")
        self._remote_members[link.peer] = (version if isinstance(version, int) else 0, members)

    # --- hooks -------------------------------------------------------------------------------------

    def member_joined(self, link: Link, local: Local, now: int) -> None:
        """``user_joined`` subscriber: a new local member, announced to every server."""
        self.version += 1
        self._out.emit(PublicChannelVersion(self.version))
        add = self._out.make(FrameType.PUBLIC_CHANNEL_ADD, BROADCAST, now,
                             {"add": [local.user_id], "if_version": self.version - 1})
        for server_link in self._links.server_links():
            self._out.send_text(server_link, add.to_wire())

    def member_left(self, local: Local, now: int) -> None:
        """``user_left`` subscriber: a member gone; every server gets our new snapshot."""
        self.version += 1
        self._out.emit(PublicChannelVersion(self.version))
        for server_link in self._links.server_links():
            self.send_snapshot(server_link, now)

    def send_snapshot(self, link: Link, now: int) -> None:
        """``link_up`` subscriber (and after a leave): our members and their latest wraps to one server."""
        wraps = [{"member_id": user_id, "wrapped_key": self._latest_wraps.get(user_id, "")}
                 for user_id in self._presence.local_ids]
        self._out.send(link, self._out.make(FrameType.PUBLIC_CHANNEL_UPDATED, link.peer, now,
                                            {"version": self.version, "wraps": wraps}))

    def server_lost(self, server_id: str, dropped: list[UserRecord], now: int) -> None:
        """``link_down`` subscriber: forget the members the dead server announced."""
        self._remote_members.pop(server_id, None)

    # --- helpers -----------------------------------------------------------------------------------

    def _deliver_locally(self, kind: FrameType, sender: str, ts: int, payload: Mapping[str, Any]) -> None:
        members = [local for local in self._presence.local_users() if local.user_id != sender]
        if not members:
            return
        to = BROADCAST if kind is FrameType.PUBLIC_CHANNEL_KEY_SHARE else PUBLIC_GROUP
        text = self._out.make_at(kind, sender, to, ts, payload).to_wire()
        for local in members:
            self._out.send_text(self._links[local.link_id], text)

    def _record_wraps(self, shares: list[Any]) -> None:
        for share in shares:
            member = share.get("member") if isinstance(share, dict) else None
            wrapped = share.get("wrapped_public_channel_key") if isinstance(share, dict) else None
            if isinstance(member, str) and self._presence.local(member) is not None and isinstance(wrapped, str):
                self._latest_wraps[member] = wrapped
                self._out.emit(PublicWrapStored(member, wrapped))


def check_sender_pub(sender: Local, sender_pub: str, frame: Envelope) -> None:
    """Raise BadFrame unless ``sender_pub`` is the key ``sender`` registered."""
    if crypto.normalize_public_key(sender_pub) != sender.pubkey:
        raise BadFrame("sender_pub is not the key this user registered", msg_ref=frame.msg_ref)


def _checked_shares(frame: Envelope) -> list[Any]:
    shares = frame.payload["shares"]
    if len(shares) > MAX_SHARES:
        raise BadFrame(f"a key share may carry at most {MAX_SHARES} shares", msg_ref=frame.msg_ref)
    for share in shares:
        if not (isinstance(share, dict) and isinstance(share.get("member"), str)
                and isinstance(share.get("wrapped_public_channel_key"), str)):
            raise BadFrame("each share needs 'member' and 'wrapped_public_channel_key' strings",
                           msg_ref=frame.msg_ref)
    return list(shares)
