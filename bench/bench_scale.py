"""How presence converges as the federation grows, on real nodes: local processes and Docker containers.

For each size (peers) and backend it starts a whole federation with the testbed's default (fast) timings,
attaches one observer client to every peer, then measures:

- **up**: seconds from ``start`` until every node is healthy and linked to every other;
- **join**: seconds from a new user's ``USER_HELLO`` (on peer1) until every observer's directory lists it;
- **kill**: seconds from killing the last peer until no surviving observer lists that peer's users;
- **load**: from each node's ``GET /status`` at the end: link deaths declared, loop-lag p99, CPU seconds,
  peak RSS (absent fields are reported as null: another implementation may not have them).

The observers' directories are filled by the servers' USER_ADVERTISE / USER_REMOVE pushes, so "listed by
every observer" means "known by every server and pushed to its users". Keys come from the cached test key
pool (no key generation for users). Bounded: every wait has a deadline, and each size runs once.
Writes ``results/bench-scale.json``, ``results/bench-scale.md`` (the table) and, when matplotlib is installed
(``pip install -e '.[bench]'``), ``results/bench-scale.png``::

    python -m bench.bench_scale [--docker 3,5,10,20,30] [--local 3,5,10,20,30,50] [--timeout 240]
                                [--baseline OLD.json] [--report-only NEW.json]

``--baseline`` adds the rows of an earlier run (say, of the previous release) to the table and the plot,
labelled ``(before)``, so that both are read side by side; ``--report-only`` writes the table and plot from
a finished run without starting anything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from client.connection import ClientConnection
from client.keystore import Identity
from testbed.backend import ClusterSpec, create_backend
from testbed.load import LoadTracker
from tests.keypool import KeyPool

RESULTS = Path("results")
USER_KEYS = range(4, 24)
"""Pool keys the users cycle through (ids differ; one key may serve several users)."""
POLL_S = 0.01


async def _until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``condition()`` holds (polled every 10 ms); raises TimeoutError naming ``what``."""
    start = time.perf_counter()
    deadline = start + timeout
    while not condition():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")
        await asyncio.sleep(POLL_S)
    return time.perf_counter() - start


def _listed(observers: Sequence[ClientConnection], user_id: str) -> int:
    return sum(user_id in observer.directory for observer in observers)


async def measure(backend_name: str, peers: int, pool: KeyPool, timeout: float) -> dict[str, Any]:
    """One federation of ``peers`` on ``backend_name``: up, join and kill times, and per-node load."""
    row: dict[str, Any] = {"backend": backend_name, "peers": peers}
    with tempfile.TemporaryDirectory(prefix=f"bench-scale-{backend_name}-{peers}-") as workdir:
        backend = create_backend(backend_name, Path(workdir), ClusterSpec(peers=peers))
        observers: list[ClientConnection] = []
        try:
            start = time.perf_counter()
            await backend.start(timeout=timeout)
            row["up_s"] = round(time.perf_counter() - start, 2)
            for index, node in enumerate(backend.peer_names):
                identity = Identity(str(uuid.uuid4()), f"obs{index + 1}", pool.key(USER_KEYS[index % len(USER_KEYS)]))
                observers.append(await ClientConnection.connect(backend.url(node), identity, timeout=30))
            everyone = [observer.user_id for observer in observers]
            await _until(lambda: all(_listed(observers, user) == len(observers) for user in everyone), timeout,
                         "every observer listing every observer")
            newcomer = Identity(str(uuid.uuid4()), "newcomer", pool.key(USER_KEYS[-1]))
            start = time.perf_counter()
            joined = await ClientConnection.connect(backend.url(backend.peer_names[0]), newcomer, timeout=30)
            await _until(lambda: _listed(observers, newcomer.user_id) == len(observers), timeout,
                         "the newcomer listed by every observer")
            row["join_s"] = round(time.perf_counter() - start, 3)
            await joined.close()
            victim_node, victim = backend.peer_names[-1], observers[-1]
            survivors = observers[:-1]
            start = time.perf_counter()
            await backend.kill(victim_node)
            await _until(lambda: _listed(survivors, victim.user_id) == 0, timeout,
                         f"{victim_node}'s user removed by every survivor")
            row["kill_s"] = round(time.perf_counter() - start, 3)
            tracker = LoadTracker([node for node in backend.node_names if node != victim_node], backend.status)
            await tracker.sample()
            row["nodes"] = [load.to_json() for load in tracker.nodes.values()]
            _summarise_load(row, tracker)
            row["ok"] = True
        except (TimeoutError, OSError, RuntimeError) as exc:
            row["ok"] = False
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        finally:
            for observer in observers:
                with contextlib.suppress(Exception):
                    await observer.close()
            await backend.stop()
    return row


