"""The ``local`` cluster backend: node processes on 127.0.0.1, no containers."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from socp.settings import Timings
from testbed.backend import (
    MESH_HINT,
    BackendUnsupported,
    ClusterBackend,
    ClusterSpec,
    Health,
    Prepare,
    probe_health,
    probe_status,
    wait_mesh_healthy,
)
from testbed.nodeplan import NodePlan, identity_flags, node_environment, node_flags, profile_flags, write_bootstrap
from testbed.proxy import Effect, ProxyNetwork
from testbed.waiting import Diagnose, Pending, WaitTimeout, poll

_LISTENING = re.compile(r"^\[(?P<id>[0-9a-f-]{36})\] Listening on ws://(?P<host>[^:]+):(?P<port>\d+)$", re.M)


START_CONCURRENCY = 4
"""Peer processes starting at once (a start is CPU-bound: imports, and an RSA-4096 key the first time)."""

LOCAL_HINT = "the node's full log is in the run's directory; a slow machine needs SOCP_TIMEOUT_FACTOR=3"


@dataclass
class LocalNode:
    """One node process: its data directory, log file, and the port it keeps across restarts."""

    plan: NodePlan
    workdir: Path
    command: Sequence[str]
    timings: Timings
    bootstrap_file: Path
    """The bootstrap file, passed when the plan says the node joins through it."""
    extra_args: Sequence[str] = ()
    join_token: str = field(default="", repr=False)
    """The federation's join token, passed in the environment (never in the logged command line)."""
    port: int = 0
    server_id: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    paused: bool = False
    wanted: bool = False
    """True from :meth:`start` until :meth:`stop` or :meth:`kill`: an exit in between is a crash."""

    @property
    def name(self) -> str:
        """The node's name."""
        return self.plan.name

    @property
    def introducer(self) -> bool:
        """Whether the node is an introducer."""
        return self.plan.introducer

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

    def exit_status(self) -> str | None:
        """How the process ended (``exit code 1``, ``killed by signal 9``), None while it runs or never ran."""
        if self.process is None or self.process.poll() is None:
            return None
        code = self.process.returncode
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"

    def log_tail(self, lines: int) -> str:
        """The last ``lines`` lines of the node's log ("" when there is none)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(0, 2)
                log.seek(max(0, log.tell() - 256 * lines))
                data = log.read()
        except OSError:
            return ""
        return "\n".join(data.decode(errors="replace").splitlines()[-lines:])

    def identity(self) -> dict[str, str]:
        """Create the node's identity if needed and return ``{server_id, name, pubkey}``."""
        result = subprocess.run([*self.command, *identity_flags(self.plan, data_dir=str(self.data_dir))],
                                capture_output=True, check=False, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{self.name}: --show-identity failed: {result.stderr.decode(errors='replace')}")
        identity: dict[str, str] = json.loads(result.stdout)
        self.server_id = identity["server_id"]
        return identity

    async def start(self, timeout: float = 20.0) -> None:
        """Start the process and wait until it reports the port it listens on (:class:`NodeExited` if it dies)."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        args = [*self.command, *node_flags(self.plan, self.timings, data_dir=str(self.data_dir), host="127.0.0.1",
                                           port=self.port, bootstrap_file=str(self.bootstrap_file),
                                           extra=self.extra_args)]
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start {' '.join(args)}\n".encode())
            log.flush()
            offset = log.tell()
            self.process = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                            env={**os.environ, **node_environment(self.join_token)})
        self.paused = False
        self.wanted = True

        async def listening() -> bool | Pending:
            match = _LISTENING.search(self.log_path.read_bytes()[offset:].decode(errors="replace"))
            if not match:
                return Pending(f"no 'Listening on' line in {self.log_path.name} yet")
            self.server_id, self.port = match["id"], int(match["port"])
            return True

        await poll(listening, timeout, f"{self.name} to listen", self.diagnose())

    def diagnose(self, hint: str = LOCAL_HINT) -> Diagnose:
        """What a wait on this node alone reports: whether it died, its log's tail."""
        async def exited() -> dict[str, str]:
            status = self.exit_status() if self.wanted else None
            return {self.name: status} if status else {}

        async def tails(lines: int) -> dict[str, str]:
            return {self.name: self.log_tail(lines)}

        return Diagnose(exited, tails, str(self.log_path), hint)

    async def health(self) -> Health:
        """GET /healthz: (HTTP status, JSON body); (0, {}) when unreachable."""
        return await probe_health(self.port)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process."""
        if self.process is not None and self.running:
            self.process.send_signal(signum)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM), killing after ``timeout``."""
        self.wanted = False
        if self.process is None:
            return
        if self.paused:
            self.unpause()
        self.signal(signal.SIGTERM)
        await self._reap(timeout)

    async def kill(self) -> None:
        """Kill the process at once (SIGKILL), as a crash would."""
        self.wanted = False
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

        async def exited() -> int | Pending:
            code = process.poll()
            return Pending("still running") if code is None else code

        try:
            await poll(exited, timeout, f"{self.name} to exit")
        except WaitTimeout:
            process.kill()
            await poll(exited, 5.0, f"{self.name} to die of SIGKILL")


class LocalCluster(ClusterBackend):
    """The ``local`` backend: introducers and peers as processes on 127.0.0.1.

    ``prepare`` is called with each node's name and data directory before its identity is created;
    tests use it to drop in pre-generated keys. The introducers' keys are pinned in the generated
    bootstrap file, so no node trusts on first use. ``command`` runs a node (default ``python -m node``):
    any implementation that accepts the same flags (:mod:`testbed.nodeplan`) can stand in.
    """

    name = "local"
    start_timeout = 30.0

    def __init__(self, workdir: Path, spec: ClusterSpec | None = None, *, prepare: Prepare | None = None,
                 command: Sequence[str] | None = None, extra_args: Sequence[str] = ()) -> None:
        super().__init__(workdir, spec, prepare=prepare)
        self.command = list(command or [sys.executable, "-m", "node"])
        self.bootstrap_file = workdir / "bootstrap.yaml"
        # The federation's profile flags (``--interop``) first, then the caller's own.
        extra_args = [*profile_flags(self.spec), *extra_args]
        self._nodes = {plan.name: LocalNode(plan, workdir, self.command, self.spec.timings, self.bootstrap_file,
                                            extra_args, self.join_token) for plan in self.plan}
        self.network: ProxyNetwork | None = None
        """The fault proxies in front of every node's server links, when the spec asks for a faulty network."""

    @property
    def nodes(self) -> list[LocalNode]:
        """The introducers first, then the peers."""
        return list(self._nodes.values())

    @property
    def introducers(self) -> list[LocalNode]:
        """The introducers, first to last."""
        return [node for node in self.nodes if node.introducer]

    @property
    def introducer(self) -> LocalNode:
        """The first introducer."""
        return self.introducers[0]

    @property
    def peers(self) -> list[LocalNode]:
        """The peers."""
        return [node for node in self.nodes if not node.introducer]

    def node(self, name: str) -> LocalNode:
        """The node called ``name``."""
        try:
            return self._nodes[name]
        except KeyError:
            raise KeyError(f"no node named {name!r}; have {self.node_names}") from None

    def url(self, node: str) -> str:
        """The node's WebSocket URL."""
        return self.node(node).url

    async def start(self, timeout: float | None = None) -> None:
        """Start every node and wait until all are healthy (joined and fully meshed)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            node.data_dir.mkdir(parents=True, exist_ok=True)
            if self.prepare is not None:
                self.prepare(node.name, node.data_dir)
        introducers = self.introducers
        identities = await asyncio.gather(*(asyncio.to_thread(node.identity) for node in introducers))
        if self.spec.faulty_network and self.network is None:
            await self._start_network()
        # Each introducer binds any free port and reports it; the bootstrap file grows as they come up, so the
        # k-th introducer joins the ones before it and every peer gets the full list (no port is guessed).
        for count, introducer in enumerate(introducers, 1):
            await introducer.start()
            write_bootstrap(self.bootstrap_file, [("127.0.0.1", self._server_port(node), identity["pubkey"])
                                                  for node, identity
                                                  in zip(introducers[:count], identities[:count], strict=True)])
        # The peers start together, a few at a time (each makes its key at first start unless ``prepare`` gave one).
        limit = asyncio.Semaphore(START_CONCURRENCY)

        # A big federation on a small machine starts each peer slowly (the running ones heartbeat meanwhile).
        listen_timeout = max(20.0, 2.0 * len(self.peers))

        async def start_peer(node: LocalNode) -> None:
            async with limit:
                await node.start(listen_timeout)

        # Every start ends (each is bounded) before a failure is raised, so none starts behind stop()'s back.
        failures = [r for r in await asyncio.gather(*(start_peer(node) for node in self.peers), return_exceptions=True)
                    if isinstance(r, BaseException)]
        if failures:
            raise failures[0]
        await self.wait_healthy(self.start_timeout if timeout is None else timeout)

    async def _start_network(self) -> None:
        """Start a fault proxy per node; each node advertises its proxy's port to the other servers."""
        def pids() -> dict[str, int]:
            return {node.name: node.process.pid for node in self.nodes if node.process is not None and node.running}

        network = ProxyNetwork({node.name: functools.partial(_port_of, node) for node in self.nodes}, pids)
        await network.start()
        self.network = network
        for node in self.nodes:
            node.extra_args = [*node.extra_args, "--advertise-port", str(network.ports[node.name])]

    def _server_port(self, node: LocalNode) -> int:
        """The port other servers dial to reach ``node``: its proxy's when there is one."""
        return self.network.ports[node.name] if self.network is not None else node.port

    def _network(self) -> ProxyNetwork:
        if self.network is None:
            raise BackendUnsupported("this federation was started without the fault proxy: network faults need "
                                     "ClusterSpec(faulty_network=True) (the runner sets it for scenarios that use "
                                     "partition groups, degrade or nemesis)")
        return self.network

    async def partition_groups(self, groups: Sequence[Sequence[str]]) -> None:
        """Partition the server links into ``groups`` at the proxies."""
        await self._network().partition([list(group) for group in groups])

    async def heal_network(self) -> None:
        """End the partition."""
        await self._network().heal()

    async def degrade(self, effect: Effect, node: str | None = None, link: tuple[str, str] | None = None) -> None:
        """Delay, jitter, loss or bandwidth at the proxies."""
        await self._network().degrade(effect, node, link)

    async def restore_network(self) -> None:
        """Remove every link effect."""
        await self._network().restore()

    async def wait_healthy(self, timeout: float = 30.0) -> float:
        """Wait until every running node answers /healthz with 200 and links to every other running node."""
        running = [node.name for node in self.nodes if node.running and not node.paused]
        return await wait_mesh_healthy({name: self.node(name).server_id for name in running},
                                       lambda name: self.node(name).health(), timeout,
                                       self.diagnose(running, MESH_HINT))

    async def health(self, node: str) -> Health:
        """GET /healthz of ``node``."""
        return await self.node(node).health()

    async def status(self, node: str) -> Health:
        """GET /status of ``node`` (load figures); (0, {}) when it is not running."""
        local = self.node(node)
        return await probe_status(local.port) if local.running and not local.paused else (0, {})

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

    async def exited_nodes(self, nodes: Iterable[str] | None = None) -> dict[str, str]:
        """Nodes started through this backend, not stopped or killed through it, whose process has ended."""
        found = {}
        for name in self.node_names if nodes is None else nodes:
            node = self.node(name)
            status = node.exit_status() if node.wanted else None
            if status:
                found[name] = status
        return found

    async def log_tails(self, lines: int, nodes: Iterable[str] | None = None) -> dict[str, str]:
        """The last ``lines`` lines of each node's log file."""
        return {name: self.node(name).log_tail(lines) for name in (self.node_names if nodes is None else nodes)}

    def logs_location(self) -> str:
        """The run's directory, where every node's ``<name>.log`` is."""
        return str(self.workdir)

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
        """Stop every node (SIGTERM, then SIGKILL), then the fault proxies."""
        await asyncio.gather(*(node.stop() for node in self.nodes), return_exceptions=True)
        if self.network is not None:
            await self.network.stop()
            self.network = None


def _port_of(node: LocalNode) -> int:
    """``node``'s current server port (0 before its first start)."""
    return node.port
