"""The ``docker`` cluster backend: every node in its own container, from a generated compose file.

Lifecycle of a run (compose project ``socp-<8 hex>``, or ``socp`` for ``make up``):

1. one labelled volume per node (a few at a time), and a one-off container per *introducer* running
   ``--show-identity`` in its volume, which creates its key there and prints the public key to pin (the
   introducers' keys in parallel). A peer's key is made by the peer itself at its first start, in its own
   container, all peers at once; the testbed gives each peer its server id (``--id``), so it knows every
   node's id before anything runs;
2. ``bootstrap.yaml`` pinning every introducer's key, and ``docker-compose.yaml`` from
   ``compose/node.template.yaml`` (:mod:`testbed.compose`), both in the run's ``workdir``;
3. ``docker compose up -d`` (or ``docker-compose`` v1), the first introducer before the others,
   then the Docker SDK for everything else: published ports, health, kill, stop, start, restart,
   pause, and partitions (disconnect from / reconnect to the federation network; see
   :mod:`testbed.compose` for the two networks). Delay, jitter and bandwidth limits are ``tc`` (htb, netem)
   and loss is nftables in each node's network namespace, set from short-lived helper containers
   (:mod:`testbed.netem`), which also capture the inter-node traffic (``tcpdump``) when asked.

The host only ever talks to ``127.0.0.1``: every node's port is published as ``127.0.0.1::<port>`` and
:meth:`DockerCluster.url` reads the host port docker chose. The ``docker`` SDK is imported lazily, so
importing this module never needs Docker.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from testbed import compose, netem, nodeplan
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
from testbed.proxy import Effect, NetworkModel
from testbed.waiting import Pending, poll

KEYGEN_CONCURRENCY = max(2, min(4, os.cpu_count() or 2))
"""One-off key containers at once: RSA-4096 generation is CPU-bound, so about one per core."""
API_CONCURRENCY = 4
"""Docker API calls (volume creation) at once."""

HEALTHCHECK_INTERVAL = 30.0
"""Seconds between two runs of the image's HEALTHCHECK in a container (unless told otherwise). Each run is a
``docker exec`` of a Python process, about 0.15 CPU seconds: every 5 s in 30 containers that is most of a core.
The testbed polls ``/healthz`` itself; the HEALTHCHECK is only for ``docker ps`` and ``make ps``."""

IMAGE_ENV = "SOCP_IMAGE"
"""Environment variable naming the node image (default ``socp-node:latest``)."""


class DockerUnavailable(RuntimeError):
    """Docker (daemon, compose CLI or the node image) cannot be used; the message says how to fix it."""


def node_image() -> str:
    """The node image: ``$SOCP_IMAGE`` or ``socp-node:latest``."""
    return os.environ.get(IMAGE_ENV) or compose.DEFAULT_IMAGE


def docker_client() -> Any:
    """A Docker SDK client that has answered a ping; raises :class:`DockerUnavailable` otherwise."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError as exc:  # pragma: no cover - the SDK is a dev dependency
        raise DockerUnavailable(f"the Docker SDK for Python is not installed ({exc}); run `make venv`") from None
    try:
        client = docker.from_env()
        client.ping()
    except DockerException as exc:
        where = os.environ.get("DOCKER_HOST") or "the default socket"
        raise DockerUnavailable(f"the Docker daemon is not reachable at {where}: {exc}") from None
    return client


def docker_problem() -> str | None:
    """Why the docker backend cannot run here (daemon, compose CLI, image), or None when it can."""
    try:
        client = docker_client()
        require_image(client, node_image())
        compose.compose_command()
    except (DockerUnavailable, RuntimeError) as exc:
        return str(exc)
    return None


def require_image(client: Any, image: str) -> None:
    """Raise :class:`DockerUnavailable` unless ``image`` exists locally (it is never pulled)."""
    from docker.errors import ImageNotFound

    try:
        client.images.get(image)
    except ImageNotFound:
        raise DockerUnavailable(f"the node image {image} is missing: run `make image` to build it "
                                f"(no registry needed)") from None


def list_containers(client: Any, filters: dict[str, Any], *, all_states: bool = True) -> list[Any]:
    """The containers matching ``filters``, each inspected; one removed between the listing and its inspection
    (compose recreating a container, a ``--rm`` helper ending, a kill) is left out rather than failing the
    caller with a 404, as ``client.containers.list`` would."""
    from docker.errors import NotFound

    found = []
    for summary in client.api.containers(all=all_states, filters=filters):
        try:
            found.append(client.containers.get(summary["Id"]))
        except NotFound:
            continue
    return found


