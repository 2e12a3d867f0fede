"""Issue 11, finding 7 (cheap side): login requests are rate-limited per source address, cost no signature,
and one address flooding them does not slow down another."""

from __future__ import annotations

from socp.envelope import FrameType
from socp.login import LoginSession
from socp.server.config import LOGIN_REQUEST_BURST
from tests.unit.harness import FakeUser, Net, Node


def request_from(net: Net, node: Node, source: str, login: str = "whoever") -> FakeUser:
    """A fresh connection from ``source`` that asks to log in as ``login``."""
    conn = FakeUser(net, f"req{len(net.users)}", net.pool.key(23), "", {})
    net.users[conn.name] = conn
    conn.open(node, source=source)
    conn.send(LoginSession(login, "guess").request(net.now))
    return conn


def test_login_requests_are_rate_limited_per_source(net: Net) -> None:
    intro = net.introducer("I")
    a = net.peer("A", intro)
    signatures = a.state.status()["signatures"]
    flood = [request_from(net, a, "10.0.0.66") for _ in range(LOGIN_REQUEST_BURST + 1)]
    assert all(conn.received(FrameType.USER_LOGIN_CHALLENGE) for conn in flood[:-1])
    [refusal] = flood[-1].errors()
    assert refusal.payload["code"] == "RATE_LIMITED" and refusal.sig == "" and flood[-1].closed
    other = request_from(net, a, "10.0.0.1")
    assert other.received(FrameType.USER_LOGIN_CHALLENGE) and other.errors() == []
    assert a.state.status()["signatures"] == signatures, "a login challenge costs no signature"
    net.run(2_000)                                  # the bucket refills (one request a second)
    assert request_from(net, a, "10.0.0.66").received(FrameType.USER_LOGIN_CHALLENGE)
