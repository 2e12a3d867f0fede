"""The testbed's backends: one base class, chosen by name and imported lazily; one plan of nodes and flags."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from socp.settings import FAST_TIMINGS, FEDERATION_TIMINGS
from testbed import backend, nodeplan
from testbed.backend import ClusterBackend, ClusterSpec, backend_names, create_backend, wait_mesh_healthy
from testbed.waiting import WaitTimeout


def test_backends_are_chosen_by_name_and_imported_only_then() -> None:
    assert backend_names() == ["docker", "local", "swarm"]
    probe = subprocess.run([sys.executable, "-c", "import sys, testbed.backend, testbed.runner, testbed.pytest_plugin; "
                            "sys.exit(any(m in sys.modules for m in ('testbed.local', 'testbed.docker_backend', "
                            "'testbed.swarm_backend')))"],
                           capture_output=True, timeout=60, check=False)
    assert probe.returncode == 0, probe.stderr


def test_create_backend_builds_the_local_backend_with_its_prepare_hook(tmp_path: Path) -> None:
    from testbed.local import LocalCluster

    def prepare(name: str, data_dir: Path) -> None:
        pass

    cluster = create_backend("local", tmp_path, ClusterSpec(peers=2), prepare=prepare)
    assert isinstance(cluster, LocalCluster) and isinstance(cluster, ClusterBackend)
    assert cluster.prepare is prepare and cluster.node_names == ["introducer", "peer1", "peer2"]
    assert cluster.peer_names == ["peer1", "peer2"]


def test_an_unknown_backend_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown backend 'k8s'; available: docker, local"):
        create_backend("k8s", tmp_path, ClusterSpec())


def test_a_backend_must_implement_the_whole_interface() -> None:
    class Half(ClusterBackend):
        name = "half"

    with pytest.raises(TypeError, match="abstract"):
        Half(Path("."))  # type: ignore[abstract]


def test_the_default_spec_runs_the_fast_timings() -> None:
    assert ClusterSpec().timings == FAST_TIMINGS


def test_the_local_nodes_get_the_planned_flags(tmp_path: Path) -> None:
    from testbed.local import LocalCluster

    cluster = LocalCluster(tmp_path, ClusterSpec(peers=1, introducers=2, timings=FEDERATION_TIMINGS))
    second, peer = cluster.node("introducer2"), cluster.node("peer1")
    flags = nodeplan.node_flags(peer.plan, FEDERATION_TIMINGS, data_dir=str(peer.data_dir), host="127.0.0.1",
                                port=0, bootstrap_file=str(tmp_path / "bootstrap.yaml"))
    assert flags[:8] == ["--name", "peer1", "--data-dir", str(tmp_path / "peer1"), "--host", "127.0.0.1", "--port", "0"]
    assert flags[8:16] == ["--heartbeat-interval", "2", "--peer-timeout", "6", "--presence-sync-interval", "10",
                           "--replay-window", "600"]
    assert flags[16:] == ["--bootstrap", str(tmp_path / "bootstrap.yaml")]
    assert (second.plan.introducer, second.plan.bootstrap, cluster.node("introducer1").plan.bootstrap) == \
        (True, True, False)
    assert nodeplan.identity_flags(second.plan, data_dir="/d") == ["--name", "introducer2", "--data-dir", "/d",
                                                                  "--show-identity", "--introducer"]


def test_the_bootstrap_file_is_written_once_for_every_backend(tmp_path: Path) -> None:
    path = nodeplan.write_bootstrap(tmp_path / "bootstrap.yaml", [("127.0.0.1", 40001, "KEY")])
    assert yaml.safe_load(path.read_text()) == {"bootstrap_servers": [
        {"host": "127.0.0.1", "port": 40001, "pubkey": "KEY"}]}


def test_a_flag_value_is_never_rounded() -> None:
    assert nodeplan.timing_flags(FAST_TIMINGS)[:2] == ["--heartbeat-interval", "0.5"]
    odd = FAST_TIMINGS.__class__(heartbeat_interval=0.1234567891, peer_timeout=2.0)
    assert nodeplan.timing_flags(odd)[1] == "0.1234567891"


async def test_a_dead_node_stops_the_mesh_wait_at_once(tmp_path: Path) -> None:
    from testbed.local import LocalCluster
    from testbed.waiting import NodeExited

    # A "node" that exits at once: the wait must not poll on until its deadline.
    script = tmp_path / "crash.py"
    script.write_text("import sys\nprint('boom: cannot bind', flush=True)\nsys.exit(3)\n")
    cluster = LocalCluster(tmp_path / "run", ClusterSpec(peers=0), command=[sys.executable, str(script)])
    node = cluster.node("introducer")
    node.data_dir.mkdir(parents=True)
    with pytest.raises(NodeExited) as caught:
        await node.start(timeout=30)
    message = str(caught.value)
    assert message.startswith("introducer (exit code 3) exited after ")
    assert "| boom: cannot bind" in message
    assert backend.MESH_HINT  # the hint every mesh wait carries


async def test_a_mesh_wait_on_a_big_federation_says_who_does_not_answer_in_one_line() -> None:
    names = ["introducer"] + [f"peer{i}" for i in range(1, 31)]
    server_ids = {name: f"id-{name}" for name in names}

    async def health(name: str) -> tuple[int, dict[str, object]]:
        if name in ("introducer", "peer1"):           # two answer, the other 29 do not
            others = [sid for other, sid in server_ids.items() if other not in (name, "peer2")]
            return 503, {"linked_servers": others}
        return 0, {}

    with pytest.raises(WaitTimeout) as failure:
        await wait_mesh_healthy(server_ids, health, timeout=0.2)
    last = failure.value.last
    assert last.startswith("29 not answering /healthz: [peer2, peer3, ")
    assert "… 21 more]" in last
    assert "introducer: http 503, not linked to [peer2]" in last
    assert len(last) < 400, last
