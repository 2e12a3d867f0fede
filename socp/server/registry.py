"""The user registry (project extension, PROTOCOL.md §9): user id → key binding and password records; the
public part (id, key, meta, login name and its login home) replicated to every server with SERVER_USER_RECORDS;
password login (on the login home only: the password records never leave it) and DIRECTORY_QUERY.

Cost, for n servers and r registered users: a new or changed record is one frame (signed once) on each of the
n - 1 links, not relayed: O(n) frames per change. A new link gets the whole registry, ceil(r / 50) frames.
A password login costs one salted hash comparison, throttled per user id.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from socp import crypto
from socp.actions import RegistrationStored, UserRegistered
from socp.codec import b64url_decode, b64url_encode
from socp.envelope import BROADCAST, Envelope, FrameType
from socp.errors import AuthFailed, BadFrame, InvalidSignature, NameInUse, ProtocolError, RateLimited, UserNotFound
from socp.presence import Directory
from socp.ratelimit import TokenBucket
from socp.registry import (
    ELSEWHERE,
    KDF_ALG,
    LoginHint,
    LoginRecord,
    LoginThrottle,
    Registration,
    normalize_login,
    registration_from_wire,
)
from socp.server.config import (
    LOGIN_GRACE_MS,
    LOGIN_REQUEST_BURST,
    LOGIN_REQUESTS_PER_SECOND,
    LOGIN_SOURCES_TRACKED,
    RECORDS_PER_FRAME,
    ServerSettings,
)
from socp.server.hooks import Local
from socp.server.links import Link, LinkTable
from socp.server.outbox import Outbox
from socp.server.peers import ServerBook


class Registry:
    """Registrations by user id, logins by name, the login throttle, and peers that do not take records."""

    def __init__(self, settings: ServerSettings, out: Outbox, links: LinkTable, directory: Directory,
                 registrations: Iterable[Registration] = (), book: ServerBook | None = None) -> None:
        self._out = out
        self._book = book
        self._hints: dict[str, LoginHint] = {}
        """Login names whose password records live on another server (public, from SERVER_USER_RECORDS)."""
        self._links = links
        self._directory = directory
        self._registry: dict[str, Registration] = {}
        self._logins: dict[str, str] = {}
        for registration in registrations:
            self._registry[registration.user_id] = registration
        for registration in self._registry.values():
            if registration.login is not None:
                self._logins.setdefault(registration.login.login, registration.user_id)
        self._throttle = LoginThrottle(settings.login_max_failures, settings.login_window_ms)
        self._login_requests: dict[str, TokenBucket] = {}
        self._decoy_secret = crypto.derive_secret(out.key, "socp login decoy")
        self._no_records_peers: set[str] = set()

    def registration(self, user_id: str) -> Registration | None:
        """What the registry holds for ``user_id`` (any server's user), or None."""
        return self._registry.get(user_id)

    def __len__(self) -> int:
        return len(self._registry)

    # --- hooks -------------------------------------------------------------------------------------

    def bind_user(self, link: Link, local: Local, now: int) -> None:
        """``user_joined`` subscriber: record the user's key binding and profile, replicate a change."""
        registration = self._registry.get(local.user_id)
        meta = dict(local.meta)
        if registration is None or registration.meta != meta:
            registration = (Registration(local.user_id, local.pubkey, self._out.server_id, meta)
                            if registration is None else replace(registration, meta=meta))
            self._registry[local.user_id] = registration
            self.send_records([registration], now)
        self._out.emit(UserRegistered(local.user_id, local.pubkey, meta))

    def send_all(self, link: Link, now: int) -> None:
        """``link_up`` subscriber: the whole registry to a newly linked server."""
        self.send_records(list(self._registry.values()), now, [link])

    def peer_lacks(self, link: Link, frame_type: str, now: int) -> None:
        """``peer_lacks`` subscriber: stop sending records to an implementation without our extension."""
        if frame_type == FrameType.SERVER_USER_RECORDS.value:
            self._no_records_peers.add(link.peer)

    # --- frame handlers ----------------------------------------------------------------------------

    def on_register(self, link: Link, frame: Envelope, now: int) -> None:
        """USER_REGISTER: store the user's own password records (made and signed on the client)."""
        user_id = link.peer
        # An attached user always has a registration (bound at USER_HELLO, never rebound to another key).
        current = self._registry[user_id]
        record = LoginRecord.from_wire({**frame.payload, "login": normalize_login(frame.payload["login"])})
        if not record.verify(user_id, current.pubkey):
            raise InvalidSignature("USER_REGISTER content_sig does not verify with this user's key",
                                   msg_ref=frame.msg_ref)
        owner = self._logins.get(record.login)
        hint = self._hints.get(record.login)
        if owner is None and hint is not None and hint.user_id != user_id:
            owner = hint.user_id
        if owner is not None and owner != user_id:
            raise NameInUse(f"login {record.login!r} belongs to another user", msg_ref=frame.msg_ref, fatal=False)
        if current.login is not None and current.login.version > record.version:
            raise BadFrame("USER_REGISTER is older than the stored password record", msg_ref=frame.msg_ref)
        self._store_login(current, record)
        self._out.send(link, self._out.make(FrameType.ACK, user_id, now, {"msg_ref": frame.msg_ref}))
        self._out.log.info("user %s registered a password login", user_id[:8])
        self.send_records([self._registry[user_id]], now)

    def on_login_request(self, link: Link, frame: Envelope, now: int) -> None:
        """USER_LOGIN_REQUEST on a new connection: challenge it with the login's KDF parameters.

        A login nobody registered here gets a **decoy** challenge of the same shape (a user id and salt derived
        from the login under this server's secret, so the same on every try), answered by AUTH_FAILED like a
        wrong password: known and unknown logins look alike (issue 11, finding 7). The challenge is unsigned —
        the connection has proven nothing yet; the client pins the key it carries and the signed
        USER_LOGIN_GRANTED proves it — and requests are rate-limited per source address.
        """
        self._take_login_request(link, frame, now)
        login = normalize_login(frame.payload["login"])
        user_id = self._logins.get(login)
        registration = self._registry.get(user_id) if user_id else None
        if (registration is None or registration.login is None or user_id is None) and (
                hint := self._hints.get(login)) is not None:
            raise UserNotFound(f"login {login!r} {ELSEWHERE} {self._server_label(hint.home)}: "
                               "log in there (password records never leave a user's home server)",
                               msg_ref=frame.msg_ref)
        self._throttle.check(link.source, now)
        if registration is None or registration.login is None or user_id is None:
            user_id, kdf = self._decoy(login)
        else:
            kdf = dict(registration.login.pake_password["kdf"])
        link.login_user, link.login_nonce, link.login_granted = user_id, crypto.random_token(), False
        link.login_name = login
        link.pending_until = now + LOGIN_GRACE_MS
        self._out.send(link, Envelope(FrameType.USER_LOGIN_CHALLENGE, self._out.server_id, user_id, now, {
            "login": login, "user_id": user_id, "kdf": kdf, "nonce": link.login_nonce,
            "server_id": self._out.server_id, "server_pub": self._out.pubkey}))

    def on_login_proof(self, link: Link, frame: Envelope, now: int) -> None:
        """USER_LOGIN_PROOF: grant the login (the user's stored key material) or count a failure.

        The proof is the password verifier sealed (RSA-OAEP) to this server's key together with the challenge
        nonce, so a proof sniffed on the wire can neither be read nor replayed under another challenge. A decoy
        challenge is answered exactly like a wrong password. Failures are counted per source address.
        """
        if not link.login_nonce or link.login_granted or frame.payload["nonce"] != link.login_nonce:
            raise BadFrame("USER_LOGIN_PROOF without a matching USER_LOGIN_CHALLENGE on this connection",
                           msg_ref=frame.msg_ref)
        nonce = link.login_nonce
        self._throttle.check(link.source, now)
        registration = self._registry.get(link.login_user)
        login = registration.login if registration is not None else None
        verifier = crypto.open_login_proof(self._out.key, frame.payload["sealed_verifier"], nonce, self._out.server_id)
        if login is not None and login.login == link.login_name:
            pake = login.pake_password
            salt, expected = b64url_decode(pake["salt"]), b64url_decode(pake["verifier_hash"])
        else:
            salt, expected = self._decoy_secret[:16], self._decoy_secret  # same work, never matches
        if registration is None or login is None or not crypto.verifier_matches(verifier, salt, expected):
            self._throttle.failed(link.source, now)
            link.login_nonce = ""  # one proof per challenge
            self._out.log.info("failed password login for %r", link.login_name)
            raise AuthFailed(f"wrong password for {link.login_name}", msg_ref=frame.msg_ref)
        self._throttle.succeeded(link.source)
        link.login_granted = True
        self._out.send(link, self._out.make(FrameType.USER_LOGIN_GRANTED, registration.user_id, now, {
            "user_id": registration.user_id, "pubkey": registration.pubkey,
            "privkey_store": dict(login.privkey_store), "meta": dict(registration.meta)}))

    def _take_login_request(self, link: Link, frame: Envelope, now: int) -> None:
        """Rate-limit login requests per source address (each costs a challenge and, later, a decryption)."""
        bucket = self._login_requests.get(link.source)
        if bucket is None:
            if len(self._login_requests) >= LOGIN_SOURCES_TRACKED:
                self._login_requests.clear()
            bucket = self._login_requests[link.source] = TokenBucket(LOGIN_REQUESTS_PER_SECOND, LOGIN_REQUEST_BURST)
        if not bucket.take(now):
            raise RateLimited("too many login requests from your address; slow down", msg_ref=frame.msg_ref,
                              fatal=True)

    def _decoy(self, login: str) -> tuple[str, dict[str, Any]]:
        """The user id and KDF parameters a decoy challenge for ``login`` shows (stable, unguessable)."""
        digest = crypto.keyed_digest(self._decoy_secret, "user_id", login)
        user_id = str(uuid.UUID(bytes=digest[:16], version=4))
        salt = crypto.keyed_digest(self._decoy_secret, "salt", login)[:crypto.SALT_BYTES]
        return user_id, {"alg": KDF_ALG, "iterations": crypto.PBKDF2_MIN_ITERATIONS, "salt": b64url_encode(salt)}

    def on_directory_query(self, link: Link, frame: Envelope, now: int) -> None:
        """DIRECTORY_QUERY {user_id} or {login}: the registry's record, online or not, signed by this server."""
        user_id, login = frame.payload.get("user_id"), frame.payload.get("login")
        if isinstance(login, str) and not isinstance(user_id, str):
            name = normalize_login(login)
            user_id = self._logins.get(name) or (hint.user_id if (hint := self._hints.get(name)) else None)
        elif not isinstance(user_id, str):
            raise BadFrame("DIRECTORY_QUERY needs a 'user_id' or 'login' string", msg_ref=frame.msg_ref)
        registration = self._registry.get(user_id) if user_id else None
        if registration is None:
            wanted = user_id or login
            raise UserNotFound(f"no user {wanted} is registered (as far as this server knows)",
                               msg_ref=frame.msg_ref)
        location = self._directory.location(registration.user_id)
        record = self._directory.get(registration.user_id)
        meta = dict(record.meta) if record is not None else dict(registration.meta)
        self._out.send(link, self._out.make(FrameType.DIRECTORY_RESPONSE, link.peer, now, {
            "user_id": registration.user_id, "pubkey": registration.pubkey, "meta": meta,
            "home_server": registration.home_server, "login": self._login_name(registration),
            "online": location is not None, "server_id": location or "", "msg_ref": frame.msg_ref}))

    def on_user_records(self, link: Link, frame: Envelope, now: int) -> None:
        """SERVER_USER_RECORDS from the linked server: merge each record (a bad one is skipped, logged)."""
        records = frame.payload["records"]
        if len(records) > 10 * RECORDS_PER_FRAME:
            raise BadFrame(f"SERVER_USER_RECORDS carries more than {10 * RECORDS_PER_FRAME} records",
                           msg_ref=frame.msg_ref)
        for item in records:
            try:
                incoming, hint = registration_from_wire(item)
            except ProtocolError as exc:
                # One bad record must not cost the link (it would be re-sent forever).
                self._out.log.warning("ignoring a user record from %s: %s", link.peer[:8], exc.detail)
                continue
            if isinstance(item, dict) and "login" in item:
                self._out.log.warning("server %s sent password records of user %s; dropped unread (they never "
                                      "leave the user's home server)", link.peer[:8], incoming.user_id[:8])
            if self._merge(incoming, link.peer) and hint is not None:
                self._merge_hint(hint, link.peer)

    # --- helpers -----------------------------------------------------------------------------------

    def send_records(self, registrations: list[Registration], now: int, links: list[Link] | None = None) -> None:
        """Replicate registry records to ``links`` (default: every server link), in bounded batches."""
        targets = [link for link in (self._links.server_links() if links is None else links)
                   if link.peer not in self._no_records_peers]
        home = self._out.server_id
        for start in range(0, len(registrations), RECORDS_PER_FRAME):
            # Public data only (socp.registry): the login name and that we hold its records, never the records.
            batch = [registration.to_wire(login_home=home if self._logins.get(registration.login.login) ==
                                          registration.user_id else "") if registration.login is not None
                     else registration.to_wire() for registration in registrations[start:start + RECORDS_PER_FRAME]]
            frame = self._out.make(FrameType.SERVER_USER_RECORDS, BROADCAST, now, {"records": batch})
            for link in targets:
                self._out.send_text(link, frame.to_wire())

    def _store_login(self, current: Registration, record: LoginRecord) -> None:
        if current.login is not None and current.login.login != record.login:
            self._logins.pop(current.login.login, None)
        self._logins[record.login] = current.user_id
        updated = current.with_login(record)
        self._registry[current.user_id] = updated
        self._out.emit(RegistrationStored(updated))

    def _merge(self, incoming: Registration, source: str) -> bool:
        """Take a replicated (public) registration; False when it contradicts the key bound here."""
        current = self._registry.get(incoming.user_id)
        if current is None:
            self._registry[incoming.user_id] = incoming
            self._out.emit(RegistrationStored(incoming))
            return True
        if current.pubkey != incoming.pubkey:
            self._out.log.error("IMPERSONATION ATTEMPT: server %s sent user %s with key %s, bound here to %s; "
                                "ignored", source[:8], incoming.user_id[:8], crypto.key_fingerprint(incoming.pubkey),
                                crypto.key_fingerprint(current.pubkey))
            return False
        return True

    def _merge_hint(self, hint: LoginHint, source: str) -> None:
        """Remember where a login lives; a login registered here, or first claimed by another user, wins."""
        owner = self._logins.get(hint.login)
        known = self._hints.get(hint.login)
        if (owner is not None and owner != hint.user_id) or (known is not None and known.user_id != hint.user_id):
            self._out.log.warning("server %s says login %r belongs to user %s, but it belongs to another user; "
                                  "ignored", source[:8], hint.login, hint.user_id[:8])
            return
        if owner is None:
            self._hints[hint.login] = hint

    def _login_name(self, registration: Registration) -> str:
        if registration.login is not None:
            return registration.login.login
        return next((hint.login for hint in self._hints.values() if hint.user_id == registration.user_id), "")

    def _server_label(self, server_id: str) -> str:
        info = self._book.get(server_id) if self._book is not None else None
        return f"{server_id} ({info.host}:{info.port})" if info is not None and info.host else server_id
