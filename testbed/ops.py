"""Federation commands of ``socp-testbed``: ``up``, ``ps``, ``url``, ``logs``, ``down`` (``make up`` and friends).

They manage one long-lived federation, the compose project ``socp``, whose files live in
``build/federation/`` (compose file, bootstrap file, ``cluster.json``, and ``users/`` for the keys of
``make chat`` users). Everything else is read back from Docker (labels, published ports) and from the
nodes' ``/healthz``, so each command works in a fresh process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from socp.settings import FEDERATION_TIMINGS
from testbed import compose
from testbed.backend import ClusterSpec, probe_health
from testbed.waiting import Pending, WaitFailed, WaitTimeout, poll

PROJECT = compose.FEDERATION_PROJECT
DEFAULT_WORKDIR = Path("build/federation")
CLIENT = ".venv/bin/socp-client"
HEALTHCHECK_INTERVAL = 10.0
"""Docker HEALTHCHECK period of the federation's containers: ``make ps`` shows "healthy" soon after ``up``,
while 30 idle containers spend well under a core on it."""


def register(subparsers: Any) -> None:
    """Add ``up``, ``ps``, ``url``, ``logs`` and ``down`` to the ``socp-testbed`` command line."""
    def workdir_option(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                            help=f"where the federation's files are kept (default {DEFAULT_WORKDIR})")

    up = subparsers.add_parser("up", help="start (or replace) the federation in containers, wait until healthy",
                               description="Start the `socp` federation (an introducer or three, and N peers, "
                                           "each in its own container), wait until it is healthy and fully "
                                           "meshed, and print how to connect.")
    up.add_argument("--peers", type=_count, default=3, help="number of peers (default 3)")
    up.add_argument("--introducers", type=int, choices=(1, 3), default=1, help="number of introducers (default 1)")
    timings = FEDERATION_TIMINGS
    up.add_argument("--heartbeat-interval", type=_seconds, default=timings.heartbeat_interval, metavar="S",
                    help="HEARTBEAT period on server links (default %(default)g)")
    up.add_argument("--peer-timeout", type=_seconds, default=timings.peer_timeout, metavar="S",
                    help="silence after which a server link is dead (default %(default)g)")
    up.add_argument("--presence-sync-interval", type=_seconds, default=timings.presence_sync_interval, metavar="S",
                    help="SERVER_PRESENCE_SYNC period (default %(default)g)")
    up.add_argument("--timeout", type=_seconds, default=180.0, metavar="S",
                    help="give up when not healthy after this long (default 180)")
    up.add_argument("--interop", action="store_true",
                    help="every node runs the interop profile (--interop, docs/INTEROP.md): other SOCP "
                         "implementations can join; never for production")
    workdir_option(up)
    up.set_defaults(func=cmd_up)

    ps = subparsers.add_parser("ps", help="the federation's nodes: state, health, server id, URL")
    workdir_option(ps)
    ps.set_defaults(func=cmd_ps)

    url = subparsers.add_parser("url", help="print a node's WebSocket URL on 127.0.0.1 (for socp-client)")
    url.add_argument("node", help="node name, e.g. peer2")
    url.set_defaults(func=cmd_url)

    logs = subparsers.add_parser("logs", help="print the logs of one node or of every node")
    logs.add_argument("node", nargs="?", help="node name (default: every node)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C to stop)")
    logs.add_argument("--tail", type=int, default=None, metavar="N", help="only the last N lines of each node")
    workdir_option(logs)
    logs.set_defaults(func=cmd_logs)

    down = subparsers.add_parser("down", help="remove the federation's containers, network and volumes")
    workdir_option(down)
    down.set_defaults(func=cmd_down)


def cmd_up(args: argparse.Namespace) -> int:
    """``up``: replace any running ``socp`` federation with a new one and wait until it is healthy."""
    from testbed.docker_backend import DockerCluster, DockerUnavailable, docker_client, remove_run, require_image

    try:
        timings = dataclasses.replace(FEDERATION_TIMINGS, heartbeat_interval=args.heartbeat_interval,
                                      peer_timeout=args.peer_timeout,
                                      presence_sync_interval=args.presence_sync_interval)
    except ValueError as exc:
        return _fail(f"bad timers: {exc}")
    spec = ClusterSpec(peers=args.peers, introducers=args.introducers, timings=timings, interop=args.interop)
    try:
        client = docker_client()
        cluster = DockerCluster(args.workdir, spec, project=PROJECT, healthcheck_interval=HEALTHCHECK_INTERVAL,
                                progress=lambda line: print(f"  {line}"))
        require_image(client, cluster.image)
    except DockerUnavailable as exc:
        return _fail(str(exc))
    print(f"socp federation: {spec.introducers} introducer{'s' if spec.introducers > 1 else ''}, "
          f"{spec.peers} peers, image {cluster.image}")
    if _run_objects(client):
        print("  removing the running federation first")
        _compose_down(args.workdir)
        asyncio.run(remove_run(client, PROJECT))
    try:
        asyncio.run(cluster.start(args.timeout))
    except (WaitFailed, DockerUnavailable, RuntimeError) as exc:
        logs = cluster.collect_logs(args.workdir / "logs")
        _fail(f"the federation did not come up: {exc}")
        print((f"node logs saved in {logs[0].parent}/; " if logs else "")
              + "inspect with `make ps` and `make logs NODE=...`, remove with `make down`", file=sys.stderr)
        return 1
    times = cluster.timings
    print(f"  up in {times['total']:.1f} s: keys {times['keys']:.1f} s, containers {times['compose_up']:.1f} s, "
          f"healthy full mesh {times['healthy']:.1f} s")
    try:
        waited = asyncio.run(_await_container_health(cluster, args.timeout))
        print(f"  docker HEALTHCHECK healthy on every container after {waited:.1f} s more")
    except WaitTimeout as exc:
        print(f"  warning: {exc}", file=sys.stderr)
    print()
    return _show(args.workdir)


def cmd_ps(args: argparse.Namespace) -> int:
    """``ps``: the table of nodes, and how to connect."""
    return _show(args.workdir)


def cmd_url(args: argparse.Namespace) -> int:
    """``url NODE``: print the node's ``ws://127.0.0.1:PORT``."""
    from testbed.docker_backend import DockerUnavailable, container_port, docker_client, published_port

    try:
        containers = _containers(docker_client())
    except DockerUnavailable as exc:
        return _fail(str(exc))
    for node, container in containers:
        if node == args.node:
            port = published_port(container, container_port(container))
            if port is None:
                return _fail(f"{node} is {container.status}: it has no published port (see `make ps`)")
            print(f"ws://127.0.0.1:{port}")
            return 0
    names = ", ".join(node for node, _ in containers)
    return _fail(f"no node {args.node!r} in the federation" + (f" (nodes: {names})" if names else
                                                                  "; start one with `make up`"))


