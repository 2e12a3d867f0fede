"""socp.user.UserSession without an event loop: hand-built server frames, and a pairing with ServerState."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from socp import crypto
from socp import envelope as env
from socp.actions import Send
from socp.codec import b64url_decode, b64url_encode
from socp.envelope import BROADCAST, FrameType
from socp.errors import BadKey, SocpError, UserNotFound
from socp.server import ServerSettings, ServerState
from socp.user import (
    CLIENT_NAME,
    ROUTES,
    Acked,
    ClientEvent,
    DirectMessage,
    DuplicateDelivery,
    FrameRejected,
    HelloReaddressed,
    MsgRef,
    ServerError,
    ServerKeyChanged,
    SessionState,
    UserList,
    UserOffline,
    UserOnline,
    UserSession,
    Welcomed,
)
from tests.keypool import KeyPool

NOW = 1_760_000_000_000
SERVER_ID = "5e6f7a8b-0000-4000-8000-000000000001"
OTHER_SERVER_ID = "9a9a9a9a-0000-4000-8000-000000000002"
ALICE = "a11ce000-0000-4000-8000-0000000000a1"
BOB = "b0b00000-0000-4000-8000-0000000000b0"
CAROL = "ca401000-0000-4000-8000-0000000000c0"
MALLORY = "3a11004e-0000-4000-8000-0000000000e0"

# Pool indexes (tests/keypool.py): any fixed keys do; these stay clear of the integration tests' nodes.
SERVER_KEY, ALICE_KEY, BOB_KEY, MALLORY_KEY = 5, 6, 7, 8


@dataclass(frozen=True)
class Keys:
    server: crypto.PrivateKey
    alice: crypto.PrivateKey
    bob: crypto.PrivateKey
    mallory: crypto.PrivateKey

    @staticmethod
    def pub(key: crypto.PrivateKey) -> str:
        return crypto.encode_public_key(key.public_key())


@pytest.fixture(scope="module")
def keys(key_pool: KeyPool) -> Keys:
    return Keys(key_pool.key(SERVER_KEY), key_pool.key(ALICE_KEY), key_pool.key(BOB_KEY),
                key_pool.key(MALLORY_KEY))


# --- a hand-driven server ---------------------------------------------------------------------------

def frame(frame_type: FrameType, to: str, payload: Mapping[str, Any], key: crypto.PrivateKey | None, *,
          sender: str = SERVER_ID, ts: int = NOW) -> str:
    return env.make(frame_type, sender, to, ts, payload, key).to_wire()


def ack(keys: Keys, to: str, *, server_key: crypto.PrivateKey | None = None, signer: crypto.PrivateKey | None = None,
        server_id: str = SERVER_ID) -> str:
    announced = server_key or keys.server
    return frame(FrameType.ACK, to, {"msg_ref": "USER_HELLO", "server_id": server_id,
                                     "server_pub": Keys.pub(announced)}, signer or announced, sender=server_id)


def advert(keys: Keys, to: str, user_id: str, user_key: crypto.PrivateKey, name: str | None,
           server_id: str = SERVER_ID, **meta: Any) -> str:
    meta_all = dict(meta, **({"display_name": name} if name is not None else {}))
    return frame(FrameType.USER_ADVERTISE, to, {"user_id": user_id, "server_id": server_id,
                                                "pubkey": Keys.pub(user_key), "meta": meta_all}, keys.server)


def deliver_from(keys: Keys, msg_direct: str, **overrides: Any) -> str:
    """What a server makes of a user's MSG_DIRECT for a local recipient (WIRE §5)."""
    sent = env.parse(msg_direct)
    payload = {"ciphertext": sent.payload["ciphertext"], "sender": sent.sender,
               "sender_pub": sent.payload["sender_pub"], "content_sig": sent.payload["content_sig"]}
    payload.update(overrides)
    return frame(FrameType.USER_DELIVER, sent.to, payload, keys.server, ts=sent.ts)


