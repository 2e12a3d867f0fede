"""End-to-end cost of the user operations on a real local federation: /all and /file, next to raw RSA costs.

Starts its own :class:`testbed.local.LocalCluster` (an introducer and three peer processes on 127.0.0.1),
connects library clients (:class:`client.connection.ClientConnection`) spread over the three peers, with RSA
keys from the cached test key pool (no key generation), and measures:

- **/all**: milliseconds from ``send_public`` until every other member has the verified, decrypted message,
  for 10 and 50 members: the first message (which carries the key share to every member) and the median of
  the following ones (key already shared);
- **/file**: MiB/s of a 16 MiB direct file from peer1 to peer3 with the *hybrid file chunks* extension
  (AES-256-GCM chunks under one RSA-wrapped key), and KiB/s of a 1 MiB one to a receiver without it (RSA-OAEP
  chunks: the receiver's private-key operations dominate), from ``send_file`` until the receiver has the file
  verified on disk; with the peak resident memory (``VmHWM``) of both relaying nodes, read from
  ``/proc/<pid>/status`` (the file runs first, on fresh nodes, so that the peak is the file's);
- **raw RSA-4096** sign / verify / encrypt / decrypt on this machine, so that the figures above can be read as
  ratios (a /all costs k signatures; a file moves at x % of the one-core RSA-decrypt bound).

All receivers run in this one process, so the /all latency includes every receiver's own checks serialized
on one event loop. Bounded in time (``--timeout``). Writes ``results/bench-ops.json`` and prints a table::

    python -m bench.bench_ops [--members 10,50] [--messages 20] [--file-kib 16384] [--rsa-file-kib 1024]
                              [--timeout 600]
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
from socp.user import HYBRID_CHUNK_BYTES, FileReceived, FileRejected, PublicMessage, PublicMessageUnreadable
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


def raw_aes(runs: int = 20) -> dict[str, float]:
    """MiB/s of AES-256-GCM on one hybrid chunk (encrypt and decrypt, with the chunk's AAD and base64url)."""
    key = crypto.generate_symmetric_key()
    piece = os.urandom(HYBRID_CHUNK_BYTES)
    aad = crypto.file_chunk_aad("bench", 0)
    text = crypto.aes_encrypt(key, piece, aad)

    def rate(call: Any) -> float:
        samples = []
        for _ in range(runs):
            start = time.perf_counter()
            call()
            samples.append(time.perf_counter() - start)
        return HYBRID_CHUNK_BYTES / 1048576 / statistics.median(samples)

    return {"chunk_bytes": HYBRID_CHUNK_BYTES, "encrypt_mib_per_s": rate(lambda: crypto.aes_encrypt(key, piece, aad)),
            "decrypt_mib_per_s": rate(lambda: crypto.aes_decrypt(key, text, aad))}


def peak_rss_kib(cluster: LocalCluster, node: str) -> int | None:
    """The node process's peak resident set (``VmHWM``, KiB) from /proc, or None where there is no /proc."""
    process = cluster.node(node).process
    if process is None:
        return None
    try:
        status = Path(f"/proc/{process.pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def cpu_seconds(cluster: LocalCluster, node: str) -> float | None:
    """CPU time (user + system) the node process used so far, from /proc, or None where there is no /proc."""
    process = cluster.node(node).process
    if process is None:
        return None
    try:
        fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure_file(cluster: LocalCluster, pool: KeyPool, size: int, workdir: Path, *,
                       hybrid: bool) -> dict[str, Any]:
    """Throughput of one direct file from peer1 to peer3; ``hybrid``: whether the receiver announces the
    hybrid file chunks extension (else the chunks are RSA-OAEP). Peak RSS of both nodes before and after."""
    tag = "h" if hybrid else "r"
    sender = await ClientConnection.connect(cluster.url("peer1"), Identity(str(uuid.uuid4()), f"{tag}sender",
                                                                           pool.key(USER_KEYS[0])), timeout=30)
    receiver = await ClientConnection.connect(cluster.url("peer3"), Identity(str(uuid.uuid4()), f"{tag}receiver",
                                                                             pool.key(USER_KEYS[1])), timeout=30,
                                              downloads=workdir / f"downloads-{tag}", hybrid_files=hybrid)
    try:
        deadline = time.monotonic() + 30
        while receiver.user_id not in sender.directory:
            if time.monotonic() > deadline:
                raise SystemExit("bench: the file receiver never appeared in the sender's directory")
            await asyncio.sleep(0.05)
        if sender.session.takes_hybrid_files(receiver.user_id) != hybrid:
            raise SystemExit(f"bench: the sender did not see the receiver's features as expected (hybrid={hybrid})")
        source = workdir / f"payload-{tag}.bin"
        source.write_bytes(os.urandom(size))
        rss_before = {node: peak_rss_kib(cluster, node) for node in ("peer1", "peer3")}
        cpu_before = {node: cpu_seconds(cluster, node) for node in ("peer1", "peer3")}
        client_cpu = time.process_time()
        start = time.perf_counter()
        sent = asyncio.create_task(sender.send_file(receiver.user_id, source))
        event = await receiver.wait_for(lambda e: isinstance(e, FileReceived | FileRejected), 600,
                                        description="the bench file")
        seconds = time.perf_counter() - start
        await sent
        if not isinstance(event, FileReceived) or event.path is None or \
                crypto.sha256_hex(Path(event.path).read_bytes()) != crypto.sha256_hex(source.read_bytes()):
            raise SystemExit(f"bench: the file did not arrive intact: {event}")
        rss_after = {node: peak_rss_kib(cluster, node) for node in ("peer1", "peer3")}
        cpu = {node: (after - before) if (after := cpu_seconds(cluster, node)) is not None and before is not None
               else None for node, before in cpu_before.items()}
        cpu["clients"] = time.process_time() - client_cpu
        return {"bytes": size, "hybrid": hybrid, "seconds": seconds, "kib_per_s": size / 1024 / seconds,
                "mib_per_s": size / 1048576 / seconds, "receipts": sender.session.receipts_enabled,
                "peak_rss_kib_before": rss_before, "peak_rss_kib_after": rss_after, "cpu_seconds": cpu}
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

    results: dict[str, Any] = {"rsa_4096": raw_rsa(pool), "aes_256_gcm": raw_aes()}
    cluster = LocalCluster(workdir / "cluster", ClusterSpec(peers=3), prepare=prepare)
    try:
        await cluster.start(timeout=60)
        # Files first, on fresh nodes: the peak RSS read afterwards is the relaying of the file.
        results["file_dm_hybrid"] = await measure_file(cluster, pool, args.file_kib * 1024, workdir, hybrid=True)
        results["file_dm"] = await measure_file(cluster, pool, args.rsa_file_kib * 1024, workdir, hybrid=False)
        results["public_channel"] = []
        for count in (count for count in args.members if count > 0):  # --members 0: files only
            members = await connect_members(cluster, pool, count, f"m{count}-")
            try:
                results["public_channel"].append(await measure_all(members, args.messages))
            finally:
                await asyncio.gather(*(member.close() for member in members), return_exceptions=True)
            await asyncio.sleep(0.5)  # let the removals settle before the next group
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
    hybrid_row = results.get("file_dm_hybrid")
    if hybrid_row:
        # AES-256-GCM on one core: the symmetric ceiling (the RSA unwrap is once per file).
        aes = results["aes_256_gcm"]["decrypt_mib_per_s"]
        hybrid_row["aes_gcm_bound_mib_per_s"] = aes
        hybrid_row["fraction_of_aes_bound"] = hybrid_row["mib_per_s"] / aes
        if file_row:
            hybrid_row["speedup_over_rsa"] = hybrid_row["kib_per_s"] / file_row["kib_per_s"]


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
    hybrid_row = results.get("file_dm_hybrid")
    if hybrid_row:
        rows.append((f"/file dm hybrid, {hybrid_row['bytes'] // 1024} KiB, peer1 -> peer3",
                     f"{hybrid_row['mib_per_s']:.1f} MiB/s",
                     f"{hybrid_row.get('speedup_over_rsa', 0):.0f} x RSA-only, "
                     f"{100 * hybrid_row['fraction_of_aes_bound']:.1f} % of AES-GCM bound "
                     f"({hybrid_row['aes_gcm_bound_mib_per_s']:.0f} MiB/s)"))
        for node in ("peer1", "peer3"):
            before, after = hybrid_row["peak_rss_kib_before"][node], hybrid_row["peak_rss_kib_after"][node]
            if after is not None:
                rows.append((f"  peak RSS of {node} relaying it (VmHWM)", f"{after / 1024:.1f} MiB",
                             f"{before / 1024:.1f} MiB before the file" if before is not None else ""))
    file_row = results.get("file_dm")
    if file_row:
        rows.append((f"/file dm RSA-only, {file_row['bytes'] // 1024} KiB, peer1 -> peer3",
                     f"{file_row['kib_per_s']:.1f} KiB/s",
                     f"{100 * file_row['fraction_of_bound']:.0f} % of RSA-decrypt bound "
                     f"({file_row['rsa_decrypt_bound_kib_per_s']:.0f} KiB/s)"))
    aes = results.get("aes_256_gcm")
    if aes:
        rows.append((f"AES-256-GCM decrypt, {aes['chunk_bytes'] // 1024} KiB chunk (base64url)",
                     f"{aes['decrypt_mib_per_s']:.0f} MiB/s",
                     f"{aes['decrypt_mib_per_s'] * rsa['decrypt_ms'] / 1000 * 1024 / 446 * 1024:.0f} x RSA decrypt "
                     "per byte"))
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
    parser.add_argument("--file-kib", type=int, default=16384,
                        help="size of the hybrid dm file in KiB (default 16384)")
    parser.add_argument("--rsa-file-kib", type=int, default=1024,
                        help="size of the RSA-only dm file in KiB (default 1024: it moves at tens of KiB/s)")
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