def cmd_logs(args: argparse.Namespace) -> int:
    """``logs [NODE]``: the container logs of one node, or of every node one after the other."""
    from testbed.docker_backend import DockerUnavailable, docker_client

    try:
        containers = _containers(docker_client())
    except DockerUnavailable as exc:
        return _fail(str(exc))
    if not containers:
        return _fail("no federation is running; start one with `make up`")
    chosen = [(node, c) for node, c in containers if args.node in (None, node)]
    if not chosen:
        return _fail(f"no node {args.node!r}; nodes: {', '.join(node for node, _ in containers)}")
    if args.follow:
        compose_file = args.workdir / "docker-compose.yaml"
        if not compose_file.exists():
            return _fail(f"{compose_file} is missing; `logs --follow` needs the federation's compose file")
        command = [*compose.compose_command(), "--project-name", PROJECT, "--file", str(compose_file), "logs",
                   "--follow", *(["--tail", str(args.tail)] if args.tail is not None else []),
                   *([compose.container_name(PROJECT, args.node)] if args.node else [])]
        try:
            return subprocess.call(command)
        except KeyboardInterrupt:
            return 0
    for node, container in chosen:
        if len(chosen) > 1:
            print(f"==> {node} ({container.name}, {container.status}) <==", flush=True)
        data = container.logs(stdout=True, stderr=True, tail="all" if args.tail is None else args.tail)
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    """``down``: remove this federation's containers, network and volumes (keeps ``users/``)."""
    from testbed.docker_backend import DockerUnavailable, docker_client, remove_run

    try:
        client = docker_client()
    except DockerUnavailable as exc:
        return _fail(str(exc))
    before = _run_objects(client)
    if not before:
        print("no federation to remove")
        return 0
    _compose_down(args.workdir)
    asyncio.run(remove_run(client, PROJECT))
    left = _run_objects(client)
    print("removed " + ", ".join(f"{count} {kind}" for kind, count in before.items()))
    if left:
        return _fail("still there: " + ", ".join(f"{count} {kind}" for kind, count in left.items()))
    return 0


async def _await_container_health(cluster: Any, timeout: float) -> float:
    """Wait until Docker's own HEALTHCHECK reports every container healthy (``make ps`` then agrees)."""
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def all_healthy() -> float | Pending:
        states = {node: await cluster.container_health(node) for node in cluster.node_names}
        if all(state == "healthy" for state in states.values()):
            return loop.time() - start
        return Pending(f"docker HEALTHCHECK states: {states}")

    waited: float = await poll(all_healthy, timeout, "docker HEALTHCHECK to be healthy on every container",
                               cluster.diagnose(hint="`make logs NODE=...` shows a node's whole log"), interval=0.5)
    return waited


