"""The ``docker`` and ``swarm`` backends side by side, in one run: bring-up, teardown and two scenarios.

For each round, alternating the backends so that both see the same machine load:

- **up**: a federation of ``--peers`` peers and one introducer with the ``make up`` timers
  (``FEDERATION_TIMINGS``) started from nothing until healthy and fully meshed, with the backend's own phases
  (keys, containers or deploy, healthy), then **down**: seconds until everything it made is gone;
- the **smoke** and **node-crash** scenarios at ``--peers`` peers (the scenario's own fast timers), each
  scenario's total and per-step seconds.

The docker backend runs under a fresh compose project (never ``socp``), the swarm backend under a fresh
stack. Users' keys come from the test key pool. Needs the node image (``SOCP_IMAGE``) and a swarm manager
engine. Writes ``results/bench-backends.json`` and ``results/bench-backends.md``::

    python -m bench.bench_backends [--peers 5] [--rounds 1] [--timeout 240]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from socp.settings import FEDERATION_TIMINGS
from testbed.backend import ClusterSpec, create_backend
from testbed.runner import ScenarioRunner
from testbed.scenario import load_scenario
from tests.keypool import KeyPool

RESULTS = Path("results")
SCENARIOS = Path(__file__).resolve().parents[1] / "testbed" / "scenarios"
BACKENDS = ("docker", "swarm")
FIRST_USER_KEY = 4
USERS = 10


async def bring_up(backend: str, peers: int, workdir: Path, timeout: float) -> dict[str, Any]:
    """Start and stop one federation; the seconds of each phase."""
    cluster: Any = create_backend(backend, workdir, ClusterSpec(peers=peers, timings=FEDERATION_TIMINGS))
    began = time.perf_counter()
    try:
        await cluster.start(timeout)
        up = time.perf_counter() - began
    finally:
        stopping = time.perf_counter()
        await cluster.stop()
        down = time.perf_counter() - stopping
    return {"up_s": round(up, 2), "down_s": round(down, 2),
            "phases_s": {name: round(seconds, 2) for name, seconds in cluster.timings.items()}}


async def scenario(backend: str, name: str, peers: int, workdir: Path, pool: KeyPool) -> dict[str, Any]:
    """Run scenario ``name`` on ``backend``; its verdict, total and per-step seconds."""
    loaded = load_scenario(SCENARIOS / f"{name}.yaml")
    cluster = create_backend(backend, workdir / "cluster", ClusterSpec(peers, loaded.introducers, loaded.timings))
    report = await ScenarioRunner(loaded, cluster, workdir / "results",
                                  key_source=lambda i: pool.key(FIRST_USER_KEY + i % USERS)).run()
    return {"passed": report.passed, "duration_s": round(report.duration_s, 2),
            "steps": [{"step": step.description, "ok": step.ok, "seconds": round(step.seconds, 2)}
                      for step in report.steps]}


async def run(peers: int, rounds: int, timeout: float) -> dict[str, Any]:
    """Every measurement, the backends alternating within each round."""
    pool = KeyPool()
    pool.ensure(FIRST_USER_KEY + USERS)
    results: dict[str, Any] = {backend: {"up": [], "smoke": [], "node-crash": []} for backend in BACKENDS}
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as scratch:
        for round_ in range(rounds):
            for kind in ("up", "smoke", "node-crash"):
                for backend in BACKENDS:
                    workdir = Path(scratch) / f"{round_}-{kind}-{backend}"
                    if kind == "up":
                        figures = await bring_up(backend, peers, workdir, timeout)
                    else:
                        figures = await scenario(backend, kind, peers, workdir, pool)
                    print(f"round {round_ + 1} {kind:10} {backend:6} {json.dumps(figures)[:160]}", flush=True)
                    results[backend][kind].append(figures)
    return results


def table(results: dict[str, Any], peers: int) -> str:
    """The Markdown table of the medians."""
    def median(values: list[float]) -> str:
        return f"{statistics.median(values):.1f}" if values else "-"

    lines = [f"| backend ({peers} peers) | up (s) | down (s) | smoke (s) | node-crash (s) | scenarios passed |",
             "|---|---|---|---|---|---|"]
    for backend in BACKENDS:
        data = results[backend]
        runs = data["smoke"] + data["node-crash"]
        lines.append(f"| {backend} | {median([r['up_s'] for r in data['up']])} | "
                     f"{median([r['down_s'] for r in data['up']])} | "
                     f"{median([r['duration_s'] for r in data['smoke']])} | "
                     f"{median([r['duration_s'] for r in data['node-crash']])} | "
                     f"{sum(r['passed'] for r in runs)}/{len(runs)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point: measure, print the table, write the results files."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_backends", description=__doc__.split("\n")[0])
    parser.add_argument("--peers", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=240.0)
    args = parser.parse_args(argv)
    results = asyncio.run(run(args.peers, args.rounds, args.timeout))
    RESULTS.mkdir(exist_ok=True)
    data = {"peers": args.peers, "rounds": args.rounds, "machine": platform.platform(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "results": results}
    (RESULTS / "bench-backends.json").write_text(json.dumps(data, indent=2) + "\n")
    text = table(results, args.peers)
    (RESULTS / "bench-backends.md").write_text(text)
    print(text)
    passed = all(run["passed"] for backend in BACKENDS for kind in ("smoke", "node-crash")
                 for run in results[backend][kind])
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
