"""The interop profile (issue 14, docs/INTEROP.md): other implementations' encodings of the same signed facts.

Sans-I/O. :func:`normalise` rewrites one received frame (the decoded JSON object, before it is validated) into
the form WIRE.md defines, and names each variant it met, so that the caller can log it once per peer. It runs
only when the node or client runs the interop profile (``--interop``); the default stays strict.

Every rewrite keeps the facts a signature binds: the payload the peer signed is kept aside (see
:attr:`socp.envelope.Envelope.wire_payload`) and signatures are checked, and frames relayed, over it. None of the
variants lets a frame through that the strict reading would have refused for a security reason: a missing
field is filled only where the standard's own frame omits it, and aliases carry the same value under another
name.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any


class Variant(StrEnum):
    """A deviation from WIRE.md accepted under the interop profile (names as logged and tested)."""

    HELLO_PUBKEY_ALIAS = "USER_HELLO.pubkey_b64u"
    LIST_ALIAS = "CMD_LIST"
    LIST_NO_PAYLOAD = "LIST_REQUEST without payload"
    ADVERT_USER_ALIAS = "USER_ADVERTISE.user"
    ADVERT_PUBKEY_ALIAS = "USER_ADVERTISE.pubkey_b64u"
    WELCOME_NULL_ID = "SERVER_WELCOME assigned_id null"
    WELCOME_KEY_FIELDS = "SERVER_WELCOME key in server_pub only"
    ANNOUNCE_NO_ADDRESS = "SERVER_ANNOUNCE without host/port"
    CHANNEL_UPDATED_NO_WRAPS = "PUBLIC_CHANNEL_UPDATED without wraps"
    ACK_HELLO_OK = "ACK msg_ref USER_HELLO_OK"
    LIST_ONLINE_USERS = "LIST_RESPONSE.online_users"
    SERVER_KEY_SHARE = "PUBLIC_CHANNEL_KEY_SHARE on a server link"
    DELIVER_NO_SENDER = "USER_DELIVER without sender"
    HELLO_TO_SELF = "USER_HELLO addressed to the user's own id"


TYPE_ALIASES = {"CMD_LIST": "LIST_REQUEST"}
"""Frame type names other implementations use for one of ours."""

REGISTER_FIRST_TYPES = frozenset({"LOCAL_REGISTER"})
"""Types some clients send before USER_HELLO; answered with an error naming the alternative (issue 14 item 7)."""

REGISTER_FIRST_DETAIL = ("LOCAL_REGISTER is not part of SOCP v1.3 here: send USER_HELLO {client, pubkey, "
                         "enc_pubkey, meta} signed with your key; the server registers the key on first hello")
"""The ERROR detail a LOCAL_REGISTER gets, naming what to send instead."""


STRICT_HINT = "another implementation's form, accepted only by a node running the interop profile (--interop)"
"""Appended to the ERROR detail when a strict node refuses a frame in one of the forms of :class:`Variant`."""

LEGACY_SIG_HINT = ("if it is signed over the payload alone (the standard's form, e.g. json.dumps(sort_keys=True)), "
                   "that is accepted only with --interop or --legacy-interop")
"""Appended to the ERROR detail when a strict node refuses a handshake frame's signature (no RSA work is spent
finding out which form it was: the hint is static)."""


def variants_of(text: str | bytes) -> list[Variant]:
    """The variants a frame the strict parser refused is in (for the refusal's detail); empty when none, or
    when it is not a JSON object at all. Costs one more JSON decode, on the refusal path only."""
    try:
        frame = json.loads(text)
    except (ValueError, RecursionError):
        return []
    return normalise(frame)[1] if isinstance(frame, dict) else []


def strict_detail(detail: str, met: list[Variant]) -> str:
    """``detail`` of a strict refusal, naming the variants ``met`` and the switch that accepts them."""
    return f"{detail} ({', '.join(repr(str(v)) for v in met)}: {STRICT_HINT})" if met else detail


def _alias(payload: dict[str, Any], alias: str, name: str) -> bool:
    """Copy ``payload[alias]`` to ``payload[name]`` when only the alias is present; True when it was."""
    if name not in payload and isinstance(payload.get(alias), str):
        payload[name] = payload[alias]
        return True
    return False


def _welcome_self_entry(frame: dict[str, Any], payload: dict[str, Any]) -> bool:
    """A welcome that names its sender's key only as ``server_id`` + ``server_pub`` (not in its server list) gets
    that key as the sender's entry of ``servers``, without an address (the joiner dialed it already); True when
    it was added. The welcome must still verify with that key (or with the pinned one)."""
    sender, offered = frame.get("from"), payload.get("server_pub")
    if not isinstance(sender, str) or not isinstance(offered, str) or payload.get("server_id", sender) != sender:
        return False
    listed = payload.get("servers", payload.get("clients", []))
    if not isinstance(listed, list):
        return False
    if any(isinstance(e, dict) and sender in (e.get("server_id"), e.get("user_id")) for e in listed):
        return False
    payload["servers"] = [*listed, {"server_id": sender, "host": "", "port": 0, "pubkey": offered}]
    return True


def normalise(frame: dict[str, Any]) -> tuple[dict[str, Any], list[Variant]]:
    """``frame`` rewritten into WIRE.md's form, and the variants met (empty: it was already in that form).

    ``frame`` is the decoded JSON object of one message; it is not modified. The returned frame keeps the
    payload as received under ``"_wire_payload"`` when the payload was rewritten (signatures cover that).
    """
    met: list[Variant] = []
    raw_type = frame.get("type")
    out = dict(frame)
    if isinstance(raw_type, str) and raw_type in TYPE_ALIASES:
        out["type"] = raw_type = TYPE_ALIASES[raw_type]
        met.append(Variant.LIST_ALIAS)
    received = frame.get("payload")
    if received is None and raw_type == "LIST_REQUEST":
        out["payload"] = {}
        met.append(Variant.LIST_NO_PAYLOAD)
        return out, met
    if not isinstance(received, dict):
        return out, met
    payload = dict(received)
    if raw_type == "USER_HELLO" and _alias(payload, "pubkey_b64u", "pubkey"):
        met.append(Variant.HELLO_PUBKEY_ALIAS)
    elif raw_type == "USER_ADVERTISE":
        if _alias(payload, "user", "user_id"):
            met.append(Variant.ADVERT_USER_ALIAS)
        if _alias(payload, "pubkey_b64u", "pubkey"):
            met.append(Variant.ADVERT_PUBKEY_ALIAS)
    elif raw_type == "SERVER_WELCOME":
        if payload.get("assigned_id", "") is None and isinstance(frame.get("to"), str):
            payload["assigned_id"] = frame["to"]  # null: "keep the id you asked for", and the welcome is sent to it
            met.append(Variant.WELCOME_NULL_ID)
        if _welcome_self_entry(frame, payload):
            met.append(Variant.WELCOME_KEY_FIELDS)
    elif raw_type == "SERVER_ANNOUNCE" and "host" not in payload and "port" not in payload:
        payload["host"], payload["port"] = "", 0  # no dialable address: never redialled, never listed onwards
        met.append(Variant.ANNOUNCE_NO_ADDRESS)
    elif raw_type == "PUBLIC_CHANNEL_UPDATED" and "wraps" not in payload:
        payload["wraps"] = []
        met.append(Variant.CHANNEL_UPDATED_NO_WRAPS)
    elif raw_type == "LIST_RESPONSE" and "users" not in payload and isinstance(payload.get("online_users"), list):
        payload["users"] = [{"user_id": user_id} for user_id in payload["online_users"]]
        met.append(Variant.LIST_ONLINE_USERS)
    elif raw_type == "USER_DELIVER" and "sender" not in payload:
        payload["sender"] = ""  # to be inferred by the client from the content signature (socp.user.direct)
        met.append(Variant.DELIVER_NO_SENDER)
    elif raw_type == "ACK" and payload.get("msg_ref") == "USER_HELLO_OK":
        payload["msg_ref"] = "USER_HELLO"
        met.append(Variant.ACK_HELLO_OK)
    if met and payload != received:
        out["payload"] = payload
        out["_wire_payload"] = received
    return out, met
