"""Delivery receipts (WIRE §7, PROTOCOL.md §7.1) on the fake wire: each outcome path of a forwarded message."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from socp.actions import FramesDelivered
from socp.envelope import Envelope, FrameType, parse
from socp.server.receipts import digest_of
from socp.settings import DEFAULT_MAX_FRAME_BYTES, RECEIPT_BATCH_BUSY_MS, RECEIPT_BATCH_MS
from socp.user.receipts import Receipts as ClientReceipts
from tests.unit.harness import TICK, TIMINGS, FakeUser, Net, Node, Packet

BOUND = TIMINGS.delivery_bound_ms
BATCHES = 4 * max(TICK, RECEIPT_BATCH_MS)
"""Long enough for two batched hops (far server → origin → sender) to be flushed by the timers."""


@dataclass
class Pair:
    net: Net
    intro: Node
    a: Node
    b: Node
    alice: FakeUser
    bob: FakeUser


@pytest.fixture
def pair(net: Net) -> Pair:
    """alice (asking for receipts) on A, bob on B."""
    intro = net.introducer("I")
    a = net.peer("A", intro)
    b = net.peer("B", intro)
    alice = net.user("alice")
    alice.meta["features"] = ["delivery_receipts"]
    alice.connect(a)
    bob = net.user("bob", b)
    assert net.full_mesh(), net.describe()
    net.run_until(lambda: bob.user_id in alice.known, 5_000, "alice learns of bob")
    return Pair(net, intro, a, b, alice, bob)


def receipts(user: FakeUser) -> list[str]:
    """msg_ref of every receipt the user got, coalesced ones unpacked (the welcome's ACK aside)."""
    refs: list[str] = []
    for f in user.received(FrameType.ACK):
        if f.payload["msg_ref"] != "USER_HELLO":
            refs += [r["msg_ref"] for r in f.payload["receipts"]] if "receipts" in f.payload else [f.payload["msg_ref"]]
    return refs


def deliveries(user: FakeUser, sent: Envelope) -> int:
    """Copies of ``sent`` handed to ``user``."""
    return sum(1 for f in user.received(FrameType.USER_DELIVER)
               if f.ts == sent.ts and f.payload["ciphertext"] == sent.payload["ciphertext"])


def restart(net: Net, old: Node, intro: Node, *, keep_delivered: bool = False) -> Node:
    """A crashed server comes back: same id, key and address, nothing else remembered (``keep_delivered``: but
    the digests it delivered, as its database gives them back)."""
    from socp.server import BootstrapEntry
    delivered = {digest: until for event in old.events if isinstance(event, FramesDelivered)
                 for digest, until in event.delivered} if keep_delivered else None
    return net.server(old.name, server_id=old.server_id, key=old.key, host=old.host, port=old.port,
                      bootstrap=[BootstrapEntry(intro.host, intro.port, intro.pubkey)], delivered=delivered)


def crash_with_one_in_flight(pair: Pair) -> Envelope:
    """B stalls, alice sends bob a DM (A forwards it; nothing answers), then B crashes: the DM stays in flight
    at A. Returns the DM."""
    pair.net.pause(pair.b)
    sent = pair.alice.direct_frame(pair.bob)
    pair.alice.send(sent)
    pair.net.crash(pair.b)
    pair.net.paused.discard("B")
    return sent


def test_features_are_announced_and_learned(pair: Pair) -> None:
    assert pair.a.state.receipts.capable(pair.b.server_id)
    assert pair.b.state.receipts.capable(pair.a.server_id)
    assert pair.a.state.receipts.capable(pair.intro.server_id)


def test_a_forwarded_message_is_acked_to_its_sender_once_delivered(pair: Pair) -> None:
    sent = pair.alice.direct_frame(pair.bob)
    pair.alice.send(sent)
    assert deliveries(pair.bob, sent) == 1
    assert receipts(pair.alice) == []  # batched: the receipts wait for the timers
    pair.net.run_until(lambda: bool(receipts(pair.alice)), BATCHES, "the receipt")
    assert receipts(pair.alice) == [sent.msg_ref]
    assert pair.a.state.receipts.in_flight == 0
    # One receipt from B to A for the forwarded frame, in the single form.
    [ack] = pair.net.packets(src="B", dst="A", frame_type="ACK")
    assert "digests" not in json.loads(ack.text)["payload"]


def test_a_local_delivery_is_acked_within_a_batch(pair: Pair) -> None:
    carol = pair.net.user("carol", pair.a)
    sent = pair.alice.direct_frame(carol)
    pair.alice.send(sent)
    assert deliveries(carol, sent) == 1
    took = pair.net.run_until(lambda: bool(receipts(pair.alice)), BATCHES, "the receipt")
    assert took <= max(TICK, RECEIPT_BATCH_MS)  # one timer run after the batch is due
    assert receipts(pair.alice) == [sent.msg_ref]


def test_no_receipts_for_a_client_that_did_not_ask(pair: Pair) -> None:
    sent = pair.bob.direct_frame(pair.alice)
    pair.bob.send(sent)
    assert deliveries(pair.alice, sent) == 1
    pair.net.run_until(lambda: pair.b.state.receipts.in_flight == 0, BATCHES, "A's receipt to B")
    assert receipts(pair.bob) == []
    assert pair.b.state.receipts.in_flight == 0


def test_a_message_in_flight_when_the_link_dies_is_sent_again_when_it_is_back(pair: Pair) -> None:
    net = pair.net
    net.pause(pair.b)
    sent = pair.alice.direct_frame(pair.bob)
    pair.alice.send(sent)
    assert pair.a.state.receipts.in_flight == 1
    net.run_until(lambda: pair.b.server_id not in pair.a.state.linked_servers, 10_000, "A drops B")
    assert receipts(pair.alice) == [] and not pair.alice.errors()
    net.resume(pair.b)
    net.run_until(lambda: receipts(pair.alice) == [sent.msg_ref], BOUND, "the receipt after the link is back")
    assert deliveries(pair.bob, sent) == 1
    assert pair.a.state.receipts.resent >= 1
    assert not pair.alice.errors()


def test_a_message_to_a_restarted_server_is_delivered_after_it_comes_back(pair: Pair) -> None:
    net = pair.net
    sent = crash_with_one_in_flight(pair)
    net.run_until(lambda: pair.b.server_id not in pair.a.state.linked_servers, 10_000, "A drops B")
    b2 = restart(net, pair.b, pair.intro)
    bob2 = net.users["bob"]
    bob2.inbox.clear()
    bob2.connect(b2, pump=False)
    net.run_until(lambda: bool(receipts(pair.alice)) or bool(pair.alice.errors()), BOUND, "an outcome")
    assert receipts(pair.alice) == [sent.msg_ref], pair.alice.errors()
    assert deliveries(bob2, sent) == 1


def test_the_sender_is_told_timeout_when_the_bound_passes(pair: Pair) -> None:
    net = pair.net
    in_flight = crash_with_one_in_flight(pair)
    net.run_until(lambda: pair.b.server_id not in pair.a.state.linked_servers, 10_000, "A drops B")
    # alice was told why bob went away; while the hold lasts, a message to bob is kept too (not refused).
    [remove] = [f for f in pair.alice.received(FrameType.USER_REMOVE) if f.payload["user_id"] == pair.bob.user_id]
    assert remove.payload["reason"] == "server_unreachable"
    held = pair.alice.direct_frame(pair.bob)
    pair.alice.send(held)
    assert not pair.alice.errors()
    net.run_until(lambda: len(pair.alice.errors()) == 2, BOUND + 2_000, "two TIMEOUT errors")
    errors = pair.alice.errors()
    assert {e.payload["code"] for e in errors} == {"TIMEOUT"}
    assert {e.payload["msg_ref"] for e in errors} == {in_flight.msg_ref, held.msg_ref}
    assert receipts(pair.alice) == []
    assert pair.a.state.receipts.in_flight == 0
    # After the hold, bob is simply unknown.
    net.run(TIMINGS.presence_sync_interval_ms * 2)
    late = pair.alice.direct_frame(pair.bob)
    pair.alice.send(late)
    assert [e.payload["code"] for e in pair.alice.errors() if e.payload.get("msg_ref") == late.msg_ref] == \
        ["USER_NOT_FOUND"]


def test_a_repeat_is_acked_again_but_not_delivered_twice(pair: Pair) -> None:
    sent = pair.alice.direct_frame(pair.bob)
    pair.alice.send(sent)
    pair.net.run_until(lambda: bool(receipts(pair.alice)), BATCHES, "the receipt")
    [forward] = pair.net.packets(src="A", dst="B", frame_type="SERVER_DELIVER")
    pair.net.inject("A", "B", forward.text)
    pair.net.run_until(lambda: len(pair.net.packets(src="B", dst="A", frame_type="ACK")) == 2, BATCHES,
                       "the repeat's receipt")
    pair.net.run(BATCHES)
    assert deliveries(pair.bob, sent) == 1
    assert receipts(pair.alice) == [sent.msg_ref]


def test_a_recipient_gone_at_the_far_end_is_reported(pair: Pair) -> None:
    sent = pair.alice.direct_frame(pair.bob)
    pair.bob.disconnect(pump=False)      # B learns it first; A only after it forwarded the message
    pair.alice.send(sent)
    errors = pair.alice.errors("USER_NOT_FOUND")
    assert [e.payload["msg_ref"] for e in errors] == [sent.msg_ref]
    assert pair.a.state.receipts.in_flight == 0
    assert receipts(pair.alice) == []


def test_a_server_without_the_extension_gets_the_standard_behaviour(pair: Pair) -> None:
    net = pair.net
    # B announced nothing (another implementation): no receipts, nothing kept, nothing resent.
    pair.a.state.book[pair.b.server_id].features = frozenset()
    pair.b.state.book[pair.a.server_id].features = frozenset()
    sent = pair.alice.direct_frame(pair.bob)
    pair.alice.send(sent)
    assert deliveries(pair.bob, sent) == 1
    net.run(BATCHES)
    assert receipts(pair.alice) == []
    assert net.packets(src="B", dst="A", frame_type="ACK") == []
    assert pair.a.state.receipts.in_flight == 0
    net.pause(pair.b)
    lost = pair.alice.direct_frame(pair.bob)
    pair.alice.send(lost)
    net.run_until(lambda: pair.b.server_id not in pair.a.state.linked_servers, 10_000, "A drops B")
    net.run(BOUND)
    assert receipts(pair.alice) == [] and not pair.alice.errors("TIMEOUT")
    assert pair.a.state.receipts.in_flight == 0


def test_a_resent_message_waits_for_its_recipient_to_reconnect_to_the_restarted_server(pair: Pair) -> None:
    net = pair.net
    sent = crash_with_one_in_flight(pair)
    net.run_until(lambda: pair.b.server_id not in pair.a.state.linked_servers, 10_000, "A drops B")
    b2 = restart(net, pair.b, pair.intro)
    net.run_until(lambda: b2.server_id in pair.a.state.linked_servers, 5_000, "A links with the new B")
    net.run(1_000)  # the resend met USER_NOT_FOUND: bob is not back yet
    assert pair.a.state.receipts.in_flight == 1
    assert receipts(pair.alice) == [] and not pair.alice.errors()
    bob = net.users["bob"]
    bob.inbox.clear()
    bob.connect(b2)
    net.run_until(lambda: bool(receipts(pair.alice)), 3_000, "the receipt once bob is back")
    assert receipts(pair.alice) == [sent.msg_ref] and not pair.alice.errors()
    assert deliveries(bob, sent) == 1
    assert pair.a.state.receipts.in_flight == 0


def test_a_parked_message_times_out_when_its_recipient_stays_away(pair: Pair) -> None:
    net = pair.net
    sent = crash_with_one_in_flight(pair)
    restart(net, pair.b, pair.intro)
    net.run_until(lambda: bool(pair.alice.errors()), BOUND + 2_000, "an outcome")
    assert [(e.payload["code"], e.payload["msg_ref"]) for e in pair.alice.errors()] == [("TIMEOUT", sent.msg_ref)]
    assert pair.a.state.receipts.in_flight == 0


def test_a_burst_costs_a_few_receipt_signatures_and_every_message_is_delivered(pair: Pair) -> None:
    """50 DMs forwarded A→B at once: B signs its receipts in ≤ 2 ACKs, A its sender ACKs in ≤ 2, and the
    sender's session turns them into 50 Delivered events."""
    net, a, b = pair.net, pair.a.state, pair.b.state
    burst = [pair.alice.direct_frame(pair.bob, ts=net.now - i) for i in range(50)]
    a_signed, b_signed = a.out.signatures, b.out.signatures
    a_acks, b_acks = a.receipts.acks_sent, b.receipts.acks_sent
    mark = len(net.delivered)
    for sent in burst:
        pair.alice.send(sent, pump=False)
    net.pump()
    assert all(deliveries(pair.bob, sent) == 1 for sent in burst)
    net.run_until(lambda: len(receipts(pair.alice)) == 50, BATCHES, "50 receipts")
    assert sorted(receipts(pair.alice)) == sorted(sent.msg_ref for sent in burst)
    assert a.receipts.in_flight == 0
    b_receipt_acks = net.packets(src="B", dst="A", frame_type="ACK")
    a_sender_acks = [f for f in pair.alice.received(FrameType.ACK) if f.payload["msg_ref"] != "USER_HELLO"]
    assert b.receipts.acks_sent - b_acks == len(b_receipt_acks) <= 2
    assert a.receipts.acks_sent - a_acks == len(a_sender_acks) <= 2
    # Signatures: one per frame B delivered to bob / A forwarded to B, one per receipt ACK, and one per other
    # frame the servers sent meanwhile (heartbeats, at most): so at most 2 receipt signatures each.
    window = net.delivered[mark:]
    b_other = sum(1 for p in window if p.src == "B" and p.type not in ("USER_DELIVER", "ACK"))
    a_other = sum(1 for p in window if p.src == "A" and p.type not in ("SERVER_DELIVER", "ACK"))
    assert b.out.signatures - b_signed <= 50 + 2 + b_other
    assert a.out.signatures - a_signed <= 50 + 2 + a_other
    # The sender's session: each coalesced ACK yields one Delivered per entry.
    client = ClientReceipts()
    client.enabled = True
    for sent in burst:
        client.track(sent.msg_ref, net.now)
    events = [event for f in a_sender_acks for event in client.on_ack(f.payload)]
    assert [type(e).__name__ for e in events] == ["Delivered"] * 50
    assert client.pending == []


def test_a_receipt_from_another_server_settles_nothing(pair: Pair) -> None:
    """Only the server a frame was forwarded to can settle it (a coalesced ACK names many digests)."""
    net = pair.net
    sent = pair.alice.direct_frame(pair.bob)
    pair.alice.send(sent)
    [forward] = net.packets(src="A", dst="B", frame_type="SERVER_DELIVER")
    digest = digest_of(parse(forward.text, DEFAULT_MAX_FRAME_BYTES))
    forged = pair.intro.state.out.make(FrameType.ACK, pair.a.server_id, net.now,
                                       {"msg_ref": "x", "digest": digest, "digests": [digest]})
    net.inject("I", "A", forged.to_wire())
    assert pair.a.state.receipts.in_flight == 1  # B's receipt is still queued at B; the forgery did nothing
    net.run_until(lambda: receipts(pair.alice) == [sent.msg_ref], BATCHES, "B's receipt")
    assert pair.a.state.receipts.in_flight == 0


def test_a_batch_keeps_growing_while_the_core_has_input_waiting(pair: Pair) -> None:
    """With a backlog (the shell's ``processed_until``) a due batch waits, up to RECEIPT_BATCH_BUSY_MS."""
    net, b = pair.net, pair.b
    first = pair.alice.direct_frame(pair.bob)
    pair.alice.send(first)
    queued_at = net.now
    assert b.state.next_deadline() <= queued_at + RECEIPT_BATCH_MS
    b.state.handle_timer(queued_at + RECEIPT_BATCH_MS, processed_until=queued_at + RECEIPT_BATCH_MS - 1)
    net._collect(b)
    net.pump()
    assert net.packets(src="B", dst="A", frame_type="ACK") == []  # behind on input: not yet
    second = pair.alice.direct_frame(pair.bob, ts=net.now + 1)
    pair.alice.send(second)
    late = queued_at + RECEIPT_BATCH_BUSY_MS
    b.state.handle_timer(late, processed_until=late - 1)  # still behind, but the batch is as old as allowed
    net._collect(b)
    net.pump()
    [ack] = net.packets(src="B", dst="A", frame_type="ACK")
    assert len(json.loads(ack.text)["payload"]["digests"]) == 2


def test_the_receipts_of_file_frames_are_not_held_for_a_batch(net: Net) -> None:
    """A file sender waits for the receipts of a small window of chunks: each hop sends a file frame's receipt
    at once (with any receipt queued beside it), where a DM's waits for its batch."""
    from socp.user import HYBRID_CHUNK_BYTES
    from tests.unit.test_public_channel_support import session_users

    intro = net.introducer("I")
    a, b = net.peer("A", intro), net.peer("B", intro)
    [alice] = session_users(net, a, "alice")
    [bob] = session_users(net, b, "bob")
    assert alice.session.receipts_enabled and alice.session.takes_hybrid_files(bob.user_id)
    frames = alice.file_frames(bob.user_id, "photo.bin", b"x" * (2 * HYBRID_CHUNK_BYTES + 5))
    start, chunks = frames[0], frames[1:-1]
    for frame in [start, *chunks]:
        alice.send(frame)  # delivered and receipted on both hops without any timer running
    acked = [receipt for f in alice.received(FrameType.ACK) if f.payload["msg_ref"] != "USER_HELLO"
             for receipt in f.payload.get("receipts", [f.payload])]
    assert [r.get("index") for r in acked] == [None, 0, 1, 2]
    assert all(r["file_id"] == acked[0]["file_id"] for r in acked)
    assert a.state.receipts.in_flight == 0
    # Each file frame's receipt went out alone: one ACK per frame per hop.
    assert len(net.packets(src="B", dst="A", frame_type="ACK")) == 1 + len(chunks)


@pytest.mark.parametrize("receipt_comes", [True, False])
def test_a_frame_resent_just_before_its_bound_waits_for_its_receipt(pair: Pair, receipt_comes: bool) -> None:
    """A frame resent on a live link shortly before its bound (here: B comes back with 1 s left) is not
    reported TIMEOUT while its receipt may be on the way; with no receipt, TIMEOUT comes once the grace after
    the resend has passed."""
    from socp.settings import SENT_LATE_GRACE_MS

    net, a = pair.net, pair.a.state
    net.pause(pair.b)
    sent = pair.alice.direct_frame(pair.bob)
    pair.alice.send(sent)
    bound_at = net.now + BOUND
    net.run_until(lambda: pair.b.server_id not in a.linked_servers, 10_000, "A drops B")
    net.run_until(lambda: net.now >= bound_at - 1_000, BOUND, "the last second of the bound")
    late_receipts: list[str] = []

    def hold_receipts(packet: Packet) -> bool:
        if packet.src == "B" and packet.type == "ACK":
            late_receipts.append(packet.text)
            return True
        return False

    net.drop = hold_receipts
    resent_before = a.receipts.resent
    net.resume(pair.b)
    net.run_until(lambda: a.receipts.resent > resent_before, 1_000, "the resend on the link that came back")
    resent_at = net.now
    assert resent_at < bound_at and deliveries(pair.bob, sent) == 1
    net.run_until(lambda: bool(late_receipts), 1_000, "B's receipt (held back)")
    net.run_until(lambda: net.now >= bound_at + 200, 2_000, "the bound passing")
    assert not pair.alice.errors() and a.receipts.in_flight == 1  # past the bound, within the grace
    net.drop = None
    if receipt_comes:
        net.inject("B", "A", late_receipts[0])
        net.run_until(lambda: bool(receipts(pair.alice)), BATCHES, "the late receipt")
        assert receipts(pair.alice) == [sent.msg_ref] and not pair.alice.errors()
    else:
        took = net.run_until(lambda: bool(pair.alice.errors()), SENT_LATE_GRACE_MS, "TIMEOUT after the grace")
        assert [e.payload["code"] for e in pair.alice.errors()] == ["TIMEOUT"] and receipts(pair.alice) == []
        assert resent_at + SENT_LATE_GRACE_MS <= net.now <= resent_at + SENT_LATE_GRACE_MS + TICK, took
    assert a.receipts.in_flight == 0


@pytest.mark.parametrize("keep_delivered", [True, False])
def test_a_restarted_far_server_does_not_deliver_a_resent_copy_again(pair: Pair, keep_delivered: bool) -> None:
    """B delivers, then crashes before its receipt reaches A; A resends to the restarted B. With the digests its
    database kept, B ACKs the copy without delivering it again; without them (a database lost) bob gets a
    second copy, which only his client's replay cache can drop."""
    net = pair.net
    net.drop = lambda packet: packet.src == "B" and packet.type == "ACK"  # the crash eats B's receipt
    sent = pair.alice.direct_frame(pair.bob)
    pair.alice.send(sent)
    net.run_until(lambda: bool(net.dropped), BATCHES, "B's receipt (lost)")
    assert deliveries(pair.bob, sent) == 1
    assert [d for e in pair.b.events if isinstance(e, FramesDelivered) for d, _ in e.delivered] == \
        [digest_of(parse(net.packets(src="A", dst="B", frame_type="SERVER_DELIVER")[0].text,
                         DEFAULT_MAX_FRAME_BYTES))]
    net.crash(pair.b)
    net.drop = None
    net.run_until(lambda: pair.b.server_id not in pair.a.state.linked_servers, 10_000, "A drops B")
    b2 = restart(net, pair.b, pair.intro, keep_delivered=keep_delivered)
    bob = net.users["bob"]
    bob.inbox.clear()
    bob.connect(b2, pump=False)
    net.run_until(lambda: bool(receipts(pair.alice)) or bool(pair.alice.errors()), BOUND, "an outcome")
    assert receipts(pair.alice) == [sent.msg_ref] and not pair.alice.errors()
    assert deliveries(bob, sent) == (0 if keep_delivered else 1)
    assert pair.a.state.receipts.in_flight == 0
