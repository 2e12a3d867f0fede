"""``report.html``: a self-contained page of one run, a timeline in inline SVG and the checker's findings.

Nothing is loaded from the network and nothing beyond the standard library is needed: the timeline is SVG
written here. Lanes, one per node: faults as bands, sends (grey) and deliveries (coloured by verdict) as
points, offending messages as red crosses at their send, and a lane of ``expect converged`` bars. When
matplotlib happens to be installed (the ``bench`` extra), ``timeline.png`` is drawn alongside.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from testbed import checker

WIDTH = 1100
LANE = 34
LEFT = 110
MAX_POINTS = 6000
"""Points drawn at most (a long traffic run is thinned evenly, the offenders always shown)."""

VERDICT_COLOURS = {checker.DELIVERED: "#2e7d32", checker.LATE: "#f9a825", checker.DUPLICATED: "#8e24aa",
                   checker.REPORTED: "#1565c0", checker.LOST: "#d32f2f", checker.FORGED: "#000000",
                   checker.LEFT: "#9e9e9e", checker.IN_FLIGHT: "#bdbdbd"}
FAULT_COLOURS = {"down": "#ef9a9a", "paused": "#ffe082", "partitioned": "#b39ddb", "degraded": "#90caf9"}


def render(report: dict[str, Any], records: Sequence[dict[str, Any]], judged: checker.CheckReport) -> str:
    """The page for a run: ``report`` is report.json's data, ``records`` the history, ``judged`` its check."""
    title = f"socp-testbed {report.get('scenario', '?')} on {report.get('backend', '?')}"
    passed = report.get("passed")
    verdict_rows = "".join(
        f"<tr><td><span class=dot style='background:{VERDICT_COLOURS[name]}'></span>{html.escape(name)}</td>"
        f"<td>{count}</td></tr>" for name, count in judged.counts.items())
    invariant_rows = "".join(
        f"<tr class={'ok' if inv.ok else 'bad'}><td>{html.escape(inv.name)}</td><td>{'held' if inv.ok else 'FAILED'}"
        f"</td><td>{inv.count}</td></tr>" for inv in judged.invariants)
    offenders = judged.offenders()
    offender_rows = "".join(f"<li><code>{html.escape(v.line())}</code></li>" for v in offenders[:50])
    more = f"<p>… and {len(offenders) - 50} more in history.jsonl</p>" if len(offenders) > 50 else ""
    step_rows = "".join(
        f"<tr class={'ok' if s.get('ok') else 'bad'}><td>{html.escape(str(s.get('index')))}</td>"
        f"<td>{html.escape(str(s.get('description')))}</td><td>{float(s.get('seconds', 0)):.2f}s</td>"
        f"<td>{html.escape(str(s.get('detail', '')))}</td></tr>" for s in report.get("steps", []))
    convergence = ", ".join(f"step {c['index']}: {c['seconds']:.2f}s"
                            + (f" ({c['after_fault_s']:.1f}s after the last fault ended)"
                               if c.get("after_fault_s") is not None else "") for c in judged.convergence)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }}
