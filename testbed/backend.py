"""The one base class every cluster backend derives from, and the registry that picks one by name.

A backend owns a federation of one or more introducers plus peers, planned by :mod:`testbed.nodeplan` (so
every backend names its nodes alike: ``introducer`` or ``introducer1..K``, ``peer1..N``). Every URL it hands
out is reachable from the host on 127.0.0.1, so scripted clients never need to know where the nodes run.

Backends are chosen by name and imported only when chosen (:data:`BACKENDS`: name → ``module:Class``), so
importing the testbed never imports the Docker SDK. ``async with backend:`` starts the federation and always
stops it.
"""

from __future__ import annotations

import abc
import asyncio
import importlib
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import ClassVar, Self

from testbed.nodeplan import ClusterSpec, NodePlan, new_join_token, plan_nodes
from testbed.proxy import Effect
from testbed.waiting import DEFAULT_INTERVAL, Diagnose, Pending, poll

__all__ = ["BACKENDS", "BackendUnsupported", "ClusterBackend", "ClusterSpec", "Prepare", "backend_names",
           "create_backend", "probe_health", "probe_http", "probe_status", "register_backend", "wait_mesh_healthy"]

Prepare = Callable[[str, Path], None]
"""Called with a node's name and data directory before the node first starts (tests drop cached keys in)."""

Health = tuple[int, dict[str, object]]
"""A ``/healthz`` answer: (HTTP status, JSON body); (0, {}) when unreachable."""

MESH_HINT = ("a node that never links could not reach an introducer or refused its pinned key: look for "
             "'joined the network' in its log; a slow machine needs SOCP_TIMEOUT_FACTOR=3")


MESH_POLL_PER_NODE = 0.02
"""Seconds between two checks of a healthy full mesh, per node checked (0.26 s for 13 nodes) ..."""
MESH_POLL_MAX = 1.0
"""... and at most this (a check asks every node's ``/healthz`` at once)."""


class BackendUnsupported(NotImplementedError):
    """The backend cannot perform this operation (e.g. a network partition between local processes)."""


