"""The history checker's verdicts and invariants, on hand-written histories (no nodes, no event loop)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from socp.user import Delivered, DeliveryFailed, DirectMessage, DuplicateDelivery, ServerError
from testbed import checker
from testbed.history import History, digest, read_history


class Script:
    """Builds a history record by record, at chosen times."""

    def __init__(self) -> None:
        self.history = History(None, marker="0" * 32)

    def session(self, t: float, user: str, node: str, state: str = "up") -> None:
        self.history.record("session", at=t, user=user, node=node, user_id=f"{user}-id", state=state)

    def send(self, t: float, ref: str, sender: str, to: str, text: str = "hi", *, kind: str = "dm",
             error: str | None = None) -> None:
        extra: dict[str, Any] = {"error": error} if error else {}
        self.history.record("send", at=t, user=sender, node=f"{sender}-node", kind=kind, to=f"{to}-id", to_user=to,
                            msg_ref=None if error else ref, digest=digest(self.history.marked(text)), length=len(text),
                            **extra)

    def deliver(self, t: float, ref: str, user: str, text: str = "hi", *, kind: str = "dm") -> None:
        self.history.record("deliver", at=t, user=user, node=f"{user}-node", kind=kind, sender_id="x", msg_ref=ref,
                            digest=digest(self.history.marked(text)), intact=True)

    def fault(self, t: float, node: str, action: str, phase: str) -> None:
        self.history.record("fault", at=t, node=node, action=action, phase=phase)

    def check(self) -> checker.CheckReport:
        return checker.check_history(self.history.records, late_after=5.0, settle=1.0)


def users(script: Script, *names: str) -> None:
    for name in names:
        script.session(0.0, name, f"{name}-node")


def verdict_of(report: checker.CheckReport, ref: str) -> checker.Verdict:
    (found,) = [v for v in report.verdicts if v.msg_ref == ref]
    return found


def test_every_verdict_is_named_with_its_path_and_faults() -> None:
    s = Script()
    users(s, "alice", "bob")
    s.send(1.0, "m-once", "alice", "bob")
    s.deliver(1.1, "m-once", "bob")
    s.send(1.2, "m-late", "alice", "bob")
    s.deliver(8.0, "m-late", "bob")
    s.send(1.3, "m-twice", "alice", "bob")
    s.deliver(1.4, "m-twice", "bob")
    s.deliver(1.5, "m-twice", "bob")
    s.send(1.6, "m-lost", "alice", "bob")
    s.send(1.7, "m-error", "alice", "bob")
    s.history.record("error", at=1.8, user="alice", node="alice-node", code="USER_NOT_FOUND", detail="gone",
                     msg_ref="m-error")
    s.send(1.9, "m-changed", "alice", "bob")
    s.deliver(2.0, "m-changed", "bob", text="tampered")
    s.send(2.1, "ignored", "alice", "bob", error="UserNotFound: nobody called bob")
    s.fault(1.55, "bob-node", "pause", "begin")
    s.fault(1.56, "bob-node", "pause", "end")
    s.fault(3.0, "bob-node", "unpause", "begin")
    s.fault(3.1, "bob-node", "unpause", "end")
    s.history.record("step", at=20.0, index="9", description="expect converged within 5s", ok=True, seconds=0.5)
    report = s.check()

    assert verdict_of(report, "m-once").verdict == checker.DELIVERED
    assert verdict_of(report, "m-late").verdict == checker.LATE
    assert verdict_of(report, "m-twice").verdict == checker.DUPLICATED
    lost = verdict_of(report, "m-lost")
    assert lost.verdict == checker.LOST
    assert lost.path == "alice@alice-node -> bob@bob-node"
    assert lost.faults == ["bob-node paused 1.6-3.1s"]
    assert "lost silently" in lost.line() and "bob-node paused" in lost.line()
    reported = verdict_of(report, "m-error")
    assert (reported.verdict, reported.code) == (checker.REPORTED, "USER_NOT_FOUND")
    assert verdict_of(report, "m-changed").verdict == checker.FORGED
    assert [v.code for v in report.verdicts if v.msg_ref.startswith("(send failed")] == ["UserNotFound"]
    assert not report.ok
    failed = {inv.name for inv in report.invariants if not inv.ok}
    # m-late arrived after later ones, but it met the pause in flight: a resend may be overtaken (no order offence)
    assert failed == {"nothing lost silently", "nothing delivered twice",
                      "nothing delivered that was not sent, text intact"}
    assert report.counts[checker.LOST] == 1 and report.counts[checker.DELIVERED] == 1
    assert report.convergence == [{"index": "9", "t": 20.0, "seconds": 0.5, "ok": True, "after_fault_s": 17.4}]


def test_a_recipient_that_left_for_good_is_not_a_silent_loss_but_one_that_came_back_is() -> None:
    s = Script()
    users(s, "alice", "bob", "carol")
    s.send(1.0, "to-bob", "alice", "bob")
    s.session(1.1, "bob", "bob-node", "down")
    s.send(1.0, "to-carol", "alice", "carol")
    s.session(1.1, "carol", "carol-node", "down")
    s.session(4.0, "carol", "other-node", "up")
    s.send(9.5, "recent", "alice", "carol")
    s.session(10.0, "alice", "alice-node", "down")
    report = s.check()
    assert verdict_of(report, "to-bob").verdict == checker.LEFT
    assert verdict_of(report, "to-carol").verdict == checker.LOST
    assert verdict_of(report, "recent").verdict == checker.IN_FLIGHT


def test_order_phantoms_and_public_members() -> None:
    s = Script()
    users(s, "alice", "bob", "carol")
    s.send(1.0, "first", "alice", "bob")
    s.send(1.1, "second", "alice", "bob")
    s.deliver(1.3, "second", "bob")
    s.deliver(1.4, "first", "bob")
    s.deliver(1.5, "never-sent", "carol")
    s.send(2.0, "pub", "alice", "public", kind="public")
    s.deliver(2.1, "pub", "bob", kind="public")
    s.deliver(2.2, "pub", "carol", kind="public")
    s.history.record("duplicate", at=2.3, user="carol", node="carol-node", sender_id="x", msg_ref="pub")
    s.send(3.0, "held", "alice", "bob")  # in flight across a pause: resent later, overtaken legitimately
    s.fault(3.05, "bob-node", "pause", "begin")
    s.fault(3.06, "bob-node", "pause", "end")
    s.fault(3.2, "bob-node", "unpause", "begin")
    s.fault(3.21, "bob-node", "unpause", "end")
    s.send(3.3, "after", "alice", "bob")  # met no fault, shown before "held": not an offence either
    s.deliver(3.4, "after", "bob")
    s.deliver(3.5, "held", "bob")
    s.session(9.0, "alice", "alice-node", "down")
    report = s.check()
    order = next(inv for inv in report.invariants if inv.name.startswith("per-sender order"))
    assert not order.ok and order.count == 1 and order.examples[0].startswith("dm second ")
    assert order.examples[0].endswith("shown before a message sent earlier")
    assert verdict_of(report, "never-sent").note == "delivered but never sent"
    public = {v.recipient: v.verdict for v in report.verdicts if v.msg_ref == "pub"}
    assert public == {"bob": checker.DELIVERED, "carol": checker.DUPLICATED}


def test_history_observe_strips_the_marker_and_records_without_plaintext(tmp_path: Path) -> None:
    history = History(tmp_path / "history.jsonl")
    event = DirectMessage("s-id", "s", history.marked("secret words"), 1, "MSG_DIRECT:s:r:1")
    seen = history.observe("bob", "peer2", event)
    assert isinstance(seen, DirectMessage) and seen.text == "secret words"
    history.observe("bob", "peer2", DuplicateDelivery("s-id", "s", "MSG_DIRECT:s:r:1"))
    history.observe("alice", "peer1", ServerError("TIMEOUT", "gave up", "MSG_DIRECT:s:r:1"))
    history.close()
    text = (tmp_path / "history.jsonl").read_text()
    assert "secret words" not in text and history.marker not in text
    records = read_history(tmp_path)
    assert [r["type"] for r in records] == ["deliver", "duplicate", "error"]
    assert records[0]["intact"] and records[0]["digest"] == digest(history.marked("secret words"))
    assert json.loads(text.splitlines()[2])["code"] == "TIMEOUT"


def test_check_command_reads_a_run_folder(tmp_path: Path, capsys: Any) -> None:
    s = Script()
    users(s, "alice", "bob")
    s.send(1.0, "m-lost", "alice", "bob")
    s.session(9.0, "alice", "alice-node", "down")
    (tmp_path / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in s.history.records))
    from testbed.cli import main

    assert main(["check", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "1 lost silently" in out and "m-lost alice@alice-node -> bob@bob-node" in out
    assert main(["check", str(tmp_path / "nowhere")]) == 2


def test_report_html_is_self_contained_and_names_the_offenders(tmp_path: Path) -> None:
    from xml.dom import minidom

    from testbed import report_html

    s = Script()
    users(s, "alice", "bob")
    s.send(1.0, "m-ok", "alice", "bob")
    s.deliver(1.2, "m-ok", "bob")
    s.send(1.5, "m-lost", "alice", "bob")
    s.fault(1.4, "bob-node", "kill", "begin")
    s.fault(1.5, "bob-node", "kill", "end")
    s.fault(4.0, "bob-node", "start", "begin")
    s.fault(4.5, "bob-node", "start", "end")
    s.history.record("step", at=5.0, index="7", description="expect converged within 5s", ok=True, seconds=1.0)
    s.session(9.0, "alice", "alice-node", "down")
    judged = s.check()
    written = report_html.write(tmp_path, {"scenario": "demo", "backend": "local", "passed": False,
                                           "steps": [{"index": "7", "description": "expect converged",
                                                      "ok": True, "seconds": 1.0}]}, s.history.records, judged)
    page = written[0].read_text()
    assert written[0].name == "report.html"
    assert "m-lost alice@alice-node -&gt; bob@bob-node" in page and "lost silently" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page
    svg = page[page.index("<svg"):page.index("</svg>") + len("</svg>")]
    document = minidom.parseString(svg)
    titles = [node.data for title in document.getElementsByTagName("title") for node in title.childNodes
              if isinstance(node, minidom.Text)]
    assert "bob-node down 1.4-4.5s" in titles
    assert any(title.startswith("step 7: converged in 1.00s") for title in titles)


def test_a_delivery_receipt_is_recorded_and_a_failed_one_reports_to_the_sender() -> None:
    s = Script()
    users(s, "alice", "bob")
    s.send(1.0, "m-failed", "alice", "bob")
    s.send(1.1, "m-claimed", "alice", "bob")
    s.history.observe("alice", "alice-node", DeliveryFailed("m-failed", "TIMEOUT", "no receipt within 10 s"))
    s.history.observe("alice", "alice-node", Delivered("m-claimed"))
    s.session(9.0, "alice", "alice-node", "down")
    report = s.check()
    failed = verdict_of(report, "m-failed")
    assert (failed.verdict, failed.code) == (checker.REPORTED, "TIMEOUT")
    claimed = verdict_of(report, "m-claimed")
    assert claimed.verdict == checker.LOST and "receipt" in claimed.note


def test_a_repeat_resent_after_a_crash_and_dropped_by_the_client_is_not_a_duplicate() -> None:
    s = Script()
    users(s, "alice", "bob")
    s.send(1.0, "resent", "alice", "bob")
    s.deliver(1.1, "resent", "bob")
    s.fault(1.5, "bob-node", "kill", "begin")  # bob's node dies before its receipt left: alice's node resends
    s.fault(1.6, "bob-node", "kill", "end")
    s.fault(2.0, "bob-node", "start", "begin")
    s.fault(2.5, "bob-node", "start", "end")
    s.history.record("duplicate", at=3.0, user="bob", node="bob-node", sender_id="x", msg_ref="resent")
    s.send(4.0, "doubled", "alice", "bob")  # a repeat with no fault since it was shown: a real duplicate
    s.deliver(4.1, "doubled", "bob")
    s.history.record("duplicate", at=4.2, user="bob", node="bob-node", sender_id="x", msg_ref="doubled")
    s.session(9.0, "alice", "alice-node", "down")
    report = s.check()
    resent = verdict_of(report, "resent")
    assert resent.verdict == checker.DELIVERED and "dropped by the client" in resent.note
    assert verdict_of(report, "doubled").verdict == checker.DUPLICATED
