"""The local backend's faulty network: a small TCP proxy in front of every node's server links.

Each node advertises its proxy's port to the other servers (``--advertise-port``; the bootstrap file names
the introducers' proxies), so every server-to-server connection passes through the proxy of the node that was
dialled. Users and the orchestrator's probes connect to the node's own port: the control path never passes
through the faulted network.

The proxy tells which node dialled by finding the connecting socket's owner (``/proc/net/tcp`` and each node
process's ``/proc/<pid>/fd``; Linux), and applies the :class:`NetworkModel` to each connection:

* **partition** into groups: nodes of two different listed groups cannot reach each other (a node in no
  group reaches everyone). Bytes between them are held, not forwarded, as packets a real partition drops are
  retransmitted by TCP: a connection that outlives the partition gets them after the heal, in order, and one
  its node gives up on (peer timeout) is closed by that node. A new connection across is accepted and not
  connected through until the heal, so the dialler's handshake times out as it would.
* **delay** with **jitter**, **loss** and **bandwidth**, per node (every link of the node) or per link. TCP
  cannot lose bytes, so a lost segment is what TCP makes of it: the chunk arrives a retransmission timeout
  (:data:`RETRANSMIT_S`) late. Order is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

CHUNK = 65536
RETRANSMIT_S = 0.2
"""Extra delay of a "lost" chunk: Linux's minimum TCP retransmission timeout."""
PROXY_HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class Effect:
    """What the network does to a link: one-way ``delay`` ± ``jitter`` seconds, ``loss`` (0-1), ``bandwidth``
    in bytes per second (0: unlimited)."""

    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    bandwidth: float = 0.0

    def __post_init__(self) -> None:
        if self.delay < 0 or self.jitter < 0 or not 0 <= self.loss <= 1 or self.bandwidth < 0:
            raise ValueError(f"bad network effect {self}: delays, jitter and bandwidth are >= 0, loss in [0, 1]")

    def combined(self, other: Effect) -> Effect:
        """Both effects on one path: delays add, losses compound, the narrower bandwidth wins."""
        widths = [b for b in (self.bandwidth, other.bandwidth) if b > 0]
        return Effect(self.delay + other.delay, self.jitter + other.jitter,
                      1 - (1 - self.loss) * (1 - other.loss), min(widths) if widths else 0.0)

    @property
    def idle(self) -> bool:
        """No effect at all."""
        return self == Effect()


CLEAN = Effect()


@dataclass(slots=True)
class NetworkModel:
    """The network's faults now: partition groups and effects per node and per link."""

    groups: list[frozenset[str]] = field(default_factory=list)
    nodes: dict[str, Effect] = field(default_factory=dict)
    links: dict[frozenset[str], Effect] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)

    def blocked(self, a: str | None, b: str | None) -> bool:
        """True when a partition separates ``a`` from ``b`` (an unknown end is never separated)."""
        if a is None or b is None or not self.groups:
            return False
        group_a = next((i for i, g in enumerate(self.groups) if a in g), None)
        group_b = next((i for i, g in enumerate(self.groups) if b in g), None)
        return group_a is not None and group_b is not None and group_a != group_b

    def degrade(self, effect: Effect, node: str | None, link: tuple[str, str] | None,
                every: Iterable[str]) -> None:
        """Set ``effect`` on one ``link``, else on every link of ``node``, else (neither) on each of ``every``
        node, replacing what was set there before."""
        if link is not None:
            self.links[frozenset(link)] = effect
        elif node is not None:
            self.nodes[node] = effect
        else:
            for name in every:
                self.nodes[name] = effect

    def effect(self, a: str | None, b: str | None) -> Effect:
        """The effect on the link between ``a`` and ``b`` (either direction)."""
        effect = CLEAN
        for end in (a, b):
            if end is not None and end in self.nodes:
                effect = effect.combined(self.nodes[end])
        if a is not None and b is not None:
            effect = effect.combined(self.links.get(frozenset((a, b)), CLEAN))
        return effect

    def delay_of(self, effect: Effect, size: int) -> float:
        """Seconds a chunk of ``size`` bytes spends in the network (random: jitter, loss)."""
        delay = effect.delay + (self.rng.uniform(-effect.jitter, effect.jitter) if effect.jitter else 0.0)
        if effect.loss and self.rng.random() < effect.loss:
            delay += RETRANSMIT_S
        if effect.bandwidth:
            delay += size / effect.bandwidth
        return max(0.0, delay)


@dataclass(eq=False)
class _Pipe:
    source: str | None
    target: str
    writers: list[asyncio.StreamWriter]

    def close(self) -> None:
        for writer in self.writers:
            with contextlib.suppress(Exception):
                writer.close()


