"""The ``swarm`` cluster backend: every node a service of a Docker Swarm stack.

Lifecycle of a run (stack ``socp-sw-<8 hex>``, one per run, labelled ``org.socp-testbed.run=<stack>``):

1. the engine must be a swarm manager. It is never put in swarm mode silently: :class:`SwarmUnavailable` says
   how, unless the caller opted in (``init_swarm=True``, ``--init-swarm``, ``SOCP_INIT_SWARM=1``), which makes a
   one-node swarm listening on 127.0.0.1 and marks the swarm node with :data:`SWARM_MARKER_LABEL` (so that
   :func:`leave_swarm` only ever undoes a swarm the testbed made);
2. the introducers' volumes and keys on this host (one-off containers, as the docker backend does); peers make
   their own key at first start and get their server id from the testbed (``--id``);
3. ``bootstrap.yaml`` (a swarm config in the stack) and ``stack.yaml`` from ``compose/stack.template.yaml``
   (:mod:`testbed.stack`); ``docker stack deploy --resolve-image never`` with only the first introducer
   scaled to one replica; once it serves, every other service is scaled to one;
4. the Docker SDK for the rest: a node's address is its task's published port (``mode: host``) on the host
   running the task (127.0.0.1 for this host), health from ``/healthz`` there.

Faults act on the task's container, so they need the task on this host (always true on a one-node swarm;
otherwise :class:`~testbed.backend.BackendUnsupported`): ``kill`` SIGKILLs it and Swarm starts a new task
after the restart delay; ``stop_node``/``start_node`` scale the service to 0 and back; ``pause`` freezes the
container; ``partition`` takes the container's interface on the stack network down from a helper container
sharing its network namespace (``NET_ADMIN``), and ``heal`` brings it up: a ``docker network disconnect`` would
lose the node's DNS name for good on reconnect (Swarm registers it only when the task starts).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from testbed import compose, nodeplan, stack
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
from testbed.docker_backend import (
    DockerUnavailable,
    create_identities,
    create_volumes,
    docker_client,
    node_image,
    require_image,
)
from testbed.waiting import Pending, poll

INIT_ENV = "SOCP_INIT_SWARM"
"""Set to 1 to let the swarm backend make a one-node swarm when the engine is not in swarm mode."""
SWARM_MARKER_LABEL = "org.socp-testbed.swarm-created-by"
"""Label on the swarm node of a swarm the testbed initialised (value ``socp-testbed``)."""
STACK_LABEL = "com.docker.stack.namespace"
"""The label ``docker stack deploy`` puts on every object of a stack."""
RESTART_DELAY = 5.0
"""Seconds Swarm waits before it replaces a task that died (a killed node comes back after this)."""
ENDED_STATES = frozenset({"complete", "failed", "shutdown", "rejected", "orphaned", "remove"})
"""Swarm task states after which the task never runs again."""
HOW_TO_ENABLE = ("the Docker engine is not in swarm mode; make a one-node swarm with "
                 "`docker swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:2377`, or let the testbed "
                 f"do it: `--init-swarm`, `make up BACKEND=swarm INIT_SWARM=1` or {INIT_ENV}=1 (docs/SWARM.md)")

_LINK_SCRIPT = """
import fcntl, socket, struct, sys
address, state = sys.argv[1], sys.argv[2]
probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _, name in socket.if_nameindex():
    try:
        raw = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", name.encode()))  # SIOCGIFADDR
    except OSError:
        continue
    if socket.inet_ntoa(raw[20:24]) == address:
        break
else:
    sys.exit(f"no interface has the address {address}")
request = struct.pack("16sH", name.encode(), 0)
flags = struct.unpack("16sH", fcntl.ioctl(probe.fileno(), 0x8913, request))[1]  # SIOCGIFFLAGS
flags = flags & ~1 if state == "down" else flags | 1  # IFF_UP
fcntl.ioctl(probe.fileno(), 0x8914, struct.pack("16sH", name.encode(), flags))  # SIOCSIFFLAGS
print(name, state)
"""
"""Run in a helper container sharing a node's network namespace: set the interface holding an address up/down."""


class SwarmUnavailable(DockerUnavailable):
    """The engine is not a swarm manager (or Docker cannot be used); the message says how to fix it."""


def swarm_info(client: Any) -> dict[str, Any]:
    """The engine's ``Swarm`` section of ``docker info`` (``LocalNodeState``, ``ControlAvailable``, ``NodeID``)."""
    info: dict[str, Any] = client.info().get("Swarm") or {}
    return info


