"""ServerState against a hostile network: impersonation, forged gossip, replays (WIRE §2, §4.4).

Server ids are fixed here because which of two duplicate links survives depends on their order.
"""

from __future__ import annotations

from socp import crypto
from socp import envelope as env
from socp.actions import LinkDown, PeerFault
from socp.envelope import FrameType
from tests.unit.harness import FakeUser, Net, Node

HIGH = "f0000000-0000-4000-8000-00000000000f"
MID = "80000000-0000-4000-8000-000000000008"
LOW = "10000000-0000-4000-8000-000000000001"


def mesh(net: Net, intro_id: str = MID, a_id: str = HIGH, b_id: str = LOW) -> tuple[Node, Node, Node]:
    intro = net.introducer("I", server_id=intro_id)
    a = net.peer("A", intro, server_id=a_id)
    b = net.peer("B", intro, server_id=b_id)
    assert net.full_mesh(), net.describe()
    return intro, a, b


def announce(net: Net, sender: str, key: crypto.PrivateKey, pubkey: str, host: str = "evil.test",
             port: int = 6666, to: str = "*") -> env.Envelope:
    return env.make(FrameType.SERVER_ANNOUNCE, sender, to, net.now, {"host": host, "port": port, "pubkey": pubkey},
                    key)


def attacker(net: Net, target: Node, name: str = "eve") -> FakeUser:
    """A raw connection to ``target`` (a FakeUser is just frames in and out)."""
    eve = net.user(name)
    eve.open(target)
    return eve


def codes(node: Node) -> list[str]:
    return [fault.code for fault in node.events_of(PeerFault)]


# --- impersonation --------------------------------------------------------------------------------

def test_announce_with_a_pinned_id_and_another_key_is_bad_key(net: Net) -> None:
    _intro, a, b = mesh(net)
    alice, bob = net.user("alice", a), net.user("bob", b)
    eve = attacker(net, b)
    eve.send(announce(net, a.server_id, eve.key, eve.pubkey, to=b.server_id))  # self-signed, not A's key
    [error] = eve.errors()
    assert error.payload["code"] == "BAD_KEY"
    assert eve.closed
    assert codes(b) == ["BAD_KEY"]
    assert net.links_between("A", "B") == 1 and not b.events_of(LinkDown)
    net.run(2 * a.state.settings.peer_timeout_ms)                   # the genuine link keeps working
    assert net.full_mesh()
    alice.send_direct(bob, b"still A")
    assert [bob.decrypt(f) for f in bob.received(FrameType.USER_DELIVER)] == [b"still A"]


def test_announce_not_signed_by_the_key_it_announces_is_invalid_sig(net: Net) -> None:
    _intro, a, b = mesh(net)
    eve = attacker(net, b)
    eve.send(announce(net, net.new_id(), eve.key, a.pubkey, to=b.server_id))  # claims A's key, cannot sign
    assert [e.payload["code"] for e in eve.errors()] == ["INVALID_SIG"]
    assert eve.closed and net.links_between("A", "B") == 1


def test_join_claiming_a_pinned_id_with_another_key_gets_a_fresh_id(net: Net) -> None:
    intro, a, _b = mesh(net)
    eve = attacker(net, intro)
    eve.send(env.make(FrameType.SERVER_HELLO_JOIN, a.server_id, f"{intro.host}:{intro.port}", net.now,
                      {"host": "evil.test", "port": 6666, "pubkey": eve.pubkey}, eve.key))
    [welcome] = eve.received(FrameType.SERVER_WELCOME)
    assert welcome.payload["assigned_id"] != a.server_id
    assert net.links_between("I", "A") == 1 and a.server_id in intro.state.linked_servers


def test_forged_user_advertise_for_another_server_is_invalid_sig(net: Net) -> None:
    intro, a, b = mesh(net)
    c = net.peer("C", intro)
    victim = net.user("victim", c)
    forged = env.make(FrameType.USER_ADVERTISE, c.server_id, "*", net.now,
                      {"user_id": victim.user_id, "server_id": c.server_id,
                       "pubkey": crypto.encode_public_key(net.pool.key(20).public_key()), "meta": {}}, a.key)
    net.inject("A", "B", forged.to_wire())
    assert codes(b) == ["INVALID_SIG"]
    record = b.state.directory.get(victim.user_id)
    assert record is not None and record.pubkey == victim.pubkey


