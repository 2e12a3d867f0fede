"""Users no server can steal (issue 11, findings 2 and 3): a rogue server in the mesh, with its own valid key,
tries to place someone else's user on itself, remove it, and speak for it.

C is the rogue: a member of the federation whose frames are injected on its genuine links (signed with its
own key, so every transport check passes); only the user-level proofs can stop it.
"""

from __future__ import annotations

from typing import Any

import pytest

from socp import crypto
from socp import envelope as env
from socp.envelope import FrameType
from socp.presence import Attestation
from socp.user.common import Rejected
from socp.user.keys import PeerDirectory
from tests.unit.harness import FakeUser, Net, Node


def federation(net: Net) -> tuple[Node, Node, Node, FakeUser, FakeUser]:
    intro = net.introducer("I")
    a, b, c = net.peer("A", intro), net.peer("B", intro), net.peer("C", intro)
    assert net.full_mesh(), net.describe()
    alice, bob = net.user("alice", a), net.user("bob", b)
    return a, b, c, alice, bob


def rogue(net: Net, c: Node, victim: Node, frame_type: FrameType, payload: dict[str, Any], *,
          to: str = "*", ts: int | None = None) -> None:
    """C sends a frame of its own making (signed with its own key) to ``victim``."""
    frame = env.make(frame_type, c.server_id, to, net.now if ts is None else ts, payload, c.key)
    net.inject("C", victim.name, frame.to_wire())


def advert_attest(net: Net, src: str, user: FakeUser) -> dict[str, Any]:
    """The attestation the home server ``src`` gossiped for ``user``."""
    for packet in net.packets(src=src, frame_type="USER_ADVERTISE"):
        frame = env.parse(packet.text)
        if frame.payload["user_id"] == user.user_id and "attest" in frame.payload:
            return dict(frame.payload["attest"])
    raise AssertionError(f"{src} never gossiped an attested advert of {user}")


def test_the_home_server_gossips_the_users_own_attestation(net: Net) -> None:
    a, b, c, alice, _bob = federation(net)
    attest = Attestation.from_wire(alice.user_id, advert_attest(net, "A", alice))
    assert attest.server_id == a.server_id and attest.verify(alice.key.public_key())
    for node in (b, c):
        assert node.state.directory.location(alice.user_id) == a.server_id


@pytest.mark.parametrize("attest", ["none", "copied", "forged"])
def test_a_rogue_advert_of_someone_elses_user_captures_nothing(net: Net, attest: str) -> None:
    a, b, c, alice, bob = federation(net)
    payload: dict[str, Any] = {"user_id": alice.user_id, "server_id": c.server_id, "pubkey": alice.pubkey,
                               "meta": {"display_name": "alice"}}
    if attest == "copied":       # alice's genuine attestation, which names A
        payload["attest"] = advert_attest(net, "A", alice)
    elif attest == "forged":     # a fresh one naming C, signed with C's key
        payload["attest"] = Attestation.make(c.key, alice.user_id, c.server_id, net.now + 5).to_wire()
    for round_ in range(3):      # re-advertising (finding 3 beat anti-entropy every 1.5 s)
        net.now += 1
        rogue(net, c, b, FrameType.USER_ADVERTISE, payload)
        rogue(net, c, b, FrameType.SERVER_PRESENCE_SYNC, {"server_id": c.server_id, "version": round_,
                                                         "users": [payload]}, to=b.server_id)
    assert b.state.directory.location(alice.user_id) == a.server_id
    assert b.state.presence.refused_adverts >= 6 and b.state.status()["refused_adverts"] >= 6
    for i in range(10):
        bob.send_direct(alice, f"dm {i}".encode())
    assert [alice.decrypt(f) for f in alice.received(FrameType.USER_DELIVER)] == [f"dm {i}".encode()
                                                                                 for i in range(10)]
    assert not bob.errors()


def test_a_rogue_cannot_remove_a_user_it_does_not_host(net: Net) -> None:
    a, b, c, alice, bob = federation(net)
    for server_id in (c.server_id, a.server_id):   # its own id, then the host's (USER_REMOVE must be signed by it)
        net.now += 1
        rogue(net, c, b, FrameType.USER_REMOVE, {"user_id": alice.user_id, "server_id": server_id})
    assert b.state.directory.location(alice.user_id) == a.server_id
    assert not [f for f in bob.received(FrameType.USER_REMOVE) if f.payload["user_id"] == alice.user_id]


