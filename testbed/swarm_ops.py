"""``socp-testbed swarm up|ps|down|init|leave`` (``make up/ps/down BACKEND=swarm``) and ``socp-testbed manifests``.

``swarm up`` starts a federation as a stack with a fresh name (``socp-sw-<8 hex>``, never the ``socp`` compose
project other users of the engine may have), recorded in ``<workdir>/cluster.json``; ``swarm down`` removes
exactly that stack. The engine is put in swarm mode only on request (``--init-swarm``, ``swarm init``), and
``swarm leave`` only leaves a swarm the testbed made (its node carries the marker label).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from socp.settings import FEDERATION_TIMINGS
from testbed import stack
from testbed.backend import ClusterSpec
from testbed.nodeplan import new_join_token
from testbed.ops import _count, _fail, _seconds, render_table
from testbed.waiting import WaitFailed

DEFAULT_WORKDIR = Path("build/swarm")
DEFAULT_K8S_OUT = Path("build/k8s/socp.yaml")


def register(subparsers: Any) -> None:
    """Add ``swarm`` (with ``up``, ``ps``, ``down``, ``init``, ``leave``) and ``manifests``."""
    swarm = subparsers.add_parser("swarm", help="the federation as a Docker Swarm stack (make up BACKEND=swarm)",
                                  description="Run the federation on Docker Swarm: one service per node.")
    commands = swarm.add_subparsers(dest="swarm_command", required=True)

    def workdir_option(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                            help=f"where the stack's files are kept (default {DEFAULT_WORKDIR})")

    up = commands.add_parser("up", help="deploy a new stack (replacing the one recorded in --workdir), wait "
                                        "until healthy")
    up.add_argument("--peers", type=_count, default=3, help="number of peers (default 3)")
    up.add_argument("--introducers", type=int, choices=(1, 3), default=1, help="number of introducers (default 1)")
    up.add_argument("--placement", default="", metavar="NODE=HOST,...|FILE",
                    help="pin nodes to swarm hosts (the others run on this host); a YAML file with "
                         "`placement: {peer1: host-a}` also works")
    up.add_argument("--init-swarm", action="store_true",
                    help="make a one-node swarm on 127.0.0.1 when the engine is in none (never done otherwise)")
    up.add_argument("--timeout", type=_seconds, default=180.0, metavar="S",
                    help="give up when not healthy after this long (default 180)")
    up.add_argument("--interop", action="store_true",
                    help="every node runs the interop profile (--interop, docs/INTEROP.md)")
    workdir_option(up)
    up.set_defaults(func=cmd_up)

    ps = commands.add_parser("ps", help="the stack's nodes: task state, health, links, URL")
    workdir_option(ps)
    ps.set_defaults(func=cmd_ps)

    down = commands.add_parser("down", help="remove exactly the stack recorded in --workdir")
    workdir_option(down)
    down.set_defaults(func=cmd_down)

    init = commands.add_parser("init", help="make a one-node swarm on 127.0.0.1 (marked as made by the testbed)")
    init.set_defaults(func=cmd_init)
    leave = commands.add_parser("leave", help="leave the swarm, only if the testbed made it and it runs nothing")
    leave.set_defaults(func=cmd_leave)

    manifests = subparsers.add_parser("manifests", help="write Kubernetes manifests of a federation",
                                      description="Write a StatefulSet-per-role layout of a federation for a "
                                                  "Kubernetes cluster (untested on a live cluster).")
    manifests.add_argument("--k8s", action="store_true", required=True, help="Kubernetes (the only kind)")
    manifests.add_argument("--peers", type=_count, default=3, help="number of peers (default 3)")
    manifests.add_argument("--introducers", type=int, choices=(1, 3), default=1, help="number of introducers")
    manifests.add_argument("--image", default="socp-node:latest", help="node image as the cluster can pull it")
    manifests.add_argument("--namespace", default="socp", help="namespace (default socp)")
    manifests.add_argument("--storage", default="1Gi", help="each node's PersistentVolumeClaim size (default 1Gi)")
    manifests.add_argument("--out", type=Path, default=DEFAULT_K8S_OUT, help=f"file to write ({DEFAULT_K8S_OUT})")
    manifests.add_argument("--interop", action="store_true",
                           help="every node runs the interop profile (--interop, docs/INTEROP.md)")
    manifests.set_defaults(func=cmd_manifests)


def cmd_up(args: argparse.Namespace) -> int:
    """``swarm up``: remove the stack recorded in the workdir, deploy a new one, wait until it is healthy."""
    from testbed.docker_backend import DockerUnavailable, docker_client
    from testbed.swarm_backend import SwarmCluster

    try:
        placement = stack.load_placement(args.placement) if args.placement else {}
    except (ValueError, OSError) as exc:
        return _fail(f"bad --placement: {exc}")
    spec = ClusterSpec(peers=args.peers, introducers=args.introducers, timings=FEDERATION_TIMINGS,
                       interop=args.interop)
    try:
        client = docker_client()
    except DockerUnavailable as exc:
        return _fail(str(exc))
    previous = _recorded_stack(args.workdir)
    if previous:
        print(f"  removing the stack made before, {previous}")
        _remove(client, previous)
    cluster = SwarmCluster(args.workdir, spec, placement=placement, init_swarm=args.init_swarm or None,
                           progress=lambda line: print(f"  {line}"))
    print(f"socp federation on Docker Swarm: stack {cluster.stack}, {spec.introducers} introducer"
          f"{'s' if spec.introducers > 1 else ''}, {spec.peers} peers, image {cluster.image}")
    try:
        asyncio.run(cluster.start(args.timeout))
    except (WaitFailed, DockerUnavailable, RuntimeError, ValueError) as exc:
        logs = cluster.collect_logs(args.workdir / "logs")
        _fail(f"the federation did not come up: {exc}")
        print((f"node logs saved in {logs[0].parent}/; " if logs else "")
              + "inspect with `make ps BACKEND=swarm`, remove with `make down BACKEND=swarm`", file=sys.stderr)
        return 1
    times = cluster.timings
    print(f"  up in {times['total']:.1f} s: keys {times['keys']:.1f} s, deploy {times['deploy']:.1f} s, "
          f"healthy full mesh {times['healthy']:.1f} s")
    print()
    return _show(cluster)


def cmd_ps(args: argparse.Namespace) -> int:
    """``swarm ps``: the table of nodes of the recorded stack."""
    cluster = _attach(args.workdir)
    if cluster is None:
        print(f"no stack recorded in {args.workdir}; start one with `make up BACKEND=swarm`")
        return 0
    return _show(cluster)


def cmd_down(args: argparse.Namespace) -> int:
    """``swarm down``: remove the recorded stack's services, containers, network, config and volumes."""
    from testbed.docker_backend import DockerUnavailable, docker_client
    from testbed.swarm_backend import stack_objects

    name = _recorded_stack(args.workdir)
    if name is None:
        print(f"no stack recorded in {args.workdir}: nothing to remove")
        return 0
    try:
        client = docker_client()
    except DockerUnavailable as exc:
        return _fail(str(exc))
    before = stack_objects(client, name)
    _remove(client, name)
    left = stack_objects(client, name)
    (args.workdir / "cluster.json").unlink(missing_ok=True)
    print(f"stack {name}: removed " + (", ".join(f"{count} {kind}" for kind, count in before.items()) or "nothing"))
    if left:
        return _fail("still there: " + ", ".join(f"{count} {kind}" for kind, count in left.items()))
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    """``swarm init``: make a marked one-node swarm unless the engine is in one already."""
    from testbed.docker_backend import DockerUnavailable, docker_client
    from testbed.swarm_backend import require_swarm

    try:
        made = require_swarm(docker_client(), init=True)
    except DockerUnavailable as exc:
        return _fail(str(exc))
    print("made a one-node swarm on 127.0.0.1" if made else "the engine is a swarm manager already")
    return 0