def run_containers(client: Any, project: str, *, all_states: bool = True) -> list[Any]:
    """The node containers of compose project ``project``, sorted introducers first then by name."""
    found = list_containers(client, {"label": [f"{compose.RUN_LABEL}={project}", compose.NODE_LABEL]},
                            all_states=all_states)
    return sorted(found, key=lambda c: _node_order(c.labels.get(compose.NODE_LABEL, "")))


def published_port(container: Any, port: int) -> int | None:
    """The host port (on 127.0.0.1) that ``container``'s ``port`` is published on, None when it is not."""
    bindings = ((container.attrs.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{port}/tcp") or []
    for binding in bindings:
        if binding.get("HostIp") in ("127.0.0.1", "") and binding.get("HostPort"):
            return int(binding["HostPort"])
    return None


def container_port(container: Any) -> int:
    """The node's WebSocket port inside its container (9001 for introducers, 8765 for peers)."""
    role = container.labels.get(compose.ROLE_LABEL)
    return nodeplan.INTRODUCER_PORT if role == "introducer" else nodeplan.PEER_PORT


async def remove_run(client: Any, project: str) -> list[str]:
    """Remove every container, network and volume labelled with run ``project``; returns what went."""
    from docker.errors import APIError, NotFound

    def remove_containers_and_networks() -> list[str]:
        removed: list[str] = []
        label = {"label": [f"{compose.RUN_LABEL}={project}"]}
        for container in list_containers(client, label):
            try:
                container.remove(force=True, v=True)
                removed.append(f"container {container.name}")
            except NotFound:
                pass
        for network in client.networks.list(filters=label):
            try:
                network.reload()
                for attached in (network.attrs.get("Containers") or {}):
                    network.disconnect(attached, force=True)
                network.remove()
                removed.append(f"network {network.name}")
            except NotFound:
                pass
        return removed

    removed = await asyncio.to_thread(remove_containers_and_networks)
    volumes = await asyncio.to_thread(client.volumes.list, filters={"label": [f"{compose.RUN_LABEL}={project}"]})
    for volume in volumes:
        def gone(volume: Any = volume) -> bool | Pending:
            try:
                volume.remove(force=True)
            except NotFound:
                return True
            except APIError as exc:  # still in use by a container being removed
                return Pending(f"volume {volume.name} still in use: {exc}")
            removed.append(f"volume {volume.name}")
            return True

        await poll(functools.partial(asyncio.to_thread, gone), 5.0, f"volume {volume.name} to be removed",
                   interval=0.5)
    return removed


async def create_volumes(client: Any, project: str, nodes: Iterable[nodeplan.NodePlan]) -> None:
    """Create the labelled data volume ``<project>-<node>`` of each of ``nodes`` (a few API calls at a time)."""
    limit = asyncio.Semaphore(API_CONCURRENCY)

    async def one(node: nodeplan.NodePlan) -> None:
        async with limit:
            await asyncio.to_thread(client.volumes.create, name=compose.volume_name(project, node.name),
                                    labels=compose.node_labels(project, node))

    await asyncio.gather(*(one(node) for node in nodes))


async def create_identities(client: Any, image: str, project: str,
                            nodes: Iterable[nodeplan.NodePlan]) -> dict[str, dict[str, str]]:
    """Create the key of each of ``nodes`` in its volume ``<project>-<node>`` and read it back (one-off
    containers of ``image``, :data:`KEYGEN_CONCURRENCY` at a time): node name → ``{server_id, name, pubkey}``.

    Shared by the docker and swarm backends (the swarm backend makes its introducers' keys on this host).
    """
    limit = asyncio.Semaphore(KEYGEN_CONCURRENCY)

    def create(node: nodeplan.NodePlan) -> dict[str, str]:
        volume = compose.volume_name(project, node.name)
        args = nodeplan.identity_flags(node, data_dir=compose.DATA_DIR)
        from docker.errors import ContainerError
        try:
            output = client.containers.run(
                image, args, remove=True, stdout=True, stderr=False, network_mode="none",
                name=f"{compose.container_name(project, node.name)}-keygen",
                labels=compose.run_labels(project) | {compose.KEYGEN_LABEL: node.name},
                volumes={volume: {"bind": compose.DATA_MOUNT, "mode": "rw"}})
        except ContainerError as exc:
            raise RuntimeError(f"{node.name}: --show-identity failed in {image}: "
                               f"{(exc.stderr or b'').decode(errors='replace').strip()}") from None
        identity: dict[str, str] = json.loads(output)
        return identity

    async def one(node: nodeplan.NodePlan) -> tuple[str, dict[str, str]]:
        async with limit:
            return node.name, await asyncio.to_thread(create, node)

    return dict(await asyncio.gather(*(one(node) for node in nodes)))


class DockerCluster(ClusterBackend):
    """The ``docker`` backend: a compose project of containers, driven by compose and the Docker SDK.

    ``project`` defaults to a fresh ``socp-<8 hex>``; ``progress`` receives one line per phase of
    :meth:`start` (the ``up`` command prints them). ``prepare`` is ignored: keys are made in the volumes.
    """

    name = "docker"
    start_timeout = 120.0

    def __init__(self, workdir: Path, spec: ClusterSpec | None = None, *, prepare: Prepare | None = None,
                 project: str | None = None, image: str | None = None,
                 healthcheck_interval: float = HEALTHCHECK_INTERVAL,
                 progress: Callable[[str], None] | None = None) -> None:
        super().__init__(workdir.absolute(), spec, prepare=prepare)
        self.project = project or compose.new_project_name()
        self.image = image or node_image()
        self.healthcheck_interval = healthcheck_interval
        self.progress = progress or (lambda line: None)
        self.compose_file = self.workdir / "docker-compose.yaml"
        self.bootstrap_file = self.workdir / "bootstrap.yaml"
        self.server_ids: dict[str, str] = {}
        self.timings: dict[str, float] = {}
        """Seconds taken by each phase of :meth:`start` (``keys``, ``compose_up``, ``healthy``, ``total``)."""
        self._client: Any = None
        self._ports: dict[str, int] = {}
        self._partitioned: set[str] = set()
        self._moved: dict[str, str] = {}
        """Node → the partition group network :meth:`partition_groups` moved it to."""
        self._group_networks: dict[str, list[str]] = {}
        """Group networks of a healed partition, still attached to their nodes (dropped at the next one)."""
        self._wanted: set[str] = set()
        """Nodes that should be running: started, and not stopped or killed through this backend since."""
        self._model = NetworkModel()
        """The effects :meth:`degrade` applied, per node and per link (its groups and rng are unused)."""
        self._netem_nodes: set[str] = set()
        """Nodes whose network namespace holds a tc script with at least one effect."""
        self._netem_missing: str | None = None
        """Why the kernel cannot delay (no netem qdisc), once :meth:`_require_netem` has probed."""
        self._netem_probed = False
        self._capture_dir: Path | None = None
        """Where every node's inter-node traffic is recorded (:meth:`capture_traffic`), None: not recorded."""
        self._captures: dict[str, Any] = {}
        """Node → its running capture helper container."""
        self._capture_files: dict[str, int] = {}
        """Node → pcap files started for it (a restarted node has a new network namespace: a new capture)."""

    # --- names -------------------------------------------------------------------------------------

    @property
    def network(self) -> str:
        """The federation network (server links), which :meth:`partition` cuts a node off."""
        return compose.network_name(self.project)

    def container_name(self, node: str) -> str:
        """``node``'s container name."""
        return compose.container_name(self.project, self.node_plan(node).name)

    def url(self, node: str) -> str:
        """``ws://127.0.0.1:<host port>`` of ``node``; the port is re-read after every restart or heal."""
        port = self._ports.get(node)
        if port is None:
            port = self._read_port(node)
        return f"ws://127.0.0.1:{port}"

    # --- whole federation --------------------------------------------------------------------------

    async def start(self, timeout: float | None = None) -> None:
        """Create volumes and keys, write the files, ``compose up``, wait for a healthy full mesh."""
        timeout = self.start_timeout if timeout is None else timeout
        began = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        client = self._docker()
        require_image(client, self.image)
        command = compose.compose_command()

        introducers = [node for node in self.plan if node.introducer]
        self.progress(f"creating {len(self.plan)} volumes and the introducers' keys ({len(introducers)}); "
                      f"each peer makes its own key at first start")
        step = time.monotonic()
        await self._create_volumes()
        identities = await self._create_identities(introducers)
        # A peer's id is the testbed's choice (``--id``): known before the peer has made its key.
        self.server_ids = {node.name: identities[node.name]["server_id"] if node.introducer
                           else str(uuid.uuid4()) for node in self.plan}
        self.timings["keys"] = time.monotonic() - step

        nodeplan.write_bootstrap(self.bootstrap_file, [(node.name, node.port, identities[node.name]["pubkey"])
                                                      for node in self.plan if node.introducer])
        compose.write_compose(self.compose_file, compose.render_compose(
            self.project, self.spec, image=self.image, bootstrap_file=self.bootstrap_file,
            server_ids=self.server_ids, healthcheck_interval=self.healthcheck_interval, join_token=self.join_token))
        (self.workdir / "cluster.json").write_text(json.dumps(
            {"project": self.project, "image": self.image, "compose": " ".join(command),
             "nodes": [{"name": node.name, "role": node.role, "container": self.container_name(node.name),
                        "port": node.port, "server_id": self.server_ids[node.name],
                        **identities.get(node.name, {})} for node in self.plan]}, indent=2) + "\n")

        # The first introducer is the seed: it must be serving before anyone joins, or nodes starting
        # together may join through each other and form islands that never merge.
        seed = self.plan[0].name
        self.progress(f"starting {len(self.plan)} containers ({' '.join(command)} up, project {self.project}): "
                      f"{seed} first")
        step = time.monotonic()
        await asyncio.to_thread(self._compose, "up", "-d", "--no-build", self.container_name(seed))
        self._wanted = {seed}
        # While the seed boots, compose creates every other container (not started yet) ...
        others = [name for name in self.node_names if name != seed]
        created = asyncio.ensure_future(asyncio.to_thread(
            self._compose, "up", "--no-start", "--no-build", *(self.container_name(name) for name in others))
            if others else asyncio.sleep(0))
        try:
            await wait_mesh_healthy({seed: self.server_ids[seed]}, self.health, max(5.0, timeout / 2),
                                    self.diagnose([seed], MESH_HINT))
            self.timings["seed"] = time.monotonic() - step
        finally:
            await created
        self.timings["created"] = time.monotonic() - step
        # ... and once it serves, they all start together (compose connects their networks as it starts them).
        if others:
            await asyncio.to_thread(self._compose, "up", "-d", "--no-build")
        self._wanted = set(self.node_names)
        self.timings["compose_up"] = time.monotonic() - step

        self.progress("waiting for every node to be healthy and fully meshed")
        remaining = max(5.0, timeout - (time.monotonic() - began))
        self.timings["healthy"] = await self.wait_healthy(remaining)
        if self._capture_dir is not None:
            step = time.monotonic()
            await self.start_capture()
            self.timings["capture"] = time.monotonic() - step
        self.timings["total"] = time.monotonic() - began

    async def stop(self) -> None:
        """``compose down``, then remove whatever is left labelled with this run (idempotent)."""
        try:
            client = self._docker()
        except DockerUnavailable:
            return  # nothing can have been created
        await self._stop_captures()
        await asyncio.to_thread(self._save_logs)
        if self.compose_file.exists():
            # Errors are ignored: the sweep below removes whatever compose could not.
            with contextlib.suppress(RuntimeError, OSError, subprocess.SubprocessError):
                await asyncio.to_thread(self._compose, "down", "--volumes", "--remove-orphans", "--timeout", "5")
        await remove_run(client, self.project)
        self._wanted.clear()
        self._ports.clear()
        self._partitioned.clear()
        self._moved.clear()
        self._group_networks.clear()
        self._model = NetworkModel()
        self._netem_nodes.clear()

    async def wait_healthy(self, timeout: float = 60.0) -> float:
        """Wait until every running, unpaused, connected node is healthy and linked to all the others."""
        states = await asyncio.to_thread(self._states)
        live = {name: sid for name, sid in self._ids().items()
                if states.get(name) == "running" and name not in self._partitioned}
        return await wait_mesh_healthy(live, self.health, timeout, self.diagnose(live, MESH_HINT))

    async def health(self, node: str) -> Health:
        """``GET /healthz`` of ``node`` through its published port; (0, {}) when unreachable."""
        cached = self._ports.get(node)
        port = cached if cached is not None else await asyncio.to_thread(self._port_or_none, node)
        if port is None:
            return 0, {}
        answer = await probe_health(port)
        if answer[0] == 0 and cached is not None:
            # Restarted behind our back (docker CLI)? Its host port may have changed: look once more.
            fresh = await asyncio.to_thread(self._port_or_none, node)
            if fresh is not None and fresh != port:
                answer = await probe_health(fresh)
        return answer

    async def status(self, node: str) -> Health:
        """``GET /status`` of ``node`` through its published port; (0, {}) when it has none (not running)."""
        port = self._ports.get(node)
        if port is None:
            port = await asyncio.to_thread(self._port_or_none, node)
        return (0, {}) if port is None else await probe_status(port)

    async def container_health(self, node: str) -> str:
        """Docker's HEALTHCHECK state of ``node``'s container: ``starting``, ``healthy``, ``unhealthy`` or ``""``."""
        def read() -> str:
            state = self._container(node).attrs.get("State") or {}
            return str((state.get("Health") or {}).get("Status", ""))
        return await asyncio.to_thread(read)

    # --- one node ----------------------------------------------------------------------------------

    async def kill(self, node: str) -> None:
        """SIGKILL the node's container, as a crash would."""
        self._wanted.discard(node)
        await self._act(node, lambda c: c.kill())
        await self._wait_state(node, "exited")

    async def stop_node(self, node: str) -> None:
        """Stop the container gracefully (SIGTERM, SIGKILL after 10 s)."""
        self._wanted.discard(node)
        await self._act(node, lambda c: c.stop(timeout=10))

    async def start_node(self, node: str) -> None:
        """Start the node's container again: same volume (identity, database), same hostname."""
        self._wanted.add(node)
        await self._act(node, lambda c: c.start())
        await self._wait_state(node, "running")
        await asyncio.to_thread(self._read_port, node)
        await self._reapply_netem()
        await self._start_capture(node)

    async def restart(self, node: str) -> None:
        """Stop then start the node's container (docker may publish it on a new host port)."""
        self._wanted.add(node)
        await self._act(node, lambda c: c.restart(timeout=10))
        await self._wait_state(node, "running")
        await asyncio.to_thread(self._read_port, node)
        await self._reapply_netem()
        await self._start_capture(node)

    async def pause(self, node: str) -> None:
        """Freeze every process of the container (cgroup freezer); its connections stay open."""
        await self._act(node, lambda c: c.pause(), forget_port=False)

    async def unpause(self, node: str) -> None:
        """Resume a paused container."""
        await self._act(node, lambda c: c.unpause(), forget_port=False)

    async def partition(self, node: str) -> None:
        """Disconnect the container from the federation network: its server links die by timeout.

        Its users stay connected: the published port lives on the separate access network.
        """
        if node in self._partitioned:
            return
        await asyncio.to_thread(lambda: self._docker().networks.get(self.network).disconnect(self._container(node)))
        self._partitioned.add(node)

    async def heal(self, node: str) -> None:
        """Reconnect a partitioned container to the federation network under its node name."""
        await self._heal(node)
        await self._reapply_netem()  # its new address on the federation network

    async def _heal(self, node: str) -> None:
        if node not in self._partitioned:
            return
        await asyncio.to_thread(lambda: self._docker().networks.get(self.network).connect(
            self._container(node), aliases=[node]))
        self._partitioned.discard(node)
        self._ports.pop(node, None)

        def published() -> int | Pending:
            port = self._port_or_none(node)
            return Pending("no published port") if port is None else port

        await poll(lambda: asyncio.to_thread(published), 10.0, f"{node}'s port to be published",
                   self.diagnose([node]))

    async def partition_groups(self, groups: Sequence[Sequence[str]]) -> None:
        """Split the federation network: the first group (and any node in no group) stays on it, every other
        group moves to an internal network of its own (``<network>-part<i>``, labelled with the run), where its
        nodes still reach each other by name and nothing else. Users keep their connections (access network).

        Moving a group breaks the links inside it once (they were on the federation network); they re-form on
        the group's network within a peer timeout.
        """
        await self.heal_network()
        await self._drop_group_networks()
        for number, group in enumerate(groups[1:], 2):
            name = f"{self.network}-part{number}"
            await asyncio.to_thread(self._create_group_network, name)
            for node in group:
                await self.partition(node)
                await asyncio.to_thread(self._attach, name, node, True)
                self._moved[node] = name
        await self._reapply_netem()  # the moved nodes' addresses on their group's network

    async def heal_network(self) -> None:
        """Bring every node :meth:`partition_groups` moved back onto the federation network.

        The group networks stay attached until the next partition (or the teardown): the links formed inside a
        group during the partition run over them and survive the heal, as they would on a real network.
        """
        moved, self._moved = self._moved, {}
        for node, name in moved.items():
            await self._heal(node)
            self._group_networks.setdefault(name, []).append(node)
        await self._reapply_netem()

    async def degrade(self, effect: Effect, node: str | None = None, link: tuple[str, str] | None = None) -> None:
        """Delay, jitter, bandwidth (``tc``) and loss (nftables) on every link of ``node``, on one ``link``, or
        (neither) on every node's links, replacing the effect set there before; see :mod:`testbed.netem`."""
        for name in (node, *(link or ())):
            if name is not None:
                self.node_plan(name)  # an unknown node raises here, before anything changes
        if netem.needs_netem(effect):
            await self._require_netem()
        self._model.degrade(effect, node, link, self.node_names)
        await self._apply_netem()

    async def restore_network(self) -> None:
        """Remove every effect :meth:`degrade` applied."""
        self._model.nodes.clear()
        self._model.links.clear()
        await self._apply_netem()

    def capture_traffic(self, directory: Path) -> bool:
        """Record every node's inter-node traffic from :meth:`start` on, as ``directory/<node>-<n>.pcap``
        (``tcpdump`` helpers in the nodes' network namespaces; see :mod:`testbed.netem`)."""
        self._capture_dir = directory.absolute()
        return True

    async def start_capture(self, nodes: Iterable[str] | None = None) -> None:
        """Start recording the traffic of ``nodes`` (default all) now: :meth:`start` does it when
        :meth:`capture_traffic` was called before, and so do :meth:`start_node` and :meth:`restart`."""
        await asyncio.gather(*(self._start_capture(name) for name in (self.node_names if nodes is None else nodes)))

    async def _start_capture(self, node: str) -> None:
        """(Re)start ``node``'s capture helper in its current network namespace, and wait until it listens."""
        if self._capture_dir is None:
            return
        directory = self._capture_dir
        directory.mkdir(parents=True, exist_ok=True)
        old = self._captures.pop(node, None)
        if old is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(netem.stop_capture, old)
        number = self._capture_files.get(node, 0) + 1
        self._capture_files[node] = number

        def start() -> Any:
            client = self._docker()
            access = client.networks.get(compose.access_network_name(self.project))
            subnets = [str(c["Subnet"]) for c in (access.attrs.get("IPAM") or {}).get("Config") or [] if "Subnet" in c]
            return netem.start_capture(client, self.image, str(self._container(node).id), str(directory),
                                       f"{node}-{number}.pcap", subnets[0] if subnets else None,
                                       compose.run_labels(self.project) | {netem.HELPER_LABEL: node})

        helper = await asyncio.to_thread(start)
        self._captures[node] = helper

        def listening() -> bool | Pending:
            state = netem.capture_state(helper)
            if isinstance(state, str):
                raise RuntimeError(f"{node}: the traffic capture failed: {state[-500:]}")
            return True if state else Pending("tcpdump not listening yet")

        await poll(lambda: asyncio.to_thread(listening), 20.0, f"{node}'s traffic capture to start", interval=0.2)

    async def stop_capture(self) -> None:
        """Stop recording every node's traffic (until :meth:`capture_traffic` is called again)."""
        self._capture_dir = None
        await self._stop_captures()

    async def _stop_captures(self) -> None:
        captures, self._captures = self._captures, {}
        for helper in captures.values():
            with contextlib.suppress(Exception):
                await asyncio.to_thread(netem.stop_capture, helper)

    async def _require_netem(self) -> None:
        """Raise :class:`BackendUnsupported` when the host's kernel has no netem qdisc (probed once)."""
        if not self._netem_probed:
            self._netem_missing = await asyncio.to_thread(
                netem.netem_missing, self._docker(), self.image,
                compose.run_labels(self.project) | {netem.HELPER_LABEL: "probe"})
            self._netem_probed = True
        if self._netem_missing is not None:
            raise BackendUnsupported(
                "delay and jitter need the netem qdisc (CONFIG_NET_SCH_NETEM), which the Docker host's kernel "
                f"lacks (tc: {self._netem_missing}); loss (nftables) and bandwidth limits (htb) work, and the local "
                "backend's proxy does all of them")

    async def _reapply_netem(self) -> None:
        """After a node restarted or changed networks: its addresses changed, so every filter is rewritten."""
        if self._model.nodes or self._model.links:
            await self._apply_netem()

    async def _apply_netem(self) -> None:
        """Install in every running node's network namespace the effects of its links now (and clear the nodes
        that no longer have any), a few helper containers at a time."""
        containers = await asyncio.to_thread(self._netem_targets)
        addresses = {name: found[1] for name, found in containers.items()}
        limit = asyncio.Semaphore(API_CONCURRENCY)

        async def one(node: str, container_id: str) -> None:
            peers = {peer: (self._model.effect(node, peer), ips) for peer, ips in addresses.items() if peer != node}
            degraded = any(not effect.idle for effect, _ in peers.values())
            if not degraded and node not in self._netem_nodes:
                return
            script = netem.link_script(peers)
            async with limit:
                await asyncio.to_thread(netem.run_in_netns, self._docker(), self.image, container_id, script,
                                        compose.run_labels(self.project) | {netem.HELPER_LABEL: node})
            if degraded:
                self._netem_nodes.add(node)
            else:
                self._netem_nodes.discard(node)

        await asyncio.gather(*(one(node, found[0]) for node, found in containers.items()))

    def _netem_targets(self) -> dict[str, tuple[str, list[str]]]:
        """Running (or paused) node → (container id, its IPv4 addresses on every network but the access one)."""
        access = compose.access_network_name(self.project)
        targets = {}
        for container in run_containers(self._docker(), self.project, all_states=False):
            networks = (container.attrs.get("NetworkSettings") or {}).get("Networks") or {}
            ips = [str(settings["IPAddress"]) for name, settings in networks.items()
                   if name != access and (settings or {}).get("IPAddress")]
            targets[container.labels.get(compose.NODE_LABEL, "")] = (str(container.id), ips)
        return targets

    async def _drop_group_networks(self) -> None:
        groups, self._group_networks = self._group_networks, {}
        for name, nodes in groups.items():
            for node in nodes:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self._attach, name, node, False)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._remove_network, name)

    def _create_group_network(self, name: str) -> None:
        self._docker().networks.create(name, driver="bridge", internal=True, labels=compose.run_labels(self.project))

    def _attach(self, network: str, node: str, connect: bool) -> None:
        if connect:
            self._docker().networks.get(network).connect(self._container(node), aliases=[node])
        else:
            self._docker().networks.get(network).disconnect(self._container(node))

    def _remove_network(self, name: str) -> None:
        self._docker().networks.get(name).remove()

    async def exited_nodes(self, nodes: Iterable[str] | None = None) -> dict[str, str]:
        """Nodes that should run (started, not stopped or killed through this backend) whose container has
        stopped or is gone."""
        chosen = [name for name in (self.node_names if nodes is None else nodes) if name in self._wanted]
        if not chosen:
            return {}

        def look() -> dict[str, str]:
            found = {c.labels.get(compose.NODE_LABEL, ""): c for c in run_containers(self._docker(), self.project)}
            exited = {}
            for name in chosen:
                container = found.get(name)
                if container is None:
                    exited[name] = "its container is gone"
                elif container.status not in ("running", "paused", "restarting"):
                    exited[name] = f"container {container.status}: {container.attrs.get('Status', '?')}"
            return exited

        return await asyncio.to_thread(look)

    async def log_tails(self, lines: int, nodes: Iterable[str] | None = None) -> dict[str, str]:
        """The last ``lines`` lines of each node container's log (of the logs saved by :meth:`stop` when gone)."""
        from docker.errors import APIError, NotFound

        def read(node: str) -> str:
            try:
                data = self._container(node).logs(stdout=True, stderr=True, tail=lines)
            except (NotFound, APIError, DockerUnavailable):
                saved = self.saved_logs / f"{node}.log"
                data = saved.read_bytes() if saved.exists() else b""
            return "\n".join(bytes(data).decode(errors="replace").splitlines()[-lines:])

        chosen = list(self.node_names if nodes is None else nodes)
        texts = await asyncio.gather(*(asyncio.to_thread(read, node) for node in chosen))
        return dict(zip(chosen, texts, strict=True))

    def logs_location(self) -> str:
        """The command that shows a node's whole log."""
        return self._where_logs()

    def collect_logs(self, destination: Path) -> list[Path]:
        """Write every node container's log (stdout and stderr) to ``destination/<node>.log``.

        After :meth:`stop` the containers are gone; the logs it saved in ``workdir/logs`` are copied instead.
        """
        from docker.errors import NotFound

        destination.mkdir(parents=True, exist_ok=True)
        written = []
        for node in self.node_names:
            target = destination / f"{node}.log"
            try:
                data = self._container(node).logs(stdout=True, stderr=True)
            except (NotFound, DockerUnavailable):
                saved = self.saved_logs / f"{node}.log"
                if not saved.exists():
                    continue
                data = saved.read_bytes()
            target.write_bytes(data)
            written.append(target)
        return written

    @property
    def saved_logs(self) -> Path:
        """Where :meth:`stop` keeps every node's log before removing the containers."""
        return self.workdir / "logs"

    def _save_logs(self) -> None:
        from docker.errors import APIError, NotFound

        for node in self.node_names:
            try:
                data = self._container(node).logs(stdout=True, stderr=True)
            except (NotFound, APIError):
                continue
            self.saved_logs.mkdir(parents=True, exist_ok=True)
            (self.saved_logs / f"{node}.log").write_bytes(data)

    # --- helpers -----------------------------------------------------------------------------------

    def _docker(self) -> Any:
        if self._client is None:
            self._client = docker_client()
        return self._client

    def _container(self, node: str) -> Any:
        return self._docker().containers.get(self.container_name(node))

    def _read_port(self, node: str) -> int:
        port = self._port_or_none(node)
        if port is None:
            raise RuntimeError(f"{node} ({self.container_name(node)}) is not running: no published port")
        return port

    def _port_or_none(self, node: str) -> int | None:
        from docker.errors import NotFound

        try:
            port = published_port(self._container(node), self.node_plan(node).port)
        except NotFound:
            port = None
        if port is None:
            self._ports.pop(node, None)
        else:
            self._ports[node] = port
        return port

    def _states(self) -> dict[str, str]:
        """Container state (``running``, ``paused``, ``exited``, …) of every node of this run."""
        return {c.labels.get(compose.NODE_LABEL, ""): c.status for c in run_containers(self._docker(), self.project)}

    def _ids(self) -> dict[str, str]:
        if not self.server_ids:  # attached to a running federation: read the ids from the labels
            self.server_ids = {c.labels[compose.NODE_LABEL]: c.labels.get(compose.SERVER_ID_LABEL, "")
                               for c in run_containers(self._docker(), self.project)}
        return {name: self.server_ids[name] for name in self.node_names if name in self.server_ids}

    async def _act(self, node: str, action: Callable[[Any], object], *, forget_port: bool = True) -> None:
        await asyncio.to_thread(lambda: action(self._container(node)))
        if forget_port:
            self._ports.pop(node, None)

    async def _wait_state(self, node: str, status: str, timeout: float = 20.0) -> None:
        def reached() -> bool | Pending:
            current = str(self._container(node).status)
            return True if current == status else Pending(f"{node} is {current}")

        # Waiting for "running": a container that exits instead ends the wait at once.
        await poll(lambda: asyncio.to_thread(reached), timeout, f"{node} to be {status}",
                   self.diagnose([node]) if status == "running" else None)

    async def _create_volumes(self) -> None:
        """Create every node's labelled data volume (a few Docker API calls at a time)."""
        await create_volumes(self._docker(), self.project, self.plan)

    async def _create_identities(self, nodes: Iterable[nodeplan.NodePlan]) -> dict[str, dict[str, str]]:
        """Create the key of each of ``nodes`` in its volume and read it back: see :func:`create_identities`."""
        return await create_identities(self._docker(), self.image, self.project, nodes)

    def _compose(self, *args: str) -> None:
        command = [*compose.compose_command(), "--project-name", self.project, "--file", str(self.compose_file),
                   *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False,
                                cwd=self.workdir)
        with (self.workdir / "compose.log").open("a") as log:
            log.write(f"$ {' '.join(command)}\n{result.stdout}{result.stderr}\n")
        if result.returncode != 0:
            raise RuntimeError(f"`{' '.join(command)}` failed ({result.returncode}): "
                               f"{(result.stderr or result.stdout).strip()[-2000:]}")

    def _where_logs(self) -> str:
        return f"docker logs {self.container_name(self.node_names[0])} (and the other {self.project}-* containers)"


def _node_order(name: str) -> tuple[int, int, str]:
    """Sort key: introducers before peers, then by number (peer2 before peer10)."""
    role = 0 if name.startswith("introducer") else 1
    digits = "".join(ch for ch in name if ch.isdigit())
    return role, int(digits) if digits else 0, name


