"""The swarm backend's pure parts: the stack file, placement, swarm-mode guards, and the Kubernetes manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from socp.settings import FAST_TIMINGS
from testbed import compose, k8s, stack
from testbed.backend import BackendUnsupported, ClusterSpec, backend_class
from testbed.nodeplan import node_flags, plan_nodes
from testbed.swarm_backend import (
    SWARM_MARKER_LABEL,
    SwarmCluster,
    SwarmUnavailable,
    leave_swarm,
    require_swarm,
)

SPEC = ClusterSpec(peers=3, introducers=1, timings=FAST_TIMINGS)


def render(tmp_path: Path, **kwargs: Any) -> dict[str, Any]:
    bootstrap = tmp_path / "bootstrap.yaml"
    bootstrap.write_text("bootstrap_servers: []\n")
    args: dict[str, Any] = {"image": "socp-node:test", "bootstrap_file": bootstrap, "local_host": "here",
                            "server_ids": {"peer1": "id-1"}} | kwargs
    return stack.render_stack("socp-sw-test", kwargs.pop("spec", SPEC), **args)


def test_one_service_per_node_of_the_plan_with_the_plans_command_line(tmp_path: Path) -> None:
    document = render(tmp_path)
    assert document["version"] == "3.8"
    plan = plan_nodes(SPEC)
    assert list(document["services"]) == [node.name for node in plan] == ["introducer", "peer1", "peer2", "peer3"]
    for node in plan:
        service = document["services"][node.name]
        assert service["image"] == "socp-node:test"
        assert service["command"] == node_flags(
            node, SPEC.timings, data_dir=compose.DATA_DIR, host="0.0.0.0", port=node.port,
            advertise_host=node.name, bootstrap_file=compose.BOOTSTRAP_PATH,
            server_id="id-1" if node.name == "peer1" else None)
        assert service["ports"] == [{"target": node.port, "mode": "host", "protocol": "tcp"}]
        assert service["volumes"] == [f"{node.name}:{compose.DATA_MOUNT}"]
        assert document["volumes"][node.name]["name"] == f"socp-sw-test-{node.name}"
        deploy = service["deploy"]
        assert deploy["replicas"] == 1 and deploy["endpoint_mode"] == "dnsrr"
        assert deploy["restart_policy"]["condition"] == "any"
        assert deploy["placement"]["constraints"] == ["node.hostname == here"]
        for labels in (service["labels"], deploy["labels"]):
            assert labels[compose.RUN_LABEL] == "socp-sw-test"
            assert labels[compose.PROJECT_LABEL] == compose.PROJECT_VALUE
            assert labels[compose.NODE_LABEL] == node.name
        assert service["healthcheck"] == {"disable": True}
        # Only joining nodes get the bootstrap file, as a swarm config (it reaches every host).
        assert ("configs" in service) == node.bootstrap
    assert document["services"]["peer1"]["labels"][compose.SERVER_ID_LABEL] == "id-1"
    assert document["configs"]["bootstrap"]["name"] == "socp-sw-test-bootstrap"
    network = document["networks"]["federation"]
    assert network == {"name": "socp-sw-test-net", "driver": "overlay", "attachable": True,
                       "labels": compose.run_labels("socp-sw-test")}


def test_only_the_running_nodes_get_a_replica_and_the_file_round_trips(tmp_path: Path) -> None:
    document = render(tmp_path, running={"introducer"}, restart_delay=7)
    assert {name: s["deploy"]["replicas"] for name, s in document["services"].items()} == {
        "introducer": 1, "peer1": 0, "peer2": 0, "peer3": 0}
    assert document["services"]["peer2"]["deploy"]["restart_policy"]["delay"] == "7s"
    path = stack.write_stack(tmp_path / "stack.yaml", document)
    assert yaml.safe_load(path.read_text()) == document


def test_placement_pins_nodes_and_refuses_unknown_nodes_and_moved_introducers(tmp_path: Path) -> None:
    assert stack.parse_placement("peer1=host-a, peer3=host-b") == {"peer1": "host-a", "peer3": "host-b"}
    with pytest.raises(ValueError, match="NODE=HOSTNAME"):
        stack.parse_placement("peer1")
    placement_file = tmp_path / "placement.yaml"
    placement_file.write_text("placement: {peer2: host-c}\n")
    assert stack.load_placement(str(placement_file)) == {"peer2": "host-c"}
    document = render(tmp_path, placement={"peer1": "host-a"})
    assert document["services"]["peer1"]["deploy"]["placement"]["constraints"] == ["node.hostname == host-a"]
    assert document["services"]["peer2"]["deploy"]["placement"]["constraints"] == ["node.hostname == here"]
    with pytest.raises(ValueError, match="unknown nodes"):
        render(tmp_path, placement={"peer9": "host-a"})
    with pytest.raises(ValueError, match="introducers run on this host"):
        render(tmp_path, placement={"introducer": "host-a"})


def test_stack_names_are_fresh_and_the_backend_is_registered() -> None:
    names = {stack.new_stack_name() for _ in range(5)}
    assert len(names) == 5 and all(name.startswith(stack.STACK_PREFIX) for name in names)
    assert backend_class("swarm") is SwarmCluster


class FakeNode:
    def __init__(self, labels: dict[str, str]) -> None:
        self.attrs: dict[str, Any] = {"Spec": {"Labels": labels, "Role": "manager"}}
        self.updates: list[dict[str, Any]] = []

    def update(self, spec: dict[str, Any]) -> None:
        self.updates.append(spec)
        self.attrs["Spec"] = spec


class FakeSwarmClient:
    """Just enough of the Docker SDK for the swarm-mode guards."""

    def __init__(self, state: str, *, manager: bool = True, labels: dict[str, str] | None = None,
                 services: int = 0) -> None:
        self.state, self.manager = state, manager
        self.node = FakeNode(labels or {})
        self.inits: list[dict[str, Any]] = []
        self.left = False
        self._services = [object()] * services
        client = self

        class Swarm:
            def init(self, **kwargs: Any) -> None:
                client.inits.append(kwargs)
                client.state = "active"

            def leave(self, force: bool = False) -> None:
                client.left = True

        class Nodes:
            def get(self, node_id: str) -> FakeNode:
                return client.node

        class Services:
            def list(self) -> list[object]:
                return client._services

        self.swarm, self.nodes, self.services = Swarm(), Nodes(), Services()

    def info(self) -> dict[str, Any]:
        return {"Swarm": {"LocalNodeState": self.state, "ControlAvailable": self.manager, "NodeID": "n1"}}


def test_the_engine_is_never_put_in_swarm_mode_without_being_asked() -> None:
    client = FakeSwarmClient("inactive")
    with pytest.raises(SwarmUnavailable, match="docker swarm init") as raised:
        require_swarm(client)
    assert "--init-swarm" in str(raised.value) and "SOCP_INIT_SWARM=1" in str(raised.value)
    assert client.inits == [] and client.state == "inactive"

    assert require_swarm(client, init=True) is True
    assert client.inits == [{"advertise_addr": "127.0.0.1", "listen_addr": "127.0.0.1:2377"}]
    assert client.node.attrs["Spec"]["Labels"] == {SWARM_MARKER_LABEL: compose.PROJECT_VALUE}
    assert require_swarm(client, init=True) is False  # active already: nothing more
    assert len(client.inits) == 1

    with pytest.raises(SwarmUnavailable, match="worker"):
        require_swarm(FakeSwarmClient("active", manager=False))


def test_leave_only_undoes_an_idle_swarm_the_testbed_made() -> None:
    foreign = FakeSwarmClient("active")
    assert "not made by socp-testbed" in leave_swarm(foreign) and not foreign.left
    busy = FakeSwarmClient("active", labels={SWARM_MARKER_LABEL: compose.PROJECT_VALUE}, services=2)
    assert "still runs 2 services" in leave_swarm(busy) and not busy.left
    ours = FakeSwarmClient("active", labels={SWARM_MARKER_LABEL: compose.PROJECT_VALUE})
    assert "left" in leave_swarm(ours) and ours.left


def test_faults_on_a_task_of_another_host_are_refused_clearly(tmp_path: Path) -> None:
    cluster = SwarmCluster(tmp_path, SPEC, stack_name="socp-sw-test")
    cluster._local_node = "this-host"
    cluster._running_task = lambda node: {"NodeID": "other-host", "Status": {}}  # type: ignore[method-assign]
    with pytest.raises(BackendUnsupported, match="another swarm host"):
        cluster._local_container("peer1", "pause")


KEYS = {"introducer-0": k8s.IntroducerKey('{"server_id": "sid-0", "name": "introducer-0"}', "PRIVATE PEM",
                                          "PUBLIC-KEY-0")}


def by_kind(documents: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in documents}


def test_k8s_manifests_one_statefulset_per_role_pvcs_headless_service_readiness() -> None:
    documents = k8s.render_manifests(SPEC, image="registry.example/socp-node:1", keys=KEYS, namespace="chat")
    found = by_kind(documents)
    assert set(found) == {("Namespace", "chat"), ("Secret", k8s.KEYS_SECRET), ("ConfigMap", k8s.BOOTSTRAP_CONFIGMAP),
                          ("Service", k8s.SERVICE), ("StatefulSet", "introducer"), ("StatefulSet", "peer")}
    service = found[("Service", k8s.SERVICE)]["spec"]
    assert service["clusterIP"] == "None" and service["publishNotReadyAddresses"] is True
    bootstrap = yaml.safe_load(found[("ConfigMap", k8s.BOOTSTRAP_CONFIGMAP)]["data"]["bootstrap.yaml"])
    assert bootstrap == {"bootstrap_servers": [{"host": "introducer-0.socp-nodes", "port": 9001,
                                                "pubkey": "PUBLIC-KEY-0"}]}
    assert found[("Secret", k8s.KEYS_SECRET)]["stringData"]["introducer-0.server.key.pem"] == "PRIVATE PEM"
    for role, replicas, port in (("introducer", 1, 9001), ("peer", 3, 8765)):
        sts = found[("StatefulSet", role)]
        spec = sts["spec"]
        assert spec["serviceName"] == k8s.SERVICE and spec["replicas"] == replicas
        assert spec["selector"]["matchLabels"] == spec["template"]["metadata"]["labels"]
        assert [claim["metadata"]["name"] for claim in spec["volumeClaimTemplates"]] == ["data"]
        container = spec["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
        assert {"name": "data", "mountPath": compose.DATA_MOUNT} in container["volumeMounts"]
        args = container["args"]
        assert args[args.index("--name") + 1] == "$(POD_NAME)"
        assert args[args.index("--advertise-host") + 1] == "$(POD_NAME).socp-nodes"
        assert args[args.index("--heartbeat-interval") + 1] == "0.5"  # the plan's timers
    assert "--bootstrap" in found[("StatefulSet", "peer")]["spec"]["template"]["spec"]["containers"][0]["args"]
    introducer = found[("StatefulSet", "introducer")]["spec"]["template"]["spec"]
    assert introducer["initContainers"][0]["name"] == "install-key"
    with pytest.raises(ValueError, match="no key"):
        k8s.render_manifests(ClusterSpec(peers=1, introducers=3), image="x", keys=KEYS)


def test_k8s_manifests_validate_against_the_kubernetes_api_schema(tmp_path: Path) -> None:
    import kubernetes_validate  # a dev dependency: CI must fail, not skip, without it

    documents = k8s.render_manifests(ClusterSpec(peers=2, introducers=1), image="socp-node:1", keys=KEYS,
                                     join_token="t0ken")
    path = k8s.write_manifests(tmp_path / "socp.yaml", documents)
    assert path.stat().st_mode & 0o777 == 0o600  # it holds private keys
    loaded = list(yaml.safe_load_all(path.read_text()))
    assert loaded == documents
    for document in loaded:
        kubernetes_validate.validate(document, "1.30", strict=True)


# --- the interop profile on every node (issue 14: `make up INTEROP=1`, `socp-testbed up/run --interop`) -----

@pytest.mark.parametrize("interop", [False, True])
def test_every_rendered_node_carries_the_interop_flag_when_asked(tmp_path: Path, interop: bool) -> None:
    spec = ClusterSpec(peers=2, introducers=1, timings=FAST_TIMINGS, interop=interop)
    bootstrap = tmp_path / "bootstrap.yaml"
    bootstrap.write_text("bootstrap_servers: []\n")
    composed = compose.render_compose("socp-test", spec, image="socp-node:test", bootstrap_file=bootstrap)
    stacked = stack.render_stack("socp-sw-test", spec, image="socp-node:test", bootstrap_file=bootstrap,
                                 local_host="here")
    commands = [service["command"] for document in (composed, stacked) for service in document["services"].values()]
    assert len(commands) == 2 * len(plan_nodes(spec))
    for command in commands:
        assert ("--interop" in command) is interop, command
    # the flag goes before the role flags, as node_flags places its ``extra``
    for command in commands:
        if interop:
            assert command.index("--interop") < command.index("--bootstrap" if "--bootstrap" in command
                                                             else "--introducer")
    statefulsets = [d for d in k8s.render_manifests(spec, image="x", keys=KEYS) if d.get("kind") == "StatefulSet"]
    assert statefulsets and all(("--interop" in yaml.safe_dump(d)) is interop for d in statefulsets)


@pytest.mark.parametrize("interop", [False, True])
def test_local_cluster_and_command_lines_take_the_interop_option(tmp_path: Path, interop: bool) -> None:
    from testbed.cli import build_parser
    from testbed.local import LocalCluster
    spec = ClusterSpec(peers=1, introducers=1, timings=FAST_TIMINGS, interop=interop)
    cluster = LocalCluster(tmp_path, spec, extra_args=["--log-level", "DEBUG"])
    for node in cluster.nodes:
        assert list(node.extra_args) == (["--interop"] if interop else []) + ["--log-level", "DEBUG"]
    flag = ["--interop"] if interop else []
    parser = build_parser()
    assert parser.parse_args(["up", *flag]).interop is interop
    assert parser.parse_args(["swarm", "up", *flag]).interop is interop
    assert parser.parse_args(["run", "testbed/scenarios/smoke.yaml", *flag]).interop is interop


@pytest.mark.parametrize("interop", [False, True])
def test_socp_testbed_manifests_takes_the_interop_option(tmp_path: Path, interop: bool,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``socp-testbed manifests --k8s --interop`` (``make manifests INTEROP=1``) writes every node's command with
    the flag; without it, none."""
    from testbed.cli import build_parser
    monkeypatch.setattr(k8s, "make_introducer_keys", lambda spec: KEYS)  # no RSA key generation here
    out = tmp_path / "socp.yaml"
    args = build_parser().parse_args(["manifests", "--k8s", "--peers", "2", "--out", str(out),
                                      *(["--interop"] if interop else [])])
    assert args.func(args) == 0
    statefulsets = [d for d in yaml.safe_load_all(out.read_text()) if d and d.get("kind") == "StatefulSet"]
    assert statefulsets and all(("--interop" in yaml.safe_dump(d)) is interop for d in statefulsets)