def welcomed(keys: Keys, user_id: str, key: crypto.PrivateKey, name: str,
             expected_server_pub: str | None = None) -> UserSession:
    session = UserSession(user_id, key, {"display_name": name}, expected_server_pub)
    session.hello(NOW)
    events = session.receive_text(ack(keys, user_id), NOW)
    assert events == [Welcomed(SERVER_ID, Keys.pub(keys.server))]
    return session


def only(events: list[ClientEvent]) -> ClientEvent:
    assert len(events) == 1, events
    return events[0]


def rejected(events: list[ClientEvent], *needles: str) -> FrameRejected:
    event = only(events)
    assert isinstance(event, FrameRejected), event
    for needle in needles:
        assert needle in event.reason, event.reason
    return event


@pytest.fixture
def alice(keys: Keys) -> UserSession:
    """Alice, welcomed, knowing herself and Bob."""
    session = welcomed(keys, ALICE, keys.alice, "alice")
    session.receive_text(advert(keys, ALICE, ALICE, keys.alice, "alice"), NOW)
    session.receive_text(advert(keys, ALICE, BOB, keys.bob, "bob", OTHER_SERVER_ID), NOW)
    return session


@pytest.fixture
def bob(keys: Keys) -> UserSession:
    """Bob, welcomed, knowing himself and Alice."""
    session = welcomed(keys, BOB, keys.bob, "bob")
    session.receive_text(advert(keys, BOB, ALICE, keys.alice, "alice"), NOW)
    session.receive_text(advert(keys, BOB, BOB, keys.bob, "bob"), NOW)
    return session


# --- hello and welcome ------------------------------------------------------------------------------

def test_hello_is_a_signed_user_hello(keys: Keys) -> None:
    session = UserSession(ALICE, keys.alice, {"display_name": "alice"})
    hello = env.parse(session.hello(NOW))
    assert (hello.type, hello.sender, hello.to, hello.ts) == (FrameType.USER_HELLO, ALICE, BROADCAST, NOW)
    assert dict(hello.payload) == {"client": CLIENT_NAME, "pubkey": Keys.pub(keys.alice),
                                   "enc_pubkey": Keys.pub(keys.alice),
                                   "meta": {"display_name": "alice",
                                            "features": ["delivery_receipts", "hybrid_file_chunks"]}}
    assert hello.verify(keys.alice.public_key())
    assert session.state is SessionState.AWAITING_ACK and not session.welcomed
    assert session.server_id is None and session.server_pub is None


def test_ack_welcomes_and_pins_the_server_key(keys: Keys) -> None:
    session = welcomed(keys, ALICE, keys.alice, "alice")
    assert session.welcomed and session.state is SessionState.WELCOMED
    assert session.server_id == SERVER_ID
    assert session.server_pub == Keys.pub(keys.server)


def test_ack_not_signed_by_its_own_server_pub_is_rejected(keys: Keys) -> None:
    session = UserSession(ALICE, keys.alice, {})
    rejected(session.receive_text(ack(keys, ALICE, signer=keys.mallory), NOW), "not signed")
    assert not session.welcomed
    unsigned = json.loads(ack(keys, ALICE))
    unsigned["sig"] = ""
    rejected(session.receive_text(json.dumps(unsigned), NOW), "not signed")
    # The genuine ACK still works afterwards.
    assert isinstance(only(session.receive_text(ack(keys, ALICE), NOW)), Welcomed)


def test_ack_of_another_frame_or_with_a_weak_key_does_not_welcome(keys: Keys, key_pool: KeyPool) -> None:
    session = UserSession(ALICE, keys.alice, {})
    other = frame(FrameType.ACK, ALICE, {"msg_ref": "LIST_REQUEST", "server_id": SERVER_ID,
                                         "server_pub": Keys.pub(keys.server)}, keys.server)
    rejected(session.receive_text(other, NOW), "expected the ACK of USER_HELLO")
    weak = key_pool.weak_key(2048)
    weak_ack = frame(FrameType.ACK, ALICE, {"msg_ref": "USER_HELLO", "server_id": SERVER_ID,
                                            "server_pub": crypto.encode_public_key(weak.public_key())}, None)
    weak_ack = json.dumps(dict(json.loads(weak_ack), sig=crypto.sign_payload(weak, json.loads(weak_ack)["payload"])))
    rejected(session.receive_text(weak_ack, NOW), "unusable server_pub")
    assert not session.welcomed