def render_table(rows: Sequence[Sequence[str]]) -> str:
    """``rows`` (the first is the header) as aligned columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def _show(workdir: Path) -> int:
    """Print the node table and the connection hints; 1 when a node is not healthy."""
    from testbed.docker_backend import DockerUnavailable, container_port, docker_client, published_port

    try:
        containers = _containers(docker_client())
    except DockerUnavailable as exc:
        return _fail(str(exc))
    if not containers:
        print("no federation is running; start one with `make up` (PEERS=N INTRODUCERS=1|3)")
        return 0
    ports = [published_port(c, container_port(c)) for _, c in containers]

    async def probe_all() -> list[tuple[int, dict[str, object]]]:
        async def probe(port: int | None) -> tuple[int, dict[str, object]]:
            return await probe_health(port) if port is not None else (0, {})
        return list(await asyncio.gather(*(probe(port) for port in ports)))

    answers = asyncio.run(probe_all())
    rows = [["NODE", "ROLE", "CONTAINER", "HEALTHZ", "LINKS", "USERS", "SERVER ID", "URL"]]
    unhealthy = 0
    for (node, container), port, (status, body) in zip(containers, ports, answers, strict=True):
        docker_health = ((container.attrs.get("State") or {}).get("Health") or {}).get("Status")
        state = container.status + (f" ({docker_health})" if docker_health and container.status == "running" else "")
        linked = body.get("linked_servers")
        links = f"{len(linked)}/{len(containers) - 1}" if isinstance(linked, list) else "-"
        users = str(body.get("local_users", "-"))
        server_id = str(body.get("server_id") or container.labels.get(compose.SERVER_ID_LABEL, "?"))
        if status != 200:
            unhealthy += 1
        rows.append([node, container.labels.get(compose.ROLE_LABEL, "?"), state,
                     {200: "ok", 0: "down"}.get(status, str(status)), links, users, server_id,
                     f"ws://127.0.0.1:{port}" if port else "-"])
    print(render_table(rows))
    peers = [node for node, c in containers if c.labels.get(compose.ROLE_LABEL) == "peer"]
    if peers:
        example = peers[1] if len(peers) > 1 else peers[0]
        example_port = ports[[node for node, _ in containers].index(example)]
        users_dir = workdir / "users"
        print()
        print(f"Chat on {example} (your keys stay in {users_dir}/):")
        print(f"  make chat NODE={example} USER=alice")
        if example_port:
            print(f"  {CLIENT} --user alice --server ws://127.0.0.1:{example_port} "
                  f"--key-dir {shlex.quote(str(users_dir))}")
    print("More: make ps | make logs NODE=peer1 | make down")
    if unhealthy:
        print(f"{unhealthy} node{'s are' if unhealthy > 1 else ' is'} not healthy", file=sys.stderr)
        return 1
    return 0


def _containers(client: Any) -> list[tuple[str, Any]]:
    """``(node name, container)`` of the federation, introducers first."""
    from testbed.docker_backend import run_containers

    return [(c.labels.get(compose.NODE_LABEL, c.name), c) for c in run_containers(client, PROJECT)]


def _run_objects(client: Any) -> dict[str, int]:
    """How many containers, networks and volumes the federation has (only the kinds present)."""
    label = {"label": [f"{compose.RUN_LABEL}={PROJECT}"]}
    counts = {"containers": len(client.containers.list(all=True, filters=label)),
              "networks": len(client.networks.list(filters=label)),
              "volumes": len(client.volumes.list(filters=label))}
    return {kind: count for kind, count in counts.items() if count}


def _compose_down(workdir: Path) -> None:
    """``compose down`` of the federation when its compose file is still there (errors ignored: a sweep follows)."""
    compose_file = workdir / "docker-compose.yaml"
    if not compose_file.exists():
        return
    with contextlib.suppress(OSError, RuntimeError, subprocess.SubprocessError):
        subprocess.run([*compose.compose_command(), "--project-name", PROJECT, "--file", str(compose_file), "down",
                        "--volumes", "--remove-orphans", "--timeout", "5"],
                       capture_output=True, timeout=120, check=False)


def _fail(message: str) -> int:
    print(f"socp-testbed: {message}", file=sys.stderr)
    return 1


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m testbed.ops``: these commands alone, without the scenario runner."""
    parser = argparse.ArgumentParser(prog="python -m testbed.ops", description="Manage the `socp` federation.")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
