"""The interop profile (issue 14, docs/INTEROP.md): each variant is accepted under ``interop`` and, where it
would weaken anything or is not WIRE.md's form, refused by default."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from socp import crypto
from socp import envelope as env
from socp.codec import canonical_json
from socp.envelope import FrameType
from socp.errors import BadFrame, UnknownType
from socp.interop import REGISTER_FIRST_DETAIL, STRICT_HINT, Variant, normalise
from socp.server.config import ServerSettings
from tests.unit.harness import FakeUser, Net

SERVER = "6c1b9a52-29f5-4c44-9a43-5f3a3c1f5a10"
JOINER = "0b3c7f3e-8a2d-4d1e-b2b6-6a9f0e1d2c3b"
USER = "a11ce000-0000-4000-8000-000000000001"
TS = 1_760_000_000_123


def raw_frame(frame_type: str, sender: str, to: str, payload: dict[str, Any] | None, key: Any = None) -> str:
    """A frame as another implementation writes it: ``payload`` as given (None: no payload field), signed over
    the canonical envelope of that payload when ``key`` is given."""
    frame: dict[str, Any] = {"type": frame_type, "from": sender, "to": to, "ts": TS}
    if payload is not None:
        frame["payload"] = payload
    if key is not None:
        frame["sig"] = crypto.sign(key, env.canonical_envelope(frame_type, sender, to, TS, payload or {}))
    return json.dumps(frame)


def both(net: Net) -> tuple[Any, Any]:
    """A strict node and an interop node in one federation."""
    intro = net.introducer("I")
    return net.peer("S", intro), net.peer("P", intro, interop=True)


def test_interop_implies_the_legacy_switches() -> None:
    settings = ServerSettings(server_id=SERVER, advertise_host="h", advertise_port=1, interop=True)
    assert settings.legacy_interop and settings.allow_unsigned_hello
    strict = ServerSettings(server_id=SERVER, advertise_host="h", advertise_port=1)
    assert not (strict.interop or strict.legacy_interop or strict.allow_unsigned_hello)


def test_node_flag_sets_the_profile(tmp_path: Any) -> None:
    from node.config import build_parser, config_from_args
    args = build_parser().parse_args(["--interop", "--data-dir", str(tmp_path)])
    config = config_from_args(args, "host")
    assert config.interop and config.legacy_interop and config.allow_unsigned_hello
    default = config_from_args(build_parser().parse_args(["--data-dir", str(tmp_path)]), "host")
    assert not (default.interop or default.legacy_interop or default.allow_unsigned_hello)


def hello_with_alias(user: FakeUser, to: str) -> Envelope:
    """USER_HELLO carrying the key as ``pubkey_b64u`` only, signed over that payload."""
    frame = user.hello_frame(to=to, signed=False)
    payload = {k: v for k, v in frame.payload.items() if k != "pubkey"}
    payload["pubkey_b64u"] = user.pubkey
    return env.make(FrameType.USER_HELLO, user.user_id, to, frame.ts, payload, user.key)


Envelope = env.Envelope


def test_hello_pubkey_alias(net: Net) -> None:
    strict, interop = both(net)
    for node, accepted in ((strict, False), (interop, True)):
        user = net.user(f"u-{node.name}")
        user.open(node)
        user.send(hello_with_alias(user, node.server_id))
        assert bool(user.received(FrameType.ACK)) is accepted, user.inbox
        assert (user.user_id in node.state.local_users) is accepted
        if not accepted:
            errors = user.errors("BAD_FRAME")
            assert errors and STRICT_HINT in errors[0].payload["detail"], user.inbox  # names the switch
            assert "'USER_HELLO.pubkey_b64u'" in errors[0].payload["detail"]


def test_hello_addressed_to_the_users_own_id(net: Net) -> None:
    # fengyuan213/Secure-Programming-Group's client addresses its hello to its own id when it does not know ours:
    # bound to no server, like a hello to "*" (the profile only); a strict node asks for a hello to its id
    strict, interop = both(net)
    for node, accepted in ((strict, False), (interop, True)):
        user = net.user(f"self-{node.name}")
        user.open(node)
        user.send(user.hello_frame(to=user.user_id, attested=False))
        assert bool(user.received(FrameType.ACK)) is accepted, user.inbox
        assert (user.user_id in node.state.local_users) is accepted
        if not accepted:
            errors = user.errors("BAD_FRAME")
            assert errors and errors[0].payload.get("server_id") == node.server_id, user.inbox
    # another user's id is not the sender's own: refused under the profile too
    user, other = net.user("self-x"), net.user("self-y")
    user.open(interop)
    user.send(user.hello_frame(to=other.user_id, attested=False))
    assert not user.received(FrameType.ACK) and user.user_id not in interop.state.local_users


@pytest.mark.parametrize("frame_type,payload", [("CMD_LIST", {}), ("LIST_REQUEST", None), ("CMD_LIST", None)])
def test_list_variants(net: Net, frame_type: str, payload: dict[str, Any] | None) -> None:
    strict, interop = both(net)
    for node, accepted in ((strict, False), (interop, True)):
        user = net.user(f"u-{node.name}", node)
        user.clear()
        user.send(raw_frame(frame_type, user.user_id, node.server_id, payload))
        responses = user.received(FrameType.LIST_RESPONSE)
        assert bool(responses) is accepted, user.inbox
        if accepted:
            assert user.user_id in {u["user_id"] for u in responses[0].payload["users"]}
        else:
            errors = user.errors()
            assert errors and STRICT_HINT in errors[0].payload["detail"], user.inbox


@pytest.mark.parametrize("interop", [False, True])
def test_local_register_gets_an_error_naming_user_hello(net: Net, interop: bool) -> None:
    node = net.introducer("I", interop=interop)
    user = net.user("newbie")
    user.open(node)
    user.send(raw_frame("LOCAL_REGISTER", user.user_id, node.server_id, {"pubkey": user.pubkey}))
    errors = user.errors("UNKNOWN_TYPE")
    assert errors and "USER_HELLO" in errors[0].payload["detail"], user.inbox
    assert errors[0].payload["detail"] == REGISTER_FIRST_DETAIL


def test_welcome_and_announce_carry_server_id_and_server_pub(net: Net) -> None:
    intro = net.introducer("I")
    a = net.peer("A", intro)
    net.peer("B", intro)
    assert net.full_mesh(), net.describe()
    welcomes = net.packets(src="I", frame_type="SERVER_WELCOME")
    announces = net.packets(src="A", frame_type="SERVER_ANNOUNCE")
    assert welcomes and announces
    for packet, node in ((welcomes[0], intro), (announces[0], a)):
        payload = json.loads(packet.text)["payload"]
        assert payload["server_id"] == node.server_id and payload["server_pub"] == node.pubkey
        assert payload["pubkey"] == node.pubkey


# --- frame-level variants (what a foreign server sends on a link) ------------------------------------------

def parse_both(text: str) -> tuple[Envelope | Exception, Envelope, list[Variant]]:
    """``text`` parsed strictly (the envelope or the exception) and under the profile (with the variants)."""
    try:
        strict: Envelope | Exception = env.parse(text)
    except (BadFrame, UnknownType) as exc:
        strict = exc
    met: list[Variant] = []
    return strict, env.parse(text, interop=met), met


def test_advert_aliases_keep_the_signature(key_pool: Any) -> None:
    key = key_pool.key(0)
    user_pub = crypto.encode_public_key(key_pool.key(1).public_key())
    payload = {"user": USER, "server_id": SERVER, "pubkey_b64u": user_pub, "meta": {}}
    text = raw_frame("USER_ADVERTISE", SERVER, "*", payload, key)
    strict, frame, met = parse_both(text)
    assert isinstance(strict, BadFrame)
    assert met == [Variant.ADVERT_USER_ALIAS, Variant.ADVERT_PUBKEY_ALIAS]
    assert frame.payload["user_id"] == USER and frame.payload["pubkey"] == user_pub
    assert frame.verify(key.public_key())                     # over the payload as signed
    assert json.loads(frame.to_wire())["payload"] == payload  # relayed unchanged
    assert not env.parse(frame.to_wire(), interop=[]).verify(key_pool.key(2).public_key())


def test_advert_alias_payload_only_signature_under_legacy(key_pool: Any) -> None:
    key = key_pool.key(0)
    payload = {"user": USER, "server_id": SERVER}
    frame = json.loads(raw_frame("USER_ADVERTISE", SERVER, "*", payload))
    frame["sig"] = crypto.sign(key, json.dumps(payload, sort_keys=True).encode())  # sort_keys with spaces
    parsed = env.parse(json.dumps(frame), interop=[])
    assert parsed.verify(key.public_key(), legacy=True)
    assert not parsed.verify(key.public_key())


def test_welcome_with_null_assigned_id_keeps_the_requested_id(key_pool: Any) -> None:
    key = key_pool.key(0)
    pub = crypto.encode_public_key(key.public_key())
    payload = {"assigned_id": None, "servers": [{"server_id": SERVER, "host": "h", "port": 1, "pubkey": pub}]}
    strict, frame, met = parse_both(raw_frame("SERVER_WELCOME", SERVER, JOINER, payload, key))
    assert isinstance(strict, BadFrame)
    assert met == [Variant.WELCOME_NULL_ID] and frame.payload["assigned_id"] == JOINER
    assert frame.verify(key.public_key())


def test_welcome_naming_its_key_only_in_server_pub(key_pool: Any) -> None:
    key = key_pool.key(0)
    pub = crypto.encode_public_key(key.public_key())
    payload = {"assigned_id": JOINER, "server_id": SERVER, "server_pub": pub, "servers": []}
    strict, frame, met = parse_both(raw_frame("SERVER_WELCOME", SERVER, JOINER, payload, key))
    assert isinstance(strict, Envelope) and strict.payload["servers"] == []  # strict: no key for an unpinned join
    assert met == [Variant.WELCOME_KEY_FIELDS]
    assert frame.payload["servers"] == [{"server_id": SERVER, "host": "", "port": 0, "pubkey": pub}]
    assert frame.verify(key.public_key())  # over the payload as signed
    other = {"assigned_id": JOINER, "server_id": JOINER, "server_pub": pub, "servers": []}  # names another id
    assert parse_both(raw_frame("SERVER_WELCOME", SERVER, JOINER, other, key))[2] == []


def test_announce_without_address(key_pool: Any) -> None:
    key = key_pool.key(0)
    payload = {"pubkey": crypto.encode_public_key(key.public_key())}
    strict, frame, met = parse_both(raw_frame("SERVER_ANNOUNCE", SERVER, JOINER, payload, key))
    assert isinstance(strict, BadFrame)
    assert met == [Variant.ANNOUNCE_NO_ADDRESS]
    assert (frame.payload["host"], frame.payload["port"]) == ("", 0)  # "no dialable address"
    assert frame.verify(key.public_key())


def test_an_addressless_announce_keeps_the_address_we_know(net: Net) -> None:
    intro = net.introducer("I", interop=True)
    a = net.peer("A", intro, interop=True)
    assert net.full_mesh(), net.describe()
    known = a.state.book[intro.server_id]
    address = (known.host, known.port)
    assert address[0] and address[1]
    announce = env.make(FrameType.SERVER_ANNOUNCE, intro.server_id, "*", net.now, {"pubkey": intro.pubkey}, intro.key)
    net.inject("I", "A", announce.to_wire())
    assert (known.host, known.port) == address  # was ("", 0): the introducer would never be redialled
    assert a.state.links.is_linked(intro.server_id)


def test_channel_updated_without_wraps() -> None:
    strict, frame, met = parse_both(raw_frame("PUBLIC_CHANNEL_UPDATED", SERVER, "*", {"version": 2}))
    assert isinstance(strict, BadFrame)
    assert met == [Variant.CHANNEL_UPDATED_NO_WRAPS] and frame.payload["wraps"] == []


def test_ack_user_hello_ok() -> None:
    frame, met = normalise({"type": "ACK", "from": SERVER, "to": USER, "ts": TS,
                            "payload": {"msg_ref": "USER_HELLO_OK"}})
    assert met == [Variant.ACK_HELLO_OK] and frame["payload"]["msg_ref"] == "USER_HELLO"


def test_frames_in_wire_form_meet_no_variant(key_pool: Any) -> None:
    key = key_pool.key(0)
    text = raw_frame("USER_ADVERTISE", SERVER, "*", {"user_id": USER, "server_id": SERVER}, key)
    met: list[Variant] = []
    frame = env.parse(text, interop=met)
    assert met == [] and frame.wire_payload is None and frame == env.parse(text)


def test_resigning_a_normalised_frame_signs_the_normalised_payload(key_pool: Any) -> None:
    key = key_pool.key(0)
    frame = env.parse(raw_frame("USER_ADVERTISE", SERVER, "*", {"user": USER, "server_id": SERVER}, key),
                      interop=[])
    resigned = frame.signed(key)
    assert resigned.wire_payload is None and resigned.verify(key.public_key())
    assert json.loads(resigned.to_wire())["payload"]["user_id"] == USER


# --- the client side: a lenient welcome ----------------------------------------------------------------------

def server_frame(frame_type: FrameType, to: str, payload: dict[str, Any], key: Any) -> str:
    return env.make(frame_type, SERVER, to, TS, payload, key).to_wire()


def advert_of(user_id: str, user_key: Any, server_key: Any, to: str) -> str:
    return server_frame(FrameType.USER_ADVERTISE, to, {
        "user_id": user_id, "server_id": SERVER, "pubkey": crypto.encode_public_key(user_key.public_key()),
        "meta": {"display_name": "bob"}}, server_key)


@pytest.mark.parametrize("interop", [False, True])
def test_client_ack_user_hello_ok_without_server_id(key_pool: Any, interop: bool) -> None:
    from socp.user import SessionState, UserSession, Welcomed
    server_key, alice_key = key_pool.key(5), key_pool.key(6)
    session = UserSession(USER, alice_key, {}, interop=interop)
    session.hello(TS)
    ack = server_frame(FrameType.ACK, USER, {"msg_ref": "USER_HELLO_OK",
                                             "server_pub": crypto.encode_public_key(server_key.public_key())},
                       server_key)
    events = session.receive_text(ack, TS)
    assert (session.state is SessionState.WELCOMED) is interop, events
    if interop:
        assert events == [Welcomed(SERVER, crypto.encode_public_key(server_key.public_key()))]
        assert session.server_id == SERVER


@pytest.mark.parametrize("interop", [False, True])
def test_client_holds_frames_before_the_ack_and_verifies_them_after(key_pool: Any, interop: bool) -> None:
    from socp.user import FrameRejected, SessionState, UserOnline, UserSession
    server_key, alice_key, bob_key, mallory_key = (key_pool.key(i) for i in (5, 6, 7, 8))
    session = UserSession(USER, alice_key, {}, interop=interop)
    session.hello(TS)
    early = session.receive_text(advert_of(JOINER, bob_key, server_key, USER), TS)
    forged = session.receive_text(advert_of(SERVER, bob_key, mallory_key, USER), TS)  # not the server's key
    if not interop:
        assert any(isinstance(e, FrameRejected) for e in early + forged)
    else:
        assert early == [] and forged == []
    ack = server_frame(FrameType.ACK, USER, {"msg_ref": "USER_HELLO", "server_id": SERVER,
                                             "server_pub": crypto.encode_public_key(server_key.public_key())},
                       server_key)
    events = session.receive_text(ack, TS)
    assert session.state is SessionState.WELCOMED
    online = [e for e in events if isinstance(e, UserOnline)]
    assert [e.record.user_id for e in online] == ([JOINER] if interop else [])
    assert (JOINER in session.directory) is interop
    assert SERVER not in session.directory  # the forged advert was verified after the pin, and refused
    if interop:
        assert any(isinstance(e, FrameRejected) for e in events)


def test_client_ack_without_server_pub_uses_the_key_pinned_in_advance(key_pool: Any) -> None:
    from socp.user import SessionState, UserSession
    server_key, alice_key = key_pool.key(5), key_pool.key(6)
    pinned = crypto.encode_public_key(server_key.public_key())
    ack = server_frame(FrameType.ACK, USER, {"msg_ref": "USER_HELLO", "server_id": SERVER}, server_key)
    for interop, welcomed in ((False, False), (True, True)):
        session = UserSession(USER, alice_key, {}, pinned, interop=interop)
        session.hello(TS)
        session.receive_text(ack, TS)
        assert (session.state is SessionState.WELCOMED) is welcomed
    wrong = server_frame(FrameType.ACK, USER, {"msg_ref": "USER_HELLO", "server_id": SERVER}, key_pool.key(8))
    session = UserSession(USER, alice_key, {}, pinned, interop=True)
    session.hello(TS)
    session.receive_text(wrong, TS)
    assert session.state is SessionState.AWAITING_ACK  # signed by another key than the pinned one: refused


# --- the client side: a server that sends no ACK at all -------------------------------------------------------

def deliver_from(sender_id: str, sender_key: Any, recipient_key: Any, text: str, server_key: Any, ts: int) -> str:
    """A USER_DELIVER of ``text`` from ``sender_id`` to USER, as the server relays it."""
    ciphertext = crypto.rsa_encrypt(recipient_key.public_key(), text.encode())
    return env.make(FrameType.USER_DELIVER, SERVER, USER, ts, {
        "ciphertext": ciphertext, "sender": sender_id,
        "sender_pub": crypto.encode_public_key(sender_key.public_key()),
        "content_sig": crypto.sign_direct(sender_key, ciphertext, sender_id, USER, ts)}, server_key).to_wire()


@pytest.mark.parametrize("interop", [False, True])
def test_client_no_ack_first_signed_frame_with_the_pinned_key_welcomes(key_pool: Any, interop: bool) -> None:
    from socp.user import DirectMessage, FrameRejected, SessionState, UserOnline, UserSession, Welcomed
    server_key, alice_key, bob_key = key_pool.key(5), key_pool.key(6), key_pool.key(7)
    pinned = crypto.encode_public_key(server_key.public_key())
    session = UserSession(USER, alice_key, {}, pinned, interop=interop)
    session.hello(TS)
    events = session.receive_text(advert_of(JOINER, bob_key, server_key, USER), TS + 5)
    if not interop:
        assert session.state is SessionState.AWAITING_ACK and session.welcome_deadline() is None
        assert [e for e in events if isinstance(e, FrameRejected)] and JOINER not in session.directory
        assert session.welcome_overdue(TS + 60_000) == []
        return
    assert [type(e) for e in events] == [Welcomed, UserOnline]
    assert events[0] == Welcomed(SERVER, pinned) and session.server_id == SERVER
    # DMs both ways over the session welcomed without an ACK
    frame = env.parse(session.direct_message(JOINER, "hi bob", TS + 10))
    assert frame.type is FrameType.MSG_DIRECT and frame.to == JOINER
    assert crypto.rsa_decrypt(bob_key, frame.payload["ciphertext"]).decode() == "hi bob"
    got = session.receive_text(deliver_from(JOINER, bob_key, alice_key, "hi alice", server_key, TS + 20), TS + 20)
    assert [e.text for e in got if isinstance(e, DirectMessage)] == ["hi alice"]
    forged = session.receive_text(deliver_from(JOINER, bob_key, alice_key, "forged", key_pool.key(8), TS + 30),
                                  TS + 30)
    assert [e for e in forged if isinstance(e, FrameRejected)]  # still verified with the pinned key


def test_client_late_ack_after_an_implicit_welcome_still_negotiates_receipts(key_pool: Any) -> None:
    from socp.features import Feature
    from socp.user import UserSession, Welcomed
    server_key, alice_key, bob_key = key_pool.key(5), key_pool.key(6), key_pool.key(7)
    pinned = crypto.encode_public_key(server_key.public_key())
    session = UserSession(USER, alice_key, {}, pinned, interop=True)
    session.hello(TS)
    assert isinstance(session.receive_text(advert_of(JOINER, bob_key, server_key, USER), TS)[0], Welcomed)
    assert not session.receipts_enabled
    ack = server_frame(FrameType.ACK, USER, {"msg_ref": "USER_HELLO", "server_id": SERVER, "server_pub": pinned,
                                             "features": [Feature.DELIVERY_RECEIPTS.value]}, server_key)
    assert session.receive_text(ack, TS + 1) == []  # no Acked event for a message never sent
    assert session.receipts_enabled


def test_client_no_ack_frame_signed_by_another_key_is_held_not_trusted(key_pool: Any) -> None:
    from socp.user import SessionState, UserSession, Welcomed
    server_key, alice_key, bob_key = key_pool.key(5), key_pool.key(6), key_pool.key(7)
    session = UserSession(USER, alice_key, {}, crypto.encode_public_key(server_key.public_key()), interop=True)
    session.hello(TS)
    assert session.receive_text(advert_of(JOINER, bob_key, key_pool.key(8), USER), TS) == []  # held, not trusted
    assert session.state is SessionState.AWAITING_ACK
    events = session.receive_text(advert_of(USER, alice_key, server_key, USER), TS + 1)
    assert isinstance(events[0], Welcomed)
    assert JOINER not in session.directory  # the held frame was verified after the welcome, and refused


def test_client_no_ack_first_contact_takes_a_key_the_frame_names_as_its_own(key_pool: Any) -> None:
    from socp.user import SessionState, UserOnline, UserSession, Welcomed
    server_key, alice_key, bob_key = key_pool.key(5), key_pool.key(6), key_pool.key(7)
    server_pub = crypto.encode_public_key(server_key.public_key())
    session = UserSession(USER, alice_key, {}, interop=True)
    session.hello(TS)
    # a user advert names the user's key, not the server's: nothing to trust yet, held
    assert session.receive_text(advert_of(JOINER, bob_key, server_key, USER), TS) == []
    # a frame naming a key it is not signed with: not taken
    liar = env.make(FrameType.SERVER_ANNOUNCE, SERVER, USER, TS, {"server_id": SERVER, "pubkey": server_pub,
                                                                 "host": "h", "port": 1}, key_pool.key(8))
    assert session.receive_text(liar.to_wire(), TS) == [] and session.state is SessionState.AWAITING_ACK
    own = env.make(FrameType.SERVER_ANNOUNCE, SERVER, USER, TS, {"server_id": SERVER, "pubkey": server_pub,
                                                                "host": "h", "port": 1}, server_key)
    events = session.receive_text(own.to_wire(), TS + 1)
    assert events[0] == Welcomed(SERVER, server_pub) and session.server_pub == server_pub
    assert [e.record.user_id for e in events if isinstance(e, UserOnline)] == [JOINER]  # the held advert


def test_client_no_frame_at_all_welcomes_with_the_pinned_key_after_the_wait(key_pool: Any) -> None:
    from socp.user import UserOnline, UserSession, Welcomed
    from socp.user.session import NO_ACK_WAIT_MS
    server_key, alice_key, bob_key = key_pool.key(5), key_pool.key(6), key_pool.key(7)
    pinned = crypto.encode_public_key(server_key.public_key())
    session = UserSession(USER, alice_key, {}, pinned, interop=True)
    session.hello(TS)
    assert session.welcome_deadline() == TS + NO_ACK_WAIT_MS
    assert session.welcome_overdue(TS + NO_ACK_WAIT_MS - 1) == []
    assert session.welcome_overdue(TS + NO_ACK_WAIT_MS) == [Welcomed("*", pinned)]
    assert session.welcomed and session.server_id is None and session.welcome_deadline() is None
    events = session.receive_text(advert_of(JOINER, bob_key, server_key, USER), TS + NO_ACK_WAIT_MS + 1)
    assert [e.record.user_id for e in events if isinstance(e, UserOnline)] == [JOINER]
    assert session.server_id == SERVER  # named by its first frame that verified with the pinned key


def test_client_no_ack_a_users_frame_never_names_the_server(key_pool: Any) -> None:
    from socp.user import UserSession, Welcomed
    from socp.user.session import NO_ACK_WAIT_MS
    server_key, alice_key, bob_key = key_pool.key(5), key_pool.key(6), key_pool.key(7)
    pinned = crypto.encode_public_key(server_key.public_key())
    session = UserSession(USER, alice_key, {}, pinned, interop=True)
    session.hello(TS)
    # a public-channel frame carries the sending user's id under the server's signature
    public = env.make(FrameType.MSG_PUBLIC_CHANNEL, JOINER, "public", TS, {
        "ciphertext": "AAAA", "sender_pub": crypto.encode_public_key(bob_key.public_key()), "content_sig": "AAAA"},
        server_key)
    assert session.receive_text(public.to_wire(), TS) == [] and not session.welcomed  # held, not a welcome
    assert session.welcome_overdue(TS + NO_ACK_WAIT_MS)[0] == Welcomed("*", pinned)
    assert session.server_id is None  # the held user frame verified, but does not name the server
    session.receive_text(advert_of(JOINER, bob_key, server_key, USER), TS + NO_ACK_WAIT_MS + 1)
    assert session.server_id == SERVER


def test_client_no_pinned_key_waits_past_the_no_ack_wait_for_a_slow_ack(key_pool: Any) -> None:
    # aniketrattan/secure-programming-group-17 (integration/): a key share signed by the server (its key only
    # as 'creator_pub'), CLIENT_WELCOME, then ACK USER_HELLO_OK at ~3.3 s, past NO_ACK_WAIT_MS; the client used
    # to give up at 3 s although, with no key pinned, it had nothing to do but wait for that ACK.
    from socp.user import SessionState, UserSession, Welcomed
    from socp.user.session import NO_ACK_WAIT_MS
    server_key, alice_key = key_pool.key(5), key_pool.key(6)
    server_pub = crypto.encode_public_key(server_key.public_key())
    session = UserSession(USER, alice_key, {}, interop=True)
    session.hello(TS)
    assert session.welcome_needs_ack and session.welcome_deadline() is None  # the shell's timeout bounds it
    share = server_frame(FrameType.PUBLIC_CHANNEL_KEY_SHARE, USER, {
        "version": 2, "shares": [], "creator_pub": server_pub, "content_sig": "AAAA"}, server_key)
    assert session.receive_text(share, TS + 2_100) == []  # 'creator_pub' is not taken as the server's key
    assert session.welcome_overdue(TS + NO_ACK_WAIT_MS) == []
    assert session.welcome_overdue(TS + 10 * NO_ACK_WAIT_MS) == [] and session.state is SessionState.AWAITING_ACK
    ack = server_frame(FrameType.ACK, USER, {"msg_ref": "USER_HELLO_OK", "server_pub": server_pub}, server_key)
    assert session.receive_text(ack, TS + NO_ACK_WAIT_MS + 300)[0] == Welcomed(SERVER, server_pub)
    assert session.server_pub == server_pub and not session.welcome_needs_ack


def test_client_no_pinned_key_a_forged_ack_still_fails_after_the_wait(key_pool: Any) -> None:
    from socp.user import FrameRejected, SessionState, UserSession
    from socp.user.session import NO_ACK_WAIT_MS
    server_key, alice_key, mallory_key = key_pool.key(5), key_pool.key(6), key_pool.key(8)
    session = UserSession(USER, alice_key, {}, interop=True)
    session.hello(TS)
    forged = server_frame(FrameType.ACK, USER, {"msg_ref": "USER_HELLO_OK", "server_pub": crypto.encode_public_key(
        server_key.public_key())}, mallory_key)  # names one key, signed with another
    events = session.receive_text(forged, TS + 2 * NO_ACK_WAIT_MS)
    assert any(isinstance(e, FrameRejected) for e in events) and session.state is not SessionState.WELCOMED


def payload_signed(frame_type: str, to: str, payload: dict[str, Any], key: Any) -> str:
    """A server frame signed over its payload alone, as aniketrattan/secure-programming-group-17 signs
    (``json.dumps(payload, sort_keys=True, separators=(",", ":"))``), with spaces in the frame itself."""
    return json.dumps({"type": frame_type, "from": SERVER, "to": to, "ts": TS, "payload": payload,
                       "sig": crypto.sign(key, canonical_json(payload))})


@pytest.mark.parametrize("interop", [False, True])
def test_client_payload_only_server_signatures_only_under_interop(key_pool: Any, interop: bool) -> None:
    from socp.user import FrameRejected, SessionState, UserOnline, UserSession, Welcomed
    server_key, alice_key, bob_key, mallory_key = (key_pool.key(i) for i in (5, 6, 7, 8))
    server_pub = crypto.encode_public_key(server_key.public_key())
    session = UserSession(USER, alice_key, {}, interop=interop)
    session.hello(TS)
    ack = payload_signed("ACK", USER, {"msg_ref": "USER_HELLO", "server_id": SERVER, "server_pub": server_pub},
                         server_key)
    events = session.receive_text(ack, TS)
    if not interop:
        assert isinstance(events[0], FrameRejected) and session.state is SessionState.AWAITING_ACK
        return
    assert events == [Welcomed(SERVER, server_pub)]
    bob = {"user_id": JOINER, "server_id": SERVER, "pubkey": crypto.encode_public_key(bob_key.public_key()),
           "meta": {"display_name": "bob"}}
    online = session.receive_text(payload_signed("USER_ADVERTISE", USER, bob, server_key), TS + 1)
    assert [e.record.user_id for e in online if isinstance(e, UserOnline)] == [JOINER]
    # still the pinned key only: a payload-only frame signed by another key is refused
    forged = session.receive_text(payload_signed("USER_ADVERTISE", USER, dict(bob, user_id=SERVER), mallory_key),
                                  TS + 2)
    assert isinstance(forged[0], FrameRejected) and SERVER not in session.directory


@pytest.mark.parametrize("interop", [False, True])
def test_client_the_servers_own_key_share_is_ignored_under_interop(key_pool: Any, interop: bool) -> None:
    # a server-made group key (aniketrattan/secure-programming-group-17 sends one to every member at each join):
    # another public-channel design, not bridged; under the profile it is ignored instead of refused
    from socp.user import FrameRejected, UserSession
    server_key, alice_key = key_pool.key(5), key_pool.key(6)
    server_pub = crypto.encode_public_key(server_key.public_key())
    session = UserSession(USER, alice_key, {}, interop=interop)
    session.hello(TS)
    session.receive_text(server_frame(FrameType.ACK, USER, {"msg_ref": "USER_HELLO", "server_id": SERVER,
                                                            "server_pub": server_pub}, server_key), TS)
    share = server_frame(FrameType.PUBLIC_CHANNEL_KEY_SHARE, USER, {
        "version": 3, "shares": [{"member": USER, "wrapped": "AAAA"}], "creator_pub": server_pub,
        "content_sig": "AAAA"}, server_key)
    events = session.receive_text(share, TS + 1)
    assert events == [] if interop else isinstance(events[0], FrameRejected)


def test_client_key_share_made_by_the_server_is_ignored_before_it_is_named(key_pool: Any) -> None:
    # welcomed by the no-ACK wait with the key pinned in advance: no server id yet when its share is handled
    from socp.user import UserSession
    from socp.user.session import NO_ACK_WAIT_MS
    server_key, alice_key = key_pool.key(5), key_pool.key(6)
    pinned = crypto.encode_public_key(server_key.public_key())
    session = UserSession(USER, alice_key, {}, pinned, interop=True)
    session.hello(TS)
    share = payload_signed("PUBLIC_CHANNEL_KEY_SHARE", USER, {
        "version": 3, "shares": [{"member": USER, "wrapped": "AAAA"}], "creator_pub": pinned, "content_sig": "AAAA"},
        server_key)
    assert session.receive_text(share, TS + 10) == []  # held
    events = session.welcome_overdue(TS + NO_ACK_WAIT_MS)
    assert len(events) == 1 and session.server_id is None  # welcomed; the share ignored, not refused


def welcomed_client(key_pool: Any, interop: bool) -> tuple[Any, Any, Any, Any, Any]:
    """A client session (user ``USER``, pool key 6) welcomed by ``SERVER`` (key 5) with a standard ACK, and the
    keys of the server, the user, and two others (7, 8): ``(session, server, alice, bob, carol)``."""
    from socp.user import UserSession
    server_key, alice_key, bob_key, carol_key = (key_pool.key(i) for i in (5, 6, 7, 8))
    session = UserSession(USER, alice_key, {}, interop=interop)
    session.hello(TS)
    session.receive_text(server_frame(FrameType.ACK, USER, {
        "msg_ref": "USER_HELLO", "server_id": SERVER,
        "server_pub": crypto.encode_public_key(server_key.public_key())}, server_key), TS)
    return session, server_key, alice_key, bob_key, carol_key


@pytest.mark.parametrize("interop", [False, True])
def test_client_asks_the_key_of_a_user_listed_by_id_only(key_pool: Any, interop: bool) -> None:
    # aniketrattan/secure-programming-group-17 pushes no adverts to users and lists {"online_users": [ids]};
    # it answers PUBKEY_REQUEST {user_id} with PUBKEY_RESPONSE {user_id, pubkey}, signed
    from socp.user import FrameRejected, UserOnline
    session, server_key, _, bob_key, carol_key = welcomed_client(key_pool, interop)
    bob_pub = crypto.encode_public_key(bob_key.public_key())
    session.receive_text(server_frame(FrameType.LIST_RESPONSE, USER, {"online_users": [USER, JOINER]}, server_key),
                         TS + 1)
    if not interop:
        assert session.keys_wanted() == []
        return
    assert session.keys_wanted() == [JOINER]  # not ourselves
    assert session.keys_wanted() == []  # each once
    request = json.loads(session.pubkey_request(JOINER, TS + 2))
    assert (request["type"], request["to"], request["payload"]) == ("PUBKEY_REQUEST", SERVER, {"user_id": JOINER})
    # an answer signed by another key is refused; one nobody asked for is ignored
    forged = server_frame(FrameType.PUBKEY_RESPONSE, USER, {"user_id": JOINER, "pubkey": bob_pub}, carol_key)
    assert isinstance(session.receive_text(forged, TS + 3)[0], FrameRejected) and JOINER not in session.directory
    other = str(uuid.uuid4())
    unasked = server_frame(FrameType.PUBKEY_RESPONSE, USER, {"user_id": other, "pubkey": bob_pub}, server_key)
    assert session.receive_text(unasked, TS + 3) == [] and other not in session.directory
    answer = server_frame(FrameType.PUBKEY_RESPONSE, USER, {"user_id": JOINER, "pubkey": bob_pub}, server_key)
    events = session.receive_text(answer, TS + 4)
    assert [(e.record.user_id, e.record.pubkey, e.record.server_id) for e in events if isinstance(e, UserOnline)] \
        == [(JOINER, bob_pub, SERVER)]
    # the key is pinned as an advert's: a later answer with another key is refused
    session.pubkey_request(JOINER, TS + 5)
    changed = server_frame(FrameType.PUBKEY_RESPONSE, USER, {
        "user_id": JOINER, "pubkey": crypto.encode_public_key(carol_key.public_key())}, server_key)
    assert isinstance(session.receive_text(changed, TS + 6)[0], FrameRejected)
    assert session.directory.get(JOINER) is not None and session.directory.get(JOINER).pubkey == bob_pub  # type: ignore[union-attr]


@pytest.mark.parametrize("interop", [False, True])
def test_client_delivery_without_sender_is_bound_to_the_user_its_signature_names(key_pool: Any, interop: bool) -> None:
    # fengyuan213/Secure-Programming-Group delivers a local DM with the MSG_DIRECT payload as sent (no 'sender')
    from socp.user import DirectMessage, FrameRejected
    session, server_key, alice_key, bob_key, carol_key = welcomed_client(key_pool, interop)
    bob_pub = crypto.encode_public_key(bob_key.public_key())
    session.receive_text(advert_of(JOINER, bob_key, server_key, USER), TS + 1)
    other = str(uuid.uuid4())  # carol advertises bob's key under her own id: she cannot sign as bob's id
    session.receive_text(server_frame(FrameType.USER_ADVERTISE, USER, {
        "user_id": other, "server_id": SERVER, "pubkey": bob_pub, "meta": {}}, server_key), TS + 1)

    def deliver(sender: str, key: Any, text: str, ts: int) -> str:
        ciphertext = crypto.rsa_encrypt(alice_key.public_key(), text.encode())
        return payload_signed("USER_DELIVER", USER, {
            "ciphertext": ciphertext, "sender_pub": crypto.encode_public_key(key.public_key()),
            "content_sig": crypto.sign_direct(key, ciphertext, sender, USER, ts)}, server_key).replace(
            f'"ts": {TS}', f'"ts": {ts}')

    events = session.receive_text(deliver(JOINER, bob_key, "hi alice", TS + 2), TS + 2)
    if not interop:
        assert isinstance(events[0], FrameRejected)
        return
    assert [(e.sender_id, e.text) for e in events if isinstance(e, DirectMessage)] == [(JOINER, "hi alice")]
    # signed by a key nobody we know holds: refused
    events = session.receive_text(deliver(JOINER, carol_key, "forged", TS + 3), TS + 3)
    assert isinstance(events[0], FrameRejected) and not any(isinstance(e, DirectMessage) for e in events)


# --- signing toward a peer in the payload-only form it uses -------------------------------------------------

def _server_link() -> Any:
    from socp.ratelimit import TokenBucket
    from socp.server.links import Link, LinkRole
    return Link(1, False, LinkRole.SERVER, TS, TS, TokenBucket(100.0, 100), peer=JOINER)


@pytest.mark.parametrize("legacy", [False, True])
def test_peer_seen_signing_with_spaces_gets_that_form_back(key_pool: Any, legacy: bool) -> None:
    from socp.actions import Send
    from socp.server.outbox import Outbox
    ours, theirs = key_pool.key(0), key_pool.key(1)
    out = Outbox(SERVER, ours, legacy_interop=legacy)
    link = _server_link()
    payload = {"user_id": USER, "server_id": JOINER}
    heard = env.Envelope(FrameType.USER_ADVERTISE, JOINER, "*", TS, payload,
                         crypto.sign(theirs, json.dumps(payload, sort_keys=True).encode()))  # sort_keys, spaces
    their_pub = crypto.encode_public_key(theirs.public_key())
    assert out.verify(heard, their_pub, link) is legacy
    assert link.legacy_form == (2 if legacy else None)
    frame = out.make(FrameType.HEARTBEAT, "*", TS, {"n": 1})
    out.send_text(link, frame.to_wire())
    sent = env.parse(next(a for a in out.take_actions() if isinstance(a, Send)).text)
    our_key = ours.public_key()
    assert sent.verify(our_key) is not legacy  # envelope form by default, payload-only toward a legacy peer
    assert crypto.verify(our_key, json.dumps(sent.payload, sort_keys=True).encode(), sent.sig) is legacy
    other = _server_link()
    out.send_text(other, frame.to_wire())  # another link keeps the envelope form
    assert env.parse(next(a for a in out.take_actions() if isinstance(a, Send)).text).verify(our_key)


def test_a_payload_that_reads_the_same_in_every_form_keeps_the_links_form(key_pool: Any) -> None:
    from socp.server.outbox import Outbox
    ours, theirs = key_pool.key(0), key_pool.key(1)
    out = Outbox(SERVER, ours, legacy_interop=True)
    link = _server_link()
    their_pub = crypto.encode_public_key(theirs.public_key())
    payload = {"user_id": USER, "server_id": JOINER}
    advert = env.Envelope(FrameType.USER_ADVERTISE, JOINER, "*", TS, payload,
                          crypto.sign(theirs, json.dumps(payload, sort_keys=True).encode()))
    assert out.verify(advert, their_pub, link) and link.legacy_form == 2
    beat = env.Envelope(FrameType.HEARTBEAT, JOINER, "*", TS + 1, {}, crypto.sign(theirs, b"{}"))  # any form
    assert out.verify(beat, their_pub, link)
    assert link.legacy_form == 2  # found by a foreign server test: a heartbeat switched the link to form 0
    compact = env.Envelope(FrameType.USER_ADVERTISE, JOINER, "*", TS + 2, payload,
                           crypto.sign(theirs, canonical_json(payload)))
    assert out.verify(compact, their_pub, link) and link.legacy_form == 0  # an unambiguous new form is followed


# --- adverts without keys, PUBKEY_REQUEST / PUBKEY_RESPONSE -------------------------------------------------

@pytest.mark.parametrize("interop", [False, True])
def test_keyless_advert_records_the_user_after_a_pubkey_request(net: Net, interop: bool) -> None:
    intro = net.introducer("I", interop=interop)
    a = net.peer("A", intro, interop=interop)
    b = net.peer("B", intro, interop=interop)
    assert net.full_mesh(), net.describe()
    # carol's own adverts, B's snapshots and registry records never reach A: only the keyless advert below does
    net.drop = lambda p: p.src == "B" and p.dst == "A" and p.type in ("USER_ADVERTISE", "SERVER_PRESENCE_SYNC",
                                                                      "SERVER_USER_RECORDS")
    carol = net.user("carol", b)
    assert carol.user_id not in a.state.directory and a.state.presence.pinned_key(carol.user_id) is None
    net.drop = None
    keyless = env.make(FrameType.USER_ADVERTISE, b.server_id, "*", net.now,
                       {"user_id": carol.user_id, "server_id": b.server_id, "meta": {"display_name": "carol"}}, b.key)
    net.inject("B", "A", keyless.to_wire())
    requests = net.packets(src="A", dst="B", frame_type="PUBKEY_REQUEST")
    assert bool(requests) is interop
    assert (carol.user_id in a.state.directory) is interop
    if interop:
        assert a.state.directory.get(carol.user_id).pubkey == carol.pubkey
        assert net.packets(src="B", dst="A", frame_type="PUBKEY_RESPONSE")


def test_pubkey_request_from_a_user_and_unasked_responses(net: Net) -> None:
    intro = net.introducer("I", interop=True)
    a = net.peer("A", intro, interop=True)
    b = net.peer("B", intro, interop=True)
    alice, bob = net.user("alice", a), net.user("bob", b)
    assert net.full_mesh(), net.describe()
    alice.send(alice.frame(FrameType.PUBKEY_REQUEST, a.server_id, {"user_id": bob.user_id}))
    answer = alice.received(FrameType.PUBKEY_RESPONSE)
    assert answer and answer[0].payload["pubkey"] == bob.pubkey and alice.signed_by_server(answer[0])
    alice.send(alice.frame(FrameType.PUBKEY_REQUEST, a.server_id, {"user_id": USER}))
    assert alice.errors("USER_NOT_FOUND")
    # an answer nobody asked for changes nothing (a server cannot push keys this way)
    mallory_pub = crypto.encode_public_key(net.pool.key(30).public_key())
    unasked = env.make(FrameType.PUBKEY_RESPONSE, b.server_id, a.server_id, net.now,
                       {"user_id": USER, "pubkey": mallory_pub, "server_id": b.server_id}, b.key)
    net.inject("B", "A", unasked.to_wire())
    assert USER not in a.state.directory


def test_client_cli_flag() -> None:
    from client.cli import config_from_args
    assert config_from_args(["--user", "alice", "--interop"]).interop
    assert not config_from_args(["--user", "alice"]).interop


# --- a foreign server opening a link with the handshake variants --------------------------------------------

@pytest.mark.parametrize("interop", [False, True])
def test_foreign_server_links_with_an_addressless_announce_signed_with_spaces(net: Net, interop: bool) -> None:
    from socp.server.links import LinkRole
    intro = net.introducer("I", interop=interop)
    ours = net.peer("A", intro, interop=interop)
    foreign = net.user("foreign")  # a raw endpoint: speaks whatever frames the test writes
    foreign.open(ours)
    payload = {"pubkey": foreign.pubkey}  # no host, no port
    frame = {"type": "SERVER_ANNOUNCE", "from": foreign.user_id, "to": "*", "ts": net.now, "payload": payload,
             "sig": crypto.sign(foreign.key, json.dumps(payload, sort_keys=True).encode())}
    foreign.send(json.dumps(frame))
    link = ours.state.links.get(foreign.link) if foreign.link is not None else None
    assert (link is not None and link.role is LinkRole.SERVER and link.peer == foreign.user_id) is interop
    if not interop:
        assert foreign.closed or foreign.errors(), foreign.inbox
        return
    assert link is not None and link.legacy_form == 2
    signed = [f for f in foreign.inbox if f.sig]
    assert signed, foreign.inbox
    our_key = ours.key.public_key()
    for received in signed:  # everything we sign toward it is in its own form, not the envelope form
        assert not received.verify(our_key)
        assert crypto.verify(our_key, json.dumps(dict(received.payload), sort_keys=True).encode(), received.sig)


@pytest.mark.parametrize("interop", [False, True])
def test_client_list_answer_with_online_users(key_pool: Any, interop: bool) -> None:
    from socp.user import FrameRejected, UserList, UserSession
    server_key, alice_key, bob_key, carol_key = (key_pool.key(i) for i in (5, 6, 7, 8))
    carol = "ca401000-0000-4000-8000-0000000000c0"
    session = UserSession(USER, alice_key, {}, interop=interop)
    session.hello(TS)
    session.receive_text(server_frame(FrameType.ACK, USER, {
        "msg_ref": "USER_HELLO", "server_id": SERVER, "server_pub": crypto.encode_public_key(server_key.public_key())},
        server_key), TS)
    session.receive_text(advert_of(JOINER, bob_key, server_key, USER), TS)
    session.receive_text(advert_of(carol, carol_key, server_key, USER), TS)
    assert JOINER in session.directory and carol in session.directory
    events = session.receive_text(server_frame(FrameType.LIST_RESPONSE, USER, {"online_users": [JOINER, USER]},
                                               server_key), TS)
    if interop:
        assert [e for e in events if isinstance(e, UserList)]
        assert JOINER in session.directory and carol not in session.directory
        assert session.directory.get(JOINER).pubkey == crypto.encode_public_key(bob_key.public_key())
    else:
        assert [e for e in events if isinstance(e, FrameRejected)]
        assert JOINER in session.directory and carol in session.directory


# --- a server's own PUBLIC_CHANNEL_KEY_SHARE on a server link (standard §9.3) --------------------------------

@pytest.mark.parametrize("interop", [False, True])
def test_server_key_share_on_a_server_link(net: Net, interop: bool) -> None:
    intro = net.introducer("I", interop=interop)
    a = net.peer("A", intro, interop=interop)
    b = net.peer("B", intro, interop=interop)
    alice = net.user("alice", a)
    assert net.full_mesh(), net.describe()
    alice.clear()
    shares = [{"member": alice.user_id,
               "wrapped_public_channel_key": crypto.rsa_encrypt(alice.key.public_key(), bytes(32))}]
    payload = {"shares": shares, "creator_pub": b.pubkey,
               "content_sig": crypto.sign(b.key, crypto.key_share_content(shares, b.pubkey))}
    share = env.make(FrameType.PUBLIC_CHANNEL_KEY_SHARE, b.server_id, "*", net.now, payload, b.key)
    net.inject("B", "A", share.to_wire())
    got = alice.received(FrameType.PUBLIC_CHANNEL_KEY_SHARE)
    errors = [json.loads(p.text)["payload"] for p in net.packets(src="A", dst="B", frame_type="ERROR")]
    if interop:
        assert got and got[0].sender == b.server_id and alice.signed_by_server(got[0]), alice.inbox
        assert got[0].payload["shares"] == shares and not errors
    else:
        assert not got
        assert errors and "--interop" in errors[-1]["detail"] and "§9.3" in errors[-1]["detail"], errors
    forged = dict(payload, content_sig=crypto.sign(b.key, b"something else"))
    net.inject("B", "A", env.make(FrameType.PUBLIC_CHANNEL_KEY_SHARE, b.server_id, "*", net.now + 1, forged,
                                  b.key).to_wire())
    assert len(alice.received(FrameType.PUBLIC_CHANNEL_KEY_SHARE)) == len(got)  # a bad content_sig goes nowhere


def test_adverts_repeat_the_users_key_in_meta_under_the_profile_only(net: Net) -> None:
    """fengyuan213/Secure-Programming-Group's client reads a user's key only from ``meta.pubkey``: an interop
    node's adverts carry it there too (the same key under the same signature); a strict node's stay lean, and
    no node keeps the key in a stored meta."""
    strict, interop = both(net)
    for node, repeated in ((strict, False), (interop, True)):
        watcher = net.user(f"watcher-{node.name}", node)
        carol = net.user(f"carol-{node.name}", node)
        [advert] = [f for f in watcher.received(FrameType.USER_ADVERTISE) if f.payload["user_id"] == carol.user_id]
        assert (advert.payload["meta"].get("pubkey") == carol.pubkey) is repeated, advert.payload
        assert ("pubkey" in advert.payload["meta"]) is repeated
        assert "pubkey" not in node.state.directory.get(carol.user_id).meta  # type: ignore[union-attr]