def test_a_forged_delivery_from_alice_under_another_key_is_refused(net: Net) -> None:
    # Finding 2: the rogue speaks for alice with its own key as sender_pub and a content_sig made with it.
    _a, b, c, alice, bob = federation(net)
    ciphertext = crypto.rsa_encrypt(bob.key.public_key(), b"send me your password")
    content_sig = crypto.sign_direct(c.key, ciphertext, alice.user_id, bob.user_id, net.now)
    rogue(net, c, b, FrameType.SERVER_DELIVER, {"user_id": bob.user_id, "sender": alice.user_id,
                                                "ciphertext": ciphertext, "sender_pub": c.pubkey,
                                                "content_sig": content_sig}, to=b.server_id)
    assert not bob.received(FrameType.USER_DELIVER)
    assert b.state.routing.refused_deliveries == 1
    [error] = [env.parse(p.text) for p in net.packets(src="B", dst="C", frame_type="ERROR")]
    assert error.payload["code"] == "BAD_KEY"
    # The same with alice offline (she is then in nobody's directory, but her key stays pinned).
    alice.disconnect()
    net.now += 1
    rogue(net, c, b, FrameType.SERVER_DELIVER, {"user_id": bob.user_id, "sender": alice.user_id,
                                                "ciphertext": ciphertext, "sender_pub": c.pubkey,
                                                "content_sig": content_sig}, to=b.server_id)
    assert not bob.received(FrameType.USER_DELIVER) and b.state.routing.refused_deliveries == 2
    assert b.state.status()["refused_deliveries"] == 2


def test_a_user_that_moves_takes_its_place_and_an_older_attestation_loses(net: Net) -> None:
    a, b, c, alice, _bob = federation(net)
    old = advert_attest(net, "A", alice)
    alice.disconnect()
    net.now += 10
    alice.connect(b)
    assert c.state.directory.location(alice.user_id) == b.server_id
    # A replays its old (genuine, but older) advert of alice: refused, the newest attestation wins.
    net.now += 1
    frame = env.make(FrameType.USER_ADVERTISE, a.server_id, "*", net.now,
                     {"user_id": alice.user_id, "server_id": a.server_id, "pubkey": alice.pubkey, "meta": {},
                      "attest": old}, a.key)
    net.inject("A", "C", frame.to_wire())
    assert c.state.directory.location(alice.user_id) == b.server_id


def test_a_hello_with_a_bad_attestation_is_refused(net: Net) -> None:
    a, b, _c, _alice, _bob = federation(net)
    carol = net.user("carol")
    names_b = Attestation.make(carol.key, carol.user_id, b.server_id, net.now).to_wire()
    not_hers = Attestation.make(net.pool.key(32), carol.user_id, a.server_id, net.now).to_wire()
    for attest, code in ((names_b, "BAD_FRAME"), (not_hers, "INVALID_SIG")):
        carol.open(a)
        carol.send(carol.hello_frame(to=a.server_id, attested=False, attest=attest))
        assert carol.closed and [e.payload["code"] for e in carol.errors()][-1:] == [code]
        assert carol.user_id not in a.state.local_users


def test_the_client_keeps_the_first_key_of_a_user_even_when_it_is_offline(net: Net) -> None:
    alice_key, other = net.pool.key(30), net.pool.key(31)
    alice_pub, other_pub = (crypto.encode_public_key(k.public_key()) for k in (alice_key, other))
    peers = PeerDirectory()
    alice_id, server = net.new_id(), net.new_id()
    advert = env.make(FrameType.USER_ADVERTISE, server, "*", net.now,
                      {"user_id": alice_id, "server_id": server, "pubkey": alice_pub, "meta": {}})
    peers.on_advertise(advert)
    peers.on_remove(env.make(FrameType.USER_REMOVE, server, "*", net.now,
                             {"user_id": alice_id, "server_id": server}))
    with pytest.raises(Rejected, match="not the key advertised"):
        peers.sender_key(alice_id, other_pub, "message", "sender_pub")
    assert peers.sender_key(alice_id, alice_pub, "message", "sender_pub")[0] == alice_pub
    # A sender seen first in a delivery is pinned by it.
    stranger_id = net.new_id()
    peers.sender_key(stranger_id, other_pub, "message")
    with pytest.raises(Rejected):
        peers.sender_key(stranger_id, alice_pub, "message")


# --- display names (finding 6) ------------------------------------------------------------------------

def advertise(peers: PeerDirectory, net: Net, user_id: str, server: str, pubkey: str, name: str) -> None:
    peers.on_advertise(env.make(FrameType.USER_ADVERTISE, server, "*", net.now,
                                {"user_id": user_id, "server_id": server, "pubkey": pubkey,
                                 "meta": {"display_name": name}}))


