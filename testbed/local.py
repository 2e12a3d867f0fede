"""The ``local`` cluster backend: node processes on 127.0.0.1, no containers."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from testbed.backend import BackendUnsupported, ClusterSpec, ManagedCluster, NodeTimings, register_backend

_LISTENING = re.compile(r"^\[(?P<id>[0-9a-f-]{36})\] Listening on ws://(?P<host>[^:]+):(?P<port>\d+)$", re.M)


class WaitTimeout(TimeoutError):
    """A wait that ran out: says what it waited for, what it saw last, and where the logs are."""


async def wait_until(predicate: Callable[[], object], *, timeout: float, what: str,
                     seen: Callable[[], object] | None = None, logs: str = "", interval: float = 0.05) -> float:
    """Poll ``predicate`` until it is truthy; returns the seconds it took.

    Raises :class:`WaitTimeout` naming ``what`` was awaited, the last value of ``seen`` and ``logs``.
    """
    start = time.monotonic()
    deadline = start + timeout
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() >= deadline:
            last = seen() if seen else None
            raise WaitTimeout(f"timed out after {timeout:.1f}s waiting for {what}"
                              + (f"; last seen: {last}" if seen else "") + (f"; logs: {logs}" if logs else ""))
        await asyncio.sleep(interval)


@dataclass
class LocalNode:
    """One node process: its data directory, log file, and the port it keeps across restarts."""

    name: str
    introducer: bool
    workdir: Path
    command: Sequence[str]
    timings: NodeTimings
    bootstrap_file: Path | None = None
    extra_args: Sequence[str] = ()
    port: int = 0
    server_id: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    paused: bool = False

    @property
    def data_dir(self) -> Path:
        """The node's ``--data-dir``."""
        return self.workdir / self.name

    @property
    def log_path(self) -> Path:
        """Where the node's stdout and stderr go."""
        return self.workdir / f"{self.name}.log"

    @property
    def url(self) -> str:
        """WebSocket URL clients connect to."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.process is not None and self.process.poll() is None

    def identity(self) -> dict[str, str]:
        """Create the node's identity if needed and return ``{server_id, name, pubkey}``."""
        result = subprocess.run([*self.command, "--name", self.name, "--data-dir", str(self.data_dir),
                                 "--show-identity", *(["--introducer"] if self.introducer else [])],
                                capture_output=True, check=False, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{self.name}: --show-identity failed: {result.stderr.decode(errors='replace')}")
        identity: dict[str, str] = json.loads(result.stdout)
        self.server_id = identity["server_id"]
        return identity

    async def start(self, timeout: float = 20.0) -> None:
        """Start the process and wait until it reports the port it listens on."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        args = [*self.command, "--name", self.name, "--data-dir", str(self.data_dir), "--host", "127.0.0.1",
                "--port", str(self.port), "--heartbeat-interval", str(self.timings.heartbeat_interval),
                "--peer-timeout", str(self.timings.peer_timeout),
                "--presence-sync-interval", str(self.timings.presence_sync_interval), *self.extra_args]
        if self.introducer:
            args.append("--introducer")
        if self.bootstrap_file is not None:  # introducers after the first join their predecessors
            args += ["--bootstrap", str(self.bootstrap_file)]
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start {' '.join(args)}\n".encode())
            log.flush()
            offset = log.tell()
            self.process = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self.paused = False

        def listening() -> bool:
            match = _LISTENING.search(self.log_path.read_bytes()[offset:].decode(errors="replace"))
            if match:
                self.server_id, self.port = match["id"], int(match["port"])
            return bool(match) or not self.running

        await wait_until(listening, timeout=timeout, what=f"{self.name} to listen", logs=str(self.log_path))
        if not self.running:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log_path}")

    async def health(self) -> tuple[int, dict[str, object]]:
        """GET /healthz: (HTTP status, JSON body); (0, {}) when unreachable."""
        return await probe_health(self.port)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process."""
        if self.process is not None and self.running:
            self.process.send_signal(signum)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM), killing after ``timeout``."""
        if self.process is None:
            return
        if self.paused:
            self.unpause()
        self.signal(signal.SIGTERM)
        await self._reap(timeout)

    async def kill(self) -> None:
        """Kill the process at once (SIGKILL), as a crash would."""
        if self.process is None:
            return
        self.signal(signal.SIGKILL)
        await self._reap(10.0)

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): its sockets stay open but it answers nothing."""
        self.signal(signal.SIGSTOP)
        self.paused = True

    def unpause(self) -> None:
        """Resume a paused process (SIGCONT)."""
        self.signal(signal.SIGCONT)
        self.paused = False

    async def _reap(self, timeout: float) -> None:
        process = self.process
        assert process is not None
        try:
            await wait_until(lambda: process.poll() is not None, timeout=timeout, what=f"{self.name} to exit")
        except WaitTimeout:
            process.kill()
            await wait_until(lambda: process.poll() is not None, timeout=5.0, what=f"{self.name} to die")


