"""Kubernetes manifests of a federation (``socp-testbed manifests --k8s``), for users who have a cluster.

Generated from the same node plan as the compose and stack files (:mod:`testbed.nodeplan`: the roles, the
counts, each node's ``socp-node`` flags and timers), laid out the Kubernetes way:

- one StatefulSet per role, ``introducer`` (K replicas) and ``peer`` (N replicas): stable identities
  ``introducer-0..K-1`` and ``peer-0..N-1`` (the plan's ``introducer``/``peer1`` become ordinals), one
  PersistentVolumeClaim per node (``volumeClaimTemplates``) holding its key and database;
- a headless Service ``socp-nodes`` giving every pod the DNS name ``<pod>.socp-nodes`` (its advertised host),
  published before the pod is ready so that nodes can join while the federation forms;
- readiness from ``GET /healthz`` on the node's port;
- the bootstrap file in a ConfigMap pinning every introducer's key. The introducers' keys are made here, by
  the manifests command, and shipped in a Secret that an init container copies into the node's volume on
  first start: pinning needs the public key before anything runs (no trust on first use).

Untested on a live cluster (none is reachable from here); the tests validate the documents against the
Kubernetes API schema (``kubernetes-validate``) and check their structure.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from testbed import compose
from testbed.nodeplan import (
    INTRODUCER_PORT,
    JOIN_TOKEN_ENV,
    PEER_PORT,
    ClusterSpec,
    NodePlan,
    bootstrap_document,
    node_flags,
    plan_nodes,
    profile_flags,
)

SERVICE = "socp-nodes"
"""The headless Service: a pod's DNS name is ``<pod>.socp-nodes``."""
BOOTSTRAP_CONFIGMAP = "socp-bootstrap"
KEYS_SECRET = "socp-introducer-keys"
JOIN_TOKEN_KEY = "join-token"
"""The Secret's key holding the federation's join token (a closed federation: strangers are not admitted)."""
NODE_UID = 10001
"""The image's unprivileged user (compose/Dockerfile)."""
POD_NAME = "$(POD_NAME)"
"""Kubernetes expands ``$(POD_NAME)`` in a container's args from its environment (the downward API)."""
KEYS_MOUNT = "/etc/socp/keys"


@dataclass(frozen=True, slots=True)
class IntroducerKey:
    """An introducer's identity made ahead of time: what its data directory holds, and its public key."""

    identity_json: str
    """``identity.json`` (server id and name)."""
    key_pem: str
    """``server.key.pem`` (the private key: the Secret holding it must be kept like one)."""
    pubkey: str
    """The public key, pinned in the bootstrap file."""


def pod_name(role: str, ordinal: int) -> str:
    """``introducer-0``, ``peer-3``: the StatefulSet pod names."""
    return f"{role}-{ordinal}"


def make_introducer_keys(spec: ClusterSpec, command: list[str] | None = None) -> dict[str, IntroducerKey]:
    """Create every introducer's key with ``socp-node --show-identity`` in a scratch directory (RSA-4096: a
    second or two each): pod name → :class:`IntroducerKey`."""
    command = command or [sys.executable, "-m", "node"]
    keys: dict[str, IntroducerKey] = {}
    introducers = [node for node in plan_nodes(spec) if node.introducer]
    with tempfile.TemporaryDirectory(prefix="socp-k8s-") as scratch:
        for ordinal, _ in enumerate(introducers):
            name = pod_name("introducer", ordinal)
            data_dir = Path(scratch) / name
            result = subprocess.run([*command, "--name", name, "--data-dir", str(data_dir), "--show-identity",
                                     "--introducer"], capture_output=True, text=True, timeout=120, check=False)
            if result.returncode != 0:
                raise RuntimeError(f"{name}: --show-identity failed: {result.stderr.strip()[-1000:]}")
            shown = json.loads(result.stdout)
            keys[name] = IntroducerKey((data_dir / "identity.json").read_text(),
                                       (data_dir / "server.key.pem").read_text(), str(shown["pubkey"]))
    return keys


def render_manifests(spec: ClusterSpec, *, image: str, keys: Mapping[str, IntroducerKey],
                     namespace: str = "socp", storage: str = "1Gi", join_token: str = "") -> list[dict[str, Any]]:
    """The documents for ``spec`` in ``namespace``: Namespace, Secret, ConfigMap, headless Service, and the
    ``introducer`` and ``peer`` StatefulSets (``keys``: see :func:`make_introducer_keys`). With ``join_token``
    (a closed federation) the Secret holds it too and every node reads it from there."""
    plan = plan_nodes(spec)
    introducers = [node for node in plan if node.introducer]
    peers = [node for node in plan if not node.introducer]
    names = [pod_name("introducer", i) for i in range(len(introducers))]
    missing = sorted(set(names) - set(keys))
    if missing:
        raise ValueError(f"no key for introducers {missing}")
    labels = {compose.PROJECT_LABEL: compose.PROJECT_VALUE}
    metadata = {"namespace": namespace, "labels": labels}
    bootstrap = bootstrap_document([(f"{name}.{SERVICE}", INTRODUCER_PORT, keys[name].pubkey) for name in names])
    documents: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": labels}},
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": KEYS_SECRET, **metadata},
         "stringData": {**{f"{name}.{file}": text for name in names
                           for file, text in (("identity.json", keys[name].identity_json),
                                              ("server.key.pem", keys[name].key_pem))},
                        **({JOIN_TOKEN_KEY: join_token} if join_token else {})}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": BOOTSTRAP_CONFIGMAP, **metadata},
         "data": {"bootstrap.yaml": yaml.safe_dump(bootstrap, sort_keys=False, width=1 << 16)}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVICE, **metadata},
         "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": labels,
                  "ports": [{"name": "introducer", "port": INTRODUCER_PORT}, {"name": "peer", "port": PEER_PORT}]}},
        _statefulset("introducer", introducers, spec, image=image, namespace=namespace, storage=storage,
                     closed=bool(join_token)),
    ]
    if peers:
        documents.append(_statefulset("peer", peers, spec, image=image, namespace=namespace, storage=storage,
                                      closed=bool(join_token)))
    return documents


