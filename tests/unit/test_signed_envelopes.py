"""Issue 11, findings 4, 5, 8 and 9, against the real server core on the fake wire: signed envelopes, frames
bound to the receiving server, cheap refusals, the server-link rate limit, the replay cache under a flood,
lone surrogates, and the legacy-interop switch (PROTOCOL.md §3.6)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from socp import crypto
from socp import envelope as env
from socp.actions import PeerFault
from socp.envelope import FrameType
from socp.user import FrameRejected, UserSession
from tests.unit.conftest import TwoServers
from tests.unit.harness import TICK, TIMINGS, FakeUser, Net

SURROGATE = "\ud800"


@pytest.fixture
def signatures(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Every RSA signature made while the test runs (the data signed), through ``crypto.sign``."""
    made: list[bytes] = []
    real = crypto.sign

    def counting(key: crypto.PrivateKey, data: bytes) -> str:
        made.append(data)
        return real(key, data)

    monkeypatch.setattr(crypto, "sign", counting)
    yield made


def payload_signed(frame: env.Envelope, key: crypto.PrivateKey) -> env.Envelope:
    """``frame`` with the standard's legacy transport signature (over the payload alone)."""
    return replace(frame, sig=crypto.sign_payload(key, frame.payload))


# --- USER_HELLO: bound to the server it is addressed to --------------------------------------------

def test_a_hello_copied_to_another_server_logs_nobody_in(two: TwoServers) -> None:
    """Finding 4: a USER_HELLO sniffed on its way to A, re-sent to B within the window, must not act."""
    net, a, b = two.net, two.a, two.b
    carol = net.user("carol")
    hello = carol.hello_frame(to=a.server_id)
    carol.open(a)
    carol.send(hello)
    assert carol.received(FrameType.ACK) and carol.user_id in a.state.local_users
    carol.disconnect()
    thief = net.user("thief")
    thief.open(b)
    thief.send(hello)                                      # the exact copy, fresh, signed by carol
    [error] = thief.errors()
    assert error.payload["code"] == "BAD_FRAME" and error.payload["server_id"] == b.server_id
    assert error.sig == ""                                 # refused without spending a signature
    assert carol.user_id not in b.state.local_users and thief.received(FrameType.ACK) == []
    assert carol.user_id not in a.state.local_users


def test_an_exact_copy_to_the_same_server_is_dropped_by_the_replay_cache(two: TwoServers) -> None:
    net, a = two.net, two.a
    carol = net.user("carol", a)
    [sent] = [p.text for p in net.packets(src="carol", frame_type="USER_HELLO")]
    carol.disconnect()
    thief = net.user("thief")
    thief.open(a)
    thief.send(sent)
    assert thief.received() == [] and carol.user_id not in a.state.local_users


def test_a_retimestamped_hello_does_not_verify(two: TwoServers) -> None:
    net, a = two.net, two.a
    carol = net.user("carol", a)
    [sent] = [p.text for p in net.packets(src="carol", frame_type="USER_HELLO")]
    carol.disconnect()
    data = json.loads(sent)
    data["ts"] += 1
    thief = net.user("thief")
    thief.open(a)
    thief.send(json.dumps(data))
    assert [e.payload["code"] for e in thief.errors()] == ["INVALID_SIG"] and thief.closed
    assert carol.user_id not in a.state.local_users


def test_a_star_hello_is_readdressed_by_the_real_client_session(two: TwoServers) -> None:
    """The standard flow keeps working: an unsigned ERROR names the server, the session signs its hello again
    for that id, and the ACK follows."""
    net, a = two.net, two.a
    key = net.pool.key(net.key_index())
    session = UserSession(net.new_id(), key, {"display_name": "dora"})
    dora = FakeUser(net, "dora", key, session.user_id, {})
    net.users["dora"] = dora
    dora.open(a)
    hello = session.hello(net.now)
    assert env.parse(hello).to == "*"
    dora.send(hello)
    events = [e for f in dora.inbox for e in session.receive_text(f.to_wire(), net.now)]
    assert [type(e).__name__ for e in events] == ["HelloReaddressed"] and not dora.closed
    dora.clear()
    again = session.hello(net.now)
    assert env.parse(again).to == a.server_id
    dora.send(again)
    events = [e for f in dora.inbox for e in session.receive_text(f.to_wire(), net.now)]
    assert session.welcomed and session.server_id == a.server_id, events