def test_expected_server_pub_accepts_the_same_key_in_another_encoding(keys: Keys) -> None:
    padded = Keys.pub(keys.server) + "=" * (-len(Keys.pub(keys.server)) % 4)
    session = welcomed(keys, ALICE, keys.alice, "alice", expected_server_pub=padded)
    assert session.server_pub == Keys.pub(keys.server)


def test_expected_server_pub_mismatch_refuses_the_server_for_good(keys: Keys) -> None:
    session = UserSession(ALICE, keys.alice, {}, expected_server_pub=Keys.pub(keys.server))
    event = only(session.receive_text(ack(keys, ALICE, server_key=keys.mallory), NOW))
    assert event == ServerKeyChanged(SERVER_ID, Keys.pub(keys.server), Keys.pub(keys.mallory))
    assert session.state is SessionState.REFUSED and not session.welcomed
    assert session.server_pub is None
    # Nothing is accepted afterwards, not even the genuine server's ACK.
    rejected(session.receive_text(ack(keys, ALICE), NOW), "refused")
    rejected(session.receive_text(advert(keys, ALICE, BOB, keys.bob, "bob"), NOW), "refused")


def test_expected_server_pub_must_be_a_valid_key(keys: Keys) -> None:
    with pytest.raises(BadKey):
        UserSession(ALICE, keys.alice, {}, expected_server_pub="not a key")


def test_unsigned_error_before_the_ack_is_surfaced(keys: Keys) -> None:
    session = UserSession(ALICE, keys.alice, {})
    hello_ref = env.parse(session.hello(NOW)).msg_ref
    error = frame(FrameType.ERROR, "*", {"code": "NAME_IN_USE", "detail": "already connected",
                                         "msg_ref": hello_ref}, None)
    assert session.receive_text(error, NOW) == [ServerError("NAME_IN_USE", "already connected", hello_ref)]
    assert not session.welcomed


def test_other_frames_before_the_ack_are_rejected(keys: Keys) -> None:
    session = UserSession(ALICE, keys.alice, {})
    rejected(session.receive_text(advert(keys, ALICE, BOB, keys.bob, "bob"), NOW), "USER_ADVERTISE", "awaiting")
    assert BOB not in session.directory


def test_cannot_send_before_the_welcome(keys: Keys) -> None:
    session = UserSession(ALICE, keys.alice, {})
    with pytest.raises(SocpError, match="awaiting the server's ACK"):
        session.list_request(NOW)
    with pytest.raises(SocpError, match="awaiting the server's ACK"):
        session.direct_message(BOB, "hi", NOW)


# --- frames after the welcome -------------------------------------------------------------------------

def test_frames_must_verify_with_the_pinned_key(keys: Keys, alice: UserSession) -> None:
    forged = frame(FrameType.USER_ADVERTISE, ALICE, {"user_id": CAROL, "server_id": SERVER_ID,
                                                     "pubkey": Keys.pub(keys.mallory), "meta": {}}, keys.mallory)
    rejected(alice.receive_text(forged, NOW), "does not verify with the pinned key")
    unsigned = frame(FrameType.USER_REMOVE, ALICE, {"user_id": BOB, "server_id": OTHER_SERVER_ID}, None)
    rejected(alice.receive_text(unsigned, NOW), "does not verify")
    assert CAROL not in alice.directory and BOB in alice.directory
    # A second ACK claiming another key does not re-pin: it must verify with the pinned key too.
    rejected(alice.receive_text(ack(keys, ALICE, server_key=keys.mallory), NOW), "pinned key")
    assert alice.server_pub == Keys.pub(keys.server)


