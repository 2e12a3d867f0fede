"""The network-wide user registry and password-login records (WIRE §6; project extension, PROTOCOL.md §9).

Every server keeps a :class:`Registration` for each user id it has heard of: the key the id is bound to
(first binding wins), where the user registered, its decorative ``meta``, and — when the user set a
password — its login name with the ``privkey_store`` and ``pake_password`` records. Servers replicate the
**public** part of registrations to each other (``SERVER_USER_RECORDS``: id, key, meta, and the login name with
the server that holds its password records), so a key can be looked up while its owner is offline. The
password records never leave the server the user registered them on (its login home): a stranger that joins
the mesh must not get material for an offline dictionary attack. A password login elsewhere is refused with
an error naming the login home (PROTOCOL.md §9.2).

The password records are made **on the client** and signed by the user's key (``login_sig``), so a server
can neither read the private key nor forge or alter a record; it can only keep or drop one:

- ``privkey_store`` = ``{"v": 1, "kdf": KDF, "cipher": "AES-256-GCM", "sealed": b64url}`` — the PKCS#8
  private key sealed with a key derived from the password;
- ``pake_password`` = ``{"v": 1, "kdf": KDF, "hash": "SHA-256", "salt": b64url, "verifier_hash": b64url}``
  — SHA-256(salt ‖ verifier), where the verifier is a second, independent password-derived key;
- ``KDF`` = ``{"alg": "PBKDF2-SHA256", "iterations": n >= 600000, "salt": b64url}``.

Nothing here does I/O; the rate limiter takes ``now`` like everything else in :mod:`socp`.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from socp import crypto
from socp.codec import b64url_decode, canonical_json
from socp.errors import BadFrame, RateLimited
from socp.settings import DEFAULT_LOGIN_ATTEMPTS, LOGIN_WINDOW_MS

ELSEWHERE = "is registered on its home server"
"""Words of the USER_NOT_FOUND a server answers for a login whose password records live on another server
(clients recognise it: the login exists, but not here)."""
KDF_ALG = "PBKDF2-SHA256"
"""The only password derivation this project emits and accepts."""

LOGIN_NAME = re.compile(r"[\w][\w.-]{0,63}")
"""Login names: 1-64 letters, digits, ``.``, ``_``, ``-``, not starting with ``.`` or ``-`` (as key file names)."""

MAX_RECORD_FIELD = 16_384
"""Longest string a password record may hold (a sealed RSA-4096 key is about 3 200 characters)."""


def normalize_login(name: object) -> str:
    """The canonical (case-folded) form of a login name; raises :class:`BadFrame` for an invalid one."""
    if not isinstance(name, str) or not LOGIN_NAME.fullmatch(name):
        raise BadFrame("login name must be 1-64 letters, digits, '.', '_' or '-', not starting with '.' or '-'")
    return name.casefold()


def check_kdf(kdf: object) -> dict[str, Any]:
    """Validate a KDF description; returns it as a plain dict. Raises :class:`BadFrame`."""
    if not isinstance(kdf, Mapping):
        raise BadFrame("kdf must be an object")
    iterations, salt = kdf.get("iterations"), kdf.get("salt")
    if kdf.get("alg") != KDF_ALG:
        raise BadFrame(f"kdf alg must be {KDF_ALG!r}")
    if (not isinstance(iterations, int) or isinstance(iterations, bool)
            or not crypto.PBKDF2_MIN_ITERATIONS <= iterations <= crypto.PBKDF2_MAX_ITERATIONS):
        raise BadFrame(f"kdf iterations must be an integer in {crypto.PBKDF2_MIN_ITERATIONS}.."
                       f"{crypto.PBKDF2_MAX_ITERATIONS}")
    if not isinstance(salt, str) or not 8 <= len(b64url_decode(salt)) <= 64:
        raise BadFrame("kdf salt must be base64url of 8..64 bytes")
    return {"alg": KDF_ALG, "iterations": iterations, "salt": salt}


def check_privkey_store(store: object) -> dict[str, Any]:
    """Validate the shape of a ``privkey_store`` record (not its content, which only the user can open)."""
    if not isinstance(store, Mapping):
        raise BadFrame("privkey_store must be an object")
    sealed = store.get("sealed")
    if store.get("v") != 1 or store.get("cipher") != "AES-256-GCM":
        raise BadFrame("privkey_store must be version 1 with cipher AES-256-GCM")
    if not isinstance(sealed, str) or not 0 < len(sealed) <= MAX_RECORD_FIELD:
        raise BadFrame("privkey_store.sealed must be a base64url string")
    b64url_decode(sealed)
    return {"v": 1, "kdf": check_kdf(store.get("kdf")), "cipher": "AES-256-GCM", "sealed": sealed}


def check_pake_password(record: object) -> dict[str, Any]:
    """Validate the shape of a ``pake_password`` record."""
    if not isinstance(record, Mapping):
        raise BadFrame("pake_password must be an object")
    if record.get("v") != 1 or record.get("hash") != "SHA-256":
        raise BadFrame("pake_password must be version 1 with hash SHA-256")
    salt, digest = record.get("salt"), record.get("verifier_hash")
    if not isinstance(salt, str) or not 8 <= len(b64url_decode(salt)) <= 64:
        raise BadFrame("pake_password.salt must be base64url of 8..64 bytes")
    if not isinstance(digest, str) or len(b64url_decode(digest)) != 32:
        raise BadFrame("pake_password.verifier_hash must be base64url of 32 bytes")
    return {"v": 1, "kdf": check_kdf(record.get("kdf")), "hash": "SHA-256", "salt": salt, "verifier_hash": digest}


def registration_content(user_id: str, login: str, pubkey: str, privkey_store: Mapping[str, Any],
                         pake_password: Mapping[str, Any], version: int) -> bytes:
    """The bytes a user signs to register (or change) its password records: canonical JSON of them all."""
    return canonical_json({"user_id": user_id, "login": login, "pubkey": pubkey, "privkey_store": privkey_store,
                           "pake_password": pake_password, "version": version})


@dataclass(frozen=True, slots=True)
class LoginRecord:
    """A user's password records, as the user signed them."""

    login: str
    """Case-folded login name."""
    privkey_store: Mapping[str, Any] = field(repr=False)
    pake_password: Mapping[str, Any] = field(repr=False)
    version: int
    """Chosen by the client (its clock at registration); the highest version wins everywhere."""
    content_sig: str = field(repr=False)

    def verify(self, user_id: str, pubkey: str) -> bool:
        """True when ``content_sig`` is the user's signature over these records."""
        content = registration_content(user_id, self.login, pubkey, self.privkey_store, self.pake_password,
                                       self.version)
        return crypto.verify(crypto.decode_public_key(pubkey), content, self.content_sig)

    def to_wire(self) -> dict[str, Any]:
        """The record as carried in USER_REGISTER and SERVER_USER_RECORDS."""
        return {"login": self.login, "privkey_store": dict(self.privkey_store),
                "pake_password": dict(self.pake_password), "version": self.version, "content_sig": self.content_sig}

    @classmethod
    def from_wire(cls, item: Mapping[str, Any]) -> LoginRecord:
        """Parse and shape-check a record (the signature is checked by :meth:`verify`); raises BadFrame."""
        version, content_sig = item.get("version"), item.get("content_sig")
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise BadFrame("login record version must be a non-negative integer")
        if not isinstance(content_sig, str) or not content_sig:
            raise BadFrame("login record needs a content_sig")
        store = check_privkey_store(item.get("privkey_store"))
        pake = check_pake_password(item.get("pake_password"))
        if store["kdf"] != pake["kdf"]:
            raise BadFrame("privkey_store and pake_password must use the same kdf")
        login = item.get("login")
        if not isinstance(login, str) or normalize_login(login) != login:
            raise BadFrame("login must be a case-folded login name")
        return cls(login, store, pake, version, content_sig)


