"""ServerState between servers: join, welcome, mesh, heartbeats, liveness, reconnection (WIRE §4)."""

from __future__ import annotations

import itertools
import json

import pytest

from socp import crypto
from socp.actions import IdentityAssigned, LinkDown, PeerFault, ServerPinned
from socp.envelope import FrameType
from socp.server import BootstrapEntry
from tests.unit.harness import FAST, TICK, Net, drop_between, drop_from

TIMEOUT = FAST["peer_timeout_ms"]
HEARTBEAT = FAST["heartbeat_interval_ms"]
BACKOFF = FAST["backoff_initial_ms"]
BACKOFF_MAX = FAST["backoff_max_ms"]


def faults(*nodes):  # type: ignore[no-untyped-def]
    return [event for node in nodes for event in node.events_of(PeerFault)]


def test_introducer_and_three_peers_form_a_full_mesh(net: Net) -> None:
    intro = net.introducer("I")
    peers = [net.peer(name, intro) for name in ("A", "B", "C")]
    everyone = [intro, *peers]
    for node in everyone:
        others = {other.server_id for other in everyone if other is not node}
        assert set(node.state.linked_servers) == others, net.describe()
        assert set(node.state.known_servers) == others
        assert node.state.joined and node.state.healthy
    for a in everyone:
        for b in everyone:
            if a is not b:
                assert net.links_between(a.name, b.name) == 1, f"{a.name}-{b.name}"
    assert faults(*everyone) == []
    assert all(not node.events_of(IdentityAssigned) for node in peers)


def test_mesh_stays_up_on_heartbeats_alone(net: Net) -> None:
    intro = net.introducer("I")
    a, b = net.peer("A", intro), net.peer("B", intro)
    net.run(4 * TIMEOUT)
    assert net.full_mesh(), net.describe()
    assert not any(node.events_of(LinkDown) for node in (intro, a, b))
    start = net.now - 4 * TIMEOUT
    beats = net.packets(src="A", dst="B", frame_type="HEARTBEAT")
    assert len(beats) >= 4 * TIMEOUT // HEARTBEAT // 3     # presence snapshots stand in for the others
    for packet in beats:
        frame = _parse(packet.text)
        assert frame.sender == a.server_id and frame.to == "*"      # one frame per round serves every link
        assert frame.verify(a.key.public_key())
    # No heartbeat on a link that carried another frame in the interval, yet never two intervals of silence.
    times = sorted(ts for p in net.packets(src="A", dst="B") if (ts := _parse(p.text).ts) >= start)
    assert max(later - earlier for earlier, later in itertools.pairwise(times)) <= 2 * HEARTBEAT
    heartbeat_times = {_parse(p.text).ts for p in beats}
    others = {_parse(p.text).ts for p in net.packets(src="A", dst="B") if p.type != "HEARTBEAT"}
    assert others and not any(0 < beat - other < HEARTBEAT for beat in heartbeat_times for other in others)
    status = a.state.status()
    assert (status["link_deaths"], status["stalls"]) == (0, 0) and status["heartbeat_signatures"] >= len(beats)
    assert faults(intro, a, b) == []


def test_welcome_lists_known_servers_in_both_shapes(net: Net) -> None:
    intro = net.introducer("I")
    a = net.peer("A", intro)
    b = net.peer("B", intro)
    [welcome] = [_parse(p.text) for p in net.packets(src="I", dst="B", frame_type="SERVER_WELCOME")]
    assert welcome.payload["assigned_id"] == b.server_id
    assert welcome.verify(intro.key.public_key())
    servers = {entry["server_id"]: entry for entry in welcome.payload["servers"]}
    assert set(servers) == {intro.server_id, a.server_id}
    wire_fields = ("server_id", "host", "port", "pubkey")          # extra fields may follow; readers ignore them
    assert {k: servers[a.server_id][k] for k in wire_fields} == {"server_id": a.server_id, "host": a.host,
                                                                 "port": a.port, "pubkey": a.pubkey}
    clients = {entry["user_id"]: entry for entry in welcome.payload["clients"]}
    assert clients[a.server_id]["pubkey"] == a.pubkey and clients[intro.server_id]["port"] == intro.port


def test_introducer_relays_newcomer_announce_so_keys_come_from_a_pinned_source(net: Net) -> None:
    intro = net.introducer("I")
    a = net.peer("A", intro)
    b = net.peer("B", intro)
    relayed = [_parse(p.text) for p in net.packets(src="I", dst="A", frame_type="SERVER_ANNOUNCE")]
    assert [frame.sender for frame in relayed] == [b.server_id]
    pins = {event.server_id: event for event in a.events_of(ServerPinned)}
    assert pins[b.server_id].pubkey == b.pubkey
    assert pins[b.server_id].trusted
    assert pins[intro.server_id].trusted