def test_bad_json_and_malformed_frames_are_rejected(keys: Keys, alice: UserSession) -> None:
    rejected(alice.receive_text("{not json", NOW), "malformed frame")
    rejected(alice.receive_text("[1, 2]", NOW), "malformed frame")
    rejected(alice.receive_text(frame(FrameType.USER_DELIVER, ALICE, {"sender": BOB}, keys.server), NOW),
             "ciphertext")


def test_lone_surrogates_are_rejected_not_raised(keys: Keys, alice: UserSession) -> None:
    # json.loads turns "\\udcff" into a lone surrogate, which no signature form can encode to UTF-8.
    advert_text = advert(keys, ALICE, CAROL, keys.mallory, "carol").replace('"carol"', '"\\udcff"')
    rejected(alice.receive_text(advert_text, NOW), "not valid Unicode")
    delivery = frame(FrameType.USER_DELIVER, ALICE, {"ciphertext": "\udcff", "sender": BOB,
                                                     "sender_pub": Keys.pub(keys.bob), "content_sig": "AAAA"},
                     keys.server)
    rejected(alice.receive_text(delivery, NOW), "not valid Unicode")


def test_unknown_and_not_yet_handled_types_are_ignored_quietly(keys: Keys, alice: UserSession) -> None:
    unknown = json.dumps({"type": "FUTURE_THING", "from": SERVER_ID, "to": ALICE, "ts": NOW, "payload": {},
                          "sig": ""})
    assert alice.receive_text(unknown, NOW) == []
    # Files and the public channel are handled now (tests/unit/test_files.py, test_public_channel.py): a chunk of
    # a file never offered and an unverifiable public message are reported, once, instead of ignored.
    chunk = frame(FrameType.FILE_CHUNK, ALICE, {"file_id": "f", "index": 0, "ciphertext": "AA"}, keys.server,
                  sender=BOB)
    rejected(alice.receive_text(chunk, NOW), "not offered")
    assert alice.receive_text(chunk, NOW) == []
    public = frame(FrameType.MSG_PUBLIC_CHANNEL, "public", {"ciphertext": "AA", "sender_pub": Keys.pub(keys.bob),
                                                            "content_sig": "AA"}, keys.server, sender=BOB)
    rejected(alice.receive_text(public, NOW), "content_sig does not verify")
    membership = frame(FrameType.PUBLIC_CHANNEL_ADD, ALICE, {"add": [BOB], "if_version": 1}, keys.server)
    assert alice.receive_text(membership, NOW) == []
    assert alice.receive_text(frame(FrameType.SERVER_ANNOUNCE, "*", {"host": "h", "port": 1,
                                                                     "pubkey": "x"}, keys.server), NOW) == []


def test_error_and_ack_after_the_welcome(keys: Keys, alice: UserSession) -> None:
    ref = f"MSG_DIRECT:{ALICE}:{CAROL}:{NOW}"
    error = frame(FrameType.ERROR, ALICE, {"code": "USER_NOT_FOUND", "detail": f"user {CAROL} is not online",
                                           "msg_ref": ref}, keys.server)
    assert alice.receive_text(error, NOW) == [ServerError("USER_NOT_FOUND", f"user {CAROL} is not online", ref)]
    bare = frame(FrameType.ERROR, ALICE, {"code": "TIMEOUT"}, keys.server)
    assert alice.receive_text(bare, NOW) == [ServerError("TIMEOUT", "", None)]
    assert alice.receive_text(frame(FrameType.ACK, ALICE, {"msg_ref": ref}, keys.server), NOW) == [Acked(ref)]


# --- presence ---------------------------------------------------------------------------------------

