"""The client's side of delivery receipts (socp.user.receipts): every tracked message ends exactly once."""

from __future__ import annotations

import pytest

from socp.envelope import FrameType
from socp.user import Acked, Delivered, DeliveryFailed, DirectMessage, DuplicateDelivery, ServerError, UserSession
from socp.user.receipts import CONNECTION_LOST
from tests.keypool import KeyPool
from tests.unit.test_user_session import (
    ALICE,
    ALICE_KEY,
    BOB,
    BOB_KEY,
    MALLORY_KEY,
    NOW,
    OTHER_SERVER_ID,
    SERVER_ID,
    SERVER_KEY,
    Keys,
    advert,
    deliver_from,
    frame,
    only,
)

BOUND = 10_000


@pytest.fixture(scope="module")
def keys(key_pool: KeyPool) -> Keys:
    return Keys(key_pool.key(SERVER_KEY), key_pool.key(ALICE_KEY), key_pool.key(BOB_KEY), key_pool.key(MALLORY_KEY))


def session_of(keys: Keys, user_id: str, key: object, name: str, *, receipts: bool = True,
               replay: object = None) -> UserSession:
    session = UserSession(user_id, key, {"display_name": name}, replay=replay)  # type: ignore[arg-type]
    session.hello(NOW)
    welcome: dict[str, object] = {"msg_ref": "USER_HELLO", "server_id": SERVER_ID, "server_pub": Keys.pub(keys.server)}
    if receipts:
        welcome |= {"features": ["delivery_receipts"], "delivery_bound_ms": BOUND}
    session.receive_text(frame(FrameType.ACK, user_id, welcome, keys.server), NOW)
    session.receive_text(advert(keys, user_id, BOB, keys.bob, "bob", OTHER_SERVER_ID), NOW)
    session.receive_text(advert(keys, user_id, ALICE, keys.alice, "alice", SERVER_ID), NOW)
    return session


@pytest.fixture
def alice(keys: Keys) -> UserSession:
    return session_of(keys, ALICE, keys.alice, "alice")


def ack_of(keys: Keys, msg_ref: str) -> str:
    return frame(FrameType.ACK, ALICE, {"msg_ref": msg_ref}, keys.server)


def error_of(keys: Keys, msg_ref: str, code: str) -> str:
    return frame(FrameType.ERROR, ALICE, {"code": code, "detail": "why", "msg_ref": msg_ref}, keys.server)


def test_a_receipt_becomes_delivered_once(keys: Keys, alice: UserSession) -> None:
    assert alice.receipts_enabled
    sent = alice.direct_message(BOB, "hi", NOW)
    assert alice.pending_deliveries == [sent.msg_ref]
    assert only(alice.receive_text(ack_of(keys, sent.msg_ref), NOW)) == Delivered(sent.msg_ref)
    assert alice.pending_deliveries == []
    assert only(alice.receive_text(ack_of(keys, sent.msg_ref), NOW)) == Acked(sent.msg_ref)


def test_a_coalesced_receipt_becomes_one_delivered_per_entry(keys: Keys, alice: UserSession) -> None:
    sent = [alice.direct_message(BOB, f"hi {i}", NOW) for i in range(3)]
    alice.track_delivery("FILE_CHUNK:x:y:1", NOW, file_id="f1", index=4)
    refs = [m.msg_ref for m in sent] + ["FILE_CHUNK:x:y:1", "MSG_DIRECT:unknown:y:1"]
    ack = frame(FrameType.ACK, ALICE, {"msg_ref": refs[0], "receipts": [
        {"msg_ref": refs[0]}, {"msg_ref": refs[1]}, {"msg_ref": refs[2]},
        {"msg_ref": refs[3], "file_id": "f1", "index": 4}, {"msg_ref": refs[4]}]}, keys.server)
    events = alice.receive_text(ack, NOW)
    assert events == [Delivered(refs[0]), Delivered(refs[1]), Delivered(refs[2]), Delivered(refs[3], "f1", 4),
                      Acked(refs[4])]
    assert alice.pending_deliveries == []
    # The same coalesced ACK again settles nothing twice.
    assert alice.receive_text(ack, NOW) == [Acked(ref) for ref in refs]


def test_an_error_becomes_delivery_failed(keys: Keys, alice: UserSession) -> None:
    sent = alice.direct_message(BOB, "hi", NOW)
    assert only(alice.receive_text(error_of(keys, sent.msg_ref, "TIMEOUT"), NOW)) == \
        DeliveryFailed(sent.msg_ref, "TIMEOUT", "why")
    other = only(alice.receive_text(error_of(keys, "LIST_REQUEST:x:y:1", "BAD_FRAME"), NOW))
    assert isinstance(other, ServerError)


def test_no_answer_within_the_bound_is_a_client_timeout(keys: Keys, alice: UserSession) -> None:
    first = alice.direct_message(BOB, "one", NOW)
    second = alice.direct_message(BOB, "two", NOW)
    assert first.msg_ref != second.msg_ref  # same millisecond, own ts each
    deadline = alice.next_delivery_deadline()
    assert deadline is not None and deadline > NOW + BOUND
    assert alice.expire_deliveries(deadline - 1) == []
    expired = alice.expire_deliveries(deadline)
    assert [(e.msg_ref, e.code) for e in expired if isinstance(e, DeliveryFailed)] == \
        [(first.msg_ref, "TIMEOUT"), (second.msg_ref, "TIMEOUT")]
    assert alice.next_delivery_deadline() is None


def test_a_lost_connection_reports_every_pending_message(alice: UserSession) -> None:
    sent = alice.direct_message(BOB, "hi", NOW)
    [failed] = alice.abandon_deliveries("connection lost")
    assert isinstance(failed, DeliveryFailed) and (failed.msg_ref, failed.code) == (sent.msg_ref, CONNECTION_LOST)
    assert alice.pending_deliveries == []


def test_nothing_is_tracked_without_the_extension(keys: Keys) -> None:
    legacy = session_of(keys, ALICE, keys.alice, "alice", receipts=False)
    assert not legacy.receipts_enabled
    sent = legacy.direct_message(BOB, "hi", NOW)
    assert legacy.pending_deliveries == [] and legacy.next_delivery_deadline() is None
    assert only(legacy.receive_text(ack_of(keys, sent.msg_ref), NOW)) == Acked(sent.msg_ref)


def test_a_later_session_of_the_same_user_drops_what_the_earlier_one_saw(keys: Keys) -> None:
    sender = session_of(keys, BOB, keys.bob, "bob")
    delivery = deliver_from(keys, sender.direct_message(ALICE, "once", NOW))
    first = session_of(keys, ALICE, keys.alice, "alice")
    assert isinstance(only(first.receive_text(delivery, NOW)), DirectMessage)
    again = session_of(keys, ALICE, keys.alice, "alice", replay=first.replay)
    assert isinstance(only(again.receive_text(delivery, NOW)), DuplicateDelivery)