def test_join_with_a_taken_id_gets_a_different_assigned_id(net: Net) -> None:
    intro = net.introducer("I")
    a = net.peer("A", intro)
    taken = a.server_id
    m = net.peer("M", intro, server_id=taken)
    assert m.server_id != taken
    assert m.events_of(IdentityAssigned) == [IdentityAssigned(m.server_id)]
    [welcome] = [_parse(p.text) for p in net.packets(src="I", dst="M", frame_type="SERVER_WELCOME")]
    assert welcome.payload["assigned_id"] == m.server_id
    assert net.full_mesh(), net.describe()
    # A kept its identity and the introducer still knows A by A's key.
    assert a.server_id == taken and a.events_of(IdentityAssigned) == []
    assert [p.pubkey for p in intro.events_of(ServerPinned) if p.server_id == taken] == [a.pubkey]
    assert faults(intro, a, m) == []


def test_join_with_a_taken_id_after_its_owner_left_still_gets_another_id(net: Net) -> None:
    intro = net.introducer("I")
    a = net.peer("A", intro)
    b = net.peer("B", intro)
    taken = a.server_id
    net.crash(a)
    m = net.peer("M", intro, server_id=taken)
    assert m.server_id != taken
    assert net.full_mesh([intro, b, m]), net.describe()
    assert faults(intro, b, m) == []


def test_rejoin_with_the_same_id_and_key_keeps_the_id(net: Net) -> None:
    intro = net.introducer("I")
    a = net.peer("A", intro)
    b = net.peer("B", intro)
    key, server_id = a.key, a.server_id
    net.crash(a)
    again = net.peer("A2", intro, server_id=server_id, key=key)
    assert again.server_id == server_id
    assert again.events_of(IdentityAssigned) == []
    assert net.full_mesh([intro, b, again]), net.describe()


def test_tofu_welcome_when_the_bootstrap_entry_has_no_pubkey(net: Net) -> None:
    intro = net.introducer("I")
    a = net.peer("A", intro, pin=False)
    assert a.state.settings.bootstrap[0].pubkey is None
    assert a.state.joined and net.full_mesh(), net.describe()
    pins = {event.server_id: event for event in a.events_of(ServerPinned)}
    assert pins[intro.server_id].pubkey == intro.pubkey
    b = net.peer("B", intro, pin=False)
    assert net.full_mesh() and b.state.healthy
    assert faults(intro, a, b) == []


def test_welcome_signed_by_the_wrong_key_is_refused_when_pinned(net: Net) -> None:
    intro = net.introducer("I")
    wrong = crypto.encode_public_key(net.pool.key(net.key_index()).public_key())
    a = net.peer("A", bootstrap=[BootstrapEntry(intro.host, intro.port, wrong)])
    assert not a.state.joined
    assert a.state.linked_servers == []
    [fault] = faults(a)
    assert fault.code == "INVALID_SIG" and fault.fatal
    assert net.links_between("A", "I") == 0
    assert intro.server_id not in [event.server_id for event in a.events_of(ServerPinned)]
    # It keeps trying (with backoff) and keeps refusing.
    net.run(3 * BACKOFF_MAX)
    join_dials = [dial for dial in net.dials if dial.src == "A"]
    assert len(join_dials) >= 3
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(join_dials)]
    assert all(gap >= 0.75 * BACKOFF - TICK for gap in gaps)
    assert not a.state.joined
    assert {fault.code for fault in faults(a)} == {"INVALID_SIG"}


def test_second_introducer_is_tried_when_the_first_is_unreachable(net: Net) -> None:
    intro = net.introducer("I")
    dead = BootstrapEntry("nowhere.test", 1, intro.pubkey)
    a = net.peer("A", bootstrap=[dead, BootstrapEntry(intro.host, intro.port, intro.pubkey)])
    assert net.run_until(lambda: a.state.joined, TICK, "A joins through I") <= TICK   # no backoff in between
    assert [(d.dst, d.ok) for d in net.dials if d.src == "A"][:2] == [(None, False), ("I", True)]


def test_no_introducer_reachable_retries_with_backoff_then_joins(net: Net) -> None:
    intro = net.introducer("I")
    net.refuse_dial = lambda src, dst: dst == "I"
    a = net.peer("A", intro)
    net.run(4 * BACKOFF_MAX)
    attempts = [dial.at for dial in net.dials if dial.src == "A"]
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    assert len(gaps) >= 3
    assert gaps[1] > gaps[0] and max(gaps) <= 1.25 * BACKOFF_MAX + TICK
    net.refuse_dial = None
    net.run_until(lambda: a.state.joined, 2 * BACKOFF_MAX, "A joins once the introducer answers")


