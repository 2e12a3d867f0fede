"""No secrets for strangers (issue 11, finding 1): signed joins, admission control, public-only replication.

A stranger is a process on the network with a key of its own and nothing else. It must not be welcomed
without proving its key, must not get into a closed federation without a listed key or the join token, and
even where it gets in (open admission) it must learn only public data.
"""

from __future__ import annotations

from typing import Any

from socp import crypto
from socp import envelope as env
from socp.envelope import FrameType
from socp.login import make_login_record, register_frame
from socp.server.mesh import JOIN_MAC, join_mac
from tests.unit.harness import FakeUser, Net, Node

TOKEN = "federation-secret-6f1c"
PASSWORD = "a password the stranger wants"
SECRETS = ("privkey_store", "pake_password", "verifier_hash", "sealed")


def closed_mesh(net: Net, **admission: Any) -> tuple[Node, Node, Node]:
    options = admission or {"join_token": TOKEN}
    intro = net.introducer("I", **options)
    a = net.peer("A", intro, **options)
    b = net.peer("B", intro, **options)
    assert net.full_mesh(), net.describe()
    return intro, a, b


def stranger(net: Net, target: Node, name: str = "eve") -> FakeUser:
    eve = net.user(name)
    eve.open(target)
    return eve


def join(net: Net, eve: FakeUser, intro: Node, *, token: str | None = None, signed: bool = True) -> env.Envelope:
    sender, to = net.new_id(), f"{intro.host}:{intro.port}"
    payload: dict[str, Any] = {"host": "evil.test", "port": 6666, "pubkey": eve.pubkey}
    if token is not None:
        payload[JOIN_MAC] = join_mac(token, FrameType.SERVER_HELLO_JOIN, sender, to, net.now, payload)
    return env.make(FrameType.SERVER_HELLO_JOIN, sender, to, net.now, payload, eve.key if signed else None)


def announce_to(net: Net, eve: FakeUser, target: Node) -> env.Envelope:
    return env.make(FrameType.SERVER_ANNOUNCE, net.new_id(), target.server_id, net.now,
                    {"host": "evil.test", "port": 6666, "pubkey": eve.pubkey}, eve.key)


def test_a_closed_federation_forms_with_the_token_and_never_sends_it(net: Net) -> None:
    intro, a, b = closed_mesh(net)
    alice, bob = net.user("alice", a), net.user("bob", b)
    alice.send_direct(bob, b"inside")
    assert [bob.decrypt(f) for f in bob.received(FrameType.USER_DELIVER)] == [b"inside"]
    assert intro.state.mesh.refused_admissions == 0
    assert all(TOKEN not in p.text for p in net.delivered)
    joins = [env.parse(p.text) for p in net.packets(frame_type="SERVER_HELLO_JOIN")]
    assert joins and all(JOIN_MAC in j.payload for j in joins)


def test_a_stranger_without_the_token_gets_no_welcome(net: Net) -> None:
    intro, _a, _b = closed_mesh(net)
    for token in (None, "a guessed token"):
        eve = stranger(net, intro, f"eve{token is None}")
        eve.send(join(net, eve, intro, token=token))
        assert not eve.received(FrameType.SERVER_WELCOME) and eve.closed
        assert [e.payload["code"] for e in eve.errors()] == ["AUTH_FAILED"]
    assert intro.state.mesh.refused_admissions == 2
    assert len(intro.state.linked_servers) == 2
    status = intro.state.status()
    assert (status["admission"], status["refused_admissions"]) == ("token", 2)


def test_a_captured_join_mac_does_not_admit_another_key(net: Net) -> None:
    intro, _a, _b = closed_mesh(net)
    eve = stranger(net, intro)
    honest = join(net, net.user("honest"), intro, token=TOKEN)
    # eve copies the MAC onto a join of her own key (same id, address and ts): the MAC covers the key.
    payload = {**honest.payload, "pubkey": eve.pubkey}
    forged = env.make(FrameType.SERVER_HELLO_JOIN, honest.sender, honest.to, honest.ts, payload, eve.key)
    eve.send(forged)
    assert not eve.received(FrameType.SERVER_WELCOME) and eve.closed
    assert [e.payload["code"] for e in eve.errors()] == ["AUTH_FAILED"]