def hello_session(two: TwoServers, name: str, **options: object) -> tuple[UserSession, FakeUser]:
    """A real client session for a new user, and the fake connection carrying its frames to A."""
    net = two.net
    key = net.pool.key(net.key_index())
    session = UserSession(net.new_id(), key, {"display_name": name}, **options)  # type: ignore[arg-type]
    user = FakeUser(net, name, key, session.user_id, {})
    net.users[name] = user
    user.open(two.a)
    return session, user


def exchange(session: UserSession, user: FakeUser, now: int) -> list[str]:
    """Send the session's hello; the names of the events the server's answers give."""
    user.clear()
    user.send(session.hello(now))
    return [type(e).__name__ for f in user.inbox for e in session.receive_text(f.to_wire(), now)]


def test_a_hello_hinted_with_the_server_id_is_welcomed_at_once(two: TwoServers) -> None:
    """The testbed knows a node's id from /healthz: the first hello is addressed to it (no "*" round trip)."""
    session, user = hello_session(two, "hinted", server_id_hint=two.a.server_id)
    assert exchange(session, user, two.net.now)[:1] == ["Welcomed"] and session.server_id == two.a.server_id


@pytest.mark.parametrize("given_as", ["hint", "grant"])
def test_a_wrong_server_id_is_readdressed_once_when_it_was_only_a_hint(two: TwoServers, given_as: str) -> None:
    """A stale hint costs one readdress, like a "*" hello; an id from a login grant is never redirected by an
    unsigned error."""
    other = two.b.server_id
    option = {"server_id_hint": other} if given_as == "hint" else {"server_id": other}
    session, user = hello_session(two, f"stale-{given_as}", **option)
    events = exchange(session, user, two.net.now)
    if given_as == "grant":
        assert events == ["ServerError"], events
        return
    assert events == ["HelloReaddressed"] and not user.closed
    assert exchange(session, user, two.net.now)[:1] == ["Welcomed"] and session.server_id == two.a.server_id


def test_a_readdressed_connection_keeps_a_full_peer_timeout_for_its_second_hello(two: TwoServers) -> None:
    """A loaded client may take a while to sign again: after the readdress the connection waits a full peer
    timeout from then (once), where an unidentified connection otherwise has one from its opening."""
    net = two.net
    session, user = hello_session(two, "slow")
    net.run(TIMINGS.peer_timeout_ms - 2 * TICK)   # silent for most of the peer timeout: still open
    assert exchange(session, user, net.now) == ["HelloReaddressed"]
    net.run(TIMINGS.peer_timeout_ms - 2 * TICK)   # past the opening's timeout, within the readdress's
    assert not user.closed
    assert exchange(session, user, net.now)[:1] == ["Welcomed"]


# --- SERVER_ANNOUNCE: one link opener, for one server ------------------------------------------------

