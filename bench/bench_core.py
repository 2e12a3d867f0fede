"""Benchmark of the protocol core, in process: raw RSA costs, per-message routing cost, gossip at scale.

Everything runs on the sans-I/O core over the fake wire of ``tests/unit/harness.py`` (a simulated clock,
no sockets), so the figures measure protocol work, not the network. Routing cost is reported as a ratio
of the raw RSA-4096 operations measured in the same run. Each ``gossip`` row joins a mesh of ``servers``
(up to 25 by default), counts the frames one user's advert causes, then the heartbeat signatures and frames
of the idle mesh per heartbeat interval. Writes ``results/bench-core.json``.

    python -m bench.bench_core [--messages 200] [--sizes 8,16,32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from socp import crypto
from tests.keypool import KeyPool
from tests.unit.harness import Net


def _median_ms(fn: Any, runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def raw_rsa(pool: KeyPool, runs: int = 40) -> dict[str, float]:
    """Median ms of one RSA-4096 PSS sign and verify, and one OAEP encrypt and decrypt (one 446-byte block)."""
    key = pool.key(4)
    public = key.public_key()
    data = os.urandom(crypto.OAEP_MAX_PLAINTEXT)
    signature = crypto.sign(key, data)
    ciphertext = crypto.rsa_encrypt(public, data)
    return {"sign_ms": _median_ms(lambda: crypto.sign(key, data), runs),
            "verify_ms": _median_ms(lambda: crypto.verify(public, data, signature), runs),
            "encrypt_ms": _median_ms(lambda: crypto.rsa_encrypt(public, data), runs),
            "decrypt_ms": _median_ms(lambda: crypto.rsa_decrypt(key, ciphertext), runs)}


def routing(pool: KeyPool, messages: int) -> dict[str, float]:
    """Server-side cost of one cross-node MSG_DIRECT (both servers), frames prepared beforehand."""
    net = Net(pool)
    intro = net.introducer("I")
    a, b = net.peer("A", via=intro), net.peer("B", via=intro)
    net.run_until(lambda: net.full_mesh(), 10_000, "full mesh")
    alice, bob = net.user("alice", a), net.user("bob", b)
    net.pump()
    frames = [alice.direct_frame(bob, f"message {i}".encode()) for i in range(messages)]
    bob.clear()
    start = time.perf_counter()
    for frame in frames:
        alice.send(frame)
    elapsed = time.perf_counter() - start
    delivered = len(bob.received("USER_DELIVER"))
    if delivered != messages:
        raise SystemExit(f"routing bench: {delivered}/{messages} delivered")
    return {"messages": messages, "ms_per_message": elapsed * 1000 / messages}


def gossip(pool: KeyPool, size: int) -> dict[str, Any]:
    """Join ``size`` peers through one introducer (CPU, frames), then count the frames of one user's advert.

    ``frames_per_advert`` is every frame a new user's first connection causes (its own hello and welcome,
    and what its server tells the others: USER_ADVERTISE, PUBLIC_CHANNEL_ADD, and the SERVER_USER_RECORDS of
    a first registration); ``presence_frames_per_advert`` the USER_ADVERTISE frames between servers alone.
    """
    net = Net(pool, first_key=0)
    intro = net.introducer("I")
    start_cpu, frames_start = time.process_time(), len(net.delivered)
    for i in range(size):
        net.peer(f"P{i}", via=intro)
    net.run_until(lambda: net.full_mesh(), 120_000, "full mesh")
    join_cpu = time.process_time() - start_cpu
    join_frames = len(net.delivered) - frames_start
    frames_before = len(net.delivered)
    user = net.user("u", net.nodes["P0"])
    seen = lambda: all(user.user_id in node.state.directory for node in net.nodes.values())  # noqa: E731
    net.run_until(seen, 30_000, "advert everywhere")
    advert_frames = len(net.delivered) - frames_before
    servers = set(net.nodes)
    presence_frames = sum(1 for p in net.delivered[frames_before:]
                          if p.type == "USER_ADVERTISE" and p.src in servers and p.dst in servers)
    beats = heartbeats(net)
    return {"servers": size + 1, "links": (size + 1) * size // 2, "join_cpu_s": round(join_cpu, 2),
            "join_frames": join_frames, "frames_per_advert": advert_frames,
            "presence_frames_per_advert": presence_frames, **beats}


def heartbeats(net: Net, intervals: int = 10) -> dict[str, Any]:
    """Heartbeat cost of the idle mesh over ``intervals`` heartbeat intervals, per interval.

    ``heartbeat_signs_per_interval`` counts distinct HEARTBEAT frames (each costs one RSA signature once
    signatures cover the whole envelope, WIRE §2; today's payload-only signature is cached), the whole mesh;
    ``..._per_node`` is the most any one server made; ``heartbeat_frames_per_interval`` counts frames on the
    wire (presence snapshots stand in for heartbeats on the rounds they go out).
    """
    interval = next(iter(net.nodes.values())).state.settings.heartbeat_interval_ms
    start = len(net.delivered)
    net.run(intervals * interval)
    beats = [p for p in net.delivered[start:] if p.type == "HEARTBEAT"]
    per_node: dict[str, set[str]] = {}
    for packet in beats:
        per_node.setdefault(packet.src, set()).add(packet.text)
    signs = sum(len(texts) for texts in per_node.values())
    return {"heartbeat_signs_per_interval": round(signs / intervals, 1),
            "heartbeat_signs_per_node_interval": round(max(map(len, per_node.values()), default=0) / intervals, 2),
            "heartbeat_frames_per_interval": round(len(beats) / intervals, 1)}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and write ``results/bench-core.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--sizes", default="8,16,24", help="peers besides the introducer (servers = size + 1)")
    parser.add_argument("--out", type=Path, default=Path("results/bench-core.json"))
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    pool = KeyPool()
    pool.ensure(max(sizes) + 8)
    rsa = raw_rsa(pool)
    route = routing(pool, args.messages)
    pair = rsa["sign_ms"] + rsa["verify_ms"]
    route["ratio_to_sign_plus_verify"] = round(route["ms_per_message"] / pair, 2)
    scale = [gossip(pool, size) for size in sizes]
    results = {"rsa4096": rsa, "routing": route, "gossip": scale,
               "python": sys.version.split()[0], "machine_note": "2-core CI machine"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"RSA-4096: sign {rsa['sign_ms']:.2f} ms, verify {rsa['verify_ms']:.3f} ms, "
          f"encrypt {rsa['encrypt_ms']:.3f} ms, decrypt {rsa['decrypt_ms']:.2f} ms")
    print(f"routing: {route['ms_per_message']:.2f} ms of server work per cross-node DM "
          f"= {route['ratio_to_sign_plus_verify']}x (sign + verify)")
    print(f"{'servers':>8} {'links':>6} {'join cpu s':>11} {'join frames':>12} {'frames/advert':>14} "
          f"{'(presence)':>10} {'hb signs/interval':>18} {'per node':>9} {'hb frames/interval':>19}")
    for row in scale:
        print(f"{row['servers']:>8} {row['links']:>6} {row['join_cpu_s']:>11} {row['join_frames']:>12} "
              f"{row['frames_per_advert']:>14} {row['presence_frames_per_advert']:>10} "
              f"{row['heartbeat_signs_per_interval']:>18} "
              f"{row['heartbeat_signs_per_node_interval']:>9} {row['heartbeat_frames_per_interval']:>19}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
