"""The public channel (WIRE §5) through ServerState and UserSession on the fake wire: no event loop.

Sender keys: each sender's random 256-bit key reaches every member wrapped for it (PUBLIC_CHANNEL_KEY_SHARE)
before the sender's next message; a member who left never gets a key made after it left; servers fan out
without reading and refuse what does not verify.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from socp import crypto
from socp import envelope as env
from socp.actions import PublicChannelVersion, PublicWrapStored
from socp.codec import b64url_decode, b64url_encode, canonical_json
from socp.envelope import FrameType
from socp.user import DuplicateDelivery, FrameRejected, PublicKeyReceived, PublicMessage, PublicMessageUnreadable
from tests.unit.harness import Net, Node
from tests.unit.test_public_channel_support import SessionUser, session_users


@dataclass
class Channel:
    net: Net
    a: Node
    b: Node
    alice: SessionUser
    dave: SessionUser
    bob: SessionUser
    carol: SessionUser


@pytest.fixture
def channel(net: Net) -> Channel:
    """An introducer, peers A and B; alice and dave on A, bob and carol on B; everyone knows everyone."""
    intro = net.introducer("I")
    a, b = net.peer("A", intro), net.peer("B", intro)
    alice, dave = session_users(net, a, "alice", "dave")
    bob, carol = session_users(net, b, "bob", "carol")
    for user in (alice, dave, bob, carol):
        assert len(user.session.directory) == 4, user.session.directory.listing()
    return Channel(net, a, b, alice, dave, bob, carol)


def texts(user: SessionUser) -> list[tuple[str, str]]:
    return [(event.sender_label, event.text) for event in user.of(PublicMessage)]


def test_all_reaches_every_other_member_exactly_once(channel: Channel) -> None:
    channel.alice.public("hello everyone")
    for user in (channel.bob, channel.carol, channel.dave):
        assert texts(user) == [("alice", "hello everyone")]
        [share] = user.of(PublicKeyReceived)
        assert share.sender_id == channel.alice.user_id
    assert channel.alice.of(PublicMessage) == [] and channel.alice.frames(FrameType.MSG_PUBLIC_CHANNEL) == []


def test_a_second_copy_of_a_public_message_is_reported_not_shown(channel: Channel) -> None:
    sent = channel.alice.public("once")
    [delivered] = channel.bob.frames(FrameType.MSG_PUBLIC_CHANNEL)
    [event] = channel.bob.session.receive_text(delivered.to_wire(), channel.net.now)
    assert event == DuplicateDelivery(channel.alice.user_id, "alice", sent[-1].msg_ref)
    assert texts(channel.bob) == [("alice", "once")]


def test_the_key_is_shared_once_then_messages_reuse_it(channel: Channel) -> None:
    first = channel.alice.public("one")
    second = channel.alice.public("two")
    assert [env.parse(f).type for f in first] == [FrameType.PUBLIC_CHANNEL_KEY_SHARE, FrameType.MSG_PUBLIC_CHANNEL]
    assert [env.parse(f).type for f in second] == [FrameType.MSG_PUBLIC_CHANNEL]
    share = env.parse(first[0])
    members = sorted(s["member"] for s in share.payload["shares"])
    assert members == sorted(u.user_id for u in (channel.bob, channel.carol, channel.dave))
    assert texts(channel.carol) == [("alice", "one"), ("alice", "two")]
    ids = {event.key_id for event in channel.carol.of(PublicMessage)}
    assert ids == {share.payload["key_id"]}


def test_wire_shape_of_what_the_sender_and_the_servers_emit(channel: Channel) -> None:
    net, alice = channel.net, channel.alice
    frames = [env.parse(f) for f in alice.public("the shape of it")]
    share, message = frames
    assert (share.sender, share.to) == (alice.user_id, "*")
    assert set(share.payload) == {"shares", "creator_pub", "key_id", "content_sig"}
    assert crypto.verify(alice.key.public_key(), canonical_json(share.payload["shares"])
                         + share.payload["creator_pub"].encode(), share.payload["content_sig"])
    assert (message.sender, message.to) == (alice.user_id, "public")
    assert set(message.payload) == {"ciphertext", "sender_pub", "content_sig", "key_id"}
    signed = (message.payload["ciphertext"] + alice.user_id + str(message.ts)).encode()
    assert crypto.verify(alice.key.public_key(), signed, message.payload["content_sig"])
    # A forwards one SERVER_DELIVER, to "*" (one signature over the envelope), on every server link, user_id
    # "public" with kind; B hands it over under its own type.
    packets = net.packets(src="A", frame_type="SERVER_DELIVER")
    hops = [env.parse(p.text) for p in packets]
    assert {h.to for h in hops} == {"*"}
    kinds = sorted((p.dst, h.payload["kind"]) for p, h in zip(packets, hops, strict=True))
    assert kinds == [("B", "MSG_PUBLIC_CHANNEL"), ("B", "PUBLIC_CHANNEL_KEY_SHARE"),
                     ("I", "MSG_PUBLIC_CHANNEL"), ("I", "PUBLIC_CHANNEL_KEY_SHARE")]
    for hop in hops:
        assert hop.payload["user_id"] == "public" and hop.payload["sender"] == alice.user_id
        assert hop.ts in (share.ts, message.ts) and hop.verify(channel.a.key.public_key())
    [delivered] = channel.bob.frames(FrameType.MSG_PUBLIC_CHANNEL)
    assert (delivered.sender, delivered.to, delivered.ts) == (alice.user_id, "public", message.ts)
    assert dict(delivered.payload) == dict(message.payload)
    assert channel.bob.signed_by_server(delivered)
    # Servers only ever held ciphertext: the plaintext appears in no frame on the wire.
    assert "the shape of it" not in json.dumps([p.text for p in net.delivered])


def test_every_member_sending_reaches_everyone_else_once(channel: Channel) -> None:
    users = [channel.alice, channel.dave, channel.bob, channel.carol]
    for user in users:
        user.public(f"from {user.name}")
    for user in users:
        got = sorted(text for _, text in texts(user))
        assert got == sorted(f"from {other.name}" for other in users if other is not user)


def test_a_member_who_left_never_gets_the_new_key(channel: Channel) -> None:
    net, alice, carol = channel.net, channel.alice, channel.carol
    alice.public("before carol leaves")
    old_key = alice.session.group_key_id
    assert carol.session.has_group_key(alice.user_id, old_key)
    carol.disconnect()
    assert carol.user_id not in alice.session.directory
    frames = alice.public("after carol left")
    share, message = (env.parse(f) for f in frames)
    assert share.type is FrameType.PUBLIC_CHANNEL_KEY_SHARE and share.payload["key_id"] != old_key
    assert carol.user_id not in {s["member"] for s in share.payload["shares"]}
    assert texts(channel.bob)[-1] == ("alice", "after carol left")
    # Even with every frame the network carried, carol's session cannot read the new message.
    captured = [p.text for p in net.packets(dst="bob") if p.type in ("PUBLIC_CHANNEL_KEY_SHARE", "MSG_PUBLIC_CHANNEL")]
    late = [carol.session.receive_text(text, net.now) for text in captured[-2:]]
    assert late[0] == []  # the share has nothing for carol
    [unreadable] = late[1]
    assert isinstance(unreadable, PublicMessageUnreadable) and "never shared" in unreadable.reason
    assert unreadable.key_id == message.payload["key_id"]


def test_a_newcomer_reads_messages_sent_after_joining(channel: Channel) -> None:
    net, alice = channel.net, channel.alice
    alice.public("before erin")
    key_id = alice.session.group_key_id
    [erin] = session_users(net, channel.b, "erin")
    frames = alice.public("welcome erin")
    share = env.parse(frames[0])
    assert share.type is FrameType.PUBLIC_CHANNEL_KEY_SHARE
    assert [s["member"] for s in share.payload["shares"]] == [erin.user_id]  # nobody left: same key, newcomer only
    assert alice.session.group_key_id == key_id
    assert texts(erin) == [("alice", "welcome erin")]
    assert texts(channel.bob) == [("alice", "before erin"), ("alice", "welcome erin")]


def test_a_message_under_a_key_never_received_is_reported_not_dropped(channel: Channel) -> None:
    net, alice, bob = channel.net, channel.alice, channel.bob
    net.drop = lambda packet: packet.dst == "bob" and packet.type == "PUBLIC_CHANNEL_KEY_SHARE"
    alice.public("lost key")
    net.drop = None
    [event] = bob.events[-1:]
    assert isinstance(event, PublicMessageUnreadable)
    assert event.sender_label == "alice" and "never shared with us" in event.reason
    assert texts(channel.carol) == [("alice", "lost key")]


def test_the_server_refuses_public_frames_that_do_not_verify(channel: Channel) -> None:
    net, alice, mallory_key = channel.net, channel.alice, channel.bob.key
    ciphertext = crypto.aes_encrypt(b"k" * 32, b"x")
    bad_sig = alice.frame(FrameType.MSG_PUBLIC_CHANNEL, "public", {
        "ciphertext": ciphertext, "sender_pub": alice.pubkey, "key_id": "k",
        "content_sig": crypto.sign_public(mallory_key, ciphertext, alice.user_id, net.now)})
    wrong_key = alice.frame(FrameType.MSG_PUBLIC_CHANNEL, "public", {
        "ciphertext": ciphertext, "sender_pub": channel.bob.pubkey, "key_id": "k",
        "content_sig": crypto.sign_public(mallory_key, ciphertext, alice.user_id, net.now)})
    misaddressed = alice.frame(FrameType.MSG_PUBLIC_CHANNEL, channel.bob.user_id, {
        "ciphertext": ciphertext, "sender_pub": alice.pubkey, "key_id": "k",
        "content_sig": crypto.sign_public(alice.key, ciphertext, alice.user_id, net.now)})
    shares = [{"member": channel.bob.user_id, "wrapped_public_channel_key": "AAAA"}]
    forged_share = alice.frame(FrameType.PUBLIC_CHANNEL_KEY_SHARE, "*", {
        "shares": shares, "creator_pub": alice.pubkey, "key_id": "k",
        "content_sig": crypto.sign_key_share(mallory_key, shares, alice.pubkey)})
    broken_shares = alice.frame(FrameType.PUBLIC_CHANNEL_KEY_SHARE, "*", {
        "shares": ["not an object"], "creator_pub": alice.pubkey, "key_id": "k",
        "content_sig": crypto.sign_key_share(alice.key, ["not an object"], alice.pubkey)})
    before = len(net.packets(src="A", frame_type="SERVER_DELIVER"))
    for frame, code, words in [(bad_sig, "INVALID_SIG", "content_sig"), (wrong_key, "BAD_FRAME", "sender_pub"),
                               (misaddressed, "BAD_FRAME", "'public'"), (forged_share, "INVALID_SIG", "content_sig"),
                               (broken_shares, "BAD_FRAME", "member")]:
        alice.clear()
        alice.send(frame)
        [error] = alice.errors()
        assert error.payload["code"] == code and words in error.payload["detail"], error.payload
        assert error.payload["msg_ref"] == frame.msg_ref
    assert len(net.packets(src="A", frame_type="SERVER_DELIVER")) == before
    assert channel.dave.frames(FrameType.MSG_PUBLIC_CHANNEL) == []
    assert all(not isinstance(e, PublicMessage) for u in (channel.bob, channel.dave) for e in u.events)


def test_a_server_that_alters_a_message_is_caught_by_the_recipient(channel: Channel) -> None:
    net, alice, bob = channel.net, channel.alice, channel.bob
    alice.public("genuine")
    [delivered] = bob.frames(FrameType.MSG_PUBLIC_CHANNEL)
    blob = b64url_decode(delivered.payload["ciphertext"])
    altered = b64url_encode(blob[:-1] + bytes([blob[-1] ^ 1]))
    # B re-signs the altered frame with its own key: the transport signature holds, content_sig does not.
    forged = env.make(FrameType.MSG_PUBLIC_CHANNEL, alice.user_id, "public", delivered.ts + 1,
                      {**delivered.payload, "ciphertext": altered}, channel.b.key)
    [event] = bob.session.receive_text(forged.to_wire(), net.now)
    assert isinstance(event, FrameRejected) and "content_sig does not verify" in event.reason
    # A key share naming another key than the sender's advertised one is refused too.
    [share] = bob.frames(FrameType.PUBLIC_CHANNEL_KEY_SHARE)
    swapped = env.make(FrameType.PUBLIC_CHANNEL_KEY_SHARE, alice.user_id, "*", share.ts + 1,
                       {**share.payload, "creator_pub": channel.carol.pubkey}, channel.b.key)
    [event] = bob.session.receive_text(swapped.to_wire(), net.now)
    assert isinstance(event, FrameRejected) and "not the key advertised" in event.reason


def test_membership_announcements_and_stored_wraps(channel: Channel) -> None:
    net, a, b = channel.net, channel.a, channel.b
    assert a.state.public_version == 2 and b.state.public_version == 2
    assert [e.version for e in a.events_of(PublicChannelVersion)] == [1, 2]
    adds = [env.parse(p.text) for p in net.packets(src="A", dst="B", frame_type="PUBLIC_CHANNEL_ADD")]
    assert [(f.payload["add"], f.payload["if_version"]) for f in adds] == [
        ([channel.alice.user_id], 0), ([channel.dave.user_id], 1)]
    assert all(f.verify(a.key.public_key()) for f in adds)
    status = b.state.status()["public_channel"]
    assert status == {"version": 2, "local_members": 2, "members": 4}
    channel.alice.public("wraps")
    wraps = {e.member_id for e in b.events_of(PublicWrapStored)}
    assert wraps == {channel.bob.user_id, channel.carol.user_id}
    channel.dave.disconnect()
    assert a.state.public_version == 3
    [update] = [env.parse(p.text) for p in net.packets(src="A", dst="B", frame_type="PUBLIC_CHANNEL_UPDATED")][-1:]
    assert update.payload["version"] == 3
    assert [w["member_id"] for w in update.payload["wraps"]] == [channel.alice.user_id]
    assert all("wrapped_key" in w for w in update.payload["wraps"])
    assert b.state.status()["public_channel"]["members"] == 3


def test_users_cannot_send_membership_announcements(channel: Channel) -> None:
    alice = channel.alice
    alice.send(alice.frame(FrameType.PUBLIC_CHANNEL_ADD, "*", {"add": [alice.user_id], "if_version": 0}))
    [error] = alice.errors()
    assert error.payload["code"] == "BAD_FRAME"


def test_a_malformed_public_delivery_from_a_server_reaches_nobody(channel: Channel) -> None:
    net, a, b = channel.net, channel.a, channel.b
    for payload in ({"user_id": "public", "sender": channel.alice.user_id, "kind": "MSG_PUBLIC_CHANNEL",
                     "sender_pub": channel.alice.pubkey, "content_sig": "x"},
                    {"user_id": "public", "sender": channel.alice.user_id, "kind": "USER_HELLO", "pubkey": "x"},
                    {"user_id": "public", "kind": "MSG_PUBLIC_CHANNEL", "ciphertext": "x", "sender_pub": "x",
                     "content_sig": "x"}):
        frame = env.make(FrameType.SERVER_DELIVER, a.server_id, b.server_id, net.now, payload, a.key)
        net.inject("A", "B", frame.to_wire())
        net.now += 1
    errors = [env.parse(p.text) for p in net.packets(src="B", dst="A", frame_type="ERROR")]
    assert [e.payload["code"] for e in errors] == ["BAD_FRAME"] * 3
    assert channel.bob.frames(FrameType.MSG_PUBLIC_CHANNEL) == [] and a.server_id in b.state.linked_servers