class LocalCluster(ManagedCluster):
    """The ``local`` backend: introducers and peers as processes on 127.0.0.1.

    ``prepare`` is called with each node's name and data directory before its identity is created;
    tests use it to drop in pre-generated keys. The introducers' keys are pinned in the generated
    bootstrap file, so no node trusts on first use.
    """

    name = "local"

    def __init__(self, workdir: Path, spec: ClusterSpec | None = None, *, command: Sequence[str] | None = None,
                 prepare: Callable[[str, Path], None] | None = None, extra_args: Sequence[str] = ()) -> None:
        self.workdir = workdir
        self.spec = spec or ClusterSpec()
        self.command = list(command or [sys.executable, "-m", "node"])
        self.prepare = prepare
        self.bootstrap_file = workdir / "bootstrap.yaml"
        timings = self.spec.timings
        count = self.spec.introducers
        self.introducers = [LocalNode("introducer" if count == 1 else f"introducer{i + 1}", True, workdir,
                                      self.command, timings, self.bootstrap_file if i else None, extra_args)
                            for i in range(count)]
        self.peers = [LocalNode(f"peer{i + 1}", False, workdir, self.command, timings, self.bootstrap_file,
                                extra_args) for i in range(self.spec.peers)]

    @property
    def introducer(self) -> LocalNode:
        """The first introducer."""
        return self.introducers[0]

    @property
    def nodes(self) -> list[LocalNode]:
        """The introducers first, then the peers."""
        return [*self.introducers, *self.peers]

    @property
    def node_names(self) -> list[str]:
        """Every node's name, introducers first."""
        return [node.name for node in self.nodes]

    @property
    def peer_names(self) -> list[str]:
        """The peers' names."""
        return [node.name for node in self.peers]

    def node(self, name: str) -> LocalNode:
        """The node called ``name``."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node named {name!r}; have {self.node_names}")

    def url(self, node: str) -> str:
        """The node's WebSocket URL."""
        return self.node(node).url

    async def start(self, timeout: float = 30.0) -> None:
        """Start every node and wait until all are healthy (joined and fully meshed)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            node.data_dir.mkdir(parents=True, exist_ok=True)
            if self.prepare is not None:
                self.prepare(node.name, node.data_dir)
        identities = await asyncio.gather(*(asyncio.to_thread(node.identity) for node in self.introducers))
        # Each introducer binds any free port and reports it; the bootstrap file grows as they come up, so the
        # k-th introducer joins the ones before it and every peer gets the full list (no port is guessed).
        for count, introducer in enumerate(self.introducers, 1):
            await introducer.start()
            self.bootstrap_file.write_text("bootstrap_servers:\n" + "".join(
                f"  - {{host: \"127.0.0.1\", port: {node.port}, pubkey: \"{identity['pubkey']}\"}}\n"
                for node, identity in zip(self.introducers[:count], identities[:count], strict=True)))
        for node in self.peers:
            await node.start()
        await self.wait_healthy(timeout)

    async def wait_healthy(self, timeout: float = 30.0) -> float:
        """Wait until every running node answers /healthz with 200 and links to every other running node."""
        running = [node for node in self.nodes if node.running and not node.paused]
        return await wait_mesh_healthy({node.name: node.server_id for node in running},
                                       lambda name: self.node(name).health(), timeout, str(self.workdir))

    async def health(self, node: str) -> tuple[int, dict[str, object]]:
        """GET /healthz of ``node``."""
        return await self.node(node).health()

    async def kill(self, node: str) -> None:
        """SIGKILL ``node``."""
        await self.node(node).kill()

    async def stop_node(self, node: str) -> None:
        """SIGTERM ``node`` and wait for it to exit."""
        await self.node(node).stop()

    async def start_node(self, node: str) -> None:
        """Start ``node`` again on its old port with its old data."""
        await self.node(node).start()

    async def restart(self, node: str) -> None:
        """Stop then start ``node``."""
        await self.stop_node(node)
        await self.start_node(node)

    async def pause(self, node: str) -> None:
        """SIGSTOP ``node``."""
        self.node(node).pause()

    async def unpause(self, node: str) -> None:
        """SIGCONT ``node``."""
        self.node(node).unpause()

    async def partition(self, node: str) -> None:
        """Processes on one loopback cannot be partitioned; use the docker backend."""
        raise BackendUnsupported("the local backend cannot partition a node; use --backend docker")

    async def heal(self, node: str) -> None:
        """See :meth:`partition`."""
        raise BackendUnsupported("the local backend cannot partition a node; use --backend docker")

    def collect_logs(self, destination: Path) -> list[Path]:
        """Copy every node's log file into ``destination``."""
        destination.mkdir(parents=True, exist_ok=True)
        copied = []
        for node in self.nodes:
            if node.log_path.exists():
                target = destination / node.log_path.name
                target.write_bytes(node.log_path.read_bytes())
                copied.append(target)
        return copied

    async def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL)."""
        await asyncio.gather(*(node.stop() for node in self.nodes), return_exceptions=True)


async def wait_mesh_healthy(server_ids: dict[str, str],
                            health: Callable[[str], Awaitable[tuple[int, dict[str, object]]]],
                            timeout: float, logs: str) -> float:
    """Wait until every node in ``server_ids`` (name → server id) is healthy and linked to all the others.

    Shared by the backends: ``health(name)`` returns a node's /healthz answer. Returns the seconds taken.
    """
    async def problems() -> list[str]:
        found = []
        for name, (status, body) in zip(server_ids, await asyncio.gather(*(health(n) for n in server_ids)),
                                        strict=True):
            linked = body.get("linked_servers")
            linked_ids = set(linked) if isinstance(linked, list) else set()
            missing = sorted(other for other, sid in server_ids.items() if other != name and sid not in linked_ids)
            if status != 200 or missing:
                found.append(f"{name}: http {status}, not linked to {missing}")
        return found

    start = time.monotonic()
    last: list[str] = []
    while True:
        last = await problems()
        if not last:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise WaitTimeout(f"timed out after {timeout:.1f}s waiting for a healthy full mesh; last seen: "
                              f"{last}; logs: {logs}")
        await asyncio.sleep(0.1)


async def probe_health(port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> tuple[int, dict[str, object]]:
    """``GET /healthz`` on ``host:port``: (HTTP status, JSON body); (0, {}) when unreachable or garbled.

    Shared by the backends (the docker backend probes the published port on 127.0.0.1).
    """
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
            raw = await reader.read()
            writer.close()
    except (OSError, TimeoutError):
        return 0, {}
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        return int(head.split()[1]), json.loads(body or b"{}")
    except (IndexError, ValueError):
        return 0, {}


register_backend("local", lambda workdir, spec: LocalCluster(workdir, spec))