def test_user_advertise_for_a_server_other_than_its_signer_is_bad_frame(net: Net) -> None:
    intro, a, b = mesh(net)
    bob = net.user("bob", b)
    hijack = env.make(FrameType.USER_ADVERTISE, a.server_id, "*", net.now,
                      {"user_id": bob.user_id, "server_id": b.server_id, "pubkey": bob.pubkey, "meta": {}}, a.key)
    net.inject("A", "I", hijack.to_wire())
    assert codes(intro) == ["BAD_FRAME"]
    assert intro.state.directory.location(bob.user_id) == b.server_id


def test_user_remove_by_another_server_is_refused(net: Net) -> None:
    intro, a, b = mesh(net)
    alice, bob = net.user("alice", a), net.user("bob", b)
    removal = env.make(FrameType.USER_REMOVE, a.server_id, "*", net.now,
                       {"user_id": bob.user_id, "server_id": b.server_id}, a.key)
    net.inject("A", "I", removal.to_wire())
    assert codes(intro) == ["BAD_FRAME"]
    assert intro.state.directory.location(bob.user_id) == b.server_id
    # A's own removal for a user that is not A's is verified and changes nothing.
    lawful = env.make(FrameType.USER_REMOVE, a.server_id, "*", net.now + 1,
                      {"user_id": bob.user_id, "server_id": a.server_id}, a.key)
    net.inject("A", "I", lawful.to_wire())
    assert intro.state.directory.location(bob.user_id) == b.server_id
    assert alice.known[bob.user_id] == b.server_id


def test_heartbeat_from_a_server_other_than_the_link_peer_is_bad_frame(net: Net) -> None:
    intro, a, b = mesh(net)
    spoof = env.make(FrameType.HEARTBEAT, intro.server_id, b.server_id, net.now, {}, a.key)
    net.inject("A", "B", spoof.to_wire())
    assert codes(b) == ["BAD_FRAME"]
    assert net.links_between("A", "B") == 1


def test_only_an_introducer_may_relay_an_announce(net: Net) -> None:
    _intro, _a, b = mesh(net)
    stranger_key = net.pool.key(net.key_index())
    stranger = net.new_id()
    relayed = announce(net, stranger, stranger_key, crypto.encode_public_key(stranger_key.public_key()))
    net.inject("A", "B", relayed.to_wire())
    assert codes(b) == ["BAD_FRAME"]
    assert stranger not in b.state.known_servers
    net.inject("I", "B", announce(net, stranger, stranger_key,
                                  crypto.encode_public_key(stranger_key.public_key()), port=6667).to_wire())
    assert stranger in b.state.known_servers                         # the introducer may


def test_server_deliver_with_a_bad_signature_is_invalid_sig(net: Net) -> None:
    _intro, a, b = mesh(net)
    alice, bob = net.user("alice", a), net.user("bob", b)
    frame = alice.direct_frame(bob, b"forged hop")
    body = {"user_id": bob.user_id, "sender": alice.user_id, **frame.payload}
    forged = env.make(FrameType.SERVER_DELIVER, a.server_id, b.server_id, frame.ts, body, net.pool.key(20))
    net.inject("A", "B", forged.to_wire())
    assert codes(b) == ["INVALID_SIG"]
    assert bob.received(FrameType.USER_DELIVER) == []


def test_replayed_server_deliver_is_dropped(net: Net) -> None:
    _intro, a, b = mesh(net)
    alice, bob = net.user("alice", a), net.user("bob", b)
    alice.send_direct(bob, b"once only")
    [hop] = [p.text for p in net.packets(src="A", dst="B", frame_type="SERVER_DELIVER")]
    net.run(1000)
    net.inject("A", "B", hop)
    assert len(bob.received(FrameType.USER_DELIVER)) == 1
    assert codes(b) == []


# --- replays that open links ----------------------------------------------------------------------

