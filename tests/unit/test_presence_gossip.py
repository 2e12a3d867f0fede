"""Presence gossip at O(n) frames (WIRE §4.5 as amended): the origin tells every linked server, nobody relays,
and snapshots on link-up repair what a missing link missed."""

from __future__ import annotations

from socp import envelope as env
from socp.envelope import FrameType
from tests.unit.harness import FAST, Net, drop_between

TIMEOUT = FAST["peer_timeout_ms"]
BACKOFF_MAX = FAST["backoff_max_ms"]


def test_an_advert_costs_one_frame_per_linked_server_and_nobody_relays(net: Net) -> None:
    intro = net.introducer("I")
    peers = [net.peer(f"P{i}", intro) for i in range(5)]
    assert net.full_mesh()
    before = len(net.delivered)
    alice = net.user("alice", peers[0])
    servers = {node.name for node in net.nodes.values()}
    between_servers = [p for p in net.delivered[before:] if p.src in servers and p.dst in servers]
    assert {p.src for p in between_servers} == {"P0"}, "only the origin sends (presence, registry, public channel)"
    gossip = [p for p in between_servers if p.type in ("USER_ADVERTISE", "USER_REMOVE")]
    assert sorted((p.src, p.type) for p in gossip) == [("P0", "USER_ADVERTISE")] * (len(net.nodes) - 1)
    assert all(alice.user_id in node.state.directory for node in net.nodes.values())
    before = len(net.delivered)
    alice.disconnect()
    gossip = [p for p in net.delivered[before:] if p.src in servers and p.dst in servers
              and p.type in ("USER_ADVERTISE", "USER_REMOVE")]
    assert sorted((p.src, p.type) for p in gossip) == [("P0", "USER_REMOVE")] * (len(net.nodes) - 1)
    assert not any(alice.user_id in node.state.directory for node in net.nodes.values())


def test_after_a_link_comes_back_each_side_lists_the_others_users(net: Net) -> None:
    intro = net.introducer("I")
    a, b, c = (net.peer(name, intro) for name in ("A", "B", "C"))
    alice, bob = net.user("alice", a), net.user("bob", b)
    net.drop = drop_between("A", "B")
    net.run_until(lambda: b.server_id not in a.state.linked_servers and a.server_id not in b.state.linked_servers,
                  3 * TIMEOUT, "the A-B link dies")
    net.refuse_dial = lambda src, dst: {src, dst} == {"A", "B"}   # and stays down a while
    # While A and B cannot talk, users come and go on both; C (linked to both) hears all of it, relays none.
    carol = net.user("carol", a)
    bob.disconnect()
    dave = net.user("dave", b)
    assert a.state.directory.location(dave.user_id) is None and b.state.directory.location(carol.user_id) is None
    assert c.state.directory.location(dave.user_id) == b.server_id
    assert c.state.directory.location(carol.user_id) == a.server_id
    assert not net.packets(src="C", frame_type="USER_ADVERTISE") and not net.packets(src="C", frame_type="USER_REMOVE")
    healed = len(net.delivered)
    net.drop = net.refuse_dial = None
    net.run_until(lambda: net.full_mesh(), TIMEOUT + 2 * BACKOFF_MAX, "A and B link again")
    for node, users, other in ((a, (dave,), b), (b, (alice, carol), a)):
        assert {r.user_id for r in node.state.directory.users_of(other.server_id)} == {u.user_id for u in users}
    assert bob.user_id not in a.state.directory
    assert alice.known.get(dave.user_id) == b.server_id and bob.user_id not in alice.known
    assert dave.known.get(carol.user_id) == a.server_id
    # What repaired it is each side's SERVER_PRESENCE_SYNC on link-up, not a relay.
    syncs = [env.parse(p.text) for p in net.delivered[healed:]
             if {p.src, p.dst} == {"A", "B"} and p.type == "SERVER_PRESENCE_SYNC"]
    assert {frame.sender for frame in syncs} == {a.server_id, b.server_id}
    alice.send_direct(dave, b"welcome back")
    assert [dave.decrypt(f) for f in dave.received(FrameType.USER_DELIVER)] == [b"welcome back"]


def test_an_advert_relayed_for_a_server_we_have_no_link_to_is_ignored(net: Net) -> None:
    intro = net.introducer("I")
    a, b = net.peer("A", intro), net.peer("B", intro)
    net.drop = drop_between("A", "B")
    net.refuse_dial = lambda src, dst: {src, dst} == {"A", "B"}
    net.run_until(lambda: b.server_id not in a.state.linked_servers, 3 * TIMEOUT, "the A-B link dies")
    net.drop = lambda packet: packet.src == "B" and packet.dst == "I"   # I will not hear it from B itself
    bob = net.user("bob", b)
    [advert] = [env.parse(p.text) for p in net.dropped if p.type == "USER_ADVERTISE" and p.src == "B"
                and p.dst == "I"]
    net.drop = None
    net.inject("I", "A", advert.to_wire())           # I relays B's genuine advert to A (as older peers do)
    assert bob.user_id not in a.state.directory, "A cannot route to B: the record would be a dead end"