def cmd_leave(args: argparse.Namespace) -> int:
    """``swarm leave``: leave the swarm only when the testbed made it and it runs no service."""
    from testbed.docker_backend import DockerUnavailable, docker_client
    from testbed.swarm_backend import leave_swarm

    try:
        print(leave_swarm(docker_client()))
    except DockerUnavailable as exc:
        return _fail(str(exc))
    return 0


def cmd_manifests(args: argparse.Namespace) -> int:
    """``manifests --k8s``: make the introducers' keys and write the manifests."""
    from testbed import k8s

    spec = ClusterSpec(peers=args.peers, introducers=args.introducers, timings=FEDERATION_TIMINGS,
                       interop=args.interop)
    try:
        keys = k8s.make_introducer_keys(spec)
        documents = k8s.render_manifests(spec, image=args.image, keys=keys, namespace=args.namespace,
                                         storage=args.storage, join_token=new_join_token())
        path = k8s.write_manifests(args.out, documents)
    except (RuntimeError, ValueError, OSError) as exc:
        return _fail(str(exc))
    print(f"wrote {path} (namespace {args.namespace}: {spec.introducers} introducers, {spec.peers} peers); "
          f"it holds the introducers' private keys. Apply with `kubectl apply -f {path}` (untested on a live "
          f"cluster: docs/SWARM.md)")
    return 0