def write_manifests(path: Path, documents: list[dict[str, Any]]) -> Path:
    """Write ``documents`` as one multi-document YAML file (``kubectl apply -f``); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Generated by `socp-testbed manifests --k8s` (docs/SWARM.md). Holds the introducers' private\n"
                    "# keys (Secret socp-introducer-keys): keep it private. Untested on a live cluster.\n"
                    + yaml.safe_dump_all(documents, sort_keys=False, width=1 << 16))
    path.chmod(0o600)
    return path


def _statefulset(role: str, nodes: list[NodePlan], spec: ClusterSpec, *, image: str, namespace: str,
                 storage: str, closed: bool = False) -> dict[str, Any]:
    """The StatefulSet of ``role`` (``introducer`` or ``peer``) for ``nodes`` of the plan."""
    first = nodes[0]
    port = first.port
    template_node = NodePlan(POD_NAME, first.introducer, True)
    args = node_flags(template_node, spec.timings, data_dir=compose.DATA_DIR, host="0.0.0.0", port=port,
                      advertise_host=f"{POD_NAME}.{SERVICE}", bootstrap_file=compose.BOOTSTRAP_PATH,
                      extra=profile_flags(spec))
    container: dict[str, Any] = {
        "name": "node", "image": image, "imagePullPolicy": "IfNotPresent",
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "SOCP_PORT", "value": str(port)},
                *([{"name": JOIN_TOKEN_ENV,
                    "valueFrom": {"secretKeyRef": {"name": KEYS_SECRET, "key": JOIN_TOKEN_KEY}}}] if closed else [])],
        "ports": [{"name": "socp", "containerPort": port}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 2, "failureThreshold": 3},
        "livenessProbe": {"tcpSocket": {"port": port}, "initialDelaySeconds": 30, "periodSeconds": 10},
        "volumeMounts": [{"name": "data", "mountPath": compose.DATA_MOUNT},
                         {"name": "bootstrap", "mountPath": compose.BOOTSTRAP_PATH, "subPath": "bootstrap.yaml",
                          "readOnly": True}],
    }
    volumes: list[dict[str, Any]] = [{"name": "bootstrap", "configMap": {"name": BOOTSTRAP_CONFIGMAP}}]
    init: list[dict[str, Any]] = []
    if first.introducer:
        # introducer-0 is the seed and joins through nobody; the others join through the bootstrap file.
        seed_args = [arg for arg in args if arg not in ("--bootstrap", compose.BOOTSTRAP_PATH)]
        container["command"] = ["/bin/sh", "-c",
                                'if [ "$POD_NAME" = introducer-0 ]; then exec socp-node "$0" "$@"; fi; '
                                f'exec socp-node "$0" "$@" --bootstrap {compose.BOOTSTRAP_PATH}']
        container["args"] = [arg.replace(POD_NAME, "$(POD_NAME)") for arg in seed_args]
        volumes.append({"name": "keys", "secret": {"secretName": KEYS_SECRET, "defaultMode": 0o400}})
        node_dir = compose.DATA_DIR
        init.append({
            "name": "install-key", "image": image, "imagePullPolicy": "IfNotPresent",
            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            "command": ["/bin/sh", "-c",
                        f'mkdir -p {node_dir} && if [ ! -e {node_dir}/server.key.pem ]; then '
                        f'cp {KEYS_MOUNT}/"$POD_NAME".server.key.pem {node_dir}/server.key.pem && '
                        f'cp {KEYS_MOUNT}/"$POD_NAME".identity.json {node_dir}/identity.json && '
                        f'chmod 600 {node_dir}/server.key.pem {node_dir}/identity.json; fi'],
            "volumeMounts": [{"name": "data", "mountPath": compose.DATA_MOUNT},
                             {"name": "keys", "mountPath": KEYS_MOUNT, "readOnly": True}]})
    else:
        container["args"] = args
    pod_labels = {compose.PROJECT_LABEL: compose.PROJECT_VALUE, compose.ROLE_LABEL: role}
    pod_spec: dict[str, Any] = {
        "securityContext": {"runAsUser": NODE_UID, "runAsGroup": NODE_UID, "fsGroup": NODE_UID,
                            "runAsNonRoot": True},
        "terminationGracePeriodSeconds": 5, "containers": [container], "volumes": volumes}
    if init:
        pod_spec["initContainers"] = init
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": role, "namespace": namespace, "labels": pod_labels},
        "spec": {"serviceName": SERVICE, "replicas": len(nodes), "podManagementPolicy": "Parallel",
                 "selector": {"matchLabels": pod_labels},
                 "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
                 "volumeClaimTemplates": [{"metadata": {"name": "data", "labels": pod_labels},
                                           "spec": {"accessModes": ["ReadWriteOnce"],
                                                    "resources": {"requests": {"storage": storage}}}}]}}
