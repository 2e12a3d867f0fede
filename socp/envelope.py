"""The SOCP envelope (WIRE §2): parsing and validation at the edge, building and signing on the way out."""

from __future__ import annotations

import enum
import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from socp import crypto
from socp import interop as interop_profile
from socp.codec import canonical_envelope, canonical_json, dumps
from socp.errors import BadFrame, ErrorCode, ProtocolError, TooLarge, UnknownType
from socp.settings import DEFAULT_MAX_FRAME_BYTES

BROADCAST = "*"
PUBLIC_GROUP = "public"


class FrameType(enum.StrEnum):
    """Every frame type SOCP v1.3 defines (case-sensitive on the wire), then this project's extensions.

    The extensions (password login, user registry, directory lookups; docs/PROTOCOL.md §9) are only ever
    sent to peers that speak them: our own clients, and servers that announced themselves as ours.
    """

    SERVER_HELLO_JOIN = "SERVER_HELLO_JOIN"
    SERVER_WELCOME = "SERVER_WELCOME"
    SERVER_ANNOUNCE = "SERVER_ANNOUNCE"
    SERVER_HELLO_LINK = "SERVER_HELLO_LINK"
    USER_ADVERTISE = "USER_ADVERTISE"
    USER_REMOVE = "USER_REMOVE"
    SERVER_PRESENCE_SYNC = "SERVER_PRESENCE_SYNC"
    SERVER_DELIVER = "SERVER_DELIVER"
    HEARTBEAT = "HEARTBEAT"
    USER_HELLO = "USER_HELLO"
    LIST_REQUEST = "LIST_REQUEST"
    LIST_RESPONSE = "LIST_RESPONSE"
    MSG_DIRECT = "MSG_DIRECT"
    USER_DELIVER = "USER_DELIVER"
    MSG_PUBLIC_CHANNEL = "MSG_PUBLIC_CHANNEL"
    PUBLIC_CHANNEL_KEY_SHARE = "PUBLIC_CHANNEL_KEY_SHARE"
    PUBLIC_CHANNEL_ADD = "PUBLIC_CHANNEL_ADD"
    PUBLIC_CHANNEL_UPDATED = "PUBLIC_CHANNEL_UPDATED"
    FILE_START = "FILE_START"
    FILE_CHUNK = "FILE_CHUNK"
    FILE_END = "FILE_END"
    ACK = "ACK"
    ERROR = "ERROR"
    # --- project extensions (docs/PROTOCOL.md §9) ---
    USER_LOGIN_REQUEST = "USER_LOGIN_REQUEST"
    USER_LOGIN_CHALLENGE = "USER_LOGIN_CHALLENGE"
    USER_LOGIN_PROOF = "USER_LOGIN_PROOF"
    USER_LOGIN_GRANTED = "USER_LOGIN_GRANTED"
    USER_REGISTER = "USER_REGISTER"
    DIRECTORY_QUERY = "DIRECTORY_QUERY"
    DIRECTORY_RESPONSE = "DIRECTORY_RESPONSE"
    PUBKEY_REQUEST = "PUBKEY_REQUEST"
    PUBKEY_RESPONSE = "PUBKEY_RESPONSE"
    SERVER_USER_RECORDS = "SERVER_USER_RECORDS"


