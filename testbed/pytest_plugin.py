"""pytest plugin: a ``cluster`` fixture that gives a test module a running federation on any backend.

::

    @pytest.mark.socp_cluster(peers=3, introducers=1)      # optional; these are the defaults
    async def test_something(cluster):                     # a started ClusterBackend
        url = cluster.url("peer1")

The backend is ``--socp-backend`` (default ``local``) unless the marker names one; it is built by
:func:`testbed.backend.create_backend` like anywhere else. Override the ``socp_cluster_prepare`` fixture to
drop files (e.g. cached keys) into node data directories (where the backend keeps them on the host).

Installed, the plugin is loaded through the ``pytest11`` entry point; ``tests/conftest.py`` registers it
when it is not (a checkout without ``pip install -e .``, or ``-p no:socp_testbed``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from socp.settings import FAST_TIMINGS
from testbed.backend import ClusterBackend, ClusterSpec, Prepare, create_backend

__all__ = ["FAST_TIMINGS", "cluster", "socp_cluster_prepare"]


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--socp-backend NAME`` picks the backend of the ``cluster`` fixture."""
    parser.addoption("--socp-backend", default="local", help="cluster backend for the cluster fixture")


def pytest_configure(config: pytest.Config) -> None:
    """Declare the ``socp_cluster`` marker."""
    config.addinivalue_line("markers", "socp_cluster(peers=3, introducers=1, backend=None): federation shape")


@pytest.fixture(scope="module")
def socp_cluster_prepare() -> Prepare | None:
    """Hook called with each local node's name and data dir before it starts (default: none)."""
    return None


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                  socp_cluster_prepare: Prepare | None) -> AsyncIterator[ClusterBackend]:
    """A started, healthy federation shared by the test module; stopped and removed afterwards."""
    marker = request.node.get_closest_marker("socp_cluster")
    options = dict(marker.kwargs) if marker else {}
    backend_name = options.pop("backend", None) or request.config.getoption("--socp-backend")
    spec = ClusterSpec(peers=options.pop("peers", 3), introducers=options.pop("introducers", 1),
                       timings=options.pop("timings", FAST_TIMINGS))
    if options:
        raise pytest.UsageError(f"unknown socp_cluster options: {sorted(options)}")
    workdir = tmp_path_factory.mktemp(f"cluster-{backend_name}")
    backend = create_backend(backend_name, workdir, spec, prepare=socp_cluster_prepare)
    try:
        await backend.start(timeout=120)
        yield backend
    finally:
        try:
            await backend.stop()
        finally:
            backend.collect_logs(workdir / "logs")