def test_an_unsigned_join_is_refused_even_in_an_open_federation(net: Net) -> None:
    intro = net.introducer("I")
    net.peer("A", intro)
    eve = stranger(net, intro)
    eve.send(join(net, eve, intro, signed=False))
    assert not eve.received(FrameType.SERVER_WELCOME) and eve.closed
    assert [e.payload["code"] for e in eve.errors()] == ["INVALID_SIG"]
    # A join signed by a key other than the one it announces is refused the same way.
    mallory = stranger(net, intro, "mallory")
    frame = join(net, mallory, intro)
    mallory.send(env.make(frame.type, frame.sender, frame.to, frame.ts, dict(frame.payload), eve.key))
    assert not mallory.received(FrameType.SERVER_WELCOME) and mallory.closed
    assert intro.state.mesh.refused_admissions == 2


def test_listed_keys_are_admitted_and_others_are_not(net: Net) -> None:
    a_key, b_key = net.pool.key(40), net.pool.key(41)
    listed = frozenset({crypto.encode_public_key(a_key.public_key())})
    intro = net.introducer("I", admit_keys=listed)
    a = net.peer("A", intro, key=a_key)
    b = net.peer("B", intro, key=b_key)
    net.run(2000)
    assert a.server_id in intro.state.linked_servers
    assert b.server_id not in intro.state.linked_servers and not b.state.linked_servers
    assert intro.state.mesh.refused_admissions >= 1
    assert intro.state.settings.admission == "keys"


def test_a_stranger_dialing_a_member_of_a_closed_federation_is_refused(net: Net) -> None:
    _intro, a, b = closed_mesh(net)
    alice = net.user("alice", a)
    alice.send(register_frame(make_login_record(alice.key, alice.user_id, "alice", PASSWORD, net.now),
                              alice.user_id, a.server_id, net.now))
    eve = stranger(net, a)
    eve.send(announce_to(net, eve, a))
    assert eve.closed and [e.payload["code"] for e in eve.errors()] == ["AUTH_FAILED"]
    assert not eve.received(FrameType.SERVER_USER_RECORDS) and not eve.received(FrameType.SERVER_PRESENCE_SYNC)
    assert b.server_id in a.state.linked_servers


def test_a_stranger_in_an_open_federation_learns_only_public_data(net: Net) -> None:
    intro = net.introducer("I")
    a = net.peer("A", intro)
    alice = net.user("alice", a)
    alice.send(register_frame(make_login_record(alice.key, alice.user_id, "alice", PASSWORD, net.now),
                              alice.user_id, a.server_id, net.now))
    assert a.state.registration(alice.user_id).login is not None  # type: ignore[union-attr]
    eve = stranger(net, a)
    eve.send(announce_to(net, eve, a))   # open admission: a signed announce links
    assert not eve.closed
    [records] = eve.received(FrameType.SERVER_USER_RECORDS)
    [entry] = [r for r in records.payload["records"] if r["user_id"] == alice.user_id]
    assert entry["pubkey"] == alice.pubkey and entry["login_name"] == "alice" and entry["login_home"] == a.server_id
    seen = "".join(frame.to_wire() for frame in eve.inbox)
    assert not [secret for secret in SECRETS if secret in seen]


def test_the_node_reads_admission_flags_and_the_token_from_its_environment(net: Net, tmp_path: Any,
                                                                           monkeypatch: Any) -> None:
    from node.config import build_parser, config_from_args
    from socp.errors import ConfigError

    keys = [crypto.encode_public_key(net.pool.key(i).public_key()) for i in (42, 43)]
    listed = tmp_path / "admit.txt"
    listed.write_text(f"# the federation's servers\n{keys[0]}\n\n{keys[1]}  # peer2\n")
    monkeypatch.setenv("SOCP_JOIN_TOKEN", "from-the-environment")
    config = config_from_args(build_parser().parse_args(["--admit-keys", str(listed)]), "host")
    assert config.admit_keys == frozenset(keys) and config.join_token == "from-the-environment"
    assert "from-the-environment" not in repr(config)
    flag = config_from_args(build_parser().parse_args(["--join-token", "from-the-flag"]), "host")
    assert flag.join_token == "from-the-flag" and flag.admit_keys == frozenset()
    monkeypatch.delenv("SOCP_JOIN_TOKEN")
    assert config_from_args(build_parser().parse_args([]), "host").join_token == ""
    listed.write_text("not a key\n")
    try:
        config_from_args(build_parser().parse_args(["--admit-keys", str(listed)]), "host")
    except ConfigError as exc:
        assert f"{listed}:1" in str(exc)
    else:
        raise AssertionError("a bad key in --admit-keys must be refused")