def test_advertise_adds_updates_and_is_quiet_when_nothing_changed(keys: Keys) -> None:
    session = welcomed(keys, ALICE, keys.alice, "alice")
    event = only(session.receive_text(advert(keys, ALICE, BOB, keys.bob, "bob", OTHER_SERVER_ID), NOW))
    assert isinstance(event, UserOnline) and event.is_new
    assert (event.record.user_id, event.record.server_id, event.record.label) == (BOB, OTHER_SERVER_ID, "bob")
    assert event.record.pubkey == Keys.pub(keys.bob)
    assert session.receive_text(advert(keys, ALICE, BOB, keys.bob, "bob", OTHER_SERVER_ID), NOW) == []
    moved = only(session.receive_text(advert(keys, ALICE, BOB, keys.bob, "bobby", SERVER_ID), NOW))
    assert isinstance(moved, UserOnline) and not moved.is_new
    assert moved.record.label == "bobby" and session.directory.location(BOB) == SERVER_ID


def test_advertise_accepts_the_key_in_meta_and_rejects_unusable_keys(keys: Keys, key_pool: KeyPool) -> None:
    session = welcomed(keys, ALICE, keys.alice, "alice")
    variant = frame(FrameType.USER_ADVERTISE, ALICE, {"user_id": CAROL, "server_id": SERVER_ID,
                                                      "meta": {"display_name": "carol",
                                                               "pubkey": Keys.pub(keys.mallory)}}, keys.server)
    event = only(session.receive_text(variant, NOW))
    assert isinstance(event, UserOnline) and event.record.pubkey == Keys.pub(keys.mallory)
    assert "pubkey" not in event.record.meta
    weak = crypto.encode_public_key(key_pool.weak_key(2048).public_key())
    bad = frame(FrameType.USER_ADVERTISE, ALICE, {"user_id": BOB, "server_id": SERVER_ID, "pubkey": weak,
                                                  "meta": {}}, keys.server)
    rejected(session.receive_text(bad, NOW), "no usable RSA-4096 pubkey")
    assert BOB not in session.directory


def test_remove_applies_only_for_the_server_the_user_is_on(keys: Keys, alice: UserSession) -> None:
    stale = frame(FrameType.USER_REMOVE, ALICE, {"user_id": BOB, "server_id": SERVER_ID}, keys.server)
    assert alice.receive_text(stale, NOW) == []
    assert BOB in alice.directory
    removal = frame(FrameType.USER_REMOVE, ALICE, {"user_id": BOB, "server_id": OTHER_SERVER_ID}, keys.server)
    event = only(alice.receive_text(removal, NOW))
    assert isinstance(event, UserOffline) and event.record.user_id == BOB and event.record.label == "bob"
    assert BOB not in alice.directory
    assert alice.receive_text(removal, NOW) == []


def test_list_response_replaces_the_directory(keys: Keys, alice: UserSession) -> None:
    users = [
        {"user_id": CAROL, "server_id": SERVER_ID, "pubkey": Keys.pub(keys.mallory), "meta": {"display_name": "carol"}},
        {"user_id": ALICE, "server_id": SERVER_ID, "pubkey": Keys.pub(keys.alice), "meta": {"display_name": "alice"}},
        {"user_id": "broken", "server_id": SERVER_ID, "pubkey": "junk", "meta": {}},
        "not an object",
    ]
    event = only(alice.receive_text(frame(FrameType.LIST_RESPONSE, ALICE, {"users": users}, keys.server), NOW))
    assert isinstance(event, UserList)
    assert [record.label for record in event.records] == ["alice", "carol"]
    assert BOB not in alice.directory and CAROL in alice.directory and len(alice.directory) == 2


# --- direct messages -------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["hey there!", "é" * 300 + "✓" * 200 + "x" * 1000],
                         ids=["short", "longer-than-one-oaep-block"])
