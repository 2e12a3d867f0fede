"""The simulator (bench/simulate.py) at a tiny size: it drives the real core, and its counts add up."""

from __future__ import annotations

import pytest

from bench import simcrypto
from bench.simulate import SimConfig, run
from socp import crypto
from socp.errors import BadKey

SERVERS = 5          # one introducer and four peers
USERS = 10
HEARTBEAT_S = 1.0


@pytest.fixture(scope="module")
def row() -> dict:
    config = SimConfig(servers=SERVERS, users=USERS, heartbeat_s=HEARTBEAT_S, peer_timeout_s=3.0,
                       presence_sync_s=2.0, join_spread_s=1.0, user_spread_s=1.0, probes=2,
                       settle_timeout_s=20.0, mesh_timeout_s=30.0)
    return run(config)


def test_every_user_and_probe_converged_on_every_server(row: dict) -> None:
    # run() raises SimError when the mesh, the bulk users or a probe do not reach every server.
    assert row["users"] == USERS
    assert 0 < row["advert"]["converge_ms"]["max"] < 5_000
    assert 0 < row["removal"]["converge_ms"]["max"] < 5_000
    assert row["crash"]["users"] >= USERS // (SERVERS - 1)   # the crashed peer had its share of users
    assert row["crash"]["removed_everywhere_ms"] < 3 * 3_000


def test_an_advert_costs_what_the_core_sends_for_that_size(row: dict) -> None:
    n = SERVERS
    adverts = row["advert"]["by_type"]["USER_ADVERTISE"]
    # The home server sends it on its n - 1 links; a relaying core (n² gossip) at most (n - 1)² in all.
    assert n - 1 <= adverts <= (n - 1) ** 2
    # One signature by the home server serves every copy; every other server checks at least one copy.
    assert row["advert"]["signs"] >= 1
    assert row["advert"]["verifies"] >= n - 1
    assert row["removal"]["by_type"]["USER_REMOVE"] >= n - 1


def test_heartbeats_and_link_deaths_add_up(row: dict) -> None:
    n = SERVERS
    beat = row["heartbeat"]
    assert 0 < beat["frames_per_s"] <= n * (n - 1) / HEARTBEAT_S
    assert beat["signs_per_s"] <= n / HEARTBEAT_S           # at most one signature per node per interval
    assert row["false_link_deaths"] == {}
    assert sum(row["link_deaths"].values()) >= n - 2         # the crashed peer's links, seen by the others
    assert row["memory_per_node_kib"] > 0


def test_fake_crypto_signs_verifies_counts_and_restores() -> None:
    original = crypto.sign
    with simcrypto.fake_crypto() as meter:
        key, other = crypto.generate_private_key(), crypto.generate_private_key()
        text = crypto.encode_public_key(key.public_key())
        assert crypto.normalize_public_key(text) == text
        signature = crypto.sign_payload(key, {"a": 1})
        assert crypto.verify_payload(crypto.decode_public_key(text), {"a": 1}, signature)
        assert not crypto.verify_payload(other.public_key(), {"a": 1}, signature)
        assert not crypto.verify_payload(key.public_key(), {"a": 2}, signature)
        assert meter.signs[-1] == 1 and meter.verifies[-1] >= 3
        with pytest.raises(BadKey):
            crypto.decode_public_key("bm90IGEga2V5")
    assert crypto.sign is original