# Required payload fields and their JSON types, checked once at the edge.  Fields a type needs only in
# some variants (e.g. SERVER_WELCOME's ``servers`` or ``clients``) are checked where they are read.
_STR, _INT, _LIST, _DICT = (str,), (int,), (list,), (dict,)
PAYLOAD_SCHEMA: dict[FrameType, dict[str, tuple[type, ...]]] = {
    FrameType.SERVER_HELLO_JOIN: {"host": _STR, "port": _INT, "pubkey": _STR},
    FrameType.SERVER_WELCOME: {"assigned_id": _STR},
    FrameType.SERVER_ANNOUNCE: {"host": _STR, "port": _INT, "pubkey": _STR},
    FrameType.SERVER_HELLO_LINK: {"host": _STR, "port": _INT, "pubkey": _STR},
    FrameType.USER_ADVERTISE: {"user_id": _STR, "server_id": _STR},
    FrameType.USER_REMOVE: {"user_id": _STR, "server_id": _STR},
    FrameType.SERVER_PRESENCE_SYNC: {"server_id": _STR, "users": _LIST},
    FrameType.SERVER_DELIVER: {"user_id": _STR},
    FrameType.HEARTBEAT: {},
    FrameType.USER_HELLO: {"pubkey": _STR},
    FrameType.LIST_REQUEST: {},
    FrameType.LIST_RESPONSE: {"users": _LIST},
    FrameType.MSG_DIRECT: {"ciphertext": _STR, "sender_pub": _STR, "content_sig": _STR},
    FrameType.USER_DELIVER: {"ciphertext": _STR, "sender": _STR, "sender_pub": _STR, "content_sig": _STR},
    FrameType.MSG_PUBLIC_CHANNEL: {"ciphertext": _STR, "sender_pub": _STR, "content_sig": _STR},
    FrameType.PUBLIC_CHANNEL_KEY_SHARE: {"shares": _LIST, "creator_pub": _STR, "content_sig": _STR},
    FrameType.PUBLIC_CHANNEL_ADD: {"add": _LIST},
    FrameType.PUBLIC_CHANNEL_UPDATED: {"wraps": _LIST},
    FrameType.FILE_START: {"file_id": _STR, "name": _STR, "size": _INT, "sha256": _STR, "sender_pub": _STR,
                           "content_sig": _STR},
    FrameType.FILE_CHUNK: {"file_id": _STR, "index": _INT, "ciphertext": _STR},
    FrameType.FILE_END: {"file_id": _STR},
    FrameType.ACK: {"msg_ref": _STR},
    FrameType.ERROR: {"code": _STR},
    FrameType.USER_LOGIN_REQUEST: {"login": _STR},
    FrameType.USER_LOGIN_CHALLENGE: {"login": _STR, "user_id": _STR, "kdf": _DICT, "nonce": _STR,
                                     "server_id": _STR, "server_pub": _STR},
    FrameType.USER_LOGIN_PROOF: {"login": _STR, "nonce": _STR, "sealed_verifier": _STR},
    FrameType.USER_LOGIN_GRANTED: {"user_id": _STR, "pubkey": _STR, "privkey_store": _DICT},
    FrameType.USER_REGISTER: {"login": _STR, "privkey_store": _DICT, "pake_password": _DICT, "version": _INT,
                              "content_sig": _STR},
    FrameType.DIRECTORY_QUERY: {},
    FrameType.DIRECTORY_RESPONSE: {"user_id": _STR, "pubkey": _STR},
    FrameType.PUBKEY_REQUEST: {"user_id": _STR},
    FrameType.PUBKEY_RESPONSE: {"user_id": _STR, "pubkey": _STR},
    FrameType.SERVER_USER_RECORDS: {"records": _LIST},
}