def test_direct_message_round_trip(keys: Keys, alice: UserSession, bob: UserSession, text: str) -> None:
    sent_text = alice.direct_message(BOB, text, NOW + 5)
    sent = env.parse(sent_text)
    assert (sent.type, sent.sender, sent.to, sent.ts) == (FrameType.MSG_DIRECT, ALICE, BOB, NOW + 5)
    assert sent.verify(keys.alice.public_key())
    assert sent.payload["sender_pub"] == Keys.pub(keys.alice)
    blocks = len(b64url_decode(sent.payload["ciphertext"])) // crypto.OAEP_BLOCK_BYTES
    assert blocks == -(-len(text.encode("utf-8")) // crypto.OAEP_MAX_PLAINTEXT)
    assert text not in sent_text
    event = only(bob.receive_text(deliver_from(keys, sent_text), NOW + 10))
    assert event == DirectMessage(ALICE, "alice", text, NOW + 5, f"MSG_DIRECT:{ALICE}:{BOB}:{NOW + 5}")
    assert text not in repr(event)


def test_direct_message_from_an_unknown_sender_is_labelled_by_id(keys: Keys, bob: UserSession) -> None:
    carol = welcomed(keys, CAROL, keys.mallory, "carol")
    carol.receive_text(advert(keys, CAROL, BOB, keys.bob, "bob"), NOW)
    event = only(bob.receive_text(deliver_from(keys, carol.direct_message(BOB, "hi", NOW)), NOW))
    assert isinstance(event, DirectMessage) and event.sender_label == CAROL and event.text == "hi"


def _flip(b64: str) -> str:
    raw = bytearray(b64url_decode(b64))
    raw[len(raw) // 2] ^= 0x01
    return b64url_encode(bytes(raw))


def test_tampered_ciphertext_is_rejected(keys: Keys, alice: UserSession, bob: UserSession) -> None:
    sent = alice.direct_message(BOB, "secret", NOW)
    ciphertext = env.parse(sent).payload["ciphertext"]
    rejected(bob.receive_text(deliver_from(keys, sent, ciphertext=_flip(ciphertext)), NOW), "content_sig")


def test_tampered_content_sig_is_rejected(keys: Keys, alice: UserSession, bob: UserSession) -> None:
    sent = alice.direct_message(BOB, "secret", NOW)
    content_sig = env.parse(sent).payload["content_sig"]
    rejected(bob.receive_text(deliver_from(keys, sent, content_sig=_flip(content_sig)), NOW),
             "content_sig does not verify")


def test_content_sig_binds_the_timestamp(keys: Keys, alice: UserSession, bob: UserSession) -> None:
    sent = env.parse(alice.direct_message(BOB, "secret", NOW))
    moved = frame(FrameType.USER_DELIVER, BOB, {"ciphertext": sent.payload["ciphertext"], "sender": ALICE,
                                                "sender_pub": sent.payload["sender_pub"],
                                                "content_sig": sent.payload["content_sig"]}, keys.server, ts=NOW + 1)
    rejected(bob.receive_text(moved, NOW), "content_sig does not verify")


def test_sender_pub_must_match_the_directory(keys: Keys, bob: UserSession) -> None:
    # Mallory signs correctly with her own key but claims to be Alice, whom Bob knows under Alice's key.
    ciphertext = crypto.rsa_encrypt(keys.bob.public_key(), b"I am alice")
    forged = frame(FrameType.USER_DELIVER, BOB, {
        "ciphertext": ciphertext, "sender": ALICE, "sender_pub": Keys.pub(keys.mallory),
        "content_sig": crypto.sign_direct(keys.mallory, ciphertext, ALICE, BOB, NOW)}, keys.server)
    rejected(bob.receive_text(forged, NOW), "not the key advertised")


def test_undecryptable_or_non_utf8_plaintext_is_rejected(keys: Keys, bob: UserSession) -> None:
    def signed_by_alice(ciphertext: str, ts: int) -> str:
        return frame(FrameType.USER_DELIVER, BOB, {
            "ciphertext": ciphertext, "sender": ALICE, "sender_pub": Keys.pub(keys.alice),
            "content_sig": crypto.sign_direct(keys.alice, ciphertext, ALICE, BOB, ts)}, keys.server, ts=ts)

    wrong_key = crypto.rsa_encrypt(keys.mallory.public_key(), b"for someone else")
    rejected(bob.receive_text(signed_by_alice(wrong_key, NOW), NOW), "does not decrypt")
    not_utf8 = crypto.rsa_encrypt(keys.bob.public_key(), b"\xff\xfe")
    rejected(bob.receive_text(signed_by_alice(not_utf8, NOW + 1), NOW), "not UTF-8")


def test_duplicate_stale_or_misaddressed_deliveries_are_rejected(keys: Keys, alice: UserSession,
                                                                 bob: UserSession) -> None:
    sent = alice.direct_message(BOB, "once", NOW)
    delivery = deliver_from(keys, sent)
    first = only(bob.receive_text(delivery, NOW))
    assert isinstance(first, DirectMessage) and first.msg_ref == sent.msg_ref
    assert only(bob.receive_text(delivery, NOW)) == DuplicateDelivery(ALICE, "alice", sent.msg_ref)
    old = deliver_from(keys, alice.direct_message(BOB, "old", NOW - 11 * 60 * 1000))
    rejected(bob.receive_text(old, NOW), "behind")
    misaddressed = deliver_from(keys, alice.direct_message(BOB, "x", NOW + 2))
    resigned = frame(FrameType.USER_DELIVER, CAROL, json.loads(misaddressed)["payload"], keys.server, ts=NOW + 2)
    rejected(bob.receive_text(resigned, NOW), "not to this user")


def test_a_rejected_delivery_does_not_block_the_genuine_one(keys: Keys, alice: UserSession,
                                                            bob: UserSession) -> None:
    sent = alice.direct_message(BOB, "intact", NOW)
    rejected(bob.receive_text(deliver_from(keys, sent, content_sig="AAAA"), NOW), "content_sig")
    event = only(bob.receive_text(deliver_from(keys, sent), NOW))
    assert isinstance(event, DirectMessage) and event.text == "intact"


def test_unknown_recipient_raises_user_not_found(alice: UserSession) -> None:
    with pytest.raises(UserNotFound, match=f"user {CAROL} is not online"):
        alice.direct_message(CAROL, "hello?", NOW)


# --- names ------------------------------------------------------------------------------------------

def test_resolve_by_id_label_and_prefix(alice: UserSession) -> None:
    assert alice.resolve(BOB).user_id == BOB
    assert alice.resolve("BOB").user_id == BOB
    assert alice.resolve(" bob ").user_id == BOB
    assert alice.resolve(BOB[:8]).user_id == BOB
    with pytest.raises(UserNotFound, match="user carol is not online"):
        alice.resolve("carol")
    with pytest.raises(UserNotFound):
        alice.resolve("b")  # too short to be an id prefix


def test_ambiguous_label_lists_the_candidates(keys: Keys, alice: UserSession) -> None:
    alice.receive_text(advert(keys, ALICE, MALLORY, keys.mallory, "Bob"), NOW)
    with pytest.raises(UserNotFound) as caught:
        alice.resolve("bob")
    assert BOB in caught.value.detail and MALLORY in caught.value.detail
    assert "use the user id" in caught.value.detail
    assert alice.resolve(MALLORY).user_id == MALLORY


def test_list_request_is_signed_and_addressed_to_the_server(keys: Keys, alice: UserSession) -> None:
    request = env.parse(alice.list_request(NOW))
    assert (request.type, request.sender, request.to, dict(request.payload)) == (
        FrameType.LIST_REQUEST, ALICE, SERVER_ID, {})
    assert request.verify(keys.alice.public_key())


# --- paired with the real server state machine -------------------------------------------------------

def test_two_sessions_through_server_state(keys: Keys) -> None:
    settings = ServerSettings(server_id=SERVER_ID, advertise_host="127.0.0.1", advertise_port=8765)
    server = ServerState(settings, keys.server, now=NOW)
    # alice does not know the server's id (her "*" hello is readdressed, PROTOCOL.md §3.6); bob does.
    sessions = {ALICE: UserSession(ALICE, keys.alice, {"display_name": "alice"}),
                BOB: UserSession(BOB, keys.bob, {"display_name": "bob"}, server_id=SERVER_ID)}
    links = {user_id: server.accept_link(NOW) for user_id in sessions}
    by_link = {link: user_id for user_id, link in links.items()}
    inbox: dict[str, list[ClientEvent]] = {ALICE: [], BOB: []}

    def pump(now: int) -> None:
        for action in server.data_to_send():
            if isinstance(action, Send):
                user_id = by_link[action.link_id]
                inbox[user_id].extend(sessions[user_id].receive_text(action.text, now))

    for user_id, session in sessions.items():
        server.receive_text(links[user_id], session.hello(NOW), NOW)
        pump(NOW)
        if any(isinstance(event, HelloReaddressed) for event in inbox[user_id]):
            server.receive_text(links[user_id], session.hello(NOW), NOW)
            pump(NOW)
    assert all(session.welcomed for session in sessions.values())
    assert inbox[ALICE][0] == HelloReaddressed(SERVER_ID) and isinstance(inbox[ALICE][1], Welcomed)
    assert isinstance(inbox[BOB][0], Welcomed)
    assert any(isinstance(e, UserOnline) and e.record.user_id == BOB and e.is_new for e in inbox[ALICE])
    assert sessions[BOB].resolve("alice").server_id == SERVER_ID

    server.receive_text(links[BOB], sessions[BOB].direct_message(ALICE, "hello through the core", NOW + 1), NOW + 1)
    pump(NOW + 1)
    messages = [e for e in inbox[ALICE] if isinstance(e, DirectMessage)]
    assert [(m.sender_label, m.text) for m in messages] == [("bob", "hello through the core")]

    server.receive_text(links[ALICE], sessions[ALICE].list_request(NOW + 2), NOW + 2)
    pump(NOW + 2)
    listing = [e for e in inbox[ALICE] if isinstance(e, UserList)]
    assert [record.label for record in listing[-1].records] == ["alice", "bob"]

    server.link_closed(links[BOB], NOW + 3)
    pump(NOW + 3)
    assert any(isinstance(e, UserOffline) and e.record.user_id == BOB for e in inbox[ALICE])
    assert not any(isinstance(e, FrameRejected) for events in inbox.values() for e in events)


def test_one_route_table_says_what_each_state_accepts_and_what_is_verified() -> None:
    assert set(ROUTES[SessionState.AWAITING_ACK]) == {FrameType.ACK, FrameType.ERROR}
    assert not any(route.verified for route in ROUTES[SessionState.AWAITING_ACK].values())  # nothing pinned yet
    assert ROUTES[SessionState.REFUSED] == {}
    welcomed_routes = ROUTES[SessionState.WELCOMED]
    assert {FrameType.USER_DELIVER, FrameType.MSG_PUBLIC_CHANNEL, FrameType.FILE_CHUNK, FrameType.HEARTBEAT,
            FrameType.DIRECTORY_RESPONSE} <= set(welcomed_routes)
    assert FrameType.USER_HELLO not in welcomed_routes and FrameType.SERVER_DELIVER not in welcomed_routes
    assert all(route.verified for route in welcomed_routes.values())


def test_frames_to_send_carry_their_msg_ref(keys: Keys, alice: UserSession) -> None:
    sent = alice.direct_message(BOB, "hi", NOW + 3)
    assert sent.msg_ref == env.parse(sent).msg_ref == f"MSG_DIRECT:{ALICE}:{BOB}:{NOW + 3}"
    assert MsgRef.parse(sent.msg_ref) == MsgRef("MSG_DIRECT", ALICE, BOB, NOW + 3)
    assert str(MsgRef.parse(sent.msg_ref)) == sent.msg_ref
    for text in (alice.list_request(NOW), alice.directory_query(NOW, login="bob"), alice.hello(NOW)):
        assert text.msg_ref == env.parse(text).msg_ref
    refused = ServerError("USER_NOT_FOUND", "gone", sent.msg_ref)
    assert refused.about is not None and refused.about.to == BOB
    assert ServerError("BAD_FRAME", "").about is None and MsgRef.parse("not:a:ref") is None
