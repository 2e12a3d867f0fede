"""Benchmark: what refusing junk costs a server core (issue 11, finding 5), in process, no sockets.

The same 5-byte junk frame, ``frames`` times, once from a connection that has proven nothing (a stranger: the
ERROR goes unsigned) and once from a welcomed user (the ERROR is signed with the server's RSA-4096 key). Each
frame gets its own millisecond, as on a real clock, so that the signature cache cannot serve two ERRORs.
Writes ``results/bench-refusal.json``::

    python -m bench.bench_refusal [--frames 500]
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path
from typing import Any

from socp import crypto
from socp import envelope as env
from socp.actions import LinkId
from socp.envelope import FrameType
from socp.server import ServerSettings, ServerState
from tests.keypool import KeyPool

RESULTS = Path("results")
T0 = 1_760_000_000_000


def _refuse(state: ServerState, link: LinkId, frames: int, now: int) -> tuple[float, int]:
    """Feed ``frames`` junk frames on ``link``; (ms per frame, the clock after)."""
    start = time.perf_counter()
    for _ in range(frames):
        now += 1
        state.receive_text(link, "junk!", now)
        state.data_to_send()
    return (time.perf_counter() - start) * 1000 / frames, now


def run(frames: int) -> dict[str, Any]:
    """One measurement: ms per refused frame and signatures spent, stranger vs welcomed user."""
    pool = KeyPool()
    server_id = str(uuid.uuid4())
    state = ServerState(ServerSettings(server_id=server_id, advertise_host="bench", advertise_port=1),
                        pool.key(0), now=T0)
    before = state.status()["signatures"]
    stranger_ms, now = _refuse(state, state.accept_link(T0), frames, T0)
    stranger_signatures = state.status()["signatures"] - before
    user_key, user_id = pool.key(1), str(uuid.uuid4())
    pubkey = crypto.encode_public_key(user_key.public_key())
    user = state.accept_link(now)
    hello = env.make(FrameType.USER_HELLO, user_id, server_id, now, {"client": "bench", "pubkey": pubkey}, user_key)
    state.receive_text(user, hello.to_wire(), now)
    state.data_to_send()
    before = state.status()["signatures"]
    user_ms, _ = _refuse(state, user, frames, now)
    return {"frames": frames, "stranger_ms_per_frame": round(stranger_ms, 3),
            "stranger_signatures": stranger_signatures, "user_ms_per_frame": round(user_ms, 3),
            "user_signatures": state.status()["signatures"] - before}


def main() -> None:
    """``python -m bench.bench_refusal``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=500, help="junk frames per connection (default 500)")
    args = parser.parse_args()
    result = run(args.frames)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench-refusal.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
