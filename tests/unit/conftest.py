"""Fixtures of the core tests: fake networks of ServerState objects (see harness.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.keypool import KeyPool
from tests.unit.harness import FakeUser, Net, Node


@pytest.fixture
def net(key_pool: KeyPool) -> Net:
    """An empty fake network on the shared key pool."""
    return Net(key_pool)


@dataclass
class TwoServers:
    """An introducer, peers A and B, alice on A and bob on B, all settled."""

    net: Net
    intro: Node
    a: Node
    b: Node
    alice: FakeUser
    bob: FakeUser


@pytest.fixture
def two(net: Net) -> TwoServers:
    intro = net.introducer("I")
    a = net.peer("A", intro)
    b = net.peer("B", intro)
    alice = net.user("alice", a)
    bob = net.user("bob", b)
    assert net.full_mesh(), net.describe()
    return TwoServers(net, intro, a, b, alice, bob)
