"""The ``tc`` scripts the docker backend runs in a node's network namespace (no Docker, no event loop)."""

from __future__ import annotations

import pytest

from testbed import netem
from testbed.proxy import Effect


def test_netem_arguments_and_rates_convert_units() -> None:
    assert netem.netem_arguments(Effect(delay=0.1, jitter=0.02)) == "delay 100.000ms 20.000ms"
    assert netem.netem_arguments(Effect(jitter=0.01)) == "delay 0.000ms 10.000ms"
    assert netem.rate_bit(Effect(bandwidth=125_000)) == 1_000_000  # bytes/s in, bits/s out
    assert netem.rate_bit(Effect(delay=0.1)) == netem.UNLIMITED_BIT
    assert not netem.needs_netem(Effect(bandwidth=1000, loss=0.5)) and netem.needs_netem(Effect(jitter=0.01))
    assert netem.loss_match(0.05) == "numgen random mod 1000000 lt 50000 "
    assert netem.loss_match(0.9999999) == "numgen random mod 1000000 lt 999999 "  # nft's range ends at mod - 1
    assert netem.loss_match(1.0) == ""


def test_script_shapes_each_degraded_peer_in_the_class_of_its_effect_and_drops_by_nftables() -> None:
    slow, narrow = Effect(delay=0.1, loss=0.05), Effect(bandwidth=125_000)
    script = netem.link_script({"peer1": (slow, ["10.0.0.2"]), "peer2": (narrow, ["10.0.0.3", "10.0.1.3"]),
                                "peer3": (Effect(delay=0.1), ["10.0.0.4"]), "peer4": (Effect(), ["10.0.0.5"]),
                                "peer5": (Effect(loss=1.0), ["10.0.0.6"])})
    assert script.startswith("set -e\n" + netem.CLEAR)
    assert f"root handle 1: htb default 0 direct_qlen {netem.DIRECT_QLEN}" in script  # unclassified: unshaped
    assert f"classid 1:2 htb rate {netem.UNLIMITED_BIT}bit" in script
    assert "parent 1:2 handle 20: netem delay 100.000ms\n" in script  # peer1 and peer3 share it: loss is apart
    assert "classid 1:3 htb rate 1000000bit ceil 1000000bit" in script
    assert "parent 1:3 handle 30: netem" not in script  # bandwidth alone is htb's: no netem needed
    for address, band in [("10.0.0.2", 2), ("10.0.0.3", 3), ("10.0.1.3", 3), ("10.0.0.4", 2)]:
        assert f"match ip dst {address}/32 flowid 1:{band}" in script
    assert "ip daddr 10.0.0.2 numgen random mod 1000000 lt 50000 drop" in script
    assert "ip daddr 10.0.0.6 drop" in script  # all lost
    assert "10.0.0.5" not in script  # a clean link is neither filtered nor dropped
    assert "match ip dst 10.0.0.6" not in script  # loss alone needs no class


def test_a_script_without_effects_only_clears() -> None:
    assert netem.link_script({"peer1": (Effect(), ["10.0.0.2"])}) == "set -e\n" + netem.CLEAR + "\n"


def test_too_many_distinct_effects_are_refused() -> None:
    peers = {f"peer{i}": (Effect(delay=i / 1000), [f"10.0.{i // 250}.{i % 250}"])
             for i in range(1, netem.MAX_EFFECTS + 2)}
    with pytest.raises(ValueError, match="distinct link effects"):
        netem.link_script(peers)
