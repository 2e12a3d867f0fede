"""The Docker Swarm topology of a federation: the generated stack file and node placement.

Pure file generation, no Docker calls. The swarm backend (:mod:`testbed.swarm_backend`) makes the
introducers' keys, then deploys the file this module writes with ``docker stack deploy``.

The nodes, their flags and the bootstrap file come from :mod:`testbed.nodeplan`, like the compose file's
(:mod:`testbed.compose`) and the local backend's. Every node is one service of the stack ``<stack>``
(``<stack>_<node>``, replicas 1, so it keeps its identity), with its data in the named volume
``<stack>-<node>``; all of them on the attachable overlay network ``<stack>-net``, where a node's name
resolves to its task's address. Every object carries the project label and ``org.socp-testbed.run=<stack>``.

Placement: each node is pinned to one swarm host (``node.hostname == H``) so that a restarted task finds its
volume again. By default every node runs on the orchestrating host; ``placement`` (node → hostname, e.g.
``{"peer1": "host-a"}``) puts nodes elsewhere (docs/SWARM.md).
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import yaml

from testbed import compose
from testbed.nodeplan import ClusterSpec, node_environment, node_flags, plan_nodes, profile_flags

TEMPLATE = Path(__file__).resolve().parent.parent / "compose" / "stack.template.yaml"
STACK_PREFIX = "socp-sw-"


def new_stack_name() -> str:
    """A fresh stack name, ``socp-sw-<8 hex>`` (one per run: ``down`` removes exactly it)."""
    return f"{STACK_PREFIX}{secrets.token_hex(4)}"


def service_name(stack: str, node: str) -> str:
    """Name of ``node``'s service (``docker stack deploy`` prefixes the stack's name)."""
    return f"{stack}_{node}"


def bootstrap_config_name(stack: str) -> str:
    """Name of the swarm config holding the bootstrap file."""
    return f"{stack}-bootstrap"


def parse_placement(text: str) -> dict[str, str]:
    """``peer1=host-a,peer2=host-b`` → ``{"peer1": "host-a", "peer2": "host-b"}`` (ValueError when garbled)."""
    placement: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        node, sep, host = item.partition("=")
        if not sep or not node.strip() or not host.strip():
            raise ValueError(f"placement {item!r}: expected NODE=HOSTNAME")
        placement[node.strip()] = host.strip()
    return placement


def load_placement(source: str) -> dict[str, str]:
    """Placement from ``NODE=HOST,...`` or from a YAML file holding ``placement: {NODE: HOST}``."""
    path = Path(source)
    if not path.is_file():
        return parse_placement(source)
    loaded = yaml.safe_load(path.read_text())
    mapping = loaded.get("placement") if isinstance(loaded, dict) else None
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise ValueError(f"{path}: expected a mapping 'placement: {{NODE: HOSTNAME}}'")
    return {str(node): host for node, host in mapping.items()}


def check_placement(spec: ClusterSpec, placement: Mapping[str, str], local_host: str) -> None:
    """Raise ValueError for a placement naming an unknown node, or moving an introducer off ``local_host``
    (an introducer's key is made on the orchestrating host before the stack is deployed)."""
    plan = {node.name: node for node in plan_nodes(spec)}
    unknown = sorted(set(placement) - set(plan))
    if unknown:
        raise ValueError(f"placement names unknown nodes {unknown}; nodes are {list(plan)}")
    moved = sorted(name for name, host in placement.items() if plan[name].introducer and host != local_host)
    if moved:
        raise ValueError(f"introducers run on this host ({local_host}), where their keys are made: "
                         f"cannot place {moved} elsewhere")


def render_stack(stack: str, spec: ClusterSpec, *, image: str, bootstrap_file: Path, local_host: str,
                 server_ids: Mapping[str, str] | None = None, placement: Mapping[str, str] | None = None,
                 running: Collection[str] | None = None, restart_delay: float = 5.0,
                 template: Path = TEMPLATE, join_token: str = "") -> dict[str, Any]:
    """The stack document for ``spec``: the template's ``service`` expanded for every node; ``join_token``
    (a closed federation) goes into every node's environment.

    ``running`` (default: every node) are deployed with one replica, the others with none (the backend
    starts the first introducer alone, then scales the others up). Nodes are pinned to ``placement[node]``,
    else to ``local_host``.
    """
    placement = dict(placement or {})
    check_placement(spec, placement, local_host)
    try:
        loaded = yaml.safe_load(template.read_text())
    except OSError as exc:
        raise RuntimeError(f"cannot read the stack template {template}: {exc.strerror}") from None
    if not isinstance(loaded, dict) or not isinstance(loaded.get("file"), dict) \
            or not isinstance(loaded.get("service"), dict):
        raise RuntimeError(f"{template}: expected the mappings 'file' and 'service'")
    common = {"stack": stack, "network": compose.network_name(stack), "image": image,
              "data_mount": compose.DATA_MOUNT, "bootstrap_file": str(bootstrap_file.resolve()),
              "bootstrap_config": bootstrap_config_name(stack),
              "restart_delay": f"{restart_delay:g}"}
    document: dict[str, Any] = compose.fill_template(loaded["file"], common)
    for network in (document.get("networks") or {}).values():
        network["labels"] = compose.run_labels(stack)
    for config in (document.get("configs") or {}).values():
        config["labels"] = compose.run_labels(stack)
    services: dict[str, Any] = {}
    volumes: dict[str, Any] = {}
    plan = plan_nodes(spec)
    for node in plan:
        values = {**common, "node": node.name, "port": str(node.port), "volume": node.name}
        service: dict[str, Any] = compose.fill_template(copy.deepcopy(loaded["service"]), values)
        server_id = (server_ids or {}).get(node.name)
        service["command"] = node_flags(node, spec.timings, data_dir=compose.DATA_DIR, host="0.0.0.0",
                                        port=node.port, advertise_host=node.name,
                                        bootstrap_file=compose.BOOTSTRAP_PATH, server_id=server_id,
                                        extra=profile_flags(spec))
        service["ports"] = [{"target": node.port, "mode": "host", "protocol": "tcp"}]
        service["environment"] = {**(service.get("environment") or {}), **node_environment(join_token)}
        if node.bootstrap:
            service["configs"] = [{"source": "bootstrap", "target": compose.BOOTSTRAP_PATH, "mode": 0o444}]
        labels = compose.node_labels(stack, node, server_id or "")
        service["labels"] = labels
        deploy = service.setdefault("deploy", {})
        deploy["labels"] = labels
        deploy["replicas"] = 1 if running is None or node.name in running else 0
        deploy.setdefault("placement", {})["constraints"] = [
            f"node.hostname == {placement.get(node.name, local_host)}"]
        services[node.name] = service
        volumes[node.name] = {"name": compose.volume_name(stack, node.name), "labels": labels}
    document["services"] = services
    document["volumes"] = volumes
    return document


def write_stack(path: Path, document: Mapping[str, Any]) -> Path:
    """Write a stack document as YAML (0600); returns ``path``."""
    return compose.write_generated_yaml(path, document, "stack.template.yaml")
