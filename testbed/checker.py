"""Judges a run's history (:mod:`testbed.history`): a verdict for every message, and the run's invariants.

A message is judged once per recipient it was owed to (a DM: its addressee; a public message: every other
user connected when it was sent), so the counts are *deliveries owed*. Verdicts:

``delivered once``           arrived exactly once, intact, within ``late_after`` seconds
``delivered late``           arrived exactly once, intact, later than that (not a violation)
``duplicated``               arrived more than once (a copy the client dropped counts, unless every dropped
                             copy came after a fault on its path that began after it was shown: a resend)
``reported to sender``       never arrived, and the sender was told: an ERROR naming its ``msg_ref``, a failed
                             receipt, or the send itself raised (the code says which)
``lost silently``            never arrived and the sender was never told, though the recipient was online
``forged or undecryptable``  arrived changed (digest or marker), could not be decrypted, or was never sent
``recipient left``           never arrived, the recipient's connection ended before it could and it did not
                             come back (not a violation: the runner itself closed it)
``in flight at end``         sent less than ``settle`` seconds before the history ends (not a violation)

Invariants: nothing lost silently, nothing delivered twice, nothing delivered that was not sent (or changed),
per-sender order kept between each pair of users (among messages that met no fault in flight: a message
resent after a link loss may be overtaken), and every ``expect converged`` step passed (the time from each
fault's end to the next converged directory is reported).

``socp-testbed check results/<run>`` runs it offline and prints the same summary the runner prints.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from testbed.history import HISTORY_FILE, read_history

DELIVERED = "delivered once"
LATE = "delivered late"
DUPLICATED = "duplicated"
REPORTED = "reported to sender"
LOST = "lost silently"
FORGED = "forged or undecryptable"
LEFT = "recipient left"
IN_FLIGHT = "in flight at end"
VERDICTS = (DELIVERED, LATE, DUPLICATED, REPORTED, LOST, FORGED, LEFT, IN_FLIGHT)
VIOLATIONS = frozenset({DUPLICATED, LOST, FORGED})

LATE_AFTER = 5.0
"""Seconds after which a delivery is late (scaled by the run's timeout factor)."""
SETTLE = 3.0
"""A message sent this close to the end of the history may still be on its way."""
SHOWN = 5
"""Offending messages printed when a run fails."""
LOG_LINES_PER_NODE = 4
TEARDOWN = "teardown"
"""The ``reason`` of a session the runner closed after the last step: it counts as open to the end."""

FAULT_OPENS = {"kill": "down", "stop": "down", "restart": "down", "pause": "paused", "partition": "partitioned",
               "degrade": "degraded"}
"""Fault action → the state it opens (at its ``begin``)."""
FAULT_CLOSES = {"start": "down", "restart": "down", "unpause": "paused", "heal": "partitioned",
                "restore": "degraded"}
"""Fault action → the state it closes (at its ``end``); any other action is a band from its begin to its end."""


@dataclass(frozen=True, slots=True)
class Fault:
    """A fault interval: ``node`` was ``state`` from ``start`` to ``end`` (seconds of the history)."""

    node: str
    state: str
    start: float
    end: float

    def label(self) -> str:
        """``peer2 down 12.3-15.9s``."""
        end = "end" if math.isinf(self.end) else f"{self.end:.1f}s"
        return f"{self.node} {self.state} {self.start:.1f}-{end}"


@dataclass(slots=True)
class Verdict:
    """One delivery owed: a message to one recipient, and what became of it."""

    msg_ref: str
    kind: str
    sender: str
    sender_node: str
    recipient: str
    recipient_node: str
    sent_t: float
    sent_wall: float
    verdict: str = LOST
    code: str | None = None
    delivered_t: list[float] = field(default_factory=list)
    latency_s: float | None = None
    faults: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def path(self) -> str:
        """``user1@peer1 -> user4@peer2``."""
        return f"{self.sender}@{self.sender_node} -> {self.recipient}@{self.recipient_node}"

    def line(self) -> str:
        """One line naming the message, its path, its verdict and the faults active while it was in flight."""
        verdict = self.verdict + (f" ({self.code})" if self.code else "")
        extra = f"; {self.note}" if self.note else ""
        faults = f"; faults in flight: {', '.join(self.faults)}" if self.faults else ""
        return f"{self.kind} {self.msg_ref} {self.path} sent at {self.sent_t:.2f}s: {verdict}{extra}{faults}"


@dataclass(slots=True)
class Invariant:
    """An invariant of the run: held or not, with how many offences and a few examples."""

    name: str
    ok: bool
    count: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass(slots=True)
class CheckReport:
    """Everything the checker concluded about one history."""

    verdicts: list[Verdict]
    invariants: list[Invariant]
    faults: list[Fault]
    convergence: list[dict[str, Any]]
    """Each ``expect converged`` step: ``{index, t, seconds, ok, after_fault_s}``."""
    end_t: float

    @property
    def ok(self) -> bool:
        """Every invariant held."""
        return all(inv.ok for inv in self.invariants)

    @property
    def counts(self) -> dict[str, int]:
        """Verdict → deliveries owed with it (every verdict named, zeros included)."""
        tally = Counter(v.verdict for v in self.verdicts)
        return {name: tally[name] for name in VERDICTS}

    def offenders(self) -> list[Verdict]:
        """The verdicts that violate an invariant, earliest first."""
        return sorted((v for v in self.verdicts if v.verdict in VIOLATIONS), key=lambda v: v.sent_t)

    def summary(self) -> str:
        """One line: the verdict counts and the invariants that failed."""
        counts = ", ".join(f"{n} {name}" for name, n in self.counts.items() if n)
        failed = [f"{inv.name} ({inv.count})" for inv in self.invariants if not inv.ok]
        return (f"history: {len(self.verdicts)} deliveries owed: {counts or 'none'}; "
                + ("every invariant held" if not failed else "FAILED " + ", ".join(failed)))

    def to_json(self) -> dict[str, Any]:
        """The figures for ``report.json`` (verdicts of offenders only: the full list is in the history)."""
        return {"ok": self.ok, "verdict_counts": self.counts,
                "invariants": [asdict(inv) for inv in self.invariants],
                "offenders": [asdict(v) for v in self.offenders()[:50]],
                "faults": [{**asdict(f), "end": None if math.isinf(f.end) else f.end} for f in self.faults],
                "convergence": self.convergence}


def check_history(records: Sequence[dict[str, Any]], *, late_after: float = LATE_AFTER,
                  settle: float = SETTLE) -> CheckReport:
    """Judge ``records`` (a run's history, in the order written)."""
    records = sorted(records, key=lambda r: (r.get("t", 0.0), r.get("seq", 0)))
    end_t = max((float(r.get("t", 0.0)) for r in records), default=0.0)
    sessions = _sessions(records)
    faults = _faults(records, end_t)
    sends = [r for r in records if r["type"] == "send"]
    deliveries: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    duplicates: defaultdict[tuple[str, str], list[float]] = defaultdict(list)
    unreadable: dict[tuple[str, str], str] = {}
    errors: dict[str, dict[str, Any]] = {}
    receipts: dict[str, dict[str, Any]] = {}
    for r in records:
        kind = r["type"]
        if kind == "deliver":
            deliveries[(r["msg_ref"], r["user"])].append(r)
        elif kind == "duplicate":
            duplicates[(r["msg_ref"], r["user"])].append(float(r["t"]))
        elif kind == "unreadable":
            unreadable[(r["msg_ref"], r["user"])] = r.get("reason", "")
        elif kind == "error" and r.get("msg_ref"):
            errors.setdefault(r["msg_ref"], r)
        elif kind == "receipt":
            receipts.setdefault(r["msg_ref"], r)

    verdicts: list[Verdict] = []
    sent_refs: set[str] = set()
    for send in sends:
        ref = send.get("msg_ref")
        if ref:
            sent_refs.add(ref)
        for recipient in _recipients(send, sessions):
            verdict = Verdict(ref or f"(send failed #{send['seq']})", send["kind"], send["user"], send["node"],
                              recipient, _node_at(sessions, recipient, send["t"]) or "offline", send["t"],
                              send["wall"])
            repeats = duplicates.get((ref, recipient), []) if ref else []
            _judge(verdict, send, deliveries.get((ref, recipient), []) if ref else [], len(repeats),
                   unreadable.get((ref, recipient)) if ref else None, errors.get(ref) if ref else None,
                   receipts.get(ref) if ref else None, sessions, end_t, late_after, settle)
            verdict.faults = [f.label() for f in faults
                              if f.start <= (verdict.delivered_t[0] if verdict.delivered_t else end_t)
                              and f.end >= verdict.sent_t]
            _excuse_resends(verdict, repeats, faults, late_after)
            verdicts.append(verdict)
    verdicts += _phantoms(deliveries, sent_refs, sessions)
    invariants = _invariants(verdicts, records)
    convergence = _convergence(records, faults)
    failed = [c for c in convergence if not c["ok"]]
    invariants.append(Invariant("directories converge within the bound", not failed, len(failed),
                                [f"step {c['index']} at {c['t']:.1f}s" for c in failed[:SHOWN]]))
    return CheckReport(verdicts, invariants, faults, convergence, end_t)


def _judge(verdict: Verdict, send: dict[str, Any], copies: list[dict[str, Any]], dropped: int,
           unreadable: str | None, error: dict[str, Any] | None, receipt: dict[str, Any] | None,
           sessions: dict[str, list[tuple[float, float, str]]], end_t: float, late_after: float,
           settle: float) -> None:
    verdict.delivered_t = [c["t"] for c in copies]
    if send.get("error"):
        verdict.verdict, verdict.code = REPORTED, str(send["error"]).split(":")[0]
        return
    if copies:
        verdict.latency_s = round(copies[0]["t"] - send["t"], 6)
        changed = [c for c in copies if c.get("digest") != send.get("digest") or not c.get("intact", True)]
        if changed:
            verdict.verdict, verdict.note = FORGED, "the text that arrived differs from the text sent"
        elif len(copies) + dropped > 1:
            verdict.verdict, verdict.note = DUPLICATED, f"{len(copies) + dropped} copies"
        else:
            verdict.verdict = LATE if verdict.latency_s > late_after else DELIVERED
        return
    if dropped:
        verdict.verdict, verdict.note = DUPLICATED, f"{dropped} copies dropped as duplicates, none shown"
        return
    if unreadable is not None:
        verdict.verdict, verdict.note = FORGED, f"undecryptable: {unreadable}"
        return
    if error is not None:
        verdict.verdict, verdict.code = REPORTED, str(error.get("code"))
        return
    if receipt is not None and receipt.get("outcome") == "failed":
        verdict.verdict, verdict.code = REPORTED, str(receipt.get("code") or "receipt: failed")
        return
    if receipt is not None:
        verdict.note = "a delivered receipt came back, but the recipient never showed it"
    if send["t"] > end_t - settle:
        verdict.verdict = IN_FLIGHT
        return
    # Lost when the recipient could still have got it: connected from the send to the end, or back later.
    spans = sessions.get(verdict.recipient, [])
    back_later = any(start > send["t"] for start, _, _ in spans)
    still_on = any(start <= send["t"] and math.isinf(stop) for start, stop, _ in spans)
    verdict.verdict = LOST if back_later or still_on else LEFT


def _excuse_resends(verdict: Verdict, repeats: list[float], faults: list[Fault], late_after: float) -> None:
    """A message shown once whose every dropped repeat came after a fault on its path that began after it was
    shown is not a duplicate: delivery receipts resend what a crash or a link loss left unacknowledged, a
    restarted node cannot know it delivered it, and the client drops the repeat by ``msg_ref`` (WIRE §7)."""
    if verdict.verdict != DUPLICATED or len(verdict.delivered_t) != 1 or not repeats:
        return
    shown = verdict.delivered_t[0]
    path = {verdict.sender_node, verdict.recipient_node}
    causes = [next((f for f in faults if f.node in path and shown <= f.start <= repeat), None) for repeat in repeats]
    if any(cause is None for cause in causes):
        return
    verdict.verdict = LATE if (verdict.latency_s or 0.0) > late_after else DELIVERED
    verdict.note = (f"{len(repeats)} repeat(s) resent after {causes[0].label() if causes[0] else 'a fault'} "
                    "dropped by the client")


def _recipients(send: dict[str, Any], sessions: dict[str, list[tuple[float, float, str]]]) -> list[str]:
    if send["kind"] == "dm":
        return [str(send.get("to_user") or send.get("to"))]
    return sorted(user for user, spans in sessions.items()
                  if user != send["user"] and any(start <= send["t"] <= stop for start, stop, _ in spans))


def _phantoms(deliveries: dict[tuple[str, str], list[dict[str, Any]]], sent: set[str],
              sessions: dict[str, list[tuple[float, float, str]]]) -> list[Verdict]:
    """A verdict for every message delivered that nobody in the run sent."""
    found = []
    for (ref, user), copies in deliveries.items():
        if ref not in sent:
            first = copies[0]
            found.append(Verdict(ref, first.get("kind", "?"), str(first.get("sender_id", "?"))[:8], "?", user,
                                 first.get("node", "?"), first["t"], first["wall"], FORGED,
                                 delivered_t=[c["t"] for c in copies], note="delivered but never sent"))
    return found


def _invariants(verdicts: list[Verdict], records: Sequence[dict[str, Any]]) -> list[Invariant]:
    def held(name: str, offenders: list[Verdict]) -> Invariant:
        return Invariant(name, not offenders, len(offenders), [v.line() for v in offenders[:SHOWN]])

    invariants = [held("nothing lost silently", [v for v in verdicts if v.verdict == LOST]),
                  held("nothing delivered twice", [v for v in verdicts if v.verdict == DUPLICATED]),
                  held("nothing delivered that was not sent, text intact",
                       [v for v in verdicts if v.verdict == FORGED])]
    # Order: between one sender and one recipient, messages show in the order they were sent. A message that
    # met a fault in flight may be overtaken, or overtake, legitimately: delivery receipts resend what a dead
    # link or a crashed node left unacknowledged once the link is back, after newer messages went another way.
    by_pair: dict[tuple[str, str], list[Verdict]] = defaultdict(list)
    for v in verdicts:
        if v.kind == "dm" and v.delivered_t and v.sender_node != "?":
            by_pair[(v.sender, v.recipient)].append(v)
    out_of_order = []
    for pair in by_pair.values():
        latest, latest_faulted = -1.0, False
        for v in sorted(pair, key=lambda v: v.sent_t):
            if v.delivered_t[0] < latest and not (v.faults or latest_faulted):
                out_of_order.append(v)
            if v.delivered_t[0] >= latest:
                latest, latest_faulted = v.delivered_t[0], bool(v.faults)
    invariants.append(Invariant("per-sender order kept between each pair of users", not out_of_order,
                                len(out_of_order), [f"{v.line()}; shown before a message sent earlier"
                                                    for v in out_of_order[:SHOWN]]))
    rejected = [r for r in records if r["type"] == "rejected"]
    invariants.append(Invariant("no frame refused by a client", not rejected, len(rejected),
                                [f"{r['user']}@{r['node']} at {r['t']:.2f}s: {r.get('frame_type')} "
                                 f"{r.get('reason')}" for r in rejected[:SHOWN]]))
    return invariants


def _sessions(records: Iterable[dict[str, Any]]) -> dict[str, list[tuple[float, float, str]]]:
    """User → its connections as ``(start, end, node)``; one still open ends at infinity."""
    spans: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    open_at: dict[str, tuple[float, str]] = {}
    for r in records:
        if r["type"] != "session":
            continue
        if r.get("state") == "up":
            open_at[r["user"]] = (r["t"], r["node"])
        elif r["user"] in open_at and r.get("reason") != TEARDOWN:
            start, node = open_at.pop(r["user"])
            spans[r["user"]].append((start, r["t"], node))
    for user, (start, node) in open_at.items():
        spans[user].append((start, math.inf, node))
    return spans


def _node_at(sessions: dict[str, list[tuple[float, float, str]]], user: str, t: float) -> str | None:
    for start, stop, node in sessions.get(user, []):
        if start <= t <= stop:
            return node
    return None


def _faults(records: Iterable[dict[str, Any]], end_t: float) -> list[Fault]:
    """Fault intervals from the ``fault`` records' begin/end pairs."""
    faults: list[Fault] = []
    open_at: dict[tuple[str, str], float] = {}
    begun: dict[tuple[str, str], float] = {}
    for r in records:
        if r["type"] != "fault":
            continue
        node, action, phase, t = str(r.get("node")), str(r.get("action")), r.get("phase"), float(r["t"])
        if phase == "begin":
            begun[(node, action)] = t
            state = FAULT_OPENS.get(action)
            if state is not None and (node, state) not in open_at:
                open_at[(node, state)] = t
        else:
            start = begun.pop((node, action), t)
            state = FAULT_CLOSES.get(action)
            if state is not None:
                if (node, state) in open_at:
                    faults.append(Fault(node, state, open_at.pop((node, state)), t))
            elif action not in FAULT_OPENS:
                faults.append(Fault(node, action, start, t))
    faults += [Fault(node, state, start, math.inf) for (node, state), start in open_at.items()]
    return sorted(faults, key=lambda f: f.start)


def _convergence(records: Iterable[dict[str, Any]], faults: list[Fault]) -> list[dict[str, Any]]:
    steps = [r for r in records if r["type"] == "step" and str(r.get("description", "")).startswith("expect converged")]
    result = []
    for step in steps:
        done = step["t"] + float(step.get("seconds", 0.0))
        healed = [f.end for f in faults if not math.isinf(f.end) and f.end <= done]
        result.append({"index": step.get("index"), "t": step["t"], "seconds": round(float(step.get("seconds", 0)), 3),
                       "ok": bool(step.get("ok")),
                       "after_fault_s": round(done - max(healed), 3) if healed else None})
    return result


# --- explaining a failure ------------------------------------------------------------------------

_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")
_LINK_WORDS = ("link", "silent", "dead", "stalled", "unreachable", "refused")


def log_lines(logs: Path, verdict: Verdict, user_ids: dict[str, str], *, before: float = 1.0,
              after: float = 2.0) -> dict[str, list[str]]:
    """Lines of the logs of the nodes on ``verdict``'s path that bear on it, most telling first.

    First the lines naming the message's ``msg_ref`` (nodes log it at DEBUG), then, within the message's
    flight (from ``before`` seconds before the send to ``after`` after its end), up to two link events, then
    lines naming one of its two users; at most :data:`LOG_LINES_PER_NODE` a node, in the log's order. ``user_ids`` maps
    user names to ids (nodes log the first 8 characters).
    """
    end = verdict.sent_wall + ((verdict.delivered_t[0] - verdict.sent_t) if verdict.delivered_t else 10.0)
    names = [user_ids.get(verdict.sender, verdict.sender)[:8], user_ids.get(verdict.recipient, verdict.recipient)[:8]]
    found: dict[str, list[str]] = {}
    for node in dict.fromkeys((verdict.sender_node, verdict.recipient_node)):
        try:
            lines = (logs / f"{node}.log").read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        tiers: list[list[int]] = [[], [], []]
        for number, line in enumerate(lines):
            if verdict.msg_ref in line:
                tiers[0].append(number)
                continue
            stamp = _log_time(line)
            if stamp is None or not (verdict.sent_wall - before <= stamp <= end + after):
                continue
            if any(name and name in line for name in names):
                tiers[1].append(number)
            elif any(word in line for word in _LINK_WORDS):
                tiers[2].append(number)
        # The message's own lines first, then up to two link events, then lines about its users.
        picked = tiers[0][:LOG_LINES_PER_NODE]
        picked += tiers[2][:min(2, LOG_LINES_PER_NODE - len(picked))]
        picked += tiers[1][:LOG_LINES_PER_NODE - len(picked)]
        chosen = sorted(picked)
        if chosen:
            found[node] = [lines[n] for n in chosen]
    return found


def _log_time(line: str) -> float | None:
    match = _LOG_TIME.match(line)
    if match is None:
        return None
    # Nodes stamp their lines in local time, as this process reads it (both run on this machine's clock).
    moment = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")
    return moment.timestamp() + int(match.group(2)) / 1000


def explain(report: CheckReport, records: Sequence[dict[str, Any]], logs: Path | None, shown: int = SHOWN,
            *, undelivered: bool = False) -> list[str]:
    """The lines a failed run prints: its summary, the first offending messages, and their nodes' log lines.

    With ``undelivered`` (a step failed), and when no invariant names a message, the first messages that did
    not arrive (reported to their sender, recipient left, in flight) are shown instead: they are why a
    delivery check failed.
    """
    lines = [report.summary()]
    user_ids = {r["user"]: r.get("user_id", "") for r in records if r["type"] == "session" and r.get("user_id")}
    offenders = report.offenders()
    if not offenders and undelivered:
        offenders = sorted((v for v in report.verdicts if v.verdict in (REPORTED, LEFT, IN_FLIGHT)),
                           key=lambda v: v.sent_t)
    for verdict in offenders[:shown]:
        lines.append(f"  {verdict.line()}")
        if logs is not None:
            for node, node_lines in log_lines(logs, verdict, user_ids).items():
                lines += [f"      {node}: {line}" for line in node_lines]
    if len(offenders) > shown:
        lines.append(f"  ... and {len(offenders) - shown} more (report.json, history.jsonl)")
    for inv in report.invariants:
        if not inv.ok and inv.name not in ("nothing lost silently", "nothing delivered twice",
                                           "nothing delivered that was not sent, text intact"):
            lines.append(f"  {inv.name}: {inv.count} offences")
            lines += [f"    {example}" for example in inv.examples]
    return lines


def check_run(directory: Path, *, late_after: float = LATE_AFTER) -> tuple[CheckReport, list[str]]:
    """Check the run in ``directory`` (its ``history.jsonl``, and its ``logs/`` for the explanation)."""
    records = read_history(directory / HISTORY_FILE)
    report = check_history(records, late_after=late_after)
    logs = directory / "logs"
    return report, explain(report, records, logs if logs.is_dir() else None)


# --- command line --------------------------------------------------------------------------------

def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``check`` command to ``socp-testbed``."""
    parser = commands.add_parser("check", help="judge a finished run's history: per-message verdicts, invariants")
    parser.add_argument("run", type=Path, help="the run's results folder (holding history.jsonl)")
    parser.add_argument("--late-after", type=float, default=LATE_AFTER, metavar="S",
                        help="a delivery later than this is 'delivered late' (default %(default)g)")
    parser.add_argument("--json", action="store_true", help="print the checker's figures as JSON")
    parser.add_argument("--html", action="store_true", help="write report.html (and timeline.png) into the run")
    parser.set_defaults(func=check_command)


def check_command(args: argparse.Namespace) -> int:
    """``socp-testbed check RUN``: exit 0 when every invariant held, 1 when one did not, 2 without a history."""
    if not (args.run / HISTORY_FILE).exists():
        print(f"socp-testbed: no {HISTORY_FILE} in {args.run}", file=sys.stderr)
        return 2
    report, lines = check_run(args.run, late_after=args.late_after)
    if args.html:
        from testbed import report_html

        summary = args.run / "report.json"
        data = json.loads(summary.read_text()) if summary.exists() else {}
        written = report_html.write(args.run, data, read_history(args.run), report)
        lines.append("wrote " + ", ".join(str(path) for path in written))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print("\n".join(lines))
    return 0 if report.ok else 1
