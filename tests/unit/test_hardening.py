"""Refusals added after review: gossip impersonation, oversized ciphertexts, key changes, ERROR ping-pong."""

from __future__ import annotations

from dataclasses import replace

import pytest

from socp import crypto
from socp import envelope as env
from socp.envelope import FrameType
from socp.errors import CryptoError, TooLarge
from socp.settings import JOIN_TIMEOUT_FLOOR_MS
from socp.user import FrameRejected, UserList, UserSession
from tests.keypool import KeyPool
from tests.unit.conftest import TwoServers
from tests.unit.harness import TICK, Net


def test_a_server_cannot_rebind_a_known_user_to_its_own_key(two: TwoServers, key_pool: KeyPool) -> None:
    net, a, b, alice, bob = two.net, two.a, two.b, two.alice, two.bob
    rogue_key = key_pool.key(21)
    forged = env.make(FrameType.USER_ADVERTISE, b.server_id, "*", net.now,
                      {"user_id": alice.user_id, "server_id": b.server_id,
                       "pubkey": crypto.encode_public_key(rogue_key.public_key()), "meta": {}}, b.key)
    net.inject("B", "A", forged.to_wire())
    record = a.state.directory.get(alice.user_id)
    assert record is not None and record.pubkey == alice.pubkey and record.server_id == a.server_id
    # The same forgery in a snapshot is refused too, and bob's own presence (with his attestation) survives it.
    adverts = [env.parse(p.text).payload for p in net.packets(src="B", dst="A", frame_type="USER_ADVERTISE")]
    [bobs_attest] = [advert["attest"] for advert in adverts if advert["user_id"] == bob.user_id]
    snapshot = env.make(FrameType.SERVER_PRESENCE_SYNC, b.server_id, a.server_id, net.now + 1,
                        {"server_id": b.server_id, "version": 99, "users": [
                            {"user_id": bob.user_id, "pubkey": bob.pubkey, "meta": {}, "attest": bobs_attest},
                            {"user_id": alice.user_id, "pubkey": crypto.encode_public_key(rogue_key.public_key()),
                             "meta": {}}]}, b.key)
    net.inject("B", "A", snapshot.to_wire())
    assert a.state.directory.get(alice.user_id).pubkey == alice.pubkey  # type: ignore[union-attr]
    assert a.state.directory.location(bob.user_id) == b.server_id


def test_server_refuses_a_direct_message_beyond_the_block_limit(two: TwoServers) -> None:
    alice, bob = two.alice, two.bob
    alice.send_direct(bob, b"x" * (crypto.MAX_DIRECT_BLOCKS * crypto.OAEP_MAX_PLAINTEXT + 1))
    errors = alice.errors("TOO_LARGE")
    assert len(errors) == 1 and "RSA blocks" in errors[0].payload["detail"]
    assert bob.received(FrameType.USER_DELIVER) == [] and not alice.closed


def test_an_error_is_never_answered_with_an_error(two: TwoServers) -> None:
    net, a, b = two.net, two.a, two.b
    unverifiable = env.make(FrameType.ERROR, b.server_id, a.server_id, net.now,
                            {"code": "BAD_FRAME", "detail": "whatever"})           # unsigned: fails verification
    before = len(net.packets(src="A", dst="B", frame_type="ERROR"))
    net.inject("B", "A", unverifiable.to_wire())
    assert len(net.packets(src="A", dst="B", frame_type="ERROR")) == before


def _welcomed_session(key_pool: KeyPool, net: Net) -> tuple[UserSession, crypto.PrivateKey, str]:
    server_key = key_pool.key(22)
    server_id = net.new_id()
    session = UserSession(net.new_id(), key_pool.key(23), {"display_name": "me"})
    session.hello(net.now)
    ack = env.make(FrameType.ACK, server_id, session.user_id, net.now,
                   {"msg_ref": "USER_HELLO", "server_id": server_id,
                    "server_pub": crypto.encode_public_key(server_key.public_key())}, server_key)
    session.receive_text(ack.to_wire(), net.now)
    return session, server_key, server_id


def test_client_refuses_a_changed_key_for_a_known_user(key_pool: KeyPool, net: Net) -> None:
    session, server_key, server_id = _welcomed_session(key_pool, net)
    carol = net.new_id()

    def advert(key_index: int, ts: int) -> str:
        return env.make(FrameType.USER_ADVERTISE, server_id, session.user_id, ts,
                        {"user_id": carol, "server_id": server_id, "pubkey": key_pool.public_text(key_index),
                         "meta": {"display_name": "carol"}}, server_key).to_wire()

    session.receive_text(advert(10, net.now), net.now)
    events = session.receive_text(advert(11, net.now + 1), net.now + 1)
    assert len(events) == 1 and isinstance(events[0], FrameRejected) and "changed" in events[0].reason
    assert session.directory.get(carol).pubkey == key_pool.public_text(10)  # type: ignore[union-attr]
    listing = env.make(FrameType.LIST_RESPONSE, server_id, session.user_id, net.now + 2, {"users": [
        {"user_id": carol, "server_id": server_id, "pubkey": key_pool.public_text(11), "meta": {}}]}, server_key)
    events = session.receive_text(listing.to_wire(), net.now + 2)
    assert isinstance(events[0], FrameRejected) and isinstance(events[-1], UserList)
    assert all(record.user_id != carol for record in events[-1].records)


