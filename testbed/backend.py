"""The one interface every cluster backend implements, and the registry that picks one by name.

A backend owns a federation of one or more introducers plus peers. Nodes are addressed by name
(``introducer`` or ``introducer1..K``, ``peer1..N``); every URL it hands out is reachable from the host
on 127.0.0.1, so scripted clients never need to know where the nodes really run.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Self, runtime_checkable


@dataclass(frozen=True, slots=True)
class NodeTimings:
    """Protocol timers handed to every node (seconds); short values make failure tests fast."""

    heartbeat_interval: float = 0.5
    peer_timeout: float = 2.0
    presence_sync_interval: float = 2.0


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """What federation to build."""

    peers: int = 3
    """Number of peer nodes."""
    introducers: int = 1
    """Number of introducers (each peer's bootstrap file lists all of them, keys pinned)."""
    timings: NodeTimings = NodeTimings()
    """Protocol timers of every node."""


class BackendUnsupported(NotImplementedError):
    """The backend cannot perform this operation (e.g. a network partition between local processes)."""


@runtime_checkable
class ClusterBackend(Protocol):
    """A federation the testbed can start, inspect, break and stop."""

    name: str
    """The backend's registry name (``local``, ``docker``)."""
    workdir: Path
    """Where this run keeps its files (generated configs, logs)."""

    @property
    def node_names(self) -> list[str]:
        """Every node, introducers first."""

    @property
    def peer_names(self) -> list[str]:
        """The peer nodes (the ones that accept users)."""

    def url(self, node: str) -> str:
        """``ws://127.0.0.1:PORT`` of ``node`` as reachable from the host."""

    async def start(self, timeout: float) -> None:
        """Create and start the whole federation and wait until it is healthy and fully meshed."""

    async def stop(self) -> None:
        """Stop and remove everything this backend created (idempotent)."""

    async def wait_healthy(self, timeout: float) -> float:
        """Wait until every running node is healthy and linked to every other; returns the seconds taken."""

    async def health(self, node: str) -> tuple[int, dict[str, object]]:
        """``GET /healthz`` of ``node``: (HTTP status, JSON body), (0, {}) when unreachable."""

    async def kill(self, node: str) -> None:
        """Kill ``node`` at once, as a crash would."""

    async def stop_node(self, node: str) -> None:
        """Stop ``node`` gracefully."""

    async def start_node(self, node: str) -> None:
        """Start a stopped or killed ``node`` again with the same identity, data and address."""

    async def restart(self, node: str) -> None:
        """Stop then start ``node``."""

    async def pause(self, node: str) -> None:
        """Freeze ``node``: its connections stay open but it answers nothing."""

    async def unpause(self, node: str) -> None:
        """Resume a paused ``node``."""

    async def partition(self, node: str) -> None:
        """Cut ``node`` off the federation's network (raises :class:`BackendUnsupported` where impossible)."""

    async def heal(self, node: str) -> None:
        """Undo :meth:`partition`."""

    def collect_logs(self, destination: Path) -> list[Path]:
        """Copy every node's log into ``destination``; returns the files written."""


class ManagedCluster:
    """``async with backend:`` starts the federation and always stops it, for any backend class."""

    async def start(self) -> None:  # pragma: no cover - provided by the backend
        raise NotImplementedError

    async def stop(self) -> None:  # pragma: no cover - provided by the backend
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


BackendFactory = Callable[[Path, ClusterSpec], ClusterBackend]
_BACKENDS: dict[str, BackendFactory] = {}


def register_backend(name: str, factory: BackendFactory) -> None:
    """Make ``factory`` available under ``name``."""
    _BACKENDS[name] = factory


def create_backend(name: str, workdir: Path, spec: ClusterSpec) -> ClusterBackend:
    """The backend called ``name`` for ``spec``, keeping its files in ``workdir``."""
    _load_builtin_backends()
    try:
        factory = _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; available: {', '.join(sorted(_BACKENDS))}") from None
    return factory(workdir, spec)


def backend_names() -> list[str]:
    """Registered backend names."""
    _load_builtin_backends()
    return sorted(_BACKENDS)


def _load_builtin_backends() -> None:
    # Importing a backend module registers it; the docker backend imports the Docker SDK only when used.
    for module in ("testbed.local", "testbed.docker_backend"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # only a backend that is not installed at all is skipped
                raise