def test_peer_silent_beyond_timeout_is_dropped_then_reconnects_and_presence_reconverges(net: Net) -> None:
    intro = net.introducer("I")
    a, b, c = (net.peer(name, intro) for name in ("A", "B", "C"))
    alice, bob, carol = net.user("alice", a), net.user("bob", b), net.user("carol", c)
    assert alice.known.get(bob.user_id) == b.server_id and carol.known.get(bob.user_id) == b.server_id

    net.drop = drop_from("B")                        # B keeps sending; nothing it sends arrives
    silent_since = net.now
    elapsed = net.run_until(lambda: b.server_id not in a.state.linked_servers
                            and b.server_id not in c.state.linked_servers, 2 * TIMEOUT, "A and C drop B")
    assert TIMEOUT < elapsed <= TIMEOUT + HEARTBEAT + TICK
    for node, user in ((a, alice), (c, carol)):
        [down] = [event for event in node.events_of(LinkDown) if event.server_id == b.server_id]
        assert down.users_dropped == 1
        assert node.state.directory.location(bob.user_id) is None
        assert bob.user_id not in user.known
        [remove] = [f for f in user.received(FrameType.USER_REMOVE) if f.payload["user_id"] == bob.user_id]
        assert remove.payload["server_id"] == b.server_id and user.signed_by_server(remove)
        assert remove.ts - silent_since > TIMEOUT
    assert alice.known.get(carol.user_id) == c.server_id       # the rest of the mesh is untouched
    assert net.links_between("A", "C") == 1

    net.drop = None                                  # frames flow again
    healed_at = net.now
    net.run_until(lambda: net.full_mesh() and alice.known.get(bob.user_id) == b.server_id
                  and carol.known.get(bob.user_id) == b.server_id and bob.known.get(alice.user_id) == a.server_id,
                  TIMEOUT + 2 * BACKOFF_MAX, "mesh and presence re-converge")
    assert all(net.links_between(x, y) == 1 for x, y in (("A", "B"), ("B", "C"), ("A", "C"), ("B", "I")))
    assert a.state.directory.location(bob.user_id) == b.server_id
    assert c.state.directory.location(bob.user_id) == b.server_id
    # Bob's advert was sent once, at connect (and was lost): what repaired it is B's presence snapshot.
    syncs = [_parse(p.text) for p in net.packets(src="B", dst="A", frame_type="SERVER_PRESENCE_SYNC")
             if _parse(p.text).ts >= healed_at]
    assert any(user["user_id"] == bob.user_id for sync in syncs for user in sync.payload["users"])
    # Reconnection waited for a backoff delay after the link died, never dialing in a tight loop.
    downs = [event for event in a.events if isinstance(event, LinkDown) and event.server_id == b.server_id]
    assert downs
    redials = [dial.at for dial in net.dials if {dial.src, dial.dst} == {"A", "B"} and dial.at > silent_since]
    assert redials and redials[0] - silent_since >= TIMEOUT + 0.75 * BACKOFF - TICK
    alice.send_direct(bob, b"back again")
    [deliver] = bob.received(FrameType.USER_DELIVER)
    assert bob.decrypt(deliver) == b"back again"


def test_reconnect_backoff_doubles_up_to_the_cap(net: Net) -> None:
    intro = net.introducer("I")
    a, b = net.peer("A", intro), net.peer("B", intro)
    net.drop = drop_between("A", "B")
    net.refuse_dial = lambda src, dst: {src, dst} == {"A", "B"}
    net.run_until(lambda: b.server_id not in a.state.linked_servers, 2 * TIMEOUT, "A drops B")
    died = net.now
    net.run(6 * BACKOFF_MAX)
    attempts = [dial.at for dial in net.dials if dial.src == "A" and dial.dst == "B" and dial.at >= died]
    delays = [attempts[0] - died] + [later - earlier for earlier, later in itertools.pairwise(attempts)]
    assert len(delays) >= 6
    for attempt, delay in enumerate(delays, start=1):
        base = min(BACKOFF_MAX, BACKOFF * 2 ** (attempt - 1))
        assert 0.75 * base - TICK <= delay <= 1.25 * base + TICK, (attempt, delays)
    assert not any(dial.ok for dial in net.dials if dial.at >= died and {dial.src, dial.dst} == {"A", "B"})
    net.drop = net.refuse_dial = None
    net.run_until(lambda: net.full_mesh(), 2 * BACKOFF_MAX, "A and B link again")
    assert net.links_between("A", "B") == 1


