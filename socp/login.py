"""Password login on the client side, as a sans-I/O state machine (project extension, PROTOCOL.md §9).

Registration (the user already holds its key and is welcomed)::

    record = make_login_record(key, user_id, "alice", password, version=now)   # slow: ~0.2 s of PBKDF2
    send(register_frame(record, user_id, server_id, now))                      # USER_REGISTER; answered by ACK

Login from an empty key directory (a fresh connection, before any USER_HELLO)::

    login = LoginSession("alice", password)
    send(login.request(now))                     # USER_LOGIN_REQUEST
    login.receive_text(challenge, now)           # -> [LoginChallenged]  (server key pinned from here on)
    send(login.prove(now))                       # USER_LOGIN_PROOF; slow: derives the keys
    login.receive_text(granted, now)             # -> [LoginGranted(user_id, key, ...)]
    session = UserSession(user_id, key, meta, login.server_pub, login_nonce=login.nonce)
    send(session.hello(now))                     # signed by the recovered key, over the server's nonce

The password never leaves this module: the server receives only the verifier (a second, independent
password-derived key) and the record the user signed. States::

    START --request--> REQUESTED --CHALLENGE--> CHALLENGED --prove--> PROVING --GRANTED--> GRANTED
      any state --ERROR / bad answer--> FAILED   (terminal)
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from socp import crypto
from socp import envelope as env
from socp.codec import b64url_decode, b64url_encode
from socp.envelope import BROADCAST, FrameType
from socp.errors import BadFrame, BadKey, CryptoError, ProtocolError, SocpError
from socp.presence import meta_of
from socp.registry import KDF_ALG, LoginRecord, check_kdf, normalize_login, registration_content
from socp.user.common import OutboundFrame

logger = logging.getLogger("socp.login")


def make_login_record(key: crypto.PrivateKey, user_id: str, login: str, password: str, version: int, *,
                      iterations: int = crypto.PBKDF2_MIN_ITERATIONS) -> LoginRecord:
    """Seal ``key`` under ``password`` and build the signed records a server stores (slow on purpose).

    Raises :class:`BadFrame` for an invalid login name and :class:`CryptoError` for an empty password or
    iterations out of range.
    """
    if not password:
        raise CryptoError("the password must not be empty")
    login = normalize_login(login)
    salt = crypto.new_salt()
    kdf = {"alg": KDF_ALG, "iterations": iterations, "salt": b64url_encode(salt)}
    sealing_key, verifier = crypto.derive_password_keys(password, salt, iterations)
    verifier_salt = crypto.new_salt()
    store = {"v": 1, "kdf": kdf, "cipher": "AES-256-GCM",
             "sealed": crypto.seal_private_key(key, sealing_key, user_id)}
    pake = {"v": 1, "kdf": kdf, "hash": "SHA-256", "salt": b64url_encode(verifier_salt),
            "verifier_hash": b64url_encode(crypto.verifier_hash(verifier, verifier_salt))}
    pubkey = crypto.encode_public_key(key.public_key())
    signature = crypto.sign(key, registration_content(user_id, login, pubkey, store, pake, version))
    return LoginRecord(login, store, pake, version, signature)


def register_frame(record: LoginRecord, user_id: str, server_id: str, now: int) -> OutboundFrame:
    """The USER_REGISTER frame carrying ``record``; the server answers ``ACK`` naming its ``msg_ref``."""
    frame = env.make(FrameType.USER_REGISTER, user_id, server_id, now, record.to_wire())
    return OutboundFrame(frame.to_wire(), frame.msg_ref)


class LoginState(enum.Enum):
    """Where a login stands."""

    START = "not started"
    REQUESTED = "awaiting USER_LOGIN_CHALLENGE"
    CHALLENGED = "challenged; the proof is next"
    PROVING = "awaiting USER_LOGIN_GRANTED"
    GRANTED = "granted"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class LoginChallenged:
    """The server knows the login and sent its challenge; :meth:`LoginSession.prove` is next."""

    user_id: str
    server_id: str
    server_pub: str


@dataclass(frozen=True, slots=True)
class LoginGranted:
    """The password was right: the private key is recovered and matches the registered key."""

    user_id: str
    key: crypto.PrivateKey = field(repr=False)
    meta: Mapping[str, Any]
    server_id: str
    server_pub: str


@dataclass(frozen=True, slots=True)
class LoginRefused:
    """The login failed; ``code`` is the server's ERROR code, or ``LOCAL`` for a check on this side."""

    code: str
    detail: str


LoginEvent = LoginChallenged | LoginGranted | LoginRefused


