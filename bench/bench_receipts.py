"""Server signatures per direct message with delivery receipts: a burst, and the same messages spread out.

Runs the pure core on the unit tests' in-memory network (:class:`tests.unit.harness.Net`, real RSA-4096 keys
from the cached key pool, a 50 ms timer tick): an introducer and ``--servers`` peers in a full mesh, two users
on each peer (all asking for receipts), and every user sends one direct message to every other user:

- **burst**: all at once (the network delivers instantly, so every receipt of a link falls into one batch:
  the best case of coalescing);
- **spread**: one message per tick (each receipt alone in its batch: the worst case, no better and no worse
  than one signed ACK per receipt).

Counts, over all servers, the RSA signatures made (``Outbox.signatures``) from the first message until every
sender has every receipt (``other``: signed frames of other types meanwhile, heartbeats and syncs, counted in
too), and the receipt ACK frames (server → server with ``digest``; server → user), each one signature. Writes
``results/bench-receipts.json`` and prints a table::

    python -m bench.bench_receipts [--servers 6] [--out results/bench-receipts.json]

Bounded: each phase waits at most ``--within-ms`` simulated ms for the receipts. Measured (6 peers, 132 DMs;
before = the same script on the code without coalescing):

    mode   sigs/DM before → after   receipt ACK signatures before → after
    burst  3.818 → 2.318            252 (120 server + 132 user) → 54 (30 + 24)
    spread 4.879 → 4.803            252 → 242 (one DM per 50 ms tick: nothing to coalesce)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from socp.envelope import FrameType
from tests.keypool import KeyPool
from tests.unit.harness import FakeUser, Net


def _acks(user: FakeUser) -> list[dict[str, Any]]:
    return [f.payload for f in user.received(FrameType.ACK) if f.payload["msg_ref"] != "USER_HELLO"]


def _receipts(user: FakeUser) -> int:
    return sum(len(p["receipts"]) if "receipts" in p else 1 for p in _acks(user))


def run(servers: int, mode: str, within_ms: int) -> dict[str, Any]:
    """One federation, one round of messages (every user to every other); the counts."""
    net = Net(KeyPool())
    intro = net.introducer("I")
    peers = [net.peer(f"P{i}", intro) for i in range(1, servers + 1)]
    nodes = [intro, *peers]
    net.run_until(net.full_mesh, 30_000, "full mesh")
    users = []
    for node in peers:  # an introducer accepts no users
        for k in range(2):
            user = net.user(f"{node.name}u{k}")
            user.meta["features"] = ["delivery_receipts"]
            user.connect(node)
            users.append(user)
    net.run_until(lambda: net.full_mesh() and all(len(u.known) >= len(users) - 1 for u in users), 30_000,
                  "mesh and directory")
    frames = [sender.direct_frame(to, ts=net.now - i) for i, (sender, to) in
              enumerate((s, t) for s in users for t in users if s is not t)]
    signed = sum(node.state.out.signatures for node in nodes)
    mark = len(net.delivered)
    start = time.perf_counter()
    for frame in frames:
        sender = next(u for u in users if u.user_id == frame.sender)
        sender.send(frame, pump=False)
        if mode == "spread":
            net.tick()
    net.pump()
    took = net.run_until(lambda: sum(_receipts(u) for u in users) >= len(frames), within_ms, "every receipt")
    window = net.delivered[mark:]
    server_acks = sum(1 for p in window if p.type == "ACK" and p.dst in {n.name for n in nodes}
                      and '"digest"' in p.text)
    user_acks = sum(len(_acks(u)) for u in users)
    other = sum(1 for p in window if p.type not in ("ACK", "SERVER_DELIVER", "USER_DELIVER")
                and p.src in {n.name for n in nodes})
    signatures = sum(node.state.out.signatures for node in nodes) - signed
    return {"mode": mode, "servers": servers, "users": len(users), "dms": len(frames),
            "signatures": signatures, "signatures_per_dm": round(signatures / len(frames), 3),
            "receipt_acks_server_to_server": server_acks, "receipt_acks_to_senders": user_acks,
            "receipt_signatures_per_dm": round((server_acks + user_acks) / len(frames), 3),
            "other_signed_frames_meanwhile": other, "receipts_all_in_sim_ms": took,
            "wall_s": round(time.perf_counter() - start, 2)}


def main(argv: list[str] | None = None) -> None:
    """Run both modes, print a table, write the JSON results."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_receipts", description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=6, help="peers (plus the introducer; keys: 3 per peer)")
    parser.add_argument("--within-ms", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=Path("results/bench-receipts.json"))
    args = parser.parse_args(argv)
    rows = [run(args.servers, mode, args.within_ms) for mode in ("burst", "spread")]
    print(f"{'mode':8} {'DMs':>5} {'sigs':>6} {'sigs/DM':>8} {'srv ACKs':>9} {'user ACKs':>10} {'rcpt/DM':>8} "
          f"{'other':>6}")
    for r in rows:
        print(f"{r['mode']:8} {r['dms']:>5} {r['signatures']:>6} {r['signatures_per_dm']:>8} "
              f"{r['receipt_acks_server_to_server']:>9} {r['receipt_acks_to_senders']:>10} "
              f"{r['receipt_signatures_per_dm']:>8} "
              f"{r['other_signed_frames_meanwhile']:>6}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
