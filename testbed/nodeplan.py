"""The one plan of a federation's nodes: their names, each node's ``socp-node`` command line, the bootstrap file.

Every backend builds its nodes from here, so a process on 127.0.0.1 and a container run the same flags:

- names: ``introducer`` (or ``introducer1..K`` when there are several), then ``peer1..N``;
- flags: :func:`node_flags` (a node that serves) and :func:`identity_flags` (``--show-identity``: create the
  key and print ``{server_id, name, pubkey}``), the timers from :class:`socp.settings.Timings`;
- the bootstrap file: :func:`write_bootstrap`, every introducer with its key pinned (no trust on first use);
- admission: a federation is closed by default (``ClusterSpec.closed``): the backend makes a fresh join token
  (:func:`new_join_token`) and hands it to every node in its environment (:func:`node_environment`), never on
  the command line.

The testbed drives nodes only through this command line, so it can judge any implementation that accepts it.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from socp.settings import FAST_TIMINGS, Timings

INTRODUCER_PORT = 9001
"""An introducer's port where it has its own address (a container)."""
PEER_PORT = 8765
"""A peer's port where it has its own address (a container)."""


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """What federation to build."""

    peers: int = 3
    """Number of peer nodes."""
    introducers: int = 1
    """Number of introducers (each peer's bootstrap file lists all of them, keys pinned)."""
    timings: Timings = field(default=FAST_TIMINGS)
    """Protocol timers of every node (short by default, so failures show within seconds)."""
    closed: bool = True
    """A closed federation: every node gets the run's join token, and strangers are not admitted."""
    faulty_network: bool = False
    """Server links pass through the testbed's fault proxy (local backend), so the scenario can partition and
    degrade them (:mod:`testbed.proxy`)."""
    interop: bool = False
    """Every node runs the interop profile (``--interop``, docs/INTEROP.md): a federation other implementations'
    servers and clients can join. Off by default: the profile accepts the standard's weaker signatures."""


@dataclass(frozen=True, slots=True)
class NodePlan:
    """One node of the federation."""

    name: str
    """``introducer``, ``introducer2``, ``peer1``, …"""
    introducer: bool
    """Whether it runs with ``--introducer``."""
    bootstrap: bool
    """Whether it joins through the bootstrap file (every node but the first introducer)."""

    @property
    def role(self) -> str:
        """``introducer`` or ``peer``."""
        return "introducer" if self.introducer else "peer"

    @property
    def port(self) -> int:
        """Its port where it has an address of its own (9001 for introducers, 8765 for peers)."""
        return INTRODUCER_PORT if self.introducer else PEER_PORT


def plan_nodes(spec: ClusterSpec) -> list[NodePlan]:
    """The nodes of ``spec``, introducers first."""
    if spec.introducers < 1 or spec.peers < 0:
        raise ValueError(f"need at least one introducer and no negative peer count, got {spec}")
    count = spec.introducers
    introducers = [NodePlan("introducer" if count == 1 else f"introducer{i + 1}", True, i > 0) for i in range(count)]
    peers = [NodePlan(f"peer{i + 1}", False, True) for i in range(spec.peers)]
    return [*introducers, *peers]


def timing_flags(timings: Timings) -> list[str]:
    """The protocol timers as ``socp-node`` flags (seconds)."""
    return ["--heartbeat-interval", _number(timings.heartbeat_interval),
            "--peer-timeout", _number(timings.peer_timeout),
            "--presence-sync-interval", _number(timings.presence_sync_interval),
            "--replay-window", _number(timings.replay_window)]


def node_flags(node: NodePlan, timings: Timings, *, data_dir: str, host: str, port: int,
               advertise_host: str | None = None, bootstrap_file: str | None = None, server_id: str | None = None,
               extra: Sequence[str] = ()) -> list[str]:
    """``node``'s ``socp-node`` arguments: bind ``host:port``, keep data in ``data_dir``, join through
    ``bootstrap_file`` (when the plan says it joins), run with ``timings`` and, when given, the server id
    ``server_id`` (``--id``: the node keeps it, and creates its key at first start if it has none); ``extra``
    goes before the role flags."""
    flags = ["--name", node.name, "--data-dir", data_dir, "--host", host, "--port", str(port)]
    if server_id is not None:
        flags += ["--id", server_id]
    if advertise_host is not None:
        flags += ["--advertise-host", advertise_host]
    flags += [*timing_flags(timings), *extra]
    if node.introducer:
        flags.append("--introducer")
    if node.bootstrap:
        if bootstrap_file is None:
            raise ValueError(f"{node.name} joins through a bootstrap file, but none was given")
        flags += ["--bootstrap", bootstrap_file]
    return flags


def profile_flags(spec: ClusterSpec) -> list[str]:
    """The flags every node of ``spec`` gets beyond its own (:func:`node_flags` ``extra``): ``--interop`` when
    the federation runs the interop profile."""
    return ["--interop"] if spec.interop else []


JOIN_TOKEN_ENV = "SOCP_JOIN_TOKEN"
"""The variable ``socp-node`` reads its join token from (node/config.py)."""


def new_join_token() -> str:
    """A fresh join token for one federation (192 random bits)."""
    return secrets.token_urlsafe(24)


def node_environment(join_token: str) -> dict[str, str]:
    """Environment variables a node needs besides its flags: the join token of a closed federation."""
    return {JOIN_TOKEN_ENV: join_token} if join_token else {}


def identity_flags(node: NodePlan, *, data_dir: str) -> list[str]:
    """Arguments that make ``socp-node`` create ``node``'s key in ``data_dir`` if needed, print
    ``{server_id, name, pubkey}`` as JSON and exit."""
    return ["--name", node.name, "--data-dir", data_dir, "--show-identity",
            *(["--introducer"] if node.introducer else [])]


def bootstrap_document(introducers: Sequence[tuple[str, int, str]]) -> dict[str, Any]:
    """The bootstrap file's content for ``(host, port, pubkey)`` introducers, in order."""
    return {"bootstrap_servers": [{"host": host, "port": port, "pubkey": pubkey}
                                  for host, port, pubkey in introducers]}


def write_bootstrap(path: Path, introducers: Sequence[tuple[str, int, str]]) -> Path:
    """Write the bootstrap file pinning every ``(host, port, pubkey)`` introducer's key; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Generated by socp-testbed: every introducer, its key pinned (no trust on first use).\n"
                    + yaml.safe_dump(bootstrap_document(introducers), sort_keys=False, width=1 << 16))
    path.chmod(0o644)  # read by a container's unprivileged user through a bind mount
    return path


def _number(value: float) -> str:
    """``2.0`` → ``"2"``, ``0.5`` → ``"0.5"``: tidy flag values, never rounded."""
    tidy = f"{value:g}"
    return tidy if float(tidy) == value else repr(value)