class LoginSession:
    """One password login; see the module docstring. ``expected_server_pub`` pins the server in advance."""

    def __init__(self, login: str, password: str, expected_server_pub: str | None = None) -> None:
        self.login = normalize_login(login)
        self._password: str | None = password
        self._expected_pub = (crypto.normalize_public_key(expected_server_pub)
                              if expected_server_pub is not None else None)
        self.state = LoginState.START
        self.user_id: str | None = None
        self.server_id: str | None = None
        self.server_pub: str | None = None
        self.nonce: str | None = None
        self._server_key: crypto.PublicKey | None = None
        self._kdf: dict[str, Any] | None = None
        self._sealing_key: bytes | None = None

    def request(self, now: int) -> str:
        """The USER_LOGIN_REQUEST frame (``from`` is ``*``: who we are is what we ask)."""
        self._expect(LoginState.START, "send USER_LOGIN_REQUEST")
        self.state = LoginState.REQUESTED
        return env.make(FrameType.USER_LOGIN_REQUEST, BROADCAST, BROADCAST, now, {"login": self.login}).to_wire()

    def prove(self, now: int) -> str:
        """The USER_LOGIN_PROOF frame: derives the keys from the password (slow: run it off the event loop)."""
        self._expect(LoginState.CHALLENGED, "send USER_LOGIN_PROOF")
        assert self._kdf is not None and self._password is not None and self.nonce is not None
        sealing_key, verifier = crypto.derive_password_keys(self._password, b64url_decode(self._kdf["salt"]),
                                                            self._kdf["iterations"])
        self._password = None  # not needed any more; do not keep it around
        self._sealing_key = sealing_key
        self.state = LoginState.PROVING
        assert self._server_key is not None and self.server_id is not None
        # Sealed to the challenging server with its nonce: a sniffed proof can be neither read nor replayed.
        payload = {"login": self.login, "nonce": self.nonce,
                   "sealed_verifier": crypto.seal_login_proof(self._server_key, self.nonce, self.server_id, verifier)}
        return env.make(FrameType.USER_LOGIN_PROOF, self.user_id or BROADCAST, self.server_id or BROADCAST, now,
                        payload).to_wire()

    def receive_text(self, text: str | bytes, now: int) -> list[LoginEvent]:
        """Process one frame from the server; never raises for what the server sends."""
        if self.state in (LoginState.GRANTED, LoginState.FAILED):
            return []
        try:
            frame = env.parse(text)
        except ProtocolError as exc:
            return [self._fail("LOCAL", f"malformed frame from the server: {exc.detail}")]
        if frame.type is FrameType.ERROR:
            detail = frame.payload.get("detail")
            return [self._fail(frame.payload["code"], detail if isinstance(detail, str) else "")]
        try:
            if self.state is LoginState.REQUESTED and frame.type is FrameType.USER_LOGIN_CHALLENGE:
                return [self._on_challenge(frame)]
            if self.state is LoginState.PROVING and frame.type is FrameType.USER_LOGIN_GRANTED:
                return [self._on_granted(frame)]
        except (SocpError, ValueError) as exc:
            return [self._fail("LOCAL", str(exc.detail if isinstance(exc, ProtocolError) else exc))]
        logger.debug("ignoring %s during login (%s)", frame.type, self.state.value)
        return []

    def _on_challenge(self, frame: env.Envelope) -> LoginEvent:
        payload = frame.payload
        try:
            key_text = crypto.normalize_public_key(payload["server_pub"])
        except BadKey as exc:
            return self._fail("LOCAL", f"the server's challenge carries an unusable key ({exc.detail})")
        key = crypto.decode_public_key(key_text)
        # The challenge may come unsigned (the server spends no signature on a connection that has proven
        # nothing); the key it carries is pinned here and USER_LOGIN_GRANTED must be signed with it.
        if frame.sig and not frame.verify(key):
            return self._fail("LOCAL", "the server's challenge is not signed by the key it carries")
        if self._expected_pub is not None and key_text != self._expected_pub:
            return self._fail("BAD_KEY", f"the server presented key {crypto.key_fingerprint(key_text)}, expected "
                                         f"{crypto.key_fingerprint(self._expected_pub)}")
        if payload["login"] != self.login or not env.is_uuid(payload["user_id"]):
            return self._fail("LOCAL", "the server's challenge is for another login")
        try:
            # A hostile server could ask for a cheap derivation and brute-force the verifier we would send.
            self._kdf = check_kdf(payload["kdf"])
        except BadFrame as exc:
            return self._fail("LOCAL", f"refusing the server's password parameters: {exc.detail}")
        self.user_id, self.server_id, self.nonce = payload["user_id"], payload["server_id"], payload["nonce"]
        self.server_pub, self._server_key = key_text, key
        self.state = LoginState.CHALLENGED
        return LoginChallenged(payload["user_id"], payload["server_id"], key_text)

    def _on_granted(self, frame: env.Envelope) -> LoginEvent:
        assert self._server_key is not None and self._sealing_key is not None and self.user_id is not None
        if not frame.verify(self._server_key):
            return self._fail("LOCAL", "USER_LOGIN_GRANTED is not signed by the server that challenged us")
        payload = frame.payload
        if payload["user_id"] != self.user_id:
            return self._fail("LOCAL", "USER_LOGIN_GRANTED names another user")
        store = payload["privkey_store"]
        if check_kdf(store.get("kdf")) != self._kdf:
            return self._fail("LOCAL", "privkey_store was sealed with other parameters than the challenge's")
        sealed = store.get("sealed")
        try:
            key = crypto.open_private_key(sealed if isinstance(sealed, str) else "", self._sealing_key,
                                          self.user_id)
        except CryptoError as exc:
            return self._fail("LOCAL", f"cannot open the stored private key: {exc}")
        if crypto.encode_public_key(key.public_key()) != crypto.normalize_public_key(payload["pubkey"]):
            return self._fail("LOCAL", "the stored private key does not match the registered public key")
        self._sealing_key = None
        self.state = LoginState.GRANTED
        assert self.server_id is not None and self.server_pub is not None
        return LoginGranted(self.user_id, key, meta_of(payload), self.server_id, self.server_pub)

    def _fail(self, code: str, detail: str) -> LoginRefused:
        self.state = LoginState.FAILED
        self._password = None
        self._sealing_key = None
        return LoginRefused(code, detail)

    def _expect(self, state: LoginState, what: str) -> None:
        if self.state is not state:
            raise SocpError(f"cannot {what}: login is {self.state.value}, expected {state.value}")