@dataclass(frozen=True, slots=True)
class Envelope:
    """One SOCP frame. ``payload`` is treated as immutable once the envelope exists.

    ``id`` is the random frame id WIRE §2 asks every frame to carry; no signature covers it, nothing
    compares it, and :meth:`to_wire` mints one when it is empty.
    """

    type: FrameType
    sender: str
    to: str
    ts: int
    payload: Mapping[str, Any] = field(default_factory=dict)
    sig: str = ""
    id: str = field(default="", compare=False)
    wire_payload: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    """The payload as received when the interop profile rewrote it (:func:`socp.interop.normalise`): the
    signatures cover it and a relayed copy carries it; None (the rule) when ``payload`` is what was received."""

    @property
    def _signed_payload(self) -> Mapping[str, Any]:
        """The payload the sender signed: as received on the wire."""
        return self.payload if self.wire_payload is None else self.wire_payload

    @property
    def msg_ref(self) -> str:
        """``<type>:<from>:<to>:<ts>``: how an ERROR or ACK names this frame (WIRE §3)."""
        return f"{self.type}:{self.sender}:{self.to}:{self.ts}"

    @property
    def replay_key(self) -> bytes:
        """SHA-256 over (type, from, to, ts, canonical payload): the replay cache's key (WIRE §2)."""
        digest = hashlib.sha256()
        for part in (self.type.value, self.sender, self.to, str(self.ts)):
            digest.update(part.encode("utf-8"))
            digest.update(b"\x00")
        digest.update(canonical_json(self.payload))
        return digest.digest()

    @property
    def signed_bytes(self) -> bytes:
        """What the transport signature covers: the canonical envelope (WIRE §2)."""
        return canonical_envelope(self.type.value, self.sender, self.to, self.ts, self._signed_payload)

    def to_wire(self) -> str:
        """The JSON text of this frame, ready for one WebSocket text message (with a random ``id``)."""
        frame: dict[str, Any] = {
            "type": self.type.value, "from": self.sender, "to": self.to, "ts": self.ts,
            "payload": dict(self._signed_payload), "sig": self.sig, "id": self.id or crypto.random_frame_id(),
        }
        return dumps(frame, separators=(",", ":"), ensure_ascii=False)

    def signed(self, key: crypto.PrivateKey) -> Envelope:
        """A copy of this envelope carrying a transport signature by ``key`` over the canonical envelope.

        THE signing function for envelopes: servers, clients and test helpers all sign through it.
        """
        return replace(self, sig=crypto.sign(key, canonical_envelope(
            self.type.value, self.sender, self.to, self.ts, self.payload)), wire_payload=None)

    def verify(self, key: crypto.PublicKey, *, legacy: bool = False) -> bool:
        """True when ``sig`` is a valid transport signature by ``key`` over the canonical envelope.

        ``legacy`` (the node's legacy-interop switch only): a signature over the payload alone, in any
        accepted serialization, passes too.
        """
        if not self.sig:
            return False
        if crypto.verify(key, self.signed_bytes, self.sig):
            return True
        return legacy and crypto.verify_payload(key, self._signed_payload, self.sig)


def make(frame_type: FrameType, sender: str, to: str, ts: int, payload: Mapping[str, Any],
         key: crypto.PrivateKey | None = None) -> Envelope:
    """Build an envelope, signed by ``key`` when given."""
    envelope = Envelope(frame_type, sender, to, int(ts), dict(payload))
    return envelope.signed(key) if key is not None else envelope


def error_frame(sender: str, to: str, ts: int, code: ErrorCode, detail: str, key: crypto.PrivateKey | None,
                msg_ref: str | None = None) -> Envelope:
    """An ``ERROR`` frame; ``msg_ref`` names the offending frame when there is one."""
    payload: dict[str, Any] = {"code": code.value, "detail": detail}
    if msg_ref:
        payload["msg_ref"] = msg_ref
    return make(FrameType.ERROR, sender, to, ts, payload, key)


def error_from_exception(sender: str, to: str, ts: int, exc: ProtocolError,
                         key: crypto.PrivateKey | None) -> Envelope:
    """The ERROR frame that answers ``exc``."""
    return error_frame(sender, to, ts, exc.code, exc.detail, key, exc.msg_ref)