class ProxyNetwork:
    """One proxy per node, sharing one :class:`NetworkModel`; start them before the nodes (their ports are the
    nodes' ``--advertise-port``).

    The proxies run on an event loop of their own, in a thread: the orchestrator's loop signs and encrypts for
    every scripted user, and a proxy sharing it would hold the heartbeats back long enough for the nodes to
    declare links dead that no fault touched.
    """

    def __init__(self, targets: Mapping[str, Callable[[], int]], pids: Callable[[], Mapping[str, int]],
                 seed: int = 0) -> None:
        """``targets``: node → its current server port (read at each connection: a node restarted elsewhere is
        found); ``pids``: node → process id of the running nodes (to tell who dialled)."""
        self.model = NetworkModel(rng=random.Random(seed))
        self._targets = dict(targets)
        self._pids = pids
        self._servers: dict[str, asyncio.Server] = {}
        self.ports: dict[str, int] = {}
        self._pipes: set[_Pipe] = set()
        self._healed = asyncio.Event()
        """Set (and replaced) whenever a partition ends: held connections look again."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        """Start the proxies' thread and listen for every node on a free port of 127.0.0.1."""
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="socp-testbed-proxy", daemon=True)
        self._thread.start()
        self._loop = loop
        await self._call(self._listen())

    async def stop(self) -> None:
        """Close every proxied connection, stop listening, end the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            await self._call(self._close_all())
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join, 10)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None

    async def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` on the proxies' loop and wait for it."""
        assert self._loop is not None, "the proxies are not started"
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    async def _listen(self) -> None:
        for node in self._targets:
            server = await asyncio.start_server(functools.partial(self._accept, node), PROXY_HOST, 0)
            self._servers[node] = server
            self.ports[node] = server.sockets[0].getsockname()[1]

    async def _close_all(self) -> None:
        self.model.groups = []
        self._wake()  # held connections stop waiting, and find their sockets closed
        for server in self._servers.values():
            server.close()
        for pipe in list(self._pipes):
            pipe.close()
        self._pipes.clear()
        for server in self._servers.values():
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await server.wait_closed()
        self._servers.clear()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- faults (called from the orchestrator's loop; applied on the proxies') -----------------------

    async def partition(self, groups: list[list[str]]) -> None:
        """Separate the groups from each other (replacing any partition): connections across hold their bytes."""
        async def apply() -> None:
            self.model.groups = [frozenset(group) for group in groups]
            self._wake()
        await self._call(apply())

    async def heal(self) -> None:
        """End the partition: held bytes flow again, held connections are connected through."""
        async def apply() -> None:
            self.model.groups = []
            self._wake()
        await self._call(apply())

    async def degrade(self, effect: Effect, node: str | None = None, link: tuple[str, str] | None = None) -> None:
        """Apply ``effect`` to every link of ``node``, to one ``link``, or (neither) to every node."""
        async def apply() -> None:
            self.model.degrade(effect, node, link, self._targets)
        await self._call(apply())

    async def restore(self) -> None:
        """Remove every delay, jitter, loss and bandwidth limit."""
        async def apply() -> None:
            self.model.nodes.clear()
            self.model.links.clear()
        await self._call(apply())

    def _wake(self) -> None:
        healed, self._healed = self._healed, asyncio.Event()
        healed.set()

    async def _until_joined(self, pipe: _Pipe) -> None:
        """Return once no partition separates the pipe's ends."""
        while self.model.blocked(pipe.source, pipe.target):
            await self._healed.wait()

    # --- plumbing --------------------------------------------------------------------------------

    async def _accept(self, target: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        listen = writer.get_extra_info("sockname")
        source = await asyncio.to_thread(_owner, peer[1], listen[1], dict(self._pids())) if peer and listen else None
        pipe = _Pipe(source, target, [writer])
        self._pipes.add(pipe)
        try:
            await self._until_joined(pipe)
            try:
                up_reader, up_writer = await asyncio.open_connection(PROXY_HOST, self._targets[target]())
            except OSError:
                return  # the node is down: the dialler sees its connection refused-like close
            pipe.writers.append(up_writer)
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pump(reader, up_writer, pipe))
                group.create_task(self._pump(up_reader, writer, pipe))
        except Exception:  # a connection's end, however abrupt, ends only that connection
            pass
        finally:
            pipe.close()
            self._pipes.discard(pipe)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pipe: _Pipe) -> None:
        """Copy one direction, each chunk delivered when the network's effect says, in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        last_due = 0.0

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._until_joined(pipe)
                writer.write(data)
                await writer.drain()
            with contextlib.suppress(Exception):
                writer.close()

        sender = asyncio.create_task(deliver())
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                effect = self.model.effect(pipe.source, pipe.target)
                delay = 0.0 if effect.idle else self.model.delay_of(effect, len(data))
                last_due = max(last_due, time.monotonic() + delay)
                queue.put_nowait((last_due, data))
            queue.put_nowait((0.0, b""))
            await sender
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            pipe.close()


def _owner(port: int, listen_port: int, pids: Mapping[str, int]) -> str | None:
    """The node whose process owns the TCP socket ``127.0.0.1:port`` connected to ``listen_port`` (Linux)."""
    inode = None
    wanted_local, wanted_remote = f":{port:04X}", f":{listen_port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                for line in lines:
                    fields = line.split()
                    if len(fields) > 9 and fields[1].endswith(wanted_local) and fields[2].endswith(wanted_remote):
                        inode = fields[9]
                        break
        except OSError:
            continue
        if inode is not None:
            break
    if inode is None:
        return None
    needle = f"socket:[{inode}]"
    for node, pid in pids.items():
        fd_dir = f"/proc/{pid}/fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue
        for name in names:
            with contextlib.suppress(OSError):
                if os.readlink(f"{fd_dir}/{name}") == needle:
                    return node
    return None