def test_replayed_announce_on_a_new_connection_does_not_displace_the_genuine_link(net: Net) -> None:
    _intro, a, b = mesh(net)                                          # A > B: A keeps B's inbound link
    alice, bob = net.user("alice", a), net.user("bob", b)
    [captured] = [p.text for p in net.packets(src="B", dst="A", frame_type="SERVER_ANNOUNCE")]
    net.run(1000)
    eve = attacker(net, a)
    eve.send(captured)
    assert net.links_between("A", "B") == 1
    alice.send_direct(bob, b"for bob, not eve")
    assert eve.received(FrameType.SERVER_DELIVER) == []
    assert eve.received(FrameType.SERVER_PRESENCE_SYNC) == []
    assert [bob.decrypt(f) for f in bob.received(FrameType.USER_DELIVER)] == [b"for bob, not eve"]


def test_unsigned_join_claiming_an_existing_server_is_not_granted_its_id(net: Net) -> None:
    intro, a, _b = mesh(net, intro_id=HIGH, a_id=LOW, b_id=MID)      # I > A: I keeps the new link
    eve = attacker(net, intro)
    eve.send(env.make(FrameType.SERVER_HELLO_JOIN, a.server_id, f"{intro.host}:{intro.port}", net.now,
                      {"host": "evil.test", "port": 6666, "pubkey": a.pubkey}))
    assert all(w.payload["assigned_id"] != a.server_id for w in eve.received(FrameType.SERVER_WELCOME))
    assert net.links_between("I", "A") == 1


def test_unsigned_join_claiming_an_existing_server_does_not_poison_its_address(net: Net) -> None:
    intro, a, b = mesh(net)
    eve = attacker(net, intro)
    eve.send(env.make(FrameType.SERVER_HELLO_JOIN, a.server_id, f"{intro.host}:{intro.port}", net.now,
                      {"host": "evil.test", "port": 6666, "pubkey": a.pubkey}))
    c = net.peer("C", intro)
    [welcome] = [env.parse(p.text) for p in net.packets(src="I", dst="C", frame_type="SERVER_WELCOME")]
    entry = next(e for e in welcome.payload["servers"] if e["server_id"] == a.server_id)
    assert (entry["host"], entry["port"]) == (a.host, a.port)
    assert net.full_mesh([intro, a, b, c])


def test_unsigned_join_is_refused_without_a_welcome(net: Net) -> None:
    # Issue 11, finding 1: an unsigned join was welcomed and got the registry. Now it gets nothing.
    intro, _a, _b = mesh(net)
    other = attacker(net, intro, "other-impl")
    wanted = net.new_id()
    other.send(env.make(FrameType.SERVER_HELLO_JOIN, wanted, f"{intro.host}:{intro.port}", net.now,
                        {"host": "other.test", "port": 7000, "pubkey": other.pubkey}))
    assert not other.received(FrameType.SERVER_WELCOME) and other.closed
    assert [e.payload["code"] for e in other.errors()] == ["INVALID_SIG"]
    assert wanted not in intro.state.linked_servers


def test_server_that_never_proved_its_key_is_not_listed_in_welcomes(net: Net) -> None:
    intro, a, _b = mesh(net)
    eve = attacker(net, intro)
    phantom = net.new_id()
    eve.send(env.make(FrameType.SERVER_HELLO_JOIN, phantom, f"{intro.host}:{intro.port}", net.now,
                      {"host": "evil.test", "port": 6666, "pubkey": a.pubkey}))   # a key eve does not hold
    c = net.peer("C", intro)
    [welcome] = [env.parse(p.text) for p in net.packets(src="I", dst="C", frame_type="SERVER_WELCOME")]
    assert phantom not in [entry["server_id"] for entry in welcome.payload["servers"]]
    net.run(2000)
    assert c.state.healthy, net.describe()


def test_replayed_join_does_not_displace_the_genuine_link(net: Net) -> None:
    intro, _a, _b = mesh(net, intro_id=HIGH, a_id=LOW, b_id=MID)
    [captured] = [p.text for p in net.packets(src="A", dst="I", frame_type="SERVER_HELLO_JOIN")]
    net.run(1000)
    eve = attacker(net, intro)
    eve.send(captured)
    assert eve.received(FrameType.SERVER_WELCOME) == []
    assert net.links_between("I", "A") == 1