def require_swarm(client: Any, *, init: bool = False) -> bool:
    """Raise :class:`SwarmUnavailable` unless the engine is a swarm manager; with ``init``, make a one-node
    swarm first when the engine is in no swarm. Returns whether a swarm was made now."""
    info = swarm_info(client)
    state = info.get("LocalNodeState")
    if state == "active":
        if not info.get("ControlAvailable"):
            raise SwarmUnavailable("this engine is a swarm worker: run the testbed on a manager node")
        return False
    if state != "inactive" or not init:
        raise SwarmUnavailable(HOW_TO_ENABLE if state == "inactive" else
                               f"the engine's swarm is {state!r}: see `docker info` (docs/SWARM.md)")
    init_swarm(client)
    return True


def init_swarm(client: Any) -> str:
    """Make a one-node swarm on 127.0.0.1 and mark its node with :data:`SWARM_MARKER_LABEL`; returns the node id.

    Only ever called on the user's explicit request; the engine keeps running its other containers.
    """
    client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
    node_id = str(swarm_info(client).get("NodeID"))
    node = client.nodes.get(node_id)
    spec = dict(node.attrs["Spec"])
    spec["Labels"] = {**(spec.get("Labels") or {}), SWARM_MARKER_LABEL: compose.PROJECT_VALUE}
    node.update(spec)
    return node_id


def swarm_made_by_testbed(client: Any) -> bool:
    """Whether this engine's swarm node carries :data:`SWARM_MARKER_LABEL` (the testbed made the swarm)."""
    info = swarm_info(client)
    if info.get("LocalNodeState") != "active" or not info.get("ControlAvailable"):
        return False
    labels = client.nodes.get(info.get("NodeID")).attrs.get("Spec", {}).get("Labels") or {}
    return labels.get(SWARM_MARKER_LABEL) == compose.PROJECT_VALUE


def leave_swarm(client: Any) -> str:
    """Leave the swarm if (and only if) the testbed made it and no service runs on it; says what it did."""
    if swarm_info(client).get("LocalNodeState") != "active":
        return "the engine is in no swarm"
    if not swarm_made_by_testbed(client):
        return "the swarm was not made by socp-testbed: left as it is"
    services = client.services.list()
    if services:
        return f"the swarm still runs {len(services)} services: left as it is"
    client.swarm.leave(force=True)
    return "left the one-node swarm socp-testbed had made"


def swarm_problem() -> str | None:
    """Why the swarm backend cannot run here (daemon, image, docker CLI, swarm mode), or None when it can.

    An engine in no swarm is fine when ``$SOCP_INIT_SWARM`` is 1 (the backend will make one).
    """
    try:
        client = docker_client()
        require_image(client, node_image())
        if shutil.which("docker") is None:
            return "the docker CLI is not installed (`docker stack deploy` needs it)"
        state = swarm_info(client).get("LocalNodeState")
        if not (state == "inactive" and init_allowed()):
            require_swarm(client)
    except DockerUnavailable as exc:
        return str(exc)
    return None


def init_allowed() -> bool:
    """Whether ``$SOCP_INIT_SWARM`` is 1 (the user allowed making a one-node swarm)."""
    return os.environ.get(INIT_ENV, "").strip() == "1"


def stack_objects(client: Any, name: str) -> dict[str, int]:
    """How many services, containers, networks, configs and volumes of stack ``name`` exist on this host."""
    run = {"label": [f"{compose.RUN_LABEL}={name}"]}
    swarm = _swarm_active(client)
    # Sparse listings: only the ids are needed, and a container gone meanwhile cannot fail an inspection.
    containers = {c.id for c in client.containers.list(all=True, sparse=True,
                                                       filters={"label": [f"{STACK_LABEL}={name}"]})}
    containers |= {c.id for c in client.containers.list(all=True, sparse=True, filters=run)}
    counts = {"services": len(client.services.list(filters=run)) if swarm else 0, "containers": len(containers),
              "networks": len(client.networks.list(filters=run)),
              "configs": len(client.configs.list(filters=run)) if swarm else 0,
              "volumes": len(client.volumes.list(filters=run))}
    return {kind: count for kind, count in counts.items() if count}