def _recorded_stack(workdir: Path) -> str | None:
    """The stack name recorded by ``swarm up`` in ``workdir``, None when there is none."""
    try:
        recorded = json.loads((workdir / "cluster.json").read_text())
    except (OSError, ValueError):
        return None
    name = recorded.get("stack") if isinstance(recorded, dict) and recorded.get("backend") == "swarm" else None
    return name if isinstance(name, str) and name.startswith(stack.STACK_PREFIX) else None


def _remove(client: Any, name: str) -> None:
    from testbed.swarm_backend import remove_stack

    asyncio.run(remove_stack(client, name))


def _attach(workdir: Path) -> Any:
    """A :class:`~testbed.swarm_backend.SwarmCluster` for the stack recorded in ``workdir`` (None without one)."""
    from testbed.swarm_backend import SwarmCluster

    try:
        recorded = json.loads((workdir / "cluster.json").read_text())
    except (OSError, ValueError):
        return None
    nodes = recorded.get("nodes") or []
    introducers = sum(1 for node in nodes if node.get("role") == "introducer")
    spec = ClusterSpec(peers=len(nodes) - introducers, introducers=max(1, introducers), timings=FEDERATION_TIMINGS)
    cluster = SwarmCluster(workdir, spec, stack_name=recorded["stack"])
    cluster.server_ids = {node["name"]: node["server_id"] for node in nodes}
    return cluster


def _show(cluster: Any) -> int:
    """Print the node table of ``cluster``; 1 when a node is not healthy."""
    from testbed.docker_backend import DockerUnavailable

    try:
        answers = asyncio.run(_probe_all(cluster))
    except DockerUnavailable as exc:
        return _fail(str(exc))
    rows = [["NODE", "SERVICE", "TASK", "HEALTHZ", "LINKS", "USERS", "SERVER ID", "URL"]]
    unhealthy = 0
    for node, (task_state, status, body, url) in zip(cluster.node_names, answers, strict=True):
        linked = body.get("linked_servers")
        links = f"{len(linked)}/{len(cluster.node_names) - 1}" if isinstance(linked, list) else "-"
        unhealthy += status != 200
        rows.append([node, cluster.service_name(node), task_state, {200: "ok", 0: "down"}.get(status, str(status)),
                     links, str(body.get("local_users", "-")), cluster.server_ids.get(node, "?"), url])
    print(render_table(rows))
    print(f"More: make ps BACKEND=swarm | docker service logs {cluster.stack}_peer1 | make down BACKEND=swarm")
    if unhealthy:
        print(f"{unhealthy} node{'s are' if unhealthy > 1 else ' is'} not healthy", file=sys.stderr)
        return 1
    return 0


async def _probe_all(cluster: Any) -> list[tuple[str, int, dict[str, object], str]]:
    async def one(node: str) -> tuple[str, int, dict[str, object], str]:
        states = await asyncio.to_thread(cluster.task_states, node)
        status, body = await cluster.health(node)
        try:
            url = cluster.url(node)
        except RuntimeError:
            url = "-"
        return ",".join(states) or "none", status, body, url

    return list(await asyncio.gather(*(one(node) for node in cluster.node_names)))