def test_client_refuses_to_send_or_decrypt_oversized_direct_messages(key_pool: KeyPool, net: Net) -> None:
    session, server_key, server_id = _welcomed_session(key_pool, net)
    dave = net.new_id()
    session.receive_text(env.make(FrameType.USER_ADVERTISE, server_id, session.user_id, net.now,
                                  {"user_id": dave, "server_id": server_id, "pubkey": key_pool.public_text(10),
                                   "meta": {}}, server_key).to_wire(), net.now)
    with pytest.raises(TooLarge, match="send it as a file"):
        session.direct_message(dave, "x" * (crypto.MAX_DIRECT_BLOCKS * crypto.OAEP_MAX_PLAINTEXT + 1), net.now)
    huge = crypto.rsa_encrypt(key_pool.key(23).public_key(), b"y" * (crypto.MAX_DIRECT_BLOCKS + 1) * 446)
    with pytest.raises(CryptoError, match="exceeds"):
        crypto.rsa_decrypt(key_pool.key(23), huge, crypto.MAX_DIRECT_BLOCKS)


def test_a_silent_introducer_does_not_stall_the_join(net: Net) -> None:
    intro = net.introducer("I")
    net.drop = lambda packet: packet.src == "I"      # accepts connections, never answers
    peer = net.peer("P", via=intro)
    net.run(peer.state.settings.join_wait_ms + 1_000)
    joins = [dial for dial in net.dials if dial.src == "P"]
    assert len(joins) >= 2, "P gave up on the silent introducer and dialed again"
    net.drop = None
    net.run_until(lambda: peer.state.joined and net.full_mesh(), 30_000, "P joins once I answers")


def test_a_busy_introducer_gets_the_whole_join_wait(net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.harness import FAST
    intro = net.introducer("I")
    # I is busy (say, welcoming twenty others): it accepted the connection but reads nothing and runs no timer.
    net.drop = lambda packet: "I" in (packet.src, packet.dst)
    monkeypatch.setattr(intro.state, "next_deadline", lambda: net.now + 10**9)
    peer = net.peer("P", via=intro)
    wait = peer.state.settings.join_wait_ms
    assert wait == max(FAST["peer_timeout_ms"], JOIN_TIMEOUT_FLOOR_MS) == JOIN_TIMEOUT_FLOOR_MS
    net.run(wait - TICK)
    assert len([dial for dial in net.dials if dial.src == "P"]) == 1, "no second join while the first may succeed"
    net.run(2 * TICK + FAST["backoff_max_ms"])
    assert len([dial for dial in net.dials if dial.src == "P"]) >= 2, "then the next attempt"


def test_a_malformed_forward_bounces_an_error_to_the_sender(two: TwoServers) -> None:
    net, a, b, alice, bob = two.net, two.a, two.b, two.alice, two.bob
    # A (faulty or foreign) forwards alice's message without its content_sig: B must refuse it, and alice hear.
    original = alice.direct_frame(bob, b"hi")
    broken = env.make(FrameType.SERVER_DELIVER, a.server_id, b.server_id, original.ts,
                      {"user_id": bob.user_id, "sender": alice.user_id, "ciphertext": original.payload["ciphertext"],
                       "sender_pub": alice.pubkey}, a.key)
    net.inject("A", "B", broken.to_wire())
    assert bob.received(FrameType.USER_DELIVER) == []
    errors = [p for p in net.packets(src="B", dst="A", frame_type="ERROR")]
    assert errors and "content_sig" in errors[-1].text


def test_heartbeats_are_signed_over_the_whole_envelope(two: TwoServers) -> None:
    """WIRE §2 (issue 11 finding 4): a HEARTBEAT re-sent with a fresh ts no longer verifies."""
    net, a = two.net, two.a
    net.run(6 * 1_000)
    beat = env.parse(net.packets(src="A", frame_type="HEARTBEAT")[-1].text)
    assert beat.verify(a.key.public_key())
    assert not replace(beat, ts=beat.ts + 1_000).verify(a.key.public_key())
    assert not replace(beat, to=two.b.server_id).verify(a.key.public_key())


def test_one_heartbeat_frame_per_round_serves_every_link(two: TwoServers) -> None:
    net, a = two.net, two.a
    before = a.state.status()["heartbeat_signatures"]
    net.run(6 * 1_000)
    beats = net.packets(src="A", frame_type="HEARTBEAT")
    rounds: dict[int, set[str]] = {}
    for packet in beats:
        frame = env.parse(packet.text)
        assert frame.to == "*"
        rounds.setdefault(frame.ts, set()).add(packet.text)
    assert {packet.dst for packet in beats} == {"I", "B"}
    assert all(len(texts) == 1 for texts in rounds.values()), "the same frame text on every link of a round"
    assert a.state.status()["heartbeat_signatures"] - before == len(rounds) <= 6


def test_bounces_of_forwards_sharing_a_millisecond_reach_their_own_senders(two: TwoServers) -> None:
    net, a, b, alice, bob = two.net, two.a, two.b, two.alice, two.bob
    carol, dave = net.user("carol", a), net.user("dave", b)
    net.drop = lambda packet: packet.src == "B" and packet.type in ("USER_REMOVE", "SERVER_PRESENCE_SYNC")
    dave.disconnect()
    # Same servers, same millisecond: both SERVER_DELIVERs carry the msg_ref SERVER_DELIVER:A:B:<now>; alice's
    # is delivered, carol's bounces, and the bounce must not be pinned on alice's (earlier) forward.
    alice.send_direct(bob, b"bob?", pump=False)
    to_dave = carol.send_direct(dave, b"dave?", pump=False)
    net.pump()
    assert len(bob.received(FrameType.USER_DELIVER)) == 1
    assert alice.errors("USER_NOT_FOUND") == []
    [carol_error] = carol.errors("USER_NOT_FOUND")
    assert carol_error.payload["msg_ref"] == to_dave.msg_ref