def _swarm_active(client: Any) -> bool:
    """Whether the engine is a swarm manager (services and configs can be listed)."""
    info = swarm_info(client)
    return info.get("LocalNodeState") == "active" and bool(info.get("ControlAvailable"))


async def remove_stack(client: Any, name: str, timeout: float = 60.0) -> list[str]:
    """Remove every service, container, network, config and volume of stack ``name`` (run label), and only
    those; volumes on other swarm hosts are left (docs/SWARM.md). Returns what went."""
    from docker.errors import APIError, NotFound

    run = {"label": [f"{compose.RUN_LABEL}={name}"]}
    removed: list[str] = []
    swarm = await asyncio.to_thread(_swarm_active, client)  # not a swarm (any more): only local objects to sweep

    def remove_services() -> None:
        for service in client.services.list(filters=run) if swarm else []:
            with contextlib.suppress(NotFound):
                service.remove()
                removed.append(f"service {service.name}")

    await asyncio.to_thread(remove_services)

    def containers_gone() -> bool | Pending:
        left = client.containers.list(all=True, filters={"label": [f"{STACK_LABEL}={name}"]}) \
            + client.containers.list(all=True, filters=run)
        for container in left:  # keygen leftovers, and tasks Swarm is slow to clean
            with contextlib.suppress(NotFound, APIError):
                container.remove(force=True, v=False)
        return True if not left else Pending(f"{len(left)} containers of {name} still there")

    await poll(lambda: asyncio.to_thread(containers_gone), timeout, f"the containers of stack {name} to go",
               interval=0.5)

    def rest_gone() -> bool | Pending:
        problems = []
        kinds = [("network", client.networks), ("config", client.configs), ("volume", client.volumes)]
        for kind, listing in kinds if swarm else [kinds[0], kinds[2]]:
            for item in listing.list(filters=run):
                try:
                    item.remove(**({"force": True} if kind == "volume" else {}))
                    removed.append(f"{kind} {item.name}")
                except NotFound:
                    pass
                except APIError as exc:  # a network or volume still in use by a container being removed
                    problems.append(f"{kind} {item.name}: {exc}")
            # Swarm removes an overlay network a little after it says so: wait until it is really gone.
            problems += [f"{kind} {item.name} still listed" for item in listing.list(filters=run)]
        return Pending("; ".join(problems)) if problems else True

    await poll(lambda: asyncio.to_thread(rest_gone), timeout, f"the networks, configs and volumes of {name} to go",
               interval=0.5)
    return removed


