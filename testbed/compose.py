"""The compose topology of a federation: labels and the generated compose file.

Pure file generation, no Docker calls (except :func:`compose_command`, which asks which compose CLI is
installed). The docker backend (:mod:`testbed.docker_backend`) creates the volumes and keys, then runs
the file this module writes.

Every node is one service and one container, both named ``<project>-<node>`` like the container's
hostname. Two networks:

- ``<project>-net`` (internal): server links. It is the only network where a node's bare name (its
  ``--advertise-host``, the hosts of the bootstrap file) resolves, which is why the service and the
  hostname, aliased by compose and docker on every network, are not the bare name.
- ``<project>-access``: only carries the ports published on 127.0.0.1; containers cannot talk on it.

Disconnecting a node from ``<project>-net`` is therefore a true partition: its server links die by
timeout while its users stay connected. A node's data lives in the named volume ``<project>-<node>``.
The nodes, their flags and the bootstrap file come from :mod:`testbed.nodeplan`, like the local backend's.
Everything carries :data:`PROJECT_LABEL` (what ``make down`` removes) and the run label
``org.socp-testbed.run=<project>``.
"""

from __future__ import annotations

import copy
import functools
import secrets
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from testbed.nodeplan import ClusterSpec, NodePlan, node_environment, node_flags, plan_nodes, profile_flags

PROJECT_LABEL = "org.socp-testbed.project"
"""Label key on everything the project creates; ``make down`` removes all of it."""
PROJECT_VALUE = "socp-testbed"
RUN_LABEL = "org.socp-testbed.run"
"""Label key naming the compose project (one run, one federation)."""
NODE_LABEL = "org.socp-testbed.node"
ROLE_LABEL = "org.socp-testbed.role"
SERVER_ID_LABEL = "org.socp-testbed.server-id"
KEYGEN_LABEL = "org.socp-testbed.keygen"
"""On the one-off containers that create a node's key (value: the node's name)."""

DATA_MOUNT = "/var/lib/socp"
"""Where a node's named volume is mounted (the image's VOLUME, owned by the node's user)."""
DATA_DIR = f"{DATA_MOUNT}/node"
BOOTSTRAP_PATH = "/etc/socp/bootstrap.yaml"
DEFAULT_IMAGE = "socp-node:latest"
FEDERATION_PROJECT = "socp"
"""Compose project of the ``make up`` federation."""

TEMPLATE = Path(__file__).resolve().parent.parent / "compose" / "node.template.yaml"


def new_project_name() -> str:
    """A fresh compose project name, ``socp-<8 hex>``."""
    return f"socp-{secrets.token_hex(4)}"


def container_name(project: str, node: str) -> str:
    """Name of ``node``'s container."""
    return f"{project}-{node}"


def volume_name(project: str, node: str) -> str:
    """Name of ``node``'s data volume."""
    return f"{project}-{node}"


def network_name(project: str) -> str:
    """Name of the project's federation network (server links; partitions cut a node off it)."""
    return f"{project}-net"


def access_network_name(project: str) -> str:
    """Name of the project's access network (published ports only; containers cannot talk on it)."""
    return f"{project}-access"


def run_labels(project: str) -> dict[str, str]:
    """The labels every object of the run carries."""
    return {PROJECT_LABEL: PROJECT_VALUE, RUN_LABEL: project}


def node_labels(project: str, node: NodePlan, server_id: str = "") -> dict[str, str]:
    """Labels of a node's container and volume: the run's, plus node name, role and server id."""
    labels = {**run_labels(project), NODE_LABEL: node.name, ROLE_LABEL: node.role}
    if server_id:
        labels[SERVER_ID_LABEL] = server_id
    return labels


def render_compose(project: str, spec: ClusterSpec, *, image: str, bootstrap_file: Path,
                   server_ids: Mapping[str, str] | None = None, healthcheck_interval: float = 5.0,
                   template: Path = TEMPLATE, join_token: str = "") -> dict[str, Any]:
    """The compose document for ``spec``: the template's ``service`` expanded for every node; ``join_token``
    (a closed federation) goes into every node's environment."""
    try:
        loaded = yaml.safe_load(template.read_text())
    except OSError as exc:
        raise RuntimeError(f"cannot read the compose template {template}: {exc.strerror}") from None
    if not isinstance(loaded, dict) or not isinstance(loaded.get("file"), dict) \
            or not isinstance(loaded.get("service"), dict):
        raise RuntimeError(f"{template}: expected the mappings 'file' and 'service'")
    common = {"project": project, "network": network_name(project), "access_network": access_network_name(project),
              "image": image, "data_mount": DATA_MOUNT, "healthcheck_interval": f"{healthcheck_interval:g}"}
    document: dict[str, Any] = fill_template(loaded["file"], common)
    for network in (document.get("networks") or {}).values():
        network["labels"] = run_labels(project)
    services: dict[str, Any] = {}
    volumes: dict[str, Any] = {}
    for node in plan_nodes(spec):
        values = {**common, "node": node.name, "container": container_name(project, node.name),
                  "port": str(node.port), "volume": node.name}
        service: dict[str, Any] = fill_template(copy.deepcopy(loaded["service"]), values)
        service["command"] = node_flags(node, spec.timings, data_dir=DATA_DIR, host="0.0.0.0", port=node.port,
                                        advertise_host=node.name, bootstrap_file=BOOTSTRAP_PATH,
                                        server_id=(server_ids or {}).get(node.name), extra=profile_flags(spec))
        service["environment"] = {**(service.get("environment") or {}), **node_environment(join_token)}
        if node.bootstrap:
            service.setdefault("volumes", []).append(f"{bootstrap_file.resolve()}:{BOOTSTRAP_PATH}:ro")
        service["labels"] = node_labels(project, node, (server_ids or {}).get(node.name, ""))
        services[container_name(project, node.name)] = service
        volumes[node.name] = {"external": True, "name": volume_name(project, node.name)}
    document["services"] = services
    document["volumes"] = volumes
    return document


def write_generated_yaml(path: Path, document: Mapping[str, Any], template: str) -> Path:
    """Write a document rendered from ``compose/<template>`` as YAML, readable by its owner only (it holds
    the federation's join token); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)  # before the token is written, also when the file existed
    path.write_text(f"# Generated by socp-testbed from compose/{template}; do not edit.\n"
                    + yaml.safe_dump(dict(document), sort_keys=False, width=1 << 16))
    return path


def write_compose(path: Path, document: Mapping[str, Any]) -> Path:
    """Write a compose document as YAML (0600); returns ``path``."""
    return write_generated_yaml(path, document, "node.template.yaml")


@functools.cache
def compose_command() -> tuple[str, ...]:
    """The compose CLI: ``docker compose`` (v2) when it works, else ``docker-compose`` (v1).

    Raises :class:`RuntimeError` when neither is installed.
    """
    if shutil.which("docker"):
        try:
            probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            probe = None
        if probe is not None and probe.returncode == 0:
            return ("docker", "compose")
    if shutil.which("docker-compose"):
        return ("docker-compose",)
    raise RuntimeError("neither `docker compose` (v2) nor `docker-compose` (v1) is installed")


def fill_template(value: Any, values: Mapping[str, str]) -> Any:
    """``value`` with every ``{placeholder}`` in its strings replaced (recursively; the compose and stack
    templates)."""
    if isinstance(value, str):
        try:
            return value.format_map(values)
        except (KeyError, ValueError, IndexError) as exc:
            raise RuntimeError(f"template: bad placeholder in {value!r}: {exc}") from None
    if isinstance(value, dict):
        return {key: fill_template(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [fill_template(item, values) for item in value]
    return value
