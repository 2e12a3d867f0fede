"""Several introducers sharing one bootstrap file form one network, whatever order they start in."""

from __future__ import annotations

from socp import crypto
from socp.server import BootstrapEntry
from tests.keypool import KeyPool
from tests.unit.harness import Net


def test_introducers_sharing_one_bootstrap_list_form_a_single_mesh(key_pool: KeyPool) -> None:
    net = Net(key_pool)
    hosts = [(f"i{n}.test", 9001 + n) for n in range(3)]
    keys = [key_pool.key(net.key_index()) for _ in hosts]
    bootstrap = [BootstrapEntry(host, port, crypto.encode_public_key(key.public_key()))
                 for (host, port), key in zip(hosts, keys, strict=True)]
    introducers = [net.server(f"I{n}", introducer=True, bootstrap=bootstrap, host=host, port=port, key=key,
                              start=False) for n, ((host, port), key) in enumerate(zip(hosts, keys, strict=True))]
    for introducer in introducers:  # all start at once: nobody has joined anybody yet
        introducer.state.start(net.now)
    peers = [net.peer(f"P{n}", via=introducers[n % 3]) for n in range(3)]
    net.run_until(lambda: net.full_mesh(), 60_000, "one full mesh of 3 introducers and 3 peers")
    assert all(node.state.healthy for node in [*introducers, *peers])
    everyone = {node.server_id for node in net.nodes.values()}
    for node in net.nodes.values():
        assert set(node.state.linked_servers) == everyone - {node.server_id}, node.name


def test_a_later_introducer_founds_the_network_when_the_first_is_down(key_pool: KeyPool) -> None:
    net = Net(key_pool)
    keys = [key_pool.key(net.key_index()) for _ in range(2)]
    bootstrap = [BootstrapEntry(f"i{n}.test", 9001 + n, crypto.encode_public_key(key.public_key()))
                 for n, key in enumerate(keys)]
    # i0 is listed first but never starts; i1 waits one round for it, then founds the network.
    second = net.server("I1", introducer=True, bootstrap=bootstrap, host="i1.test", port=9002, key=keys[1])
    assert [dial.ok for dial in net.dials if dial.src == "I1"][:1] == [False], "it tried the absent i0 first"
    net.run_until(lambda: second.state.joined, 30_000, "the second introducer to found the network")
    peer = net.peer("P", via=second)
    net.run_until(lambda: peer.state.healthy and net.full_mesh(), 30_000, "the peer to join through it")