@dataclass(frozen=True, slots=True)
class Registration:
    """One user id as the registry knows it."""

    user_id: str
    pubkey: str
    """The key the id is bound to, for good (canonical encoding)."""
    home_server: str
    """The server that registered the id first (informational)."""
    meta: Mapping[str, Any] = field(default_factory=dict)
    login: LoginRecord | None = None
    """Password records, when the user set a password."""

    def to_wire(self, login_home: str = "") -> dict[str, Any]:
        """A SERVER_USER_RECORDS entry: public data only. ``login_home``: the server that holds this user's
        password records (the sender, when it does); then the login name travels with it, never the records."""
        item: dict[str, Any] = {"user_id": self.user_id, "pubkey": self.pubkey, "home_server": self.home_server,
                                "meta": dict(self.meta)}
        if self.login is not None and login_home:
            item["login_name"] = self.login.login
            item["login_home"] = login_home
        return item

    def with_login(self, login: LoginRecord) -> Registration:
        """A copy carrying ``login``."""
        return replace(self, login=login)


@dataclass(frozen=True, slots=True)
class LoginHint:
    """Where another server says a login name's password records live (public, unverified: it only ever
    names the server to log in on, and never overrides a login registered here)."""

    login: str
    user_id: str
    home: str


def registration_from_wire(item: object) -> tuple[Registration, LoginHint | None]:
    """Parse a SERVER_USER_RECORDS entry; raises :class:`BadFrame` or :class:`socp.errors.BadKey`.

    Only public data is taken: password records (``login``, sent by older versions) are dropped unread, so
    that a server never stores another server's users' verifiers or sealed keys.
    """
    if not isinstance(item, Mapping):
        raise BadFrame("SERVER_USER_RECORDS entries must be objects")
    user_id, home, meta = item.get("user_id"), item.get("home_server"), item.get("meta")
    if not isinstance(user_id, str) or not isinstance(home, str):
        raise BadFrame("SERVER_USER_RECORDS entry needs user_id and home_server strings")
    pubkey = crypto.normalize_public_key(item.get("pubkey"))
    hint = None
    login_name, login_home = item.get("login_name"), item.get("login_home")
    if login_name is not None or login_home is not None:
        if not isinstance(login_home, str) or not login_home:
            raise BadFrame("SERVER_USER_RECORDS login_home must name a server")
        hint = LoginHint(normalize_login(login_name), user_id, login_home)
    return Registration(user_id, pubkey, home, dict(meta) if isinstance(meta, Mapping) else {}), hint