def test_a_link_opener_copied_to_another_server_opens_no_link(two: TwoServers) -> None:
    """Finding 4 (link hijack): A's announce opening its link to B, or the '*' announce the introducer relayed,
    re-sent to another server, is refused: the opener is bound to the server it opens a link with."""
    net, a, intro = two.net, two.a, two.intro
    openers = [env.parse(p.text) for p in net.packets(src="B", frame_type="SERVER_ANNOUNCE")]
    to_a = [f for f in openers if f.to == a.server_id]        # B dialed A
    relayed = [f for f in openers if f.to == "*"]             # B's announce to the introducer, relayed to A
    assert to_a and relayed, [f.to for f in openers]
    for copy, target in ((to_a[-1], intro), (relayed[-1], a)):
        eve = net.user(f"eve{len(net.users)}")
        eve.open(target)
        eve.send(copy)
        [error] = eve.errors()
        assert error.payload["code"] == "BAD_FRAME" and "addressed to this server" in error.payload["detail"]
        assert eve.closed and error.sig == ""
    assert net.links_between("A", "B") == 1 and net.full_mesh()
    two.alice.send_direct(two.bob, b"still A")
    assert [two.bob.decrypt(f) for f in two.bob.received(FrameType.USER_DELIVER)] == [b"still A"]


@pytest.mark.parametrize("frame_type", ["USER_REMOVE", "HEARTBEAT", "SERVER_PRESENCE_SYNC"])
def test_retimestamped_server_frames_are_refused(two: TwoServers, frame_type: str) -> None:
    """Finding 4: a captured server frame re-sent with a fresh ts fails the signature check."""
    net, a, b = two.net, two.a, two.b
    if frame_type == "USER_REMOVE":
        net.user("carol", a).disconnect()
    else:
        net.run(3 * a.state.settings.heartbeat_interval_ms)
    [captured] = [p.text for p in net.packets(src="A", dst="B", frame_type=frame_type)][-1:]
    data = json.loads(captured)
    data["ts"] = net.now + 1
    net.inject("A", "B", json.dumps(data))
    codes = [f.code for f in b.events_of(PeerFault)][-1:]
    assert codes == ["INVALID_SIG"]
    assert two.bob.known.get(two.alice.user_id) == a.server_id


# --- cheap to refuse -------------------------------------------------------------------------------

def test_junk_from_a_stranger_costs_no_signature(two: TwoServers, signatures: list[bytes]) -> None:
    """Finding 5: every refused frame of an unauthenticated connection gets an unsigned ERROR (counted);
    the node signs nothing for it."""
    net, a = two.net, two.a
    before = a.state.status()["unsigned_errors"]
    lurker = net.user("lurker")
    lurker.open(a)
    junk = ["hello", "{", json.dumps({"type": "MSG_DIRECT", "from": "x", "to": "y", "ts": net.now, "payload": {}}),
            json.dumps({"type": "NOPE", "from": "x", "to": "y", "ts": net.now, "payload": {}})]
    for text in junk * 5:
        lurker.send(text, pump=False)
    net.pump()
    errors = lurker.errors()
    assert errors and all(e.sig == "" for e in errors)
    assert a.state.status()["unsigned_errors"] - before == len(errors)
    assert signatures == [], "no RSA signature for a stranger's junk"


# --- server links: rate limit, replay cache -----------------------------------------------------------

def test_a_flood_on_a_server_link_is_rate_limited(net: Net) -> None:
    """Finding 9: server links have a rate limit too (generous by default); past it, frames are dropped with
    one RATE_LIMITED a second, and the flood never reaches the replay cache."""
    intro = net.introducer("I")
    a = net.peer("A", intro)
    b = net.peer("B", intro, server_rate_per_second=5.0, server_rate_burst=10)
    assert net.full_mesh()
    net.run(1_000)
    cache_before = len(b.state.replay)
    for i in range(200):
        beat = env.make(FrameType.HEARTBEAT, a.server_id, "*", net.now, {"n": i}, a.key)
        net.inject("A", "B", beat.to_wire(), pump=False)
    net.pump()
    limited = [p for p in net.packets(src="B", dst="A", frame_type="ERROR")
               if env.parse(p.text).payload["code"] == "RATE_LIMITED"]
    assert len(limited) == 1
    assert len(b.state.replay) - cache_before <= 12


