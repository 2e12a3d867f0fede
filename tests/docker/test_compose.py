"""The generated topology (testbed.compose), checked without starting anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from socp.settings import FAST_TIMINGS
from testbed import compose, nodeplan
from testbed.backend import ClusterSpec


def render(tmp_path: Path, spec: ClusterSpec, project: str = "socp-0123abcd") -> dict[str, Any]:
    return compose.render_compose(project, spec, image="socp-node:latest", bootstrap_file=tmp_path / "bootstrap.yaml",
                                  server_ids={"peer1": "11111111-1111-4111-8111-111111111111"})


def flag(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def test_node_names_match_the_local_backend() -> None:
    assert [n.name for n in nodeplan.plan_nodes(ClusterSpec(peers=2))] == ["introducer", "peer1", "peer2"]
    three = nodeplan.plan_nodes(ClusterSpec(peers=1, introducers=3))
    assert [(n.name, n.port, n.bootstrap) for n in three] == [
        ("introducer1", 9001, False), ("introducer2", 9001, True), ("introducer3", 9001, True),
        ("peer1", 8765, True)]
    with pytest.raises(ValueError):
        nodeplan.plan_nodes(ClusterSpec(introducers=0))


def test_every_node_is_a_service_with_its_flags_port_volume_and_labels(tmp_path: Path) -> None:
    spec = ClusterSpec(peers=2, introducers=3, timings=FAST_TIMINGS)
    document = render(tmp_path, spec)
    services = document["services"]
    assert list(services) == [f"socp-0123abcd-{n}" for n in ("introducer1", "introducer2", "introducer3",
                                                             "peer1", "peer2")]
    for node in nodeplan.plan_nodes(spec):
        service = services[f"socp-0123abcd-{node.name}"]
        command = service["command"]
        assert service["container_name"] == service["hostname"] == f"socp-0123abcd-{node.name}"
        assert (flag(command, "--name"), flag(command, "--advertise-host")) == (node.name, node.name)
        assert (flag(command, "--host"), flag(command, "--port")) == ("0.0.0.0", str(node.port))
        assert flag(command, "--data-dir") == "/var/lib/socp/node"
        assert (flag(command, "--heartbeat-interval"), flag(command, "--peer-timeout"),
                flag(command, "--presence-sync-interval"), flag(command, "--replay-window")) == ("0.5", "2", "2", "600")
        assert command == nodeplan.node_flags(node, FAST_TIMINGS, data_dir="/var/lib/socp/node", host="0.0.0.0",
                                              port=node.port, advertise_host=node.name,
                                              bootstrap_file="/etc/socp/bootstrap.yaml",
                                              server_id="11111111-1111-4111-8111-111111111111"
                                              if node.name == "peer1" else None)
        assert flag(command, "--id") == ("11111111-1111-4111-8111-111111111111" if node.name == "peer1" else None)
        assert ("--introducer" in command) == node.introducer
        assert flag(command, "--bootstrap") == ("/etc/socp/bootstrap.yaml" if node.bootstrap else None)
        mounts = service["volumes"]
        assert mounts[0] == f"{node.name}:/var/lib/socp"
        assert (f"{(tmp_path / 'bootstrap.yaml').resolve()}:/etc/socp/bootstrap.yaml:ro" in mounts) == node.bootstrap
        assert service["ports"] == [f"127.0.0.1::{node.port}"]
        assert service["environment"] == {"SOCP_PORT": str(node.port)}
        assert service["networks"]["federation"]["aliases"] == [node.name]
        assert "aliases" not in (service["networks"]["access"] or {})
        assert service["labels"][compose.PROJECT_LABEL] == "socp-testbed"
        assert service["labels"][compose.RUN_LABEL] == "socp-0123abcd"
        assert service["labels"][compose.NODE_LABEL] == node.name
        assert document["volumes"][node.name] == {"external": True, "name": f"socp-0123abcd-{node.name}"}
    assert services["socp-0123abcd-peer1"]["labels"][compose.SERVER_ID_LABEL].startswith("11111111")
    networks = document["networks"]
    assert networks["federation"]["name"] == "socp-0123abcd-net" and networks["federation"]["internal"] is True
    assert networks["access"]["name"] == "socp-0123abcd-access"
    for network in networks.values():
        assert network["labels"] == {compose.PROJECT_LABEL: "socp-testbed", compose.RUN_LABEL: "socp-0123abcd"}


def test_a_closed_federation_passes_its_join_token_in_the_environment_only(tmp_path: Path) -> None:
    token = nodeplan.new_join_token()
    document = compose.render_compose("socp-0123abcd", ClusterSpec(peers=2), image="socp-node:latest",
                                      bootstrap_file=tmp_path / "bootstrap.yaml", join_token=token)
    for service in document["services"].values():
        assert service["environment"] == {"SOCP_PORT": service["environment"]["SOCP_PORT"],
                                          nodeplan.JOIN_TOKEN_ENV: token}
        assert token not in " ".join(service["command"])
    written = compose.write_compose(tmp_path / "docker-compose.yaml", document)
    assert written.stat().st_mode & 0o777 == 0o600
    assert len(token) >= 32 and token != nodeplan.new_join_token()


def test_bootstrap_file_pins_every_introducer(tmp_path: Path) -> None:
    path = nodeplan.write_bootstrap(tmp_path / "b.yaml", [("introducer1", 9001, "KEY1"), ("introducer2", 9001, "KEY2")])
    assert yaml.safe_load(path.read_text()) == {"bootstrap_servers": [
        {"host": "introducer1", "port": 9001, "pubkey": "KEY1"},
        {"host": "introducer2", "port": 9001, "pubkey": "KEY2"}]}


def test_project_names_are_unique_and_valid() -> None:
    names = {compose.new_project_name() for _ in range(50)}
    assert len(names) == 50
    assert all(len(name) == 13 and name.startswith("socp-") for name in names)


@pytest.mark.docker
def test_compose_cli_accepts_the_generated_file(docker_ready: None, tmp_path: Path) -> None:
    spec = ClusterSpec(peers=2, introducers=3)
    (tmp_path / "bootstrap.yaml").write_text("bootstrap_servers: []\n")
    path = compose.write_compose(tmp_path / "docker-compose.yaml", render(tmp_path, spec))
    result = subprocess.run([*compose.compose_command(), "--project-name", "socp-0123abcd", "--file", str(path),
                             "config", "--quiet"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_docker_backend_is_registered_and_imports_without_the_sdk(tmp_path: Path) -> None:
    from testbed.backend import ClusterBackend, backend_names, create_backend
    from testbed.docker_backend import DockerCluster

    assert "docker" in backend_names()
    backend = create_backend("docker", tmp_path, ClusterSpec(peers=2))
    assert isinstance(backend, DockerCluster) and isinstance(backend, ClusterBackend)
    assert backend.node_names == ["introducer", "peer1", "peer2"] and backend.peer_names == ["peer1", "peer2"]
    assert backend.project.startswith("socp-") and backend.workdir == tmp_path.absolute()
    probe = subprocess.run([sys.executable, "-c", "import sys, testbed.docker_backend, testbed.ops; "
                            "sys.exit('docker' in sys.modules)"], capture_output=True, timeout=60, check=False)
    assert probe.returncode == 0, "importing the backend must not import the Docker SDK"
