"""The one place a server makes, signs and sends frames, closes links and reports faults and events.

Cost: the transport signature covers the whole envelope (type, from, to, ts, payload; WIRE §2), so every
distinct envelope costs one RSA-4096 signature, kept in a cache of :data:`SIGNATURE_CACHE_SIZE` entries.
Fan-outs therefore make **one frame** addressed to ``"*"`` (or ``"public"``) and send its text on every link
(:meth:`Outbox.send_text`): adverts pushed to every local user, heartbeats, public-channel frames and adds stay
one signature each. ERROR frames (:meth:`Outbox.fault`) are signed one by one, and only on links whose peer
proved who it is (a server or user link): a connection that has proven nothing gets an **unsigned** ERROR,
counted in :attr:`Outbox.unsigned_errors`, so that junk from strangers costs no private-key operation. Every
send on a link marks it ``carried``, which spares it the next HEARTBEAT (see :mod:`socp.server.mesh`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from socp import crypto
from socp import envelope as env
from socp.actions import Action, CloseLink, Dial, Event, LinkId, PeerFault, Send
from socp.codec import accepted_payload_forms, dumps
from socp.envelope import Envelope, FrameType
from socp.errors import ProtocolError
from socp.server.config import PUBKEY_CACHE_SIZE, SIGNATURE_CACHE_MAX_BYTES, SIGNATURE_CACHE_SIZE
from socp.server.links import Link, LinkRole

logger = logging.getLogger("socp.server")


class Outbox:
    """This server's identity (id, key) and its queues of actions and events.

    Components never append to the queues themselves: they call :meth:`send`, :meth:`close`, :meth:`dial`,
    :meth:`emit` or :meth:`fault`, so signing, the closing rule (nothing is sent on a closing link) and
    logging live here.
    """

    def __init__(self, server_id: str, key: crypto.PrivateKey, *, legacy_interop: bool = False) -> None:
        self.server_id = server_id
        self.key = key
        self.legacy_interop = legacy_interop
        """Accept payload-only transport signatures too (WIRE §2 legacy-interop switch; never by default)."""
        self.signatures = 0
        """RSA signatures made for frames of ours (cache misses of :meth:`sign`)."""
        self.unsigned_errors = 0
        """ERRORs sent unsigned to connections that had not proven who they are (no signature spent)."""
        self.pubkey = crypto.encode_public_key(key.public_key())
        self.log = logging.LoggerAdapter(logger, {"node": server_id[:8]})
        self._actions: list[Action] = []
        self._events: list[Event] = []
        self._signatures: dict[bytes, str] = {}
        self._pubkeys: dict[str, crypto.PublicKey] = {}

    def rename(self, server_id: str) -> None:
        """Adopt the id an introducer assigned (frames made from now on carry it)."""
        self.server_id = server_id
        self.log = logging.LoggerAdapter(logger, {"node": server_id[:8]})

    # --- making frames -----------------------------------------------------------------------------

    def make(self, frame_type: FrameType, to: str, now: int, payload: Mapping[str, Any]) -> Envelope:
        """A frame from this server, transport-signed (through the signature cache)."""
        return self.make_at(frame_type, self.server_id, to, now, payload)

    def make_at(self, frame_type: FrameType, sender: str, to: str, ts: int, payload: Mapping[str, Any]) -> Envelope:
        """A frame with any ``from`` and ``ts`` (a user frame delivered under its own type), signed by us."""
        return self.sign(Envelope(frame_type, sender, to, int(ts), dict(payload)))

    def sign(self, frame: Envelope) -> Envelope:
        """``frame`` with our transport signature over its canonical envelope, computed once per distinct
        envelope (a fan-out of one frame to many links, a heartbeat ``to: "*"``, costs one signature)."""
        signed_bytes = frame.signed_bytes
        if len(signed_bytes) > SIGNATURE_CACHE_MAX_BYTES:
            # A bulk frame (a file chunk) is signed once anyway; caching it would keep megabytes per entry.
            self.signatures += 1
            return replace(frame, sig=crypto.sign(self.key, signed_bytes))
        return replace(frame, sig=self._cached_signature(signed_bytes))

    def _cached_signature(self, signed: bytes) -> str:
        """Our signature over ``signed``, made once while it stays in the (bounded) signature cache."""
        signature = self._signatures.get(signed)
        if signature is None:
            signature = crypto.sign(self.key, signed)
            self.signatures += 1
            if len(self._signatures) >= SIGNATURE_CACHE_SIZE:
                self._signatures.clear()
            self._signatures[signed] = signature
        return signature

    def verify(self, frame: Envelope, key_text: str, link: Link | None = None) -> bool:
        """True when ``frame`` carries a transport signature by ``key_text`` (the canonical envelope; a
        payload-only signature too under the legacy-interop switch).

        A peer on ``link`` seen signing in a payload-only form gets our frames signed in that form too from
        then on (issue 14: some implementations refuse our envelope signatures); logged once per link.
        """
        key = self.public_key(key_text)
        if frame.verify(key):
            return True
        if not self.legacy_interop:
            return False
        payload = frame.wire_payload or frame.payload
        if link is not None and link.legacy_form is not None and frame.sig and crypto.verify(
                key, list(accepted_payload_forms(payload))[link.legacy_form], frame.sig):
            # The form already seen on this link covers it. Checked first: a payload whose forms are the same
            # bytes (a HEARTBEAT's {}) matches every form, and must not switch the link to the first one.
            return True
        form = crypto.payload_form_index(key, payload, frame.sig)
        if form is None:
            return False
        if link is not None and link.legacy_form != form:
            link.legacy_form = form
            self.log.warning("interop: %s signs payload-only (form %d); signing toward it in that form",
                             (link.peer or frame.sender)[:8], form)
        return True

    def _legacy_text(self, text: str, form: int) -> str:
        """``text`` (a frame we signed) with its ``sig`` replaced by our payload-only signature in ``form``."""
        frame: dict[str, Any] = json.loads(text)
        frame["sig"] = self._cached_signature(list(accepted_payload_forms(frame["payload"]))[form])
        return dumps(frame, separators=(",", ":"), ensure_ascii=False)

    def public_key(self, key_text: str) -> crypto.PublicKey:
        """``key_text`` decoded, from a bounded cache (verifying the same keys again and again is common)."""
        key = self._pubkeys.get(key_text)
        if key is None:
            key = crypto.decode_public_key(key_text)
            if len(self._pubkeys) > PUBKEY_CACHE_SIZE:
                self._pubkeys.clear()
            self._pubkeys[key_text] = key
        return key

    # --- actions and events ------------------------------------------------------------------------

    def send(self, link: Link, frame: Envelope) -> None:
        """Queue ``frame`` on ``link`` (logged at DEBUG with the ``>`` prefix)."""
        if logger.isEnabledFor(logging.DEBUG):
            self.log.debug("> %s %s on link %d", frame.type, frame.msg_ref, link.link_id)
        self.send_text(link, frame.to_wire())

    def send_text(self, link: Link, text: str, *, proves_life: bool = True) -> None:
        """Queue already-serialised ``text`` on ``link`` (one frame text shared by many links).

        ``proves_life``: the peer will verify the frame against our pinned key, so it keeps the link alive
        at the far end and this interval's HEARTBEAT on the link can be skipped (False for a frame we only
        relay, e.g. another server's self-signed SERVER_ANNOUNCE).
        """
        if not link.closing:
            if link.legacy_form is not None and proves_life:
                text = self._legacy_text(text, link.legacy_form)
            self._actions.append(Send(link.link_id, text))
            if proves_life:
                link.carried = True

    def close(self, link: Link, reason: str, *, again: bool = False) -> None:
        """Close ``link`` once (after what was queued on it); ``again`` asks even if it is already closing."""
        if again or not link.closing:
            link.closing = True
            self._actions.append(CloseLink(link.link_id, reason))

    def dial(self, link_id: LinkId, host: str, port: int) -> None:
        """Ask the shell to connect ``link_id`` to ``ws://host:port``."""
        self._actions.append(Dial(link_id, host, port))

    def emit(self, event: Event) -> None:
        """Report ``event`` to the shell."""
        self._events.append(event)

    def fault(self, link: Link, exc: ProtocolError, now: int, extra: Mapping[str, Any] | None = None) -> None:
        """Answer a refused frame with an ERROR (closing the link when ``exc.fatal``) and report it.

        ``extra``: more payload fields for the ERROR (e.g. the ``server_id`` a misaddressed USER_HELLO needs).
        """
        peer = link.peer or f"link {link.link_id}"
        self._events.append(PeerFault(link.link_id, peer, exc.code.value, exc.detail, exc.fatal))
        self.log.info("refused frame from %s: %s%s", peer[:8] if link.peer else peer, exc,
                      " (closing)" if exc.fatal else "")
        to = link.peer or "*"
        # A connection that has not proven who it is gets no signature of ours (CPU denial of service).
        proven = link.role in (LinkRole.SERVER, LinkRole.USER)
        if not proven:
            self.unsigned_errors += 1
        error = env.error_from_exception(self.server_id, to, now, exc, None)
        if extra:
            error = replace(error, payload={**error.payload, **extra})
        self.send(link, self.sign(error) if proven else error)
        if exc.fatal:
            self.close(link, f"{exc.code}: {exc.detail}")

    def take_actions(self) -> list[Action]:
        """Actions queued since the last call, in order."""
        actions, self._actions = self._actions, []
        return actions

    def take_events(self) -> list[Event]:
        """Events queued since the last call, in order."""
        events, self._events = self._events, []
        return events