class SwarmCluster(ClusterBackend):
    """The ``swarm`` backend: a Docker Swarm stack, one service per node, driven by the CLI and the SDK.

    ``stack`` defaults to a fresh ``socp-sw-<8 hex>``; ``placement`` pins nodes to swarm hosts (node →
    hostname; the others run on this host); ``init_swarm`` (default ``$SOCP_INIT_SWARM``) allows making a
    one-node swarm. ``prepare`` is ignored: keys are made in the volumes.
    """

    name = "swarm"
    start_timeout = 180.0

    def __init__(self, workdir: Path, spec: ClusterSpec | None = None, *, prepare: Prepare | None = None,
                 stack_name: str | None = None, image: str | None = None,
                 placement: Mapping[str, str] | None = None, init_swarm: bool | None = None,
                 restart_delay: float = RESTART_DELAY,
                 progress: Callable[[str], None] | None = None) -> None:
        super().__init__(workdir.absolute(), spec, prepare=prepare)
        self.stack = stack_name or stack.new_stack_name()
        self.image = image or node_image()
        self.placement = dict(placement or {})
        self.init_swarm = init_allowed() if init_swarm is None else init_swarm
        self.restart_delay = restart_delay
        self.progress = progress or (lambda line: None)
        self.stack_file = self.workdir / "stack.yaml"
        self.bootstrap_file = self.workdir / "bootstrap.yaml"
        self.server_ids: dict[str, str] = {}
        self.timings: dict[str, float] = {}
        """Seconds taken by each phase of :meth:`start` (``keys``, ``deploy``, ``healthy``, ``total``)."""
        self.swarm_created = False
        """Whether :meth:`start` made the swarm (left in place: see :func:`leave_swarm`)."""
        self._client: Any = None
        self._local_node = ""
        self._addresses: dict[str, str] = {}
        self._partitioned: set[str] = set()
        self._wanted: set[str] = set()
        """Nodes that should be running: started, and not stopped or killed through this backend since."""

    # --- names -------------------------------------------------------------------------------------

    @property
    def network(self) -> str:
        """The stack's overlay network (server links)."""
        return compose.network_name(self.stack)

    def service_name(self, node: str) -> str:
        """``node``'s service, ``<stack>_<node>``."""
        return stack.service_name(self.stack, self.node_plan(node).name)

    def url(self, node: str) -> str:
        """``ws://HOST:PORT`` of ``node``'s running task (127.0.0.1 when it runs on this host)."""
        address = self._addresses.get(node)
        if address is None:
            found = self._task_address(node)
            if found is None:
                raise RuntimeError(f"{node} ({self.service_name(node)}) has no running task with a published port")
            address = found
        return f"ws://{address}"

    def task_states(self, node: str) -> list[str]:
        """The states of the node's tasks that Swarm wants running (``running``, ``starting``, …)."""
        return sorted({str(task.get("Status", {}).get("State")) for task in self._tasks(node)
                       if task.get("DesiredState") == "running"})

    # --- whole federation --------------------------------------------------------------------------

    async def start(self, timeout: float | None = None) -> None:
        """Make the introducers' keys, deploy the stack (the seed first), wait for a healthy full mesh."""
        timeout = self.start_timeout if timeout is None else timeout
        began = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        client = self._docker()
        require_image(client, self.image)
        self.swarm_created = await asyncio.to_thread(require_swarm, client, init=self.init_swarm)
        if self.swarm_created:
            self.progress("made a one-node swarm on 127.0.0.1 (marked; `socp-testbed swarm leave` undoes it)")
        self._local_node = str(swarm_info(client).get("NodeID"))
        local_host = str(client.nodes.get(self._local_node).attrs["Description"]["Hostname"])
        stack.check_placement(self.spec, self.placement, local_host)

        introducers = [node for node in self.plan if node.introducer]
        self.progress(f"creating the introducers' volumes and keys ({len(introducers)}); "
                      f"each peer makes its own key at first start")
        step = time.monotonic()
        await create_volumes(client, self.stack, introducers)
        identities = await create_identities(client, self.image, self.stack, introducers)
        self.server_ids = {node.name: identities[node.name]["server_id"] if node.introducer
                           else str(uuid.uuid4()) for node in self.plan}
        self.timings["keys"] = time.monotonic() - step

        nodeplan.write_bootstrap(self.bootstrap_file, [(node.name, node.port, identities[node.name]["pubkey"])
                                                      for node in introducers])
        seed = self.plan[0].name
        stack.write_stack(self.stack_file, stack.render_stack(
            self.stack, self.spec, image=self.image, bootstrap_file=self.bootstrap_file, local_host=local_host,
            server_ids=self.server_ids, placement=self.placement, running={seed},
            restart_delay=self.restart_delay, join_token=self.join_token))
        (self.workdir / "cluster.json").write_text(json.dumps(
            {"backend": self.name, "stack": self.stack, "image": self.image, "swarm_created": self.swarm_created,
             "nodes": [{"name": node.name, "role": node.role, "service": self.service_name(node.name),
                        "port": node.port, "server_id": self.server_ids[node.name],
                        "host": self.placement.get(node.name, local_host), **identities.get(node.name, {})}
                       for node in self.plan]}, indent=2) + "\n")

        # The first introducer is the seed: it must serve before anyone joins (see the docker backend).
        self.progress(f"deploying stack {self.stack} ({len(self.plan)} services): {seed} first")
        step = time.monotonic()
        await asyncio.to_thread(self._cli, "stack", "deploy", "--resolve-image", "never", "--prune",
                                "--compose-file", str(self.stack_file), self.stack)
        self._wanted = {seed}
        await wait_mesh_healthy({seed: self.server_ids[seed]}, self.health, max(5.0, timeout / 2),
                                self.diagnose([seed], MESH_HINT))
        self.timings["seed"] = time.monotonic() - step
        others = [name for name in self.node_names if name != seed]
        await asyncio.gather(*(asyncio.to_thread(self._scale, name, 1) for name in others))
        self._wanted = set(self.node_names)
        self.timings["deploy"] = time.monotonic() - step

        self.progress("waiting for every node to be healthy and fully meshed")
        remaining = max(5.0, timeout - (time.monotonic() - began))
        self.timings["healthy"] = await self.wait_healthy(remaining)
        self.timings["total"] = time.monotonic() - began

    async def stop(self) -> None:
        """Save the logs, then remove exactly this stack: services, containers, network, config, volumes."""
        try:
            client = self._docker()
        except DockerUnavailable:
            return  # nothing can have been created
        await asyncio.to_thread(self._save_logs)
        await remove_stack(client, self.stack)
        self._wanted.clear()
        self._addresses.clear()
        self._partitioned.clear()

    async def wait_healthy(self, timeout: float = 60.0) -> float:
        """Wait until every node that runs or should run, not partitioned, is healthy and linked to all the others."""
        running = await asyncio.to_thread(self._running_nodes)
        # A node scaled up a moment ago may have no running task yet: it is awaited too.
        live = {name: sid for name, sid in self._ids().items()
                if (name in running or name in self._wanted) and name not in self._partitioned}
        return await wait_mesh_healthy(live, self.health, timeout, self.diagnose(live, MESH_HINT))

    async def health(self, node: str) -> Health:
        """``GET /healthz`` of ``node`` through its task's published port; (0, {}) when unreachable."""
        return await self._probe(node, probe_health)

    async def status(self, node: str) -> Health:
        """``GET /status`` of ``node`` through its task's published port; (0, {}) when unreachable."""
        return await self._probe(node, probe_status)

    # --- one node ----------------------------------------------------------------------------------

    async def kill(self, node: str) -> None:
        """SIGKILL the task's container, as a crash would; Swarm starts a new task after the restart delay
        (:meth:`start_node` waits for it)."""
        self._wanted.discard(node)
        task = await asyncio.to_thread(self._running_task, node)
        container = await asyncio.to_thread(self._local_container, node, "kill")
        await asyncio.to_thread(container.kill)
        self._addresses.pop(node, None)
        killed = (task or {}).get("ID")

        def dead() -> bool | Pending:
            # Until Swarm has seen the task die, it still reports it running, on its old port.
            states = {t.get("ID"): t.get("Status", {}).get("State") for t in self._tasks(node)}
            state = states.get(killed)
            return True if state != "running" else Pending(f"swarm still reports {node}'s task {state}")

        await poll(lambda: asyncio.to_thread(dead), 20.0, f"swarm to see {node}'s task die")

    async def stop_node(self, node: str) -> None:
        """Scale the node's service to 0: Swarm stops its task gracefully (SIGTERM, SIGKILL after 5 s)."""
        self._wanted.discard(node)
        await asyncio.to_thread(self._scale, node, 0)
        self._addresses.pop(node, None)
        self._partitioned.discard(node)  # a new task starts with its interface up

        def gone() -> bool | Pending:
            return True if node not in self._running_nodes() else Pending(f"{node} still has a running task")

        await poll(lambda: asyncio.to_thread(gone), 30.0, f"{node}'s task to stop")

    async def start_node(self, node: str) -> None:
        """Scale the node's service to 1 (a no-op after :meth:`kill`: Swarm restarts it) and wait for a running
        task with a published port: same volume (identity, database), same name on the network."""
        self._wanted.add(node)
        await asyncio.to_thread(self._scale, node, 1)

        def published() -> str | Pending:
            address = self._task_address(node)
            return Pending(f"{node} has no running task yet") if address is None else address

        await poll(lambda: asyncio.to_thread(published), 60.0 + self.restart_delay, f"{node} to run again",
                   self.diagnose([node]), interval=0.25)

    async def restart(self, node: str) -> None:
        """Stop then start the node (a new task, on a new host port)."""
        await self.stop_node(node)
        await self.start_node(node)

    async def pause(self, node: str) -> None:
        """Freeze the task's container (cgroup freezer); its connections stay open (the stack has no
        HEALTHCHECK that would make Swarm replace a paused task)."""
        container = await asyncio.to_thread(self._local_container, node, "pause")
        await asyncio.to_thread(container.pause)

    async def unpause(self, node: str) -> None:
        """Resume a paused container."""
        container = await asyncio.to_thread(self._local_container, node, "unpause")
        await asyncio.to_thread(container.unpause)

    async def partition(self, node: str) -> None:
        """Take the node's interface on the stack network down: its server links die by timeout, its users stay
        connected (the published port goes through docker_gwbridge)."""
        if node in self._partitioned:
            return
        await asyncio.to_thread(self._set_link, node, "down")
        self._partitioned.add(node)

    async def heal(self, node: str) -> None:
        """Bring a partitioned node's interface on the stack network up again."""
        if node not in self._partitioned:
            return
        await asyncio.to_thread(self._set_link, node, "up")
        self._partitioned.discard(node)

    async def exited_nodes(self, nodes: Iterable[str] | None = None) -> dict[str, str]:
        """Nodes that should run (started, not stopped or killed through this backend) with no running task."""
        chosen = [name for name in (self.node_names if nodes is None else nodes) if name in self._wanted]
        if not chosen:
            return {}

        def look() -> dict[str, str]:
            exited = {}
            for name in chosen:
                tasks = self._tasks(name)
                if any(task.get("Status", {}).get("State") == "running" for task in tasks):
                    continue
                if any(task.get("Status", {}).get("State") not in ENDED_STATES for task in tasks):
                    continue  # a task Swarm is about to start (after a crash: the restart delay) is no exit
                latest = max(tasks, key=lambda task: str(task.get("UpdatedAt", "")), default=None)
                state = (latest or {}).get("Status", {})
                exited[name] = (f"task {state.get('State')}: {state.get('Err') or state.get('Message', '?')}"
                                if latest else "its service has no task")
            return exited

        return await asyncio.to_thread(look)

    async def log_tails(self, lines: int, nodes: Iterable[str] | None = None) -> dict[str, str]:
        """The last ``lines`` lines of each node's service log (every task of it), or of the log saved by
        :meth:`stop`."""
        chosen = list(self.node_names if nodes is None else nodes)

        def read(node: str) -> str:
            data = self._service_log(node, tail=lines)
            if data is None:
                saved = self.saved_logs / f"{node}.log"
                data = saved.read_bytes() if saved.exists() else b""
            return "\n".join(data.decode(errors="replace").splitlines()[-lines:])

        texts = await asyncio.gather(*(asyncio.to_thread(read, node) for node in chosen))
        return dict(zip(chosen, texts, strict=True))

    def logs_location(self) -> str:
        """The command that shows a node's whole log."""
        return f"docker service logs {self.service_name(self.node_names[0])} (and the other {self.stack}_* services)"

    def collect_logs(self, destination: Path) -> list[Path]:
        """Write every node's service log to ``destination/<node>.log`` (the copies :meth:`stop` saved once the
        stack is gone)."""
        destination.mkdir(parents=True, exist_ok=True)
        written = []
        for node in self.node_names:
            data = self._service_log(node)
            if data is None:
                saved = self.saved_logs / f"{node}.log"
                if not saved.exists():
                    continue
                data = saved.read_bytes()
            target = destination / f"{node}.log"
            target.write_bytes(data)
            written.append(target)
        return written

    @property
    def saved_logs(self) -> Path:
        """Where :meth:`stop` keeps every node's log before removing the stack."""
        return self.workdir / "logs"

    # --- helpers -----------------------------------------------------------------------------------

    def _docker(self) -> Any:
        if self._client is None:
            self._client = docker_client()
        return self._client

    def _service(self, node: str) -> Any:
        return self._docker().services.get(self.service_name(node))

    def _tasks(self, node: str) -> list[dict[str, Any]]:
        from docker.errors import NotFound

        try:
            return list(self._service(node).tasks())
        except NotFound:
            return []

    def _running_task(self, node: str) -> dict[str, Any] | None:
        for task in self._tasks(node):
            if task.get("Status", {}).get("State") == "running" and task.get("DesiredState") == "running":
                return task
        return None

    def _running_nodes(self) -> set[str]:
        return {name for name in self.node_names if self._running_task(name) is not None}

    def _task_address(self, node: str) -> str | None:
        """``HOST:PORT`` of the node's running task (None when it has none), remembered for :meth:`url`."""
        task = self._running_task(node)
        ports = ((task or {}).get("Status", {}).get("PortStatus") or {}).get("Ports") or []
        published = [port["PublishedPort"] for port in ports if port.get("TargetPort") == self.node_plan(node).port
                     and port.get("PublishedPort")]
        if task is None or not published:
            self._addresses.pop(node, None)
            return None
        address = f"{self._host_address(str(task.get('NodeID')))}:{published[0]}"
        self._addresses[node] = address
        return address

    def _host_address(self, node_id: str) -> str:
        if not self._local_node:
            self._local_node = str(swarm_info(self._docker()).get("NodeID"))
        if node_id == self._local_node:
            return "127.0.0.1"
        return str(self._docker().nodes.get(node_id).attrs.get("Status", {}).get("Addr"))

    async def _probe(self, node: str, probe: Callable[[int, str], Any]) -> Health:
        cached = self._addresses.get(node)
        address = cached if cached is not None else await asyncio.to_thread(self._task_address, node)
        if address is None:
            return 0, {}
        host, _, port = address.rpartition(":")
        answer: Health = await probe(int(port), host)
        if answer[0] == 0 and cached is not None:
            # Swarm replaced the task (a crash, a failed HEALTHCHECK): it has a new host port.
            fresh = await asyncio.to_thread(self._task_address, node)
            if fresh is not None and fresh != cached:
                host, _, port = fresh.rpartition(":")
                answer = await probe(int(port), host)
        return answer

    def _local_container(self, node: str, action: str) -> Any:
        """The container of ``node``'s running task; :class:`BackendUnsupported` when it runs on another host."""
        task = self._running_task(node)
        if task is None:
            raise RuntimeError(f"cannot {action} {node}: it has no running task")
        if str(task.get("NodeID")) != (self._local_node or str(swarm_info(self._docker()).get("NodeID"))):
            raise BackendUnsupported(f"cannot {action} {node}: its task runs on another swarm host, and the swarm "
                                     f"backend acts on containers through this host's engine only")
        container_id = task.get("Status", {}).get("ContainerStatus", {}).get("ContainerID")
        return self._docker().containers.get(container_id)

    def _set_link(self, node: str, state: str) -> None:
        """Set ``node``'s interface on the stack network ``state`` (up/down) from a helper container that shares
        the task's network namespace with NET_ADMIN (the node's own process has no such capability)."""
        from docker.errors import ContainerError

        container = self._local_container(node, "partition" if state == "down" else "heal")
        container.reload()
        network = (container.attrs.get("NetworkSettings", {}).get("Networks") or {}).get(self.network) or {}
        address = network.get("IPAddress")
        if not address:
            raise BackendUnsupported(f"cannot partition {node}: its container has no address on {self.network}")
        try:
            self._docker().containers.run(
                self.image, ["-c", _LINK_SCRIPT, address, state], entrypoint="python3", user="0", remove=True,
                network_mode=f"container:{container.id}", cap_add=["NET_ADMIN"],
                labels=compose.run_labels(self.stack), name=f"{self.stack}-{node}-link-{state}")
        except ContainerError as exc:
            raise BackendUnsupported(f"cannot set {node}'s link {state}: "
                                     f"{(exc.stderr or b'').decode(errors='replace').strip()}") from None

    def _scale(self, node: str, replicas: int) -> None:
        service = self._service(node)
        current = service.attrs.get("Spec", {}).get("Mode", {}).get("Replicated", {}).get("Replicas")
        if current != replicas:
            service.scale(replicas)

    def _ids(self) -> dict[str, str]:
        if not self.server_ids:  # attached to a running stack: read the ids from the labels
            for service in self._docker().services.list(filters={"label": [f"{compose.RUN_LABEL}={self.stack}"]}):
                labels = service.attrs.get("Spec", {}).get("Labels") or {}
                if compose.NODE_LABEL in labels:
                    self.server_ids[labels[compose.NODE_LABEL]] = labels.get(compose.SERVER_ID_LABEL, "")
        return {name: self.server_ids[name] for name in self.node_names if name in self.server_ids}

    def _service_log(self, node: str, tail: int | str = "all") -> bytes | None:
        """Every task's log of ``node``'s service, None when the service is gone or Docker cannot be reached."""
        from docker.errors import APIError, NotFound

        try:
            return b"".join(self._service(node).logs(stdout=True, stderr=True, tail=tail))
        except (NotFound, APIError, DockerUnavailable):
            return None

    def _save_logs(self) -> None:
        for node in self.node_names:
            data = self._service_log(node)
            if data:
                self.saved_logs.mkdir(parents=True, exist_ok=True)
                (self.saved_logs / f"{node}.log").write_bytes(data)

    def _cli(self, *args: str) -> None:
        command = ["docker", *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, cwd=self.workdir)
        with (self.workdir / "docker.log").open("a") as log:
            log.write(f"$ {' '.join(command)}\n{result.stdout}{result.stderr}\n")
        if result.returncode != 0:
            raise RuntimeError(f"`{' '.join(command)}` failed ({result.returncode}): "
                               f"{(result.stderr or result.stdout).strip()[-2000:]}")