def test_a_full_replay_cache_refuses_instead_of_forgetting(net: Net) -> None:
    """Finding 9: 'capacity + 1' fresh frames do not flush an entry out: the extra frame is refused and an
    exact replay of the first is still dropped."""
    intro = net.introducer("I")
    a = net.peer("A", intro)
    alice = net.user("alice", a)
    bob = net.user("bob", a)
    a.state.replay.capacity = len(a.state.replay) + 3
    first = alice.send_direct(bob, b"once")
    for i in range(3):
        alice.send_direct(bob, f"filler {i}".encode())
    assert [e.payload["code"] for e in alice.errors()] == ["RATE_LIMITED"]
    alice.clear()
    delivered = len(bob.received(FrameType.USER_DELIVER))
    alice.send(first)
    assert len(bob.received(FrameType.USER_DELIVER)) == delivered, "the exact replay was routed again"


# --- lone surrogates -----------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["from", "to", "payload"])
def test_a_lone_surrogate_is_bad_frame_at_the_server_and_the_client(two: TwoServers, where: str) -> None:
    """Finding 8: never an exception escaping receive_text; BAD_FRAME (server) or FrameRejected (client)."""
    net, a, alice = two.net, two.a, two.alice
    frame: dict[str, Any] = {"type": "MSG_DIRECT", "from": alice.user_id, "to": two.bob.user_id, "ts": net.now,
                             "payload": {"ciphertext": "x", "sender_pub": "k", "content_sig": "s"}}
    if where == "payload":
        frame["payload"]["ciphertext"] = SURROGATE
    else:
        frame[where] = "a" + SURROGATE
    text = json.dumps(frame)
    alice.send(text)                                         # a proven user: signed BAD_FRAME, link kept
    [error] = alice.errors()
    assert error.payload["code"] == "BAD_FRAME" and "surrogate" in error.payload["detail"] and not alice.closed
    stranger = net.user("stranger")
    stranger.open(a)
    stranger.send(text)
    assert [e.payload["code"] for e in stranger.errors()] == ["BAD_FRAME"]
    session = UserSession(alice.user_id, alice.key, {})
    [rejected] = session.receive_text(text, net.now)
    assert isinstance(rejected, FrameRejected) and "surrogate" in rejected.reason


# --- legacy interop -------------------------------------------------------------------------------------

def test_payload_only_signatures_only_under_the_legacy_interop_switch(net: Net) -> None:
    """WIRE §2: the standard's payload-only transport signature (and a hello to '*') is refused by default
    and accepted by a node that runs with legacy_interop."""
    intro = net.introducer("I")
    strict = net.peer("S", intro)
    legacy = net.peer("L", intro, legacy_interop=True)
    assert legacy.state.status()["legacy_interop"] and not strict.state.status()["legacy_interop"]
    for node, accepted in ((strict, False), (legacy, True)):
        user = net.user(f"old-{node.name}")
        user.open(node)
        user.send(payload_signed(user.hello_frame(to="*", signed=False), user.key))
        assert bool(user.received(FrameType.ACK)) is accepted, user.inbox
        assert (user.user_id in node.state.local_users) is accepted


# --- the suspected key-share item ------------------------------------------------------------------------

def test_a_key_share_cannot_be_altered_on_the_wire(two: TwoServers) -> None:
    """Suspected in issue 11: the key share's content_sig covers only the shares and creator_pub. On every
    hop the transport signature now covers key_id (payload), ts and from, so nobody without the hop's key can
    re-time, re-key or re-attribute a share; a rogue *server* still could (its own signature), see report."""
    a, alice = two.a, two.alice
    share = env.make(FrameType.PUBLIC_CHANNEL_KEY_SHARE, alice.user_id, "*", two.net.now,
                     {"shares": [], "creator_pub": alice.pubkey, "key_id": "k1", "content_sig": "x"}, a.key)
    assert share.verify(a.key.public_key())
    for altered in (replace(share, payload={**share.payload, "key_id": "k2"}), replace(share, ts=share.ts + 1),
                    replace(share, sender=two.bob.user_id)):
        assert not altered.verify(a.key.public_key())