def parse(data: str | bytes, max_bytes: int = DEFAULT_MAX_FRAME_BYTES,
          interop: list[interop_profile.Variant] | None = None) -> Envelope:
    """Parse and validate one frame as received from the wire.

    Raises :class:`TooLarge`, :class:`BadFrame` or :class:`UnknownType`; nothing else escapes.
    Unknown extra envelope fields are ignored, as are unknown payload fields. With ``interop`` (a list, under
    the interop profile only) the frame is first brought into WIRE.md's form by
    :func:`socp.interop.normalise`, and the variants met are appended to the list.
    """
    # An ASCII str (every frame of ours: base64url and escaped JSON) is as long in UTF-8: no copy to measure it.
    size = len(data) if isinstance(data, bytes) or data.isascii() else len(data.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise TooLarge(f"frame of {size} bytes exceeds the limit of {max_bytes} bytes")
    try:
        frame = json.loads(data, parse_float=_refuse_float, parse_constant=_refuse_float)
    except (ValueError, RecursionError) as exc:
        raise BadFrame(f"frame is not valid JSON: {exc}" if not isinstance(exc, RecursionError)
                       else "frame nests too deeply") from None
    if not isinstance(frame, dict):
        raise BadFrame("frame must be a JSON object")
    wire_payload = None
    if interop is not None:
        frame, met = interop_profile.normalise(frame)
        interop.extend(met)
        wire_payload = frame.pop("_wire_payload", None)
    raw_type = frame.get("type")
    if not isinstance(raw_type, str):
        raise BadFrame("field 'type' missing or not a string")
    try:
        # JSON escapes can smuggle lone surrogates anywhere (type, from, to, payload, extra fields): no UTF-8
        # signature form could cover them and no reply could name the frame, so the whole frame goes. ASCII
        # text without a "\ud…" escape holds none: no need to re-encode a megabyte file chunk to know it.
        if not _surrogate_free(data):
            json.dumps(frame, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadFrame("frame is not valid Unicode (lone surrogate)") from None
    envelope_fields: tuple[tuple[str, tuple[type, ...]], ...] = (
        ("from", _STR), ("to", _STR), ("ts", _INT), ("payload", _DICT))
    for name, types in envelope_fields:
        if not _has_type(frame.get(name), types):
            raise BadFrame(f"envelope field '{name}' missing or not {types[0].__name__}")
    msg_ref = f"{raw_type}:{frame['from']}:{frame['to']}:{frame['ts']}"
    try:
        frame_type = FrameType(raw_type)
    except ValueError:
        if raw_type in interop_profile.REGISTER_FIRST_TYPES:
            raise UnknownType(interop_profile.REGISTER_FIRST_DETAIL, msg_ref=msg_ref) from None
        raise UnknownType(f"unknown frame type {raw_type!r}", msg_ref=msg_ref) from None
    sig = frame.get("sig", "")
    if sig is None:
        sig = ""
    if not isinstance(sig, str):
        raise BadFrame("envelope field 'sig' must be a string", msg_ref=msg_ref)
    payload = frame["payload"]
    check_payload(frame_type, payload, msg_ref)
    frame_id = frame.get("id")
    return Envelope(frame_type, frame["from"], frame["to"], frame["ts"], payload, sig,
                    frame_id if isinstance(frame_id, str) else "", wire_payload)


def _surrogate_free(data: str | bytes) -> bool:
    """True when the JSON text ``data`` certainly decodes without surrogates (ASCII, no ``\\ud`` escape).

    A frame without any backslash (every file chunk: base64url) is settled by one ``memchr`` pass."""
    if isinstance(data, bytes):
        return data.isascii() and (b"\\" not in data or (b"\\ud" not in data and b"\\uD" not in data))
    return data.isascii() and ("\\" not in data or ("\\ud" not in data and "\\uD" not in data))


def check_payload(frame_type: FrameType, payload: Mapping[str, Any], msg_ref: str | None = None) -> None:
    """Raise :class:`BadFrame` unless ``payload`` has every field :data:`PAYLOAD_SCHEMA` requires of the type.

    Used at parsing, and by servers before handing a forwarded payload to a user under its own type.
    """
    for name, types in PAYLOAD_SCHEMA[frame_type].items():
        if not _has_type(payload.get(name), types):
            raise BadFrame(f"{frame_type} payload field '{name}' missing or not {types[0].__name__}",
                           msg_ref=msg_ref)


def is_uuid(value: object) -> bool:
    """True for a canonical (lower-case, hyphenated) UUID string; ids we mint are v4."""
    if not isinstance(value, str):
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def _has_type(value: object, types: tuple[type, ...]) -> bool:
    # bool is an int subclass in Python, but never a valid SOCP integer.
    return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)


def _refuse_float(text: str) -> float:
    raise BadFrame(f"floats are not allowed in SOCP frames (got {text})")