def test_simultaneous_redials_leave_exactly_one_link(net: Net) -> None:
    intro = net.introducer("I")
    a, b = net.peer("A", intro), net.peer("B", intro)
    for seed_offset in range(3):
        net.drop = drop_between("A", "B")
        net.run_until(lambda: not net.full_mesh(), 2 * TIMEOUT, "A-B link dies")
        net.drop = None
        net.run_until(lambda: net.full_mesh(), TIMEOUT + 2 * BACKOFF_MAX, f"re-link {seed_offset}")
        net.run(2 * HEARTBEAT)
        assert net.links_between("A", "B") == 1
        assert net.full_mesh()
    assert faults(intro, a, b) == []


def test_pending_connection_without_hello_is_closed_after_the_peer_timeout(net: Net) -> None:
    intro = net.introducer("I")
    a = net.peer("A", intro)
    lurker = net.user("lurker")
    lurker.open(a)
    net.run(TIMEOUT + HEARTBEAT + TICK)
    assert lurker.closed
    assert net.full_mesh()


def test_unknown_type_on_a_server_link_is_answered_and_the_link_survives(net: Net) -> None:
    intro = net.introducer("I")
    a, b = net.peer("A", intro), net.peer("B", intro)
    net.inject("A", "B", json.dumps({"type": "SERVER_GOSSIP_V2", "from": a.server_id, "to": b.server_id,
                                     "ts": net.now, "payload": {}}))
    [fault] = faults(b)
    assert fault.code == "UNKNOWN_TYPE" and not fault.fatal
    [error] = [_parse(p.text) for p in net.packets(src="B", dst="A", frame_type="ERROR")]
    assert error.payload["code"] == "UNKNOWN_TYPE"
    assert error.payload["msg_ref"] == f"SERVER_GOSSIP_V2:{a.server_id}:{b.server_id}:{net.now}"
    net.run(2 * TIMEOUT)
    assert net.full_mesh() and net.links_between("A", "B") == 1


@pytest.mark.parametrize("garbage", ["not json", "[]", '{"type": "HEARTBEAT"}', "\x00\xff"])
def test_garbage_on_a_server_link_is_bad_frame_and_the_link_survives(net: Net, garbage: str) -> None:
    intro = net.introducer("I")
    a, b = net.peer("A", intro), net.peer("B", intro)
    net.inject("A", "B", garbage)
    assert [fault.code for fault in faults(b)] == ["BAD_FRAME"]
    net.run(2 * TIMEOUT)
    assert net.full_mesh() and not b.events_of(LinkDown)
    alice, bob = net.user("alice", a), net.user("bob", b)
    alice.send_direct(bob, b"still here")
    assert [bob.decrypt(f) for f in bob.received(FrameType.USER_DELIVER)] == [b"still here"]


def _parse(text: str):  # type: ignore[no-untyped-def]
    from socp import envelope

    return envelope.parse(text)


def test_a_server_link_carrying_only_garbage_is_declared_dead(net: Net) -> None:
    intro = net.introducer("I")
    a, b = net.peer("A", intro), net.peer("B", intro)
    garbage = "{not a frame"
    net.drop = lambda packet: packet.src == "B" and packet.text != garbage   # only B's garbage gets through

    def babble() -> bool:
        if b.server_id not in a.state.linked_servers:
            return True
        net.inject("B", "A", garbage, pump=False)
        return False

    elapsed = net.run_until(babble, 3 * TIMEOUT, "A to give up on a link that carries only garbage")
    assert elapsed <= TIMEOUT + HEARTBEAT + TICK
    assert any(event.server_id == b.server_id for event in a.events_of(LinkDown))
    assert any(fault.code == "BAD_FRAME" for fault in a.events_of(PeerFault)), "the garbage did arrive"


def test_backoff_keeps_growing_while_a_redialed_peer_never_proves_itself(net: Net) -> None:
    intro = net.introducer("I")
    a, b = net.peer("A", intro), net.peer("B", intro)
    net.drop = drop_between("A", "B")                # dials connect, but no frame ever crosses
    net.run_until(lambda: b.server_id not in a.state.linked_servers, 2 * TIMEOUT, "A drops B")
    died = net.now
    net.run(4 * (TIMEOUT + BACKOFF_MAX))
    redials = [dial.at for dial in net.dials if dial.src == "A" and dial.dst == "B" and dial.at > died and dial.ok]
    gaps = [later - earlier for earlier, later in itertools.pairwise(redials)]
    # Each half-open attempt lasts a peer timeout and then waits a backoff that doubles up to the cap.
    assert len(gaps) >= 3
    assert gaps[-1] >= TIMEOUT + 0.75 * BACKOFF_MAX - TICK, gaps