def _summarise_load(row: dict[str, Any], tracker: LoadTracker) -> None:
    """The row's load columns, from what every surviving node's ``/status`` said (see testbed.load)."""
    totals = tracker.totals()
    cpu = [load.cpu_seconds for load in tracker.nodes.values() if load.cpu_seconds is not None]
    lag, rss = totals["loop_lag_p99_ms_max"], totals["peak_rss_mib_max"]
    row["link_deaths"] = None if totals["link_deaths"] is None else int(totals["link_deaths"])
    row["loop_lag_p99_ms_max"] = round(lag["value"], 1) if lag else None
    row["cpu_seconds_median"] = round(statistics.median(cpu), 2) if cpu else None
    row["peak_rss_mib_max"] = round(rss["value"], 1) if rss else None


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The results as a Markdown table."""
    lines = ["| backend | peers | ok | up (s) | new user seen everywhere (s) | killed node's user gone everywhere (s) "
             "| link deaths (all nodes) | loop lag p99, worst node (ms) | CPU s per node (median) "
             "| peak RSS, worst node (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key)) for key in (
            "backend", "peers", "ok", "up_s", "join_s", "kill_s", "link_deaths", "loop_lag_p99_ms_max",
            "cpu_seconds_median", "peak_rss_mib_max")) + " |")
    failed = [row for row in rows if not row.get("ok")]
    lines += [f"\n{row['backend']} {row['peers']} peers: {row.get('error')}" for row in failed]
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict[str, Any]], path: Path) -> bool:
    """Convergence times against peers, one line per backend and measure; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for backend in sorted({row["backend"] for row in rows}):
        mine = [row for row in rows if row["backend"] == backend and row.get("ok")]
        faded = "(before)" in backend
        for key, label, style in (("join_s", "new user seen everywhere", "o-"),
                                  ("kill_s", "killed node's user gone everywhere", "s--")):
            axes.plot([row["peers"] for row in mine], [row[key] for row in mine], style, label=f"{backend}: {label}",
                      alpha=0.45 if faded else 1.0, linewidth=1.0 if faded else 1.8)
    axes.set_xlabel("peers")
    axes.set_ylabel("seconds")
    axes.set_title("Presence convergence (testbed timings: heartbeat 0.5 s, peer timeout 2 s)")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()] if text else []


def _load_rows(path: Path, label: str = "") -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(path.read_text())["rows"]
    return [{**row, "backend": f"{row['backend']}{label}"} for row in rows]


async def main_async(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    if args.report_only is not None:
        rows = _load_rows(args.report_only)
    else:
        pool = KeyPool()
        pool.ensure(max(USER_KEYS) + 1)
        for backend, sizes in (("local", _sizes(args.local)), ("docker", _sizes(args.docker))):
            for peers in sizes:
                print(f"bench-scale: {backend}, {peers} peers ...", flush=True)
                row = await measure(backend, peers, pool, args.timeout)
                print(f"  {json.dumps({k: v for k, v in row.items() if k != 'nodes'})}", flush=True)
                rows.append(row)
        RESULTS.mkdir(exist_ok=True)
        document = {"machine": {"python": sys.version.split()[0], "platform": platform.platform()},
                    "command": " ".join(sys.argv), "rows": rows}
        (RESULTS / "bench-scale.json").write_text(json.dumps(document, indent=2) + "\n")
    if args.baseline is not None:
        rows = sorted(rows + _load_rows(args.baseline, " (before)"), key=lambda row: (row["backend"], row["peers"]))
    RESULTS.mkdir(exist_ok=True)
    table = markdown(rows)
    (RESULTS / "bench-scale.md").write_text(table)
    print(table)
    if plot(rows, RESULTS / "bench-scale.png"):
        print(f"plot: {RESULTS / 'bench-scale.png'}")
    else:
        print("no plot: matplotlib is not installed (pip install -e '.[bench]')")
    return 0 if all(row.get("ok") for row in rows if "(before)" not in row["backend"]) else 1


def main() -> int:
    """``python -m bench.bench_scale``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--local", default="3,5,10,20,30,50", help="peer counts on the local backend")
    parser.add_argument("--docker", default="3,5,10,20,30", help="peer counts on the docker backend")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds any one wait may take")
    parser.add_argument("--baseline", type=Path, default=None, metavar="OLD.json",
                        help="an earlier run's bench-scale.json, shown beside this one as '(before)'")
    parser.add_argument("--report-only", type=Path, default=None, metavar="NEW.json",
                        help="write the table and plot of a finished run (no federation is started)")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