def test_a_shared_display_name_shows_fingerprints_and_tell_asks_which(net: Net) -> None:
    keys = [crypto.encode_public_key(net.pool.key(i).public_key()) for i in (33, 34, 35)]
    alice_id, impostor_id, bob_id, server = net.new_id(), net.new_id(), net.new_id(), net.new_id()
    peers = PeerDirectory()
    advertise(peers, net, alice_id, server, keys[0], "alice")
    advertise(peers, net, bob_id, server, keys[2], "bob")
    assert peers.display(alice_id) == "alice" and peers.resolve("alice").user_id == alice_id
    advertise(peers, net, impostor_id, server, keys[1], "Alice")
    alice_fp, impostor_fp = (crypto.key_fingerprint(k)[:8] for k in keys[:2])
    assert peers.display(alice_id) == f"alice [{alice_fp}]"
    assert peers.display(impostor_id) == f"Alice [{impostor_fp}]"
    assert peers.display(bob_id) == "bob"
    with pytest.raises(Exception, match="2 online users are called 'alice'") as caught:
        peers.resolve("alice")
    assert alice_fp in str(caught.value) and impostor_fp in str(caught.value)
    # The real alice goes offline: /tell alice must not reach the impostor.
    peers.on_remove(env.make(FrameType.USER_REMOVE, server, "*", net.now, {"user_id": alice_id,
                                                                          "server_id": server}))
    with pytest.raises(Exception, match="who is offline") as caught:
        peers.resolve("alice")
    assert impostor_id in str(caught.value)
    assert peers.resolve(impostor_id).user_id == impostor_id     # by id it is reachable, on purpose


def test_an_impostor_seen_first_while_the_name_is_free_still_shows_a_fingerprint_later(net: Net) -> None:
    keys = [crypto.encode_public_key(net.pool.key(i).public_key()) for i in (33, 34)]
    first, second, server = net.new_id(), net.new_id(), net.new_id()
    peers = PeerDirectory()
    advertise(peers, net, first, server, keys[0], "carol")
    peers.on_remove(env.make(FrameType.USER_REMOVE, server, "*", net.now, {"user_id": first, "server_id": server}))
    advertise(peers, net, second, server, keys[1], "carol")
    assert peers.display(second).startswith("carol [")
    with pytest.raises(Exception, match="who is offline"):
        peers.resolve("carol")


def test_unattested_users_are_listed_only_under_the_legacy_interop_switch(net: Net) -> None:
    intro = net.introducer("I", legacy_interop=True)
    a = net.peer("A", intro, legacy_interop=True)
    b = net.peer("B", intro, legacy_interop=True)
    assert net.full_mesh(), net.describe()
    other = net.user("other-impl")
    other.connect(a, attested=False)                     # a client that attests nothing
    assert b.state.directory.location(other.user_id) == a.server_id
    alice = net.user("alice", a)                         # attested: a rogue claim without proof still loses
    frame = env.make(FrameType.USER_ADVERTISE, b.server_id, "*", net.now + 1,
                     {"user_id": alice.user_id, "server_id": b.server_id, "pubkey": alice.pubkey, "meta": {}}, b.key)
    net.inject("B", "I", frame.to_wire())
    assert intro.state.directory.location(alice.user_id) == a.server_id


def test_by_default_an_unattested_user_is_served_locally_but_listed_nowhere_else(net: Net) -> None:
    a, b, _c, alice, _bob = federation(net)
    other = net.user("other-impl")
    other.connect(a, attested=False)
    assert other.user_id in a.state.local_users and b.state.directory.location(other.user_id) is None
    other.send_direct(alice, b"local delivery still works")
    assert [alice.decrypt(f) for f in alice.received(FrameType.USER_DELIVER)] == [b"local delivery still works"]


def test_user_pins_survive_the_session_through_the_key_dir(net: Net, tmp_path: Any) -> None:
    from client.trust import KnownUsers

    keys = [crypto.encode_public_key(net.pool.key(i).public_key()) for i in (33, 34)]
    alice_id, impostor_id, server = net.new_id(), net.new_id(), net.new_id()
    first = PeerDirectory()
    advertise(first, net, alice_id, server, keys[0], "alice")
    store = KnownUsers(tmp_path)
    assert store.save(first.pins()) == 1 and store.path.stat().st_mode & 0o777 == 0o600
    assert store.save({alice_id: (keys[1], "alice")}) == 0          # first key wins on disk too
    assert store.load() == {alice_id: (keys[0], "alice")}
    # The next session starts with the pin: another key for alice is refused, and an impostor that takes the
    # name while alice is away is shown with its fingerprint and never reached by name.
    second = PeerDirectory()
    second.preload(store.load())
    with pytest.raises(Rejected, match="changed"):
        advertise(second, net, alice_id, server, keys[1], "alice")
    advertise(second, net, impostor_id, server, keys[1], "alice")
    assert second.display(impostor_id) == f"alice [{crypto.key_fingerprint(keys[1])[:8]}]"
    with pytest.raises(Exception, match="who is offline"):
        second.resolve("alice")
    store.path.write_text('{"x": {"pubkey": "not a key"}, "y": 5}')
    assert store.load() == {}
