"""The conformance kit (client/conformance.py) scores our own node 100 % over real sockets, join included."""

from __future__ import annotations

import pytest

from client.conformance import PASS, SKIP, Conformance
from testbed.backend import ClusterBackend
from tests.integration.conftest import FIRST_USER_KEY
from tests.keypool import KeyPool

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.socp_cluster(peers=1)]


async def test_our_node_scores_100_percent(cluster: ClusterBackend, key_pool: KeyPool) -> None:
    keys = [key_pool.key(FIRST_USER_KEY + i) for i in range(3)]
    report = await Conformance(cluster.url("peer1"), keys, introducer=cluster.url("introducer"), timeout=10.0,
                               heartbeat_wait=10.0, join_token=cluster.join_token).run()
    print(report.table())
    assert report.score == 100.0, report.table()
    statuses = {r.clause: r.status for r in report.results}
    assert SKIP not in statuses.values(), report.table()
    assert {"hello", "list", "dm.raw-bytes", "dm.b64-text", "dm.json-object", "dm.reverse", "replay", "stale",
            "join", "heartbeat"} <= {clause for clause, status in statuses.items() if status == PASS}
    variants = {r.clause: r.variant for r in report.results}
    assert variants["error.invalid-sig"] == "INVALID_SIG" and variants["stale"] == "ERROR STALE"