class ClusterBackend(abc.ABC):
    """A federation the testbed can start, inspect, break and stop; ``async with`` starts and always stops it.

    ``prepare`` (see :data:`Prepare`) is honoured where node data lives on the host (``local``); backends that
    keep it elsewhere (``docker``: volumes) create every key themselves and ignore it.
    """

    name: ClassVar[str]
    """The backend's registry name (``local``, ``docker``)."""
    start_timeout: ClassVar[float] = 120.0
    """Seconds :meth:`start` waits for a healthy full mesh unless told otherwise."""

    def __init__(self, workdir: Path, spec: ClusterSpec | None = None, *, prepare: Prepare | None = None) -> None:
        self.workdir = workdir
        """Where this run keeps its files (generated configs, logs)."""
        self.spec = spec or ClusterSpec()
        """The federation's shape and timers."""
        self.prepare = prepare
        self.plan: list[NodePlan] = plan_nodes(self.spec)
        """Every node, introducers first."""
        self.join_token = new_join_token() if self.spec.closed else ""
        """The federation's join token ("" for open admission); every node gets it in its environment."""

    # --- names -----------------------------------------------------------------------------------

    @property
    def node_names(self) -> list[str]:
        """Every node, introducers first."""
        return [node.name for node in self.plan]

    @property
    def peer_names(self) -> list[str]:
        """The peer nodes (the ones that accept users)."""
        return [node.name for node in self.plan if not node.introducer]

    def node_plan(self, node: str) -> NodePlan:
        """The plan of the node called ``node`` (raises KeyError naming the nodes there are)."""
        for plan in self.plan:
            if plan.name == node:
                return plan
        raise KeyError(f"no node named {node!r}; have {self.node_names}")

    @abc.abstractmethod
    def url(self, node: str) -> str:
        """``ws://127.0.0.1:PORT`` of ``node`` as reachable from the host."""

    # --- whole federation ------------------------------------------------------------------------

    @abc.abstractmethod
    async def start(self, timeout: float | None = None) -> None:
        """Create and start the whole federation and wait (``timeout``, default :attr:`start_timeout`) until it
        is healthy and fully meshed."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop and remove everything this backend created (idempotent)."""

    @abc.abstractmethod
    async def wait_healthy(self, timeout: float = 60.0) -> float:
        """Wait until every running node is healthy and linked to every other; returns the seconds taken."""

    @abc.abstractmethod
    async def health(self, node: str) -> Health:
        """``GET /healthz`` of ``node``: (HTTP status, JSON body), (0, {}) when unreachable."""

    async def status(self, node: str) -> Health:
        """``GET /status`` of ``node`` (the load figures :mod:`testbed.load` reports); (0, {}) when unreachable.

        The default asks :meth:`health`, whose body is the same snapshot on this project's nodes.
        """
        return await self.health(node)

    @abc.abstractmethod
    def collect_logs(self, destination: Path) -> list[Path]:
        """Copy every node's log into ``destination``; returns the files written."""

    def capture_traffic(self, directory: Path) -> bool:
        """Record the inter-node traffic of the nodes this backend starts as pcap files in ``directory`` (for the
        confidentiality scan); False when this backend cannot (the default), True when it will."""
        return False

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- one node --------------------------------------------------------------------------------

    @abc.abstractmethod
    async def kill(self, node: str) -> None:
        """Kill ``node`` at once, as a crash would."""

    @abc.abstractmethod
    async def stop_node(self, node: str) -> None:
        """Stop ``node`` gracefully."""

    @abc.abstractmethod
    async def start_node(self, node: str) -> None:
        """Start a stopped or killed ``node`` again with the same identity, data and address."""

    @abc.abstractmethod
    async def restart(self, node: str) -> None:
        """Stop then start ``node``."""

    @abc.abstractmethod
    async def pause(self, node: str) -> None:
        """Freeze ``node``: its connections stay open but it answers nothing."""

    @abc.abstractmethod
    async def unpause(self, node: str) -> None:
        """Resume a paused ``node``."""

    @abc.abstractmethod
    async def partition(self, node: str) -> None:
        """Cut ``node`` off the federation's network (raises :class:`BackendUnsupported` where impossible)."""

    @abc.abstractmethod
    async def heal(self, node: str) -> None:
        """Undo :meth:`partition`."""

    # --- what a failed wait reports --------------------------------------------------------------

    # --- the network between the nodes (the nemesis) ---------------------------------------------

    async def partition_groups(self, groups: Sequence[Sequence[str]]) -> None:
        """Split the server network into ``groups`` that cannot reach each other (a node in none reaches all)."""
        raise BackendUnsupported(f"the {self.name} backend cannot partition the network into groups")

    async def heal_network(self) -> None:
        """End any partition made by :meth:`partition_groups`."""
        raise BackendUnsupported(f"the {self.name} backend cannot partition the network into groups")

    async def degrade(self, effect: Effect, node: str | None = None, link: tuple[str, str] | None = None) -> None:
        """Delay, jitter, loss, bandwidth on every link of ``node``, on one ``link``, or (neither) everywhere."""
        raise BackendUnsupported(f"the {self.name} backend cannot degrade links")

    async def restore_network(self) -> None:
        """Remove every effect :meth:`degrade` applied."""
        raise BackendUnsupported(f"the {self.name} backend cannot degrade links")

    @abc.abstractmethod
    async def exited_nodes(self, nodes: Iterable[str] | None = None) -> dict[str, str]:
        """The nodes (of ``nodes``, default all) that should run but have exited: node → how it ended.

        A node stopped or killed through this backend is not reported until it is started again.
        """

    @abc.abstractmethod
    async def log_tails(self, lines: int, nodes: Iterable[str] | None = None) -> dict[str, str]:
        """The last ``lines`` lines of each node's log (of ``nodes``, default all)."""

    @abc.abstractmethod
    def logs_location(self) -> str:
        """Where the nodes' full logs are (a directory, or the command that shows them)."""

    def diagnose(self, nodes: Iterable[str] | None = None, hint: str = "") -> Diagnose:
        """What a :func:`~testbed.waiting.poll` over ``nodes`` (default all) asks when it fails or a node dies."""
        chosen = list(self.node_names if nodes is None else nodes)
        return Diagnose(exited=lambda: self.exited_nodes(chosen),
                        log_tails=lambda lines: self.log_tails(lines, chosen),
                        logs=self.logs_location(), hint=hint)


