"""What each node's load was during a scenario run: CPU, memory, event-loop lag, link deaths.

The testbed drives nodes only from outside, so the figures come from each node's ``GET /status`` JSON, read
defensively (another implementation may report none of them: absent figures are ``None`` in the report):

- ``process: {cpu_seconds, rss_mib, peak_rss_mib}`` and ``loop_lag_ms: {p50, p99, max, samples}``;
- top-level counters ``link_deaths``, ``stalls`` and ``heartbeat_signatures`` (an int, or a mapping of ints).

:class:`LoadTracker` samples every node after each step and before the teardown. A node that dies keeps what
was last seen of it; a node that comes back (a new process: its CPU counter went down, or the runner said it
went down) starts a new *incarnation*, whose counters add to the previous ones. Its log is the fallback
witness of link deaths: :func:`link_deaths_in_log` counts the ``silent for N ms: link declared dead`` lines
and whom they name (the first 8 characters of a server id, mapped back to node names where known).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

Status = Callable[[str], Awaitable[tuple[int, dict[str, Any]]]]
"""``GET /status`` of a node: (HTTP status, JSON body); (0, {}) when unreachable."""

LINK_DEATH = re.compile(r"server (?P<peer>[0-9a-fA-F-]+) silent for (?P<ms>\d+) ms\b[^\n]*?: link declared dead")
"""A node's log line when it declares a server link dead (``socp/server/links.py``)."""

COUNTERS = ("link_deaths", "stalls", "heartbeat_signatures")
"""Top-level ``/status`` counters, summed over a node's incarnations."""


@dataclass(slots=True)
class NodeLoad:
    """One node's load over a run, as last seen (``None``: the node never reported that figure)."""

    node: str
    server_id: str | None = None
    answered: bool = False
    """Whether the last sample got an answer (False: down, paused, or never up)."""
    last_seen_s: float | None = None
    """Seconds into the run of the last answer."""
    incarnations: int = 0
    """Processes seen (2 after a restart)."""
    cpu_seconds: float | None = None
    """CPU seconds (user + system) of every incarnation, as last seen."""
    rss_mib: float | None = None
    """Resident memory at the last answer."""
    peak_rss_mib: float | None = None
    """Highest peak resident memory of any incarnation."""
    loop_lag_p50_ms: float | None = None
    """Event-loop lag p50 at the last answer."""
    loop_lag_p99_ms: float | None = None
    """Highest event-loop lag p99 of any sample (the node's window is its last minute or so)."""
    loop_lag_max_ms: float | None = None
    """Highest event-loop lag of any sample."""
    link_deaths: int | None = None
    """Server links this node declared dead (``/status``, every incarnation, as last seen)."""
    stalls: int | None = None
    heartbeat_signatures: int | None = None
    link_deaths_in_log: int | None = None
    """``link declared dead`` lines in the node's log (None when the log could not be read)."""
    link_deaths_by_peer: dict[str, int] = field(default_factory=dict)
    """Those lines by the node they name (a server-id prefix where the node is unknown)."""
    _base: dict[str, float] = field(default_factory=dict, repr=False)
    """Counters of the finished incarnations."""
    _current: dict[str, float] = field(default_factory=dict, repr=False)
    """Counters of the current incarnation, as last seen."""
    _down: bool = field(default=False, repr=False)
    """The runner stopped or killed it: the next answer is a new process."""

    @property
    def declared_deaths(self) -> int | None:
        """Link deaths this node declared: the larger of its ``/status`` count and its log's (None if neither)."""
        known = [n for n in (self.link_deaths, self.link_deaths_in_log) if n is not None]
        return max(known) if known else None

    def to_json(self) -> dict[str, Any]:
        """The report's view (private fields left out)."""
        data = {key: value for key, value in asdict(self).items() if not key.startswith("_")}
        data["declared_deaths"] = self.declared_deaths
        return data

    def summary(self) -> str:
        """``peer3: cpu 4.2 s, rss 38/41 MiB, lag p99 12 ms, link deaths 0`` (``-`` for unknown figures)."""
        state = "" if self.answered else (" (down; last seen)" if self.incarnations else " (never answered)")
        return (f"{self.node}{state}: cpu {_fmt(self.cpu_seconds, '.1f', ' s')}, rss {_fmt(self.rss_mib, '.0f')}/"
                f"{_fmt(self.peak_rss_mib, '.0f', ' MiB')}, lag p99 {_fmt(self.loop_lag_p99_ms, '.0f', ' ms')}, "
                f"link deaths {_fmt(self.declared_deaths, 'd')}")

    # --- samples ---------------------------------------------------------------------------------

    def went_down(self) -> None:
        """The runner stopped, killed or restarted this node: its next answer comes from a new process."""
        self._down = True
        self.answered = False

    def observe(self, body: Mapping[str, Any], at: float) -> None:
        """Fold one ``/status`` answer in."""
        counters: dict[str, float] = {}
        process = body.get("process")
        process = process if isinstance(process, Mapping) else {}
        cpu = _number(process.get("cpu_seconds"))
        if cpu is not None:
            counters["cpu_seconds"] = cpu
        for name in COUNTERS:
            value = _count(body.get(name))
            if value is not None:
                counters[name] = value
        restarted = self._down or (cpu is not None and cpu < self._current.get("cpu_seconds", 0.0))
        if restarted or not self.incarnations:
            for name, value in self._current.items():
                self._base[name] = self._base.get(name, 0.0) + value
            self._current = {}
            self.incarnations += 1
            self._down = False
        self._current.update(counters)
        self.answered = True
        self.last_seen_s = round(at, 3)
        server_id = body.get("server_id")
        if isinstance(server_id, str):
            self.server_id = server_id
        if cpu is not None:
            self.cpu_seconds = round(self._base.get("cpu_seconds", 0.0) + cpu, 3)
        for name in COUNTERS:
            if name in self._current:
                setattr(self, name, int(self._base.get(name, 0) + self._current[name]))
        rss, peak = _number(process.get("rss_mib")), _number(process.get("peak_rss_mib"))
        if rss is not None:
            self.rss_mib = rss
        self.peak_rss_mib = _max(self.peak_rss_mib, peak if peak is not None else rss)
        lag = body.get("loop_lag_ms")
        lag = lag if isinstance(lag, Mapping) else {}
        p50 = _number(lag.get("p50"))
        if p50 is not None:
            self.loop_lag_p50_ms = p50
        self.loop_lag_p99_ms = _max(self.loop_lag_p99_ms, _number(lag.get("p99")))
        self.loop_lag_max_ms = _max(self.loop_lag_max_ms, _number(lag.get("max")))

    def missed(self) -> None:
        """A sample got no answer: keep what was last seen."""
        self.answered = False


