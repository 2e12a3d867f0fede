"""End-to-end cost of the user operations on a real local federation: /all and /file, next to raw RSA costs.

Starts its own :class:`testbed.local.LocalCluster` (an introducer and three peer processes on 127.0.0.1),
connects library clients (:class:`client.connection.ClientConnection`) spread over the three peers, with RSA
keys from the cached test key pool (no key generation), and measures:

- **/all**: milliseconds from ``send_public`` until every other member has the verified, decrypted message,
  for 10 and 50 members: the first message (which carries the key share to every member) and the median of
  the following ones (key already shared);
- **/file**: KiB/s of a 1 MiB direct file from peer1 to peer3, from ``send_file`` until the receiver has the
  file verified (dm chunks are RSA-OAEP, so the receiver's private-key operations dominate);
- **raw RSA-4096** sign / verify / encrypt / decrypt on this machine, so that the figures above can be read as
  ratios (a /all costs k signatures; a file moves at x % of the one-core RSA-decrypt bound).

All receivers run in this one process, so the /all latency includes every receiver's own checks serialized
on one event loop. Bounded in time (``--timeout``). Writes ``results/bench-ops.json`` and prints a table::

    python -m bench.bench_ops [--members 10,50] [--messages 20] [--file-kib 1024] [--timeout 600]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.bench_core import raw_rsa
from client.connection import ClientConnection
from client.keystore import Identity
from socp import crypto
from socp.user import FileReceived, FileRejected, PublicMessage, PublicMessageUnreadable
from testbed.backend import ClusterSpec
from testbed.local import LocalCluster
from tests.keypool import KeyPool

NODE_KEYS = {"introducer": 0, "peer1": 1, "peer2": 2, "peer3": 3}
USER_KEYS = range(4, 24)
"""Pool keys the members cycle through (ids differ; a key may serve several members)."""


async def connect_members(cluster: LocalCluster, pool: KeyPool, count: int, tag: str) -> list[ClientConnection]:
    """``count`` members spread over the peers round-robin (the first on peer1); all see each other."""
    peers = cluster.peer_names
    members = []
    for i in range(count):
        identity = Identity(str(uuid.uuid4()), f"{tag}{i}", pool.key(USER_KEYS[i % len(USER_KEYS)]))
        members.append(await ClientConnection.connect(cluster.url(peers[i % len(peers)]), identity, timeout=30))
    everyone = {member.user_id for member in members}
    deadline = time.monotonic() + 60
    while not all(everyone <= {record.user_id for record in member.directory.listing()} for member in members):
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {count} members did not all see each other within 60 s")
        await asyncio.sleep(0.05)
    return members


async def measure_all(members: list[ClientConnection], messages: int) -> dict[str, Any]:
    """Latency of /all from members[0] until every other member has it, first and steady-state."""
    sender, receivers = members[0], members[1:]
    samples = []
    for i in range(messages + 1):
        text = f"bench {uuid.uuid4()} {i}"
        start = time.perf_counter()
        await sender.send_public(text)

        async def received(member: ClientConnection, text: str = text) -> None:
            event = await member.wait_for(lambda e: isinstance(e, PublicMessage | PublicMessageUnreadable)
                                          and (not isinstance(e, PublicMessage) or e.text == text), 60,
                                          description="the bench message")
            if not isinstance(event, PublicMessage):
                raise SystemExit(f"bench: a member could not read the message: {event}")

        await asyncio.gather(*(received(member) for member in receivers))
        samples.append((time.perf_counter() - start) * 1000)
    steady = samples[1:]
    ordered = sorted(steady)
    return {"members": len(members), "messages": messages, "first_ms": samples[0],
            "steady_median_ms": statistics.median(steady),
            "steady_p90_ms": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]}


async def measure_file(cluster: LocalCluster, pool: KeyPool, size: int, workdir: Path) -> dict[str, Any]:
    """Throughput of one direct file from peer1 to peer3."""
    sender = await ClientConnection.connect(cluster.url("peer1"), Identity(str(uuid.uuid4()), "fsender",
                                                                           pool.key(USER_KEYS[0])), timeout=30)
    receiver = await ClientConnection.connect(cluster.url("peer3"), Identity(str(uuid.uuid4()), "freceiver",
                                                                             pool.key(USER_KEYS[1])), timeout=30,
                                              downloads=workdir / "downloads")
    try:
        deadline = time.monotonic() + 30
        while receiver.user_id not in sender.directory:
            if time.monotonic() > deadline:
                raise SystemExit("bench: the file receiver never appeared in the sender's directory")
            await asyncio.sleep(0.05)
        source = workdir / "payload.bin"
        source.write_bytes(os.urandom(size))
        start = time.perf_counter()
        sent = asyncio.create_task(sender.send_file(receiver.user_id, source))
        event = await receiver.wait_for(lambda e: isinstance(e, FileReceived | FileRejected), 600,
                                        description="the bench file")
        await sent
        seconds = time.perf_counter() - start
        if not isinstance(event, FileReceived) or event.path is None or Path(event.path).read_bytes() != \
                source.read_bytes():
            raise SystemExit(f"bench: the file did not arrive intact: {event}")
        return {"bytes": size, "seconds": seconds, "kib_per_s": size / 1024 / seconds}
    finally:
        await sender.close()
        await receiver.close()


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    pool = KeyPool()
    pool.ensure(24)

    def prepare(name: str, data_dir: Path) -> None:
        key_file = data_dir / "server.key.pem"
        if not key_file.exists():
            pool.write_pem(NODE_KEYS[name], key_file)

    results: dict[str, Any] = {"rsa_4096": raw_rsa(pool)}
    cluster = LocalCluster(workdir / "cluster", ClusterSpec(peers=3), prepare=prepare)
    try:
        await cluster.start(timeout=60)
        results["public_channel"] = []
        for count in args.members:
            members = await connect_members(cluster, pool, count, f"m{count}-")
            try:
                results["public_channel"].append(await measure_all(members, args.messages))
            finally:
                await asyncio.gather(*(member.close() for member in members), return_exceptions=True)
            await asyncio.sleep(0.5)  # let the removals settle before the next group
        results["file_dm"] = await measure_file(cluster, pool, args.file_kib * 1024, workdir)
    except BaseException:
        cluster.collect_logs(Path("results") / "bench-ops-logs")
        raise
    finally:
        await cluster.stop()
    return results


def ratios(results: dict[str, Any]) -> None:
    """Add the figures as multiples of raw RSA costs (machine-independent-ish)."""
    rsa = results["rsa_4096"]
    for row in results.get("public_channel", []):
        row["steady_in_signs"] = row["steady_median_ms"] / rsa["sign_ms"]
        row["first_in_signs"] = row["first_ms"] / rsa["sign_ms"]
    file_row = results.get("file_dm")
    if file_row:
        # One core decrypting 446-byte OAEP blocks back to back: the ceiling for a dm file.
        bound = crypto.OAEP_MAX_PLAINTEXT / 1024 / (rsa["decrypt_ms"] / 1000)
        file_row["rsa_decrypt_bound_kib_per_s"] = bound
        file_row["fraction_of_bound"] = file_row["kib_per_s"] / bound


def table(results: dict[str, Any]) -> str:
    """The results as a fixed-width table."""
    rsa = results["rsa_4096"]
    rows: list[tuple[str, str, str]] = []
    for name in ("sign", "verify", "encrypt", "decrypt"):
        rows.append((f"RSA-4096 {name} (one block)", f"{rsa[name + '_ms']:.3f} ms",
                     f"{rsa[name + '_ms'] / rsa['sign_ms']:.2f} x sign"))
    for row in results.get("public_channel", []):
        rows.append((f"/all, {row['members']} members, first (with key share)", f"{row['first_ms']:.1f} ms",
                     f"{row['first_in_signs']:.1f} x sign"))
        rows.append((f"/all, {row['members']} members, median of {row['messages']}",
                     f"{row['steady_median_ms']:.1f} ms", f"{row['steady_in_signs']:.1f} x sign"))
    file_row = results.get("file_dm")
    if file_row:
        rows.append((f"/file dm, {file_row['bytes'] // 1024} KiB, peer1 -> peer3", f"{file_row['kib_per_s']:.1f} KiB/s",
                     f"{100 * file_row['fraction_of_bound']:.0f} % of RSA-decrypt bound "
                     f"({file_row['rsa_decrypt_bound_kib_per_s']:.0f} KiB/s)"))
    width = max(len(row[0]) for row in rows)
    lines = [f"{'operation':<{width}}  {'value':>12}  ratio", "-" * (width + 40)]
    lines += [f"{name:<{width}}  {value:>12}  {ratio}" for name, value, ratio in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write ``results/bench-ops.json``."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_ops", description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=lambda s: [int(x) for x in s.split(",")], default=[10, 50],
                        help="member counts for /all (default 10,50)")
    parser.add_argument("--messages", type=int, default=20, help="/all messages per member count (default 20)")
    parser.add_argument("--file-kib", type=int, default=1024, help="size of the dm file in KiB (default 1024)")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    parser.add_argument("--out", type=Path, default=Path("results/bench-ops.json"))
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="socp-bench-ops-"))
    started = time.time()
    try:
        results = asyncio.run(asyncio.wait_for(run(args, workdir), args.timeout))
    except TimeoutError:
        print(f"bench_ops: gave up after {args.timeout:g} s (logs in results/bench-ops-logs)", file=sys.stderr)
        return 1
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(workdir)
    ratios(results)
    results["meta"] = {"command": " ".join(["python -m bench.bench_ops", *(argv or sys.argv[1:])]),
                       "seconds": time.time() - started, "python": platform.python_version(),
                       "machine": platform.machine(), "cpus": os.cpu_count(),
                       "note": "all clients run in the benchmark process; nodes are separate processes"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