def _some(names: list[str], most: int = 8) -> str:
    """``[a, b, c]``, or the first ``most`` names and how many more."""
    shown = ", ".join(names[:most])
    return f"[{shown}]" if len(names) <= most else f"[{shown}, … {len(names) - most} more]"


async def wait_mesh_healthy(server_ids: Mapping[str, str], health: Callable[[str], Awaitable[Health]],
                            timeout: float, diagnose: Diagnose | None = None) -> float:
    """Wait until every node in ``server_ids`` (name → server id) is healthy and linked to all the others.

    Shared by the backends: ``health(name)`` returns a node's /healthz answer. Returns the seconds taken; stops
    at once with :class:`~testbed.waiting.NodeExited` when ``diagnose`` reports a node that died.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def meshed() -> float | Pending:
        answers = await asyncio.gather(*(health(name) for name in server_ids))
        unreachable: list[str] = []
        problems = []
        for name, (status, body) in zip(server_ids, answers, strict=True):
            if status == 0:
                unreachable.append(name)
                continue
            linked = body.get("linked_servers")
            linked_ids = set(linked) if isinstance(linked, list) else set()
            missing = sorted(other for other, sid in server_ids.items() if other != name and sid not in linked_ids)
            if status != 200 or missing:
                problems.append(f"{name}: http {status}, not linked to {_some(missing)}")
        if unreachable:
            # Dozens of nodes that do not answer at all say one thing; listing each one's missing links hides it.
            problems.insert(0, f"{len(unreachable)} not answering /healthz: {_some(unreachable)}")
        return Pending("; ".join(problems)) if problems else loop.time() - start

    # Every check asks every node: poll a big federation less often, so the testbed does not load what it measures.
    interval = min(MESH_POLL_MAX, max(DEFAULT_INTERVAL, MESH_POLL_PER_NODE * len(server_ids)))
    return await poll(meshed, timeout, "a healthy full mesh", diagnose, interval=interval)


async def probe_health(port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> Health:
    """``GET /healthz`` on ``host:port``: (HTTP status, JSON body); (0, {}) when unreachable or garbled.

    Shared by the backends (the docker backend probes the published port on 127.0.0.1).
    """
    return await probe_http(port, "/healthz", host, timeout)


async def probe_status(port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> Health:
    """``GET /status`` on ``host:port`` (``/healthz`` when the node has no ``/status``), as :func:`probe_http`."""
    answer = await probe_http(port, "/status", host, timeout)
    return await probe_http(port, "/healthz", host, timeout) if answer[0] == 404 else answer


async def probe_http(port: int, path: str, host: str = "127.0.0.1", timeout: float = 2.0) -> Health:
    """``GET path`` on ``host:port`` for a JSON answer: (HTTP status, JSON body); (0, {}) when unreachable or
    garbled."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n".encode())
            raw = await reader.read()
            writer.close()
    except (OSError, TimeoutError):
        return 0, {}
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        return int(head.split()[1]), json.loads(body or b"{}")
    except (IndexError, ValueError):
        return 0, {}


BACKENDS: dict[str, str] = {"local": "testbed.local:LocalCluster", "docker": "testbed.docker_backend:DockerCluster",
                            "swarm": "testbed.swarm_backend:SwarmCluster"}
"""Backend name → ``module:Class``; the module is imported only when the backend is chosen."""


def register_backend(name: str, target: str) -> None:
    """Make the :class:`ClusterBackend` subclass at ``target`` (``module:Class``) available under ``name``."""
    BACKENDS[name] = target


def backend_names() -> list[str]:
    """Registered backend names."""
    return sorted(BACKENDS)


def backend_class(name: str) -> type[ClusterBackend]:
    """The class of the backend called ``name``, importing its module now (ValueError for an unknown name)."""
    try:
        module_name, _, class_name = BACKENDS[name].partition(":")
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; available: {', '.join(backend_names())}") from None
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, ClusterBackend)):
        raise TypeError(f"backend {name!r}: {BACKENDS[name]} is not a ClusterBackend")
    return cls


def create_backend(name: str, workdir: Path, spec: ClusterSpec, *, prepare: Prepare | None = None) -> ClusterBackend:
    """The backend called ``name`` for ``spec``, keeping its files in ``workdir`` (see :class:`ClusterBackend`
    for ``prepare``)."""
    return backend_class(name)(workdir, spec, prepare=prepare)