h1 {{ font-size: 1.3em; }} h2 {{ font-size: 1.1em; margin-top: 1.5em; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 2px 10px; border-bottom: 1px solid #eee; text-align: left; }}
tr.bad td {{ color: #b71c1c; font-weight: bold; }}
.dot {{ display: inline-block; width: 10px; height: 10px; border-radius: 5px; margin-right: 6px; }}
.verdict {{ font-size: 1.2em; font-weight: bold; color: {'#2e7d32' if passed else '#b71c1c'}; }}
code {{ font-size: 12px; }} svg text {{ font: 11px system-ui, sans-serif; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class=verdict>{'PASSED' if passed else 'FAILED'}</p>
<p>{report.get('peers')} peers, {report.get('introducers')} introducer(s), seed {report.get('seed')}, started
{html.escape(str(report.get('started_at')))}, {float(report.get('duration_s', 0)):.1f}s.
{html.escape(judged.summary())}</p>
<h2>Timeline</h2>
{timeline_svg(records, judged)}
<p>Bands: <span class=dot style='background:{FAULT_COLOURS['down']}'></span>down
<span class=dot style='background:{FAULT_COLOURS['paused']}'></span>paused
<span class=dot style='background:{FAULT_COLOURS['partitioned']}'></span>partitioned
<span class=dot style='background:{FAULT_COLOURS['degraded']}'></span>degraded (delay, loss).
Points: grey = sent (on the sender's node), coloured = delivered (on the recipient's node, by verdict),
red cross = an offending message at its send. Hover for details.</p>
<h2>Verdicts (deliveries owed)</h2><table>{verdict_rows}</table>
<h2>Invariants</h2><table><tr><th>invariant</th><th></th><th>offences</th></tr>{invariant_rows}</table>
<h2>Offending messages</h2>{'<ol>' + offender_rows + '</ol>' if offenders else '<p>none</p>'}{more}
<h2>Confidentiality scan</h2><p>{_confidentiality(report.get('confidentiality') or {})}</p>
<h2>Convergence</h2><p>{html.escape(convergence) or 'no expect converged step'}</p>
<h2>Steps</h2><table>{step_rows}</table>
</body></html>
"""


def _confidentiality(scan: dict[str, Any]) -> str:
    if not scan:
        return "not run"
    if scan.get("ok"):
        return f"passed: the run's marker is in none of the {scan.get('files_scanned')} files the nodes left"
    hits = "".join(f"<li><code>{html.escape(str(h['path']))}</code> at byte {h['offset']}: "
                   f"{html.escape(str(h['encoding']))}</li>" for h in scan.get("hits", []))
    return f"<b>FAILED</b>: the marker was found in the nodes' files<ul>{hits}</ul>"


def timeline_svg(records: Sequence[dict[str, Any]], judged: checker.CheckReport) -> str:
    """The run's timeline as an inline ``<svg>``."""
    nodes = sorted({str(r["node"]) for r in records if r.get("node")} | {f.node for f in judged.faults},
                   key=_node_order)
    lanes = {node: i for i, node in enumerate(nodes)}
    converge_lane = len(nodes)
    height = (len(nodes) + 1) * LANE + 40
    end = max(judged.end_t, 1e-3)

    def x(t: float) -> float:
        return LEFT + (WIDTH - LEFT - 10) * min(max(t, 0.0), end) / end

    def y(lane: int) -> float:
        return 10 + lane * LANE

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
             f'viewBox="0 0 {WIDTH} {height}">']
    for node, lane in lanes.items():
        parts.append(f'<text x="4" y="{y(lane) + LANE / 2 + 4:.1f}">{html.escape(node)}</text>'
                     f'<line x1="{LEFT}" x2="{WIDTH - 10}" y1="{y(lane) + LANE:.1f}" y2="{y(lane) + LANE:.1f}" '
                     f'stroke="#eee"/>')
    parts.append(f'<text x="4" y="{y(converge_lane) + LANE / 2 + 4:.1f}">convergence</text>')
    for fault in judged.faults:
        fault_lane = lanes.get(fault.node)
        if fault_lane is None:
            continue
        stop = end if math.isinf(fault.end) else fault.end
        width = max(2.0, x(stop) - x(fault.start))
        parts.append(f'<rect x="{x(fault.start):.1f}" y="{y(fault_lane):.1f}" width="{width:.1f}" '
                     f'height="{LANE - 2}" fill="{FAULT_COLOURS.get(fault.state, "#ffccbc")}" opacity="0.8">'
                     f'<title>{html.escape(fault.label())}</title></rect>')
    for c in judged.convergence:
        colour = "#66bb6a" if c["ok"] else "#e53935"
        parts.append(f'<rect x="{x(c["t"]):.1f}" y="{y(converge_lane) + 6:.1f}" '
                     f'width="{max(2.0, x(c["t"] + c["seconds"]) - x(c["t"])):.1f}" height="{LANE - 14}" '
                     f'fill="{colour}"><title>step {html.escape(str(c["index"]))}: converged in {c["seconds"]:.2f}s'
                     f'</title></rect>')
    points = judged.verdicts
    stride = max(1, math.ceil(len(points) / MAX_POINTS))
    for i, v in enumerate(points):
        offending = v.verdict in checker.VIOLATIONS
        if i % stride and not offending:
            continue
        sender_lane, recipient_lane = lanes.get(v.sender_node), lanes.get(v.recipient_node)
        tip = html.escape(v.line())
        if sender_lane is not None:
            parts.append(f'<circle cx="{x(v.sent_t):.1f}" cy="{y(sender_lane) + LANE * 0.3:.1f}" r="2" '
                         f'fill="#9e9e9e"><title>{tip}</title></circle>')
            if offending:
                cx, cy = x(v.sent_t), y(sender_lane) + LANE * 0.3
                parts.append(f'<path d="M{cx - 5:.1f},{cy - 5:.1f} L{cx + 5:.1f},{cy + 5:.1f} M{cx - 5:.1f},'
                             f'{cy + 5:.1f} L{cx + 5:.1f},{cy - 5:.1f}" stroke="#d32f2f" stroke-width="2">'
                             f'<title>{tip}</title></path>')
        if recipient_lane is not None:
            for t in v.delivered_t[:3]:
                parts.append(f'<circle cx="{x(t):.1f}" cy="{y(recipient_lane) + LANE * 0.7:.1f}" r="2.5" '
                             f'fill="{VERDICT_COLOURS.get(v.verdict, "#000")}"><title>{tip}</title></circle>')
    axis_y = y(converge_lane) + LANE + 12
    for k in range(11):
        t = end * k / 10
        parts.append(f'<text x="{x(t) - 8:.1f}" y="{axis_y:.1f}">{t:.0f}s</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def write(directory: Path, report: dict[str, Any], records: Sequence[dict[str, Any]],
          judged: checker.CheckReport) -> list[Path]:
    """Write ``report.html`` (and ``timeline.png`` when matplotlib is there) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    page = directory / "report.html"
    page.write_text(render(report, records, judged), encoding="utf-8")
    written = [page]
    png = _png(directory / "timeline.png", judged)
    if png is not None:
        written.append(png)
    return written


def _png(path: Path, judged: checker.CheckReport) -> Path | None:
    """The timeline as a PNG with matplotlib, or None when it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    nodes = sorted({v.sender_node for v in judged.verdicts} | {v.recipient_node for v in judged.verdicts}
                   | {f.node for f in judged.faults}, key=_node_order)
    lanes = {node: i for i, node in enumerate(nodes)}
    figure, axes = plt.subplots(figsize=(12, 1 + 0.45 * (len(nodes) + 1)))
    for fault in judged.faults:
        if fault.node in lanes:
            stop = judged.end_t if math.isinf(fault.end) else fault.end
            axes.barh(lanes[fault.node], stop - fault.start, left=fault.start, height=0.8,
                      color=FAULT_COLOURS.get(fault.state, "#ffccbc"))
    for c in judged.convergence:
        axes.barh(len(nodes), c["seconds"], left=c["t"], height=0.5, color="#66bb6a" if c["ok"] else "#e53935")
    for v in judged.verdicts:
        if v.recipient_node in lanes:
            axes.scatter(v.delivered_t[:3], [lanes[v.recipient_node] + 0.15] * len(v.delivered_t[:3]), s=4,
                         color=VERDICT_COLOURS.get(v.verdict, "#000"))
        if v.verdict in checker.VIOLATIONS and v.sender_node in lanes:
            axes.scatter([v.sent_t], [lanes[v.sender_node] - 0.15], marker="x", color="#d32f2f")
    axes.set_yticks(range(len(nodes) + 1), [*nodes, "convergence"])
    axes.set_xlabel("seconds")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _node_order(name: str) -> tuple[str, int]:
    """introducer1, introducer2, peer1, peer2, …, peer10 (numbers compared as numbers)."""
    stem = name.rstrip("0123456789")
    digits = name[len(stem):]
    return stem, int(digits) if digits else 0