class LoadTracker:
    """Samples every node's ``/status`` and keeps, per node, the :class:`NodeLoad` of the run so far."""

    def __init__(self, nodes: Iterable[str], status: Status, *, timeout: float = 2.0) -> None:
        self.status = status
        self.timeout = timeout
        self.nodes: dict[str, NodeLoad] = {name: NodeLoad(name) for name in nodes}
        self._start = time.monotonic()

    async def sample(self) -> None:
        """Ask every node for ``/status`` at once (each answer within ``timeout`` seconds, or missed)."""
        async def one(load: NodeLoad) -> None:
            try:
                async with asyncio.timeout(self.timeout):
                    code, body = await self.status(load.node)
            except Exception:  # a node that cannot answer is down, not a broken run
                code, body = 0, {}
            if code == 0 or not isinstance(body, Mapping):
                load.missed()
            else:
                load.observe(body, time.monotonic() - self._start)

        await asyncio.gather(*(one(load) for load in self.nodes.values()))

    def went_down(self, node: str) -> None:
        """The runner stopped, killed or restarted ``node``."""
        if node in self.nodes:
            self.nodes[node].went_down()

    def read_logs(self, directory: Path) -> None:
        """Count each node's ``link declared dead`` lines in ``directory/<node>.log`` (collected logs)."""
        names = {load.server_id[:8]: name for name, load in self.nodes.items() if load.server_id}
        for name, load in self.nodes.items():
            try:
                text = (directory / f"{name}.log").read_text(errors="replace")
            except OSError:
                continue
            peers = link_deaths_in_log(text)
            load.link_deaths_in_log = sum(peers.values())
            load.link_deaths_by_peer = {names.get(peer[:8], peer): count for peer, count in sorted(peers.items())}

    def totals(self) -> dict[str, Any]:
        """Run-wide figures: summed CPU and link deaths, worst memory and lag (with the node), nodes down."""
        loads = list(self.nodes.values())

        def worst(attr: str) -> dict[str, Any] | None:
            known = [(getattr(load, attr), load.node) for load in loads if getattr(load, attr) is not None]
            if not known:
                return None
            value, node = max(known)
            return {"value": value, "node": node}

        def total(attr: str) -> float | None:
            known = [getattr(load, attr) for load in loads if getattr(load, attr) is not None]
            return round(sum(known), 3) if known else None

        deaths = {load.node: load.declared_deaths for load in loads if load.declared_deaths}
        return {"nodes": len(loads), "answered": sum(load.answered for load in loads),
                "cpu_seconds": total("cpu_seconds"), "cpu_seconds_max": worst("cpu_seconds"),
                "peak_rss_mib_max": worst("peak_rss_mib"), "loop_lag_p99_ms_max": worst("loop_lag_p99_ms"),
                "link_deaths": total("declared_deaths") if any(load.declared_deaths is not None for load in loads)
                else None, "link_deaths_by_node": deaths,
                "stalls": total("stalls"), "heartbeat_signatures": total("heartbeat_signatures")}

    def snapshot(self) -> dict[str, Any]:
        """A step's compact view: CPU so far, worst lag p99, link deaths per ``/status`` so far, nodes answering."""
        loads = list(self.nodes.values())
        lags = [load.loop_lag_p99_ms for load in loads if load.loop_lag_p99_ms is not None]
        deaths = [load.link_deaths for load in loads if load.link_deaths is not None]
        cpu = [load.cpu_seconds for load in loads if load.cpu_seconds is not None]
        return {"answered": sum(load.answered for load in loads),
                "cpu_seconds": round(sum(cpu), 3) if cpu else None,
                "loop_lag_p99_ms_max": max(lags) if lags else None,
                "link_deaths": sum(deaths) if deaths else None}

    def to_json(self) -> dict[str, Any]:
        """The report's ``load`` section: totals and every node."""
        return {"totals": self.totals(), "nodes": {name: load.to_json() for name, load in self.nodes.items()}}

    def summary(self) -> str:
        """One line for the printed summary: CPU, the worst memory and lag, link deaths and where."""
        totals = self.totals()

        def where(entry: dict[str, Any] | None, spec: str, unit: str) -> str:
            return "-" if entry is None else f"{entry['node']} {format(entry['value'], spec)}{unit}"

        deaths = totals["link_deaths"]
        by_node = totals["link_deaths_by_node"]
        shown = ", ".join(f"{node} {count}" for node, count in list(by_node.items())[:6])
        more = f", +{len(by_node) - 6} nodes" if len(by_node) > 6 else ""
        down = totals["nodes"] - totals["answered"]
        return (f"load: {totals['nodes']} nodes{f' ({down} not answering at the end)' if down else ''}; "
                f"cpu {_fmt(totals['cpu_seconds'], '.1f', ' s')} in all, "
                f"max {where(totals['cpu_seconds_max'], '.1f', ' s')}; "
                f"peak rss max {where(totals['peak_rss_mib_max'], '.0f', ' MiB')}; "
                f"loop lag p99 max {where(totals['loop_lag_p99_ms_max'], '.0f', ' ms')}; "
                f"link deaths {_fmt(deaths, 'd')}" + (f" ({shown}{more})" if by_node else ""))


def link_deaths_in_log(text: str) -> Counter[str]:
    """The ``link declared dead`` lines of a node's log, by the server-id prefix they name."""
    return Counter(match["peer"] for match in LINK_DEATH.finditer(text))


def _number(value: object) -> float | None:
    """A JSON number as float; None for anything else (booleans included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _count(value: object) -> float | None:
    """A counter: a number, or the sum of a mapping's numbers (``{"total": n}`` counts as n), else None."""
    number = _number(value)
    if number is not None:
        return number
    if isinstance(value, Mapping):
        if "total" in value:
            return _number(value["total"])
        numbers = [n for n in (_number(item) for item in value.values()) if n is not None]
        return sum(numbers) if numbers else None
    return None


def _max(current: float | None, new: float | None) -> float | None:
    if new is None:
        return current
    return new if current is None else max(current, new)


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    if value is None:
        return "-"
    return format(int(value) if spec == "d" else value, spec) + unit
