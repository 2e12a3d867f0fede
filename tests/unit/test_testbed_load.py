"""The load report: every node's /status read defensively, incarnations summed, link deaths from the logs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from testbed.load import LoadTracker, NodeLoad, link_deaths_in_log
from testbed.runner import RunReport, write_reports

PEER1 = "aaaaaaaa-1111-4111-8111-111111111111"
PEER2 = "bbbbbbbb-2222-4222-8222-222222222222"


def status(cpu: float, *, deaths: Any = 0, p99: float = 5.0, peak: float = 40.0, server_id: str = PEER1,
           **extra: Any) -> dict[str, Any]:
    return {"server_id": server_id, "healthy": True,
            "process": {"cpu_seconds": cpu, "rss_mib": peak - 2, "peak_rss_mib": peak},
            "loop_lag_ms": {"p50": 1.0, "p99": p99, "max": p99 * 2, "samples": 100},
            "link_deaths": deaths, "stalls": 0, "heartbeat_signatures": 10, **extra}


def test_a_full_status_fills_every_figure() -> None:
    load = NodeLoad("peer1")
    load.observe(status(1.5, deaths=2, p99=12.0), at=3.0)
    assert (load.cpu_seconds, load.rss_mib, load.peak_rss_mib) == (1.5, 38.0, 40.0)
    assert (load.loop_lag_p50_ms, load.loop_lag_p99_ms, load.loop_lag_max_ms) == (1.0, 12.0, 24.0)
    assert (load.link_deaths, load.stalls, load.heartbeat_signatures) == (2, 0, 10)
    assert (load.answered, load.incarnations, load.last_seen_s, load.server_id) == (True, 1, 3.0, PEER1)
    assert load.declared_deaths == 2
    assert load.summary() == "peer1: cpu 1.5 s, rss 38/40 MiB, lag p99 12 ms, link deaths 2"


def test_absent_or_odd_fields_are_null_not_errors() -> None:
    load = NodeLoad("other")
    load.observe({"healthy": True, "process": "n/a", "loop_lag_ms": [1, 2], "link_deaths": "many",
                  "stalls": True}, at=1.0)
    data = load.to_json()
    for key in ("cpu_seconds", "rss_mib", "peak_rss_mib", "loop_lag_p99_ms", "link_deaths", "stalls",
                "heartbeat_signatures", "declared_deaths", "link_deaths_in_log"):
        assert data[key] is None, key
    assert data["answered"] and "private" not in json.dumps(data) and "_base" not in data
    assert load.summary() == "other: cpu -, rss -/-, lag p99 -, link deaths -"


def test_counters_may_be_mappings() -> None:
    load = NodeLoad("peer1")
    load.observe(status(1.0, deaths={"timeout": 2, "closed": 1}), at=1.0)
    assert load.link_deaths == 3
    load.observe(status(2.0, deaths={"total": 4, "timeout": 3}), at=2.0)
    assert load.link_deaths == 4


def test_a_restarted_node_adds_its_incarnations_and_keeps_its_worst() -> None:
    load = NodeLoad("peer2")
    load.observe(status(5.0, deaths=1, p99=300.0, peak=60.0), at=1.0)
    load.observe(status(0.8, deaths=0, p99=3.0, peak=35.0), at=2.0)       # CPU went down: a new process
    assert load.incarnations == 2
    assert (load.cpu_seconds, load.link_deaths) == (5.8, 1)
    assert (load.loop_lag_p99_ms, load.peak_rss_mib, load.rss_mib) == (300.0, 60.0, 33.0)
    load.went_down()                                                       # the runner restarted it
    assert not load.answered
    load.observe(status(1.0, deaths=1), at=3.0)                            # CPU went up, yet a new process
    assert (load.incarnations, load.cpu_seconds, load.link_deaths) == (3, 6.8, 2)


def test_the_log_counts_link_deaths_by_the_node_they_name(tmp_path: Path) -> None:
    line = "2026-01-01 00:00:00,000 WARNING socp.server [{me}] server {peer} silent for {ms} ms: link declared dead\n"
    text = (line.format(me="aaaaaaaa", peer="bbbbbbbb", ms=2100) + "noise\n"
            + line.format(me="aaaaaaaa", peer="bbbbbbbb", ms=2300)
            + line.format(me="aaaaaaaa", peer="cccccccc", ms=9).replace(" ms:", " ms while we were awake:")
            + "... server dddddddd silent for 2100 ms: suspected (dead if still silent in 500 ms)\n")
    assert link_deaths_in_log(text) == {"bbbbbbbb": 2, "cccccccc": 1}
    (tmp_path / "peer1.log").write_text(text)

    async def answer(node: str) -> tuple[int, dict[str, Any]]:
        return {"peer1": (200, status(1.0)), "peer2": (200, status(1.0, server_id=PEER2))}.get(node, (0, {}))

    tracker = LoadTracker(["peer1", "peer2", "peer3"], answer)
    asyncio.run(tracker.sample())
    tracker.read_logs(tmp_path)
    peer1 = tracker.nodes["peer1"]
    assert (peer1.link_deaths_in_log, peer1.link_deaths_by_peer) == (3, {"cccccccc": 1, "peer2": 2})
    assert peer1.declared_deaths == 3            # the log saw more than /status (0)
    assert tracker.nodes["peer3"].link_deaths_in_log is None      # no log to read
    assert tracker.totals()["link_deaths"] == 3


def test_a_node_that_stops_answering_keeps_what_was_last_seen() -> None:
    answers: dict[str, Any] = {"peer1": (200, status(2.0, p99=50.0)), "peer2": (200, status(1.0, server_id=PEER2))}

    async def answer(node: str) -> tuple[int, dict[str, Any]]:
        reply = answers[node]
        if isinstance(reply, Exception):
            raise reply
        if reply == "hang":
            await asyncio.sleep(10)
        return reply  # type: ignore[no-any-return]

    tracker = LoadTracker(["peer1", "peer2"], answer, timeout=0.05)
    asyncio.run(tracker.sample())
    answers["peer1"] = (0, {})
    answers["peer2"] = "hang"
    asyncio.run(tracker.sample())
    for node in ("peer1", "peer2"):
        assert not tracker.nodes[node].answered and tracker.nodes[node].incarnations == 1
    assert tracker.nodes["peer1"].cpu_seconds == 2.0 and tracker.nodes["peer1"].loop_lag_p99_ms == 50.0
    answers["peer1"] = OSError("refused")
    asyncio.run(tracker.sample())
    totals = tracker.totals()
    assert totals["cpu_seconds"] == 3.0 and totals["answered"] == 0
    assert totals["loop_lag_p99_ms_max"] == {"value": 50.0, "node": "peer1"}
    summary = tracker.summary()
    assert summary.startswith("load: 2 nodes (2 not answering at the end); cpu 3.0 s in all, max peer1 2.0 s;")
    assert "loop lag p99 max peer1 50 ms; link deaths 0" in summary
    assert tracker.snapshot() == {"answered": 0, "cpu_seconds": 3.0, "loop_lag_p99_ms_max": 50.0, "link_deaths": 0}


def test_a_node_that_never_answered_reports_nothing() -> None:
    async def down(node: str) -> tuple[int, dict[str, Any]]:
        return 0, {}

    tracker = LoadTracker(["peer1"], down)
    asyncio.run(tracker.sample())
    assert tracker.summary() == ("load: 1 nodes (1 not answering at the end); cpu - in all, max -; peak rss max -; "
                                 "loop lag p99 max -; link deaths -")
    assert tracker.nodes["peer1"].summary() == "peer1 (never answered): cpu -, rss -/-, lag p99 -, link deaths -"


def test_the_report_carries_the_load(tmp_path: Path) -> None:
    async def answer(node: str) -> tuple[int, dict[str, Any]]:
        return 200, status(1.0, deaths=1)

    tracker = LoadTracker(["peer1"], answer)
    asyncio.run(tracker.sample())
    report = RunReport("s", "local", 1, 1, 0, "now", str(tmp_path), load=tracker.to_json(),
                       load_summary=tracker.summary())
    write_reports(report, tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["load"]["nodes"]["peer1"]["link_deaths"] == 1
    assert data["load"]["totals"]["link_deaths"] == 1 and data["load"]["totals"]["link_deaths_by_node"] == {"peer1": 1}
    assert data["load_summary"].startswith("load: 1 nodes; cpu 1.0 s")
