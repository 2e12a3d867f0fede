"""Password login, the user registry and directory lookups (project extension, PROTOCOL.md §9): no event loop.

Registration records are made and signed on the client; the user's login home stores them (they never leave
it: other servers get the public part, and a login there is refused naming the home), checks a presented
verifier against a salted hash, rate-limits failures per user id, and never sees the password or the clear key.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pytest

from socp import crypto
from socp import envelope as env
from socp.actions import RegistrationStored
from socp.codec import b64url_decode, b64url_encode
from socp.envelope import FrameType
from socp.errors import BadFrame, CryptoError, RateLimited
from socp.login import LoginChallenged, LoginGranted, LoginRefused, LoginSession, make_login_record, register_frame
from socp.registry import LoginHint, LoginRecord, LoginThrottle, Registration, normalize_login, registration_from_wire
from socp.server import LOGIN_GRACE_MS
from socp.user import DirectoryEntry, UserSession
from tests.unit.harness import FakeUser, Net, Node
from tests.unit.test_public_channel_support import SessionUser, session_users

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def record_key(key_pool: Any) -> crypto.PrivateKey:
    return key_pool.key(20)


@pytest.fixture(scope="module")
def alice_record(record_key: crypto.PrivateKey) -> LoginRecord:
    """One slow derivation shared by the tests that only inspect a record."""
    return make_login_record(record_key, "a11ce000-0000-4000-8000-0000000000a1", "Alice", PASSWORD, 1)


# --- records, made on the client -----------------------------------------------------------------

def test_the_record_seals_the_key_and_holds_only_a_verifier_hash(alice_record: LoginRecord,
                                                                 record_key: crypto.PrivateKey) -> None:
    user_id = "a11ce000-0000-4000-8000-0000000000a1"
    assert alice_record.login == "alice"
    kdf = alice_record.privkey_store["kdf"]
    assert kdf["alg"] == "PBKDF2-SHA256" and kdf["iterations"] >= 600_000 and kdf == alice_record.pake_password["kdf"]
    assert PASSWORD not in repr(alice_record.to_wire())
    pubkey = crypto.encode_public_key(record_key.public_key())
    assert alice_record.verify(user_id, pubkey)
    sealing, verifier = crypto.derive_password_keys(PASSWORD, b64url_decode(kdf["salt"]), kdf["iterations"])
    opened = crypto.open_private_key(alice_record.privkey_store["sealed"], sealing, user_id)
    assert crypto.encode_public_key(opened.public_key()) == pubkey
    pake = alice_record.pake_password
    assert crypto.verifier_matches(verifier, b64url_decode(pake["salt"]), b64url_decode(pake["verifier_hash"]))
    wrong_sealing, wrong_verifier = crypto.derive_password_keys("wrong", b64url_decode(kdf["salt"]),
                                                                kdf["iterations"])
    assert not crypto.verifier_matches(wrong_verifier, b64url_decode(pake["salt"]),
                                       b64url_decode(pake["verifier_hash"]))
    with pytest.raises(CryptoError, match="does not open with this password"):
        crypto.open_private_key(alice_record.privkey_store["sealed"], wrong_sealing, user_id)
    with pytest.raises(CryptoError, match="does not open"):  # bound to its user id
        crypto.open_private_key(alice_record.privkey_store["sealed"], sealing, "b0b00000-0000-4000-8000-0000000000b0")


def test_records_are_checked_whole(alice_record: LoginRecord, record_key: crypto.PrivateKey) -> None:
    user_id = "a11ce000-0000-4000-8000-0000000000a1"
    pubkey = crypto.encode_public_key(record_key.public_key())
    # Replicated records are public data only: password records sent by an older peer are dropped unread.
    item = {"user_id": user_id, "pubkey": pubkey, "home_server": "s", "meta": {}, "login": alice_record.to_wire()}
    assert registration_from_wire(item) == (Registration(user_id, pubkey, "s", {}), None)
    hinted = {**item, "login_name": "Alice", "login_home": "home-id"}
    assert registration_from_wire(hinted)[1] == LoginHint("alice", user_id, "home-id")
    assert "privkey_store" not in repr(Registration(user_id, pubkey, "s", {}, alice_record).to_wire("home-id"))
    with pytest.raises(BadFrame, match="login_home"):
        registration_from_wire({**item, "login_name": "alice"})
    weak_kdf = {**alice_record.privkey_store["kdf"], "iterations": 1000}
    weak = {**alice_record.to_wire(), "privkey_store": {**alice_record.privkey_store, "kdf": weak_kdf},
            "pake_password": {**alice_record.pake_password, "kdf": weak_kdf}}
    with pytest.raises(BadFrame, match="iterations"):
        LoginRecord.from_wire(weak)
    with pytest.raises(BadFrame, match="case-folded"):
        LoginRecord.from_wire({**alice_record.to_wire(), "login": "Alice"})
    with pytest.raises(CryptoError):
        make_login_record(record_key, user_id, "alice", "", 1)
    with pytest.raises(CryptoError, match="iterations"):
        crypto.derive_password_keys("pw", b"salt" * 4, 100_000)
    for bad in ["", ".hidden", "-x", "a/b", "x" * 65, 5]:
        with pytest.raises(BadFrame):
            normalize_login(bad)


def test_the_throttle_blocks_a_source_with_a_doubling_backoff() -> None:
    """Issue 11 finding 7: failures count per source address, never per account, and repeat offenders wait
    twice as long each time."""
    throttle = LoginThrottle(max_failures=5, window_ms=60_000)
    for i in range(5):
        throttle.check("10.0.0.66", 1000 + i)
        throttle.failed("10.0.0.66", 1000 + i)
    with pytest.raises(RateLimited, match="too many failed logins from your address: try again in 60 s"):
        throttle.check("10.0.0.66", 1010)
    throttle.check("10.0.0.1", 1010)            # another source (the real user) is not slowed down
    throttle.check("10.0.0.66", 61_005)         # the block is over
    for i in range(5):
        throttle.failed("10.0.0.66", 61_005 + i)
    with pytest.raises(RateLimited, match="try again in 120 s"):
        throttle.check("10.0.0.66", 61_010)     # second block in a row: twice as long
    throttle.succeeded("10.0.0.66")
    throttle.check("10.0.0.66", 61_011)


# --- through ServerState --------------------------------------------------------------------------

@dataclass
class Net3:
    net: Net
    a: Node
    b: Node
    alice: SessionUser
    bob: SessionUser


@pytest.fixture
def net3(net: Net) -> Net3:
    intro = net.introducer("I")
    a, b = net.peer("A", intro), net.peer("B", intro)
    [alice] = session_users(net, a, "alice")
    [bob] = session_users(net, b, "bob")
    return Net3(net, a, b, alice, bob)


@pytest.fixture
def registered(net3: Net3) -> Net3:
    """alice registered the password; her record reached every server."""
    alice = net3.alice
    record = make_login_record(alice.key, alice.user_id, "alice", PASSWORD, net3.net.now)
    alice.send(register_frame(record, alice.user_id, net3.a.server_id, net3.net.now))
    return net3


def login_at(net: Net, node: Node, name: str, password: str, source: str = "10.0.0.1"
             ) -> tuple[FakeUser, LoginSession, list[Any]]:
    """Run a login against ``node`` from a fresh connection (from address ``source``); returns the connection,
    the session, the events."""
    conn = FakeUser(net, f"login{len(net.users)}", net.pool.key(23), "", {})
    net.users[conn.name] = conn
    conn.open(node, source=source)
    attempt = LoginSession(name, password)
    events: list[Any] = []

    def feed() -> None:
        for frame in conn.inbox:
            events.extend(attempt.receive_text(frame.to_wire(), net.now))
        conn.clear()

    conn.send(attempt.request(net.now))
    feed()
    if events and isinstance(events[-1], LoginChallenged):
        conn.send(attempt.prove(net.now))
        feed()
    return conn, attempt, events


def test_registration_is_acknowledged_stored_and_replicated(registered: Net3) -> None:
    net, a, b, alice = registered.net, registered.a, registered.b, registered.alice
    [ack] = alice.frames(FrameType.ACK)[-1:]
    assert ack.payload["msg_ref"].startswith(f"USER_REGISTER:{alice.user_id}:") and alice.signed_by_server(ack)
    [stored] = [e for e in a.events_of(RegistrationStored) if e.registration.user_id == alice.user_id]
    assert stored.registration.login is not None and stored.registration.login.login == "alice"
    for node in (a, b):
        registration = node.state.registration(alice.user_id)
        assert registration is not None and registration.pubkey == alice.pubkey
        assert registration.home_server == a.server_id
        # Issue 11, finding 1: the password records stay on the login home.
        assert (registration.login is not None) == (node is a)
    records = "".join(p.text for p in net.packets(src="A", dst="B", frame_type="SERVER_USER_RECORDS"))
    assert '"login_name":"alice"' in records and f'"login_home":"{a.server_id}"' in records
    for secret in ("privkey_store", "pake_password", "verifier_hash", "sealed"):
        assert secret not in "".join(p.text for p in net.delivered if (p.src, p.dst) != ("alice", "A")), secret
    assert PASSWORD not in "".join(p.text for p in net.delivered)


def test_login_elsewhere_is_refused_naming_the_home_server(registered: Net3) -> None:
    net, a, b, alice = registered.net, registered.a, registered.b, registered.alice
    alice.disconnect()
    _, _, events = login_at(net, b, "alice", PASSWORD)
    [refused] = events
    assert isinstance(refused, LoginRefused) and refused.code == "USER_NOT_FOUND"
    assert a.server_id in refused.detail and "log in there" in refused.detail and f"{a.host}:{a.port}" in refused.detail


def test_login_from_nothing_on_the_home_server(registered: Net3) -> None:
    net, b, alice = registered.net, registered.a, registered.alice
    alice.disconnect()
    conn, attempt, events = login_at(net, b, "ALICE", PASSWORD)
    challenged, granted = events
    assert isinstance(challenged, LoginChallenged) and challenged.user_id == alice.user_id
    assert isinstance(granted, LoginGranted) and granted.user_id == alice.user_id
    assert crypto.encode_public_key(granted.key.public_key()) == alice.pubkey
    session = UserSession(granted.user_id, granted.key, {"display_name": "alice"}, granted.server_pub,
                          login_nonce=attempt.nonce, server_id=granted.server_id)
    hello = session.hello(net.now)
    assert env.parse(hello).payload["login_nonce"] == attempt.nonce
    conn.send(hello)
    for frame in conn.inbox:
        session.receive_text(frame.to_wire(), net.now)
    assert session.welcomed and b.server_id == session.server_id
    assert alice.user_id in b.state.local_users


def test_a_wrong_password_is_refused_clearly_and_costs_the_challenge(registered: Net3) -> None:
    net, b = registered.net, registered.a
    conn, attempt, events = login_at(net, b, "alice", "wrong password")
    assert isinstance(events[-1], LoginRefused)
    assert (events[-1].code, events[-1].detail) == ("AUTH_FAILED", "wrong password for alice")
    assert not conn.closed
    # The same nonce cannot be tried twice.
    retry = env.make(FrameType.USER_LOGIN_PROOF, "*", "*", net.now, {"login": "alice", "nonce": attempt.nonce or "",
                                                                   "sealed_verifier": b64url_encode(b"x" * 512)})
    conn.send(retry)
    [error] = conn.errors()
    assert error.payload["code"] == "BAD_FRAME" and "without a matching" in error.payload["detail"]


def test_failed_logins_slow_down_their_source_not_the_account(registered: Net3) -> None:
    """Issue 11 finding 7: five wrong guesses from a stranger's address block that address (even with the
    right password), while alice logging in from her own address is never locked out."""
    net, b, alice = registered.net, registered.a, registered.alice
    alice.disconnect()
    for _ in range(5):
        _, _, events = login_at(net, b, "alice", "guess", source="10.0.0.66")
        assert events[-1].code == "AUTH_FAILED"
    _, _, events = login_at(net, b, "alice", PASSWORD, source="10.0.0.66")  # even the right password waits
    assert isinstance(events[-1], LoginRefused) and events[-1].code == "RATE_LIMITED"
    assert "too many failed logins from your address: try again in" in events[-1].detail
    _, _, events = login_at(net, b, "alice", PASSWORD, source="10.0.0.1")   # the real alice, elsewhere
    assert isinstance(events[-1], LoginGranted)
    net.run(61_000)
    _, _, events = login_at(net, b, "alice", PASSWORD, source="10.0.0.66")
    assert isinstance(events[-1], LoginGranted)


def test_unknown_logins_get_a_decoy_challenge_indistinguishable_from_a_real_one(registered: Net3) -> None:
    """Issue 11 finding 7: an unknown login is challenged like a known one (a stable fake user id and salt,
    the same fields) and refused like a wrong password; no challenge costs a signature."""
    net, b = registered.net, registered.a
    shapes, answers = [], []
    for name in ("alice", "nobody", "nobody"):
        conn = FakeUser(net, f"probe{len(net.users)}", net.pool.key(23), "", {})
        net.users[conn.name] = conn
        conn.open(b, source="10.0.0.7")
        conn.send(LoginSession(name, "guess").request(net.now))
        [challenge] = conn.received(FrameType.USER_LOGIN_CHALLENGE)
        assert challenge.sig == "" and env.is_uuid(challenge.payload["user_id"])
        shapes.append((sorted(challenge.payload), sorted(challenge.payload["kdf"]), challenge.payload["kdf"]["alg"],
                       challenge.payload["kdf"]["iterations"], len(challenge.payload["kdf"]["salt"])))
        answers.append((challenge.payload["user_id"], challenge.payload["kdf"]["salt"]))
    assert shapes[0] == shapes[1] == shapes[2]
    assert answers[1] == answers[2] != answers[0]                     # the decoy is stable per login
    _, _, events = login_at(net, b, "nobody", PASSWORD, source="10.0.0.8")
    assert isinstance(events[0], LoginChallenged)
    assert (events[-1].code, events[-1].detail) == ("AUTH_FAILED", "wrong password for nobody")


def test_a_sniffed_login_proof_cannot_be_replayed(registered: Net3) -> None:
    """Suspected in issue 11: the proof is sealed to the server with the challenge's nonce, so a proof copied
    off the wire fails under a fresh challenge (and never shows the verifier)."""
    net, b, alice = registered.net, registered.a, registered.alice
    alice.disconnect()
    before = len(net.packets(frame_type="USER_LOGIN_PROOF"))
    _, _, events = login_at(net, b, "alice", PASSWORD)
    assert isinstance(events[-1], LoginGranted)
    [sniffed] = [env.parse(p.text) for p in net.packets(frame_type="USER_LOGIN_PROOF")[before:]]
    assert "verifier" not in sniffed.payload
    thief = FakeUser(net, "thief", net.pool.key(23), "", {})
    net.users["thief"] = thief
    thief.open(b, source="10.0.0.66")
    thief.send(LoginSession("alice", "unknown").request(net.now))
    [challenge] = thief.received(FrameType.USER_LOGIN_CHALLENGE)
    thief.send(env.make(FrameType.USER_LOGIN_PROOF, "*", "*", net.now,
                        {**sniffed.payload, "nonce": challenge.payload["nonce"]}))
    assert [e.payload["code"] for e in thief.errors()] == ["AUTH_FAILED"]
    assert thief.received(FrameType.USER_LOGIN_GRANTED) == []


def test_unknown_logins_and_mismatched_nonces_are_refused(registered: Net3) -> None:
    net, b, alice = registered.net, registered.a, registered.alice
    alice.disconnect()
    conn, _, events = login_at(net, b, "alice", PASSWORD)
    assert isinstance(events[-1], LoginGranted)
    forged = UserSession(alice.user_id, alice.key, {}, login_nonce="not-the-nonce", server_id=b.server_id)
    conn.send(forged.hello(net.now))
    [error] = conn.errors()
    assert error.payload["code"] == "BAD_FRAME" and "login_nonce" in error.payload["detail"] and conn.closed


def test_a_login_in_progress_may_outlast_the_peer_timeout(registered: Net3) -> None:
    net, b = registered.net, registered.a
    conn = FakeUser(net, "slow", net.pool.key(23), "", {})
    net.users["slow"] = conn
    conn.open(b)
    conn.send(LoginSession("alice", PASSWORD).request(net.now))
    net.run(10_000)  # far beyond the 3 s peer timeout of the fake network
    assert not conn.closed
    net.run(LOGIN_GRACE_MS)
    assert conn.closed


def test_the_client_refuses_a_weak_challenge_and_a_blob_that_does_not_match(registered: Net3) -> None:
    net, b = registered.net, registered.a
    key = b.key
    weak = env.make(FrameType.USER_LOGIN_CHALLENGE, b.server_id, "*", net.now, {
        "login": "alice", "user_id": registered.alice.user_id, "nonce": "n", "server_id": b.server_id,
        "server_pub": b.pubkey, "kdf": {"alg": "PBKDF2-SHA256", "iterations": 1, "salt": "AAAAAAAAAAAAAAAAAAAAAA"}},
        key)
    attempt = LoginSession("alice", PASSWORD)
    attempt.request(net.now)
    [refused] = attempt.receive_text(weak.to_wire(), net.now)
    assert isinstance(refused, LoginRefused) and "refusing the server's password parameters" in refused.detail
    # A server that hands out a blob for another key is caught after decryption.
    _, _, events = login_at(net, b, "alice", PASSWORD)
    assert isinstance(events[-1], LoginGranted)
    registration = b.state.registration(registered.alice.user_id)
    assert registration is not None and registration.login is not None
    fresh = LoginSession("alice", PASSWORD)
    fresh.request(net.now)
    challenge = env.make(FrameType.USER_LOGIN_CHALLENGE, b.server_id, "*", net.now, {
        "login": "alice", "user_id": registered.alice.user_id, "nonce": "n", "server_id": b.server_id,
        "server_pub": b.pubkey, "kdf": dict(registration.login.pake_password["kdf"])}, key)
    fresh.receive_text(challenge.to_wire(), net.now)
    fresh.prove(net.now)
    granted = env.make(FrameType.USER_LOGIN_GRANTED, b.server_id, "*", net.now, {
        "user_id": registered.alice.user_id, "pubkey": registered.bob.pubkey,
        "privkey_store": dict(registration.login.privkey_store)}, key)
    [refused] = fresh.receive_text(granted.to_wire(), net.now)
    assert isinstance(refused, LoginRefused) and "does not match the registered public key" in refused.detail


def test_the_server_refuses_bad_registrations(net3: Net3) -> None:
    net, a, alice, bob = net3.net, net3.a, net3.alice, net3.bob
    record = make_login_record(alice.key, alice.user_id, "alice", PASSWORD, 5)
    forged = replace(record, content_sig=crypto.sign(bob.key, b"x"))
    older = make_login_record(alice.key, alice.user_id, "alice", PASSWORD, 4)
    bobs = make_login_record(bob.key, bob.user_id, "alice", PASSWORD, 6)
    cases = [(alice, forged, "INVALID_SIG", "does not verify"), (alice, record, None, None),
             (alice, older, "BAD_FRAME", "older than the stored"), (bob, bobs, "NAME_IN_USE", "another user")]
    for user, candidate, code, words in cases:
        user.clear()
        user.send(register_frame(candidate, user.user_id, user.node.server_id if user.node else "", net.now))
        errors = user.errors()
        if code is None:
            assert errors == []
        else:
            [error] = errors
            assert error.payload["code"] == code and words in error.payload["detail"], error.payload
            assert not user.closed
    registration = a.state.registration(alice.user_id)
    assert registration is not None and registration.login is not None and registration.login.version == 5


def test_directory_answers_for_offline_users_signed_by_the_server(registered: Net3) -> None:
    net, alice, bob = registered.net, registered.alice, registered.bob
    alice.disconnect()
    for query in ({"user_id": alice.user_id}, {"login": "Alice"}):
        bob.send(bob.session.directory_query(net.now, **query))
        [entry] = bob.of(DirectoryEntry)[-1:]
        assert (entry.user_id, entry.pubkey, entry.online, entry.login) == (alice.user_id, alice.pubkey, False, "alice")
        assert entry.label == "alice" and entry.home_server == registered.a.server_id
        [response] = bob.frames(FrameType.DIRECTORY_RESPONSE)[-1:]
        assert bob.signed_by_server(response)
    bob.send(bob.session.directory_query(net.now, user_id=bob.user_id))
    assert bob.of(DirectoryEntry)[-1].online is True
    bob.clear()
    bob.send(bob.session.directory_query(net.now, login="nobody"))
    [error] = bob.errors()
    assert error.payload["code"] == "USER_NOT_FOUND"


def test_the_registry_binds_ids_to_keys_network_wide(registered: Net3) -> None:
    net, b, alice = registered.net, registered.b, registered.alice
    alice.disconnect()
    impostor = FakeUser(net, "impostor", registered.bob.key, alice.user_id, {"display_name": "alice"})
    net.users["impostor"] = impostor
    impostor.connect(b)
    [error] = impostor.errors()
    assert error.payload["code"] == "BAD_KEY" and impostor.closed


def test_records_from_servers_are_merged_carefully(registered: Net3) -> None:
    net, a, b, alice, bob = registered.net, registered.a, registered.b, registered.alice, registered.bob
    current = b.state.registration(alice.user_id)
    assert current is not None and current.login is None

    def push(registration: Registration, **extra: Any) -> None:
        frame = env.make(FrameType.SERVER_USER_RECORDS, a.server_id, "*", net.now + 1,
                         {"records": [{**registration.to_wire(), **extra}]}, a.key)
        net.inject("A", "B", frame.to_wire())
        net.now += 1

    push(replace(current, pubkey=bob.pubkey))            # another key for a bound id: ignored
    assert b.state.registration(alice.user_id) == current
    newer = make_login_record(alice.key, alice.user_id, "alice", "new password", 10**15)
    push(current, login=newer.to_wire())                  # password records from a peer: never stored
    assert b.state.registration(alice.user_id) == current
    bob_now = b.state.registration(bob.user_id)
    assert bob_now is not None
    push(bob_now, login_name="alice", login_home=a.server_id)  # a login that belongs to someone else: ignored
    _, _, events = login_at(net, b, "alice", PASSWORD)
    assert isinstance(events[-1], LoginRefused) and a.server_id in events[-1].detail
    bob.send(bob.session.directory_query(net.now, login="alice"))
    [entry] = bob.of(DirectoryEntry)[-1:]
    assert entry.user_id == alice.user_id
    malformed = env.make(FrameType.SERVER_USER_RECORDS, a.server_id, "*", net.now + 1,
                         {"records": [{"user_id": 5}, "junk"]}, a.key)
    net.inject("A", "B", malformed.to_wire())             # bad records are skipped; the link stays up
    assert a.server_id in b.state.linked_servers