class LoginThrottle:
    """Failed password logins per **source** (the address connections come from), with a doubling backoff.

    ``max_failures`` failures from one source within ``window_ms`` block that source for ``window_ms``; each
    further block in a row doubles (capped at ``max_backoff_ms``). The throttle never keys on the account:
    strangers guessing alice's password slow down themselves, never alice logging in from elsewhere (issue 11,
    finding 7). A success from the source clears its record. Bounded memory: ``max_sources`` entries.
    """

    def __init__(self, max_failures: int = DEFAULT_LOGIN_ATTEMPTS, window_ms: int = LOGIN_WINDOW_MS,
                 max_sources: int = 100_000, max_backoff_ms: int = 3_600_000) -> None:
        self.max_failures = max_failures
        self.window_ms = window_ms
        self.max_sources = max_sources
        self.max_backoff_ms = max_backoff_ms
        self._failures: dict[str, deque[int]] = {}
        self._blocked: dict[str, tuple[int, int]] = {}
        """source → (blocked until, blocks in a row)."""

    def check(self, source: str, now: int) -> None:
        """Raise :class:`RateLimited` while ``source`` is blocked."""
        blocked = self._blocked.get(source)
        if blocked is not None and now < blocked[0]:
            wait_s = max(1, (blocked[0] - now + 999) // 1000)
            raise RateLimited(f"too many failed logins from your address: try again in {wait_s} s")

    def failed(self, source: str, now: int) -> None:
        """Record a failed attempt from ``source``; the one that reaches the limit starts a block."""
        if source not in self._failures and len(self._failures) >= self.max_sources:
            # Bounded memory: forget the source whose last failure is oldest.
            oldest = min(self._failures, key=lambda key: self._failures[key][-1])
            del self._failures[oldest]
        failures = self._failures.setdefault(source, deque())
        while failures and failures[0] <= now - self.window_ms:
            failures.popleft()
        failures.append(now)
        if len(failures) < self.max_failures:
            return
        failures.clear()
        until, strikes = self._blocked.get(source, (0, 0))
        if now > until + self.max_backoff_ms:
            strikes = 0  # quiet for long enough: start over
        backoff = min(self.max_backoff_ms, self.window_ms * 2 ** min(strikes, 20))
        if len(self._blocked) >= self.max_sources and source not in self._blocked:
            del self._blocked[min(self._blocked, key=lambda key: self._blocked[key][0])]
        self._blocked[source] = (now + backoff, strikes + 1)

    def succeeded(self, source: str) -> None:
        """Forget the source's failures and blocks."""
        self._failures.pop(source, None)
        self._blocked.pop(source, None)
