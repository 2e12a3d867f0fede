"""The failure detector (socp.server.liveness): our own stalls are not the peers' silence; suspicion before
death; the counters on status()."""

from __future__ import annotations

import logging

from socp.actions import LinkDown
from socp.server.liveness import FailureDetector, Verdict
from tests.unit.harness import FAST, TICK, Net, drop_from

TIMEOUT = FAST["peer_timeout_ms"]
HEARTBEAT = FAST["heartbeat_interval_ms"]


def test_a_stalled_server_accuses_nobody_of_its_own_stall(net: Net) -> None:
    intro = net.introducer("I")
    a, b, c = (net.peer(name, intro) for name in ("A", "B", "C"))
    net.run(3 * HEARTBEAT)
    net.user("alice", a)                             # A's advert: every peer heard from A just now
    net.pause(a)                                     # then A's loop blocks for longer than the peer timeout
    net.run(TIMEOUT + HEARTBEAT // 2)
    net.resume(a)                                    # its late timer runs before it reads what waited
    net.run(2 * TIMEOUT)
    assert net.full_mesh(), net.describe()
    assert not any(node.events_of(LinkDown) for node in (intro, a, b, c)), "nobody lost a link"
    status = a.state.status()
    assert (status["stalls"], status["link_deaths"]) == (1, 0)
    assert all(node.state.status()["stalls"] == 0 for node in (b, c))


def test_a_stall_of_ours_voids_a_suspicion_it_spans(net: Net) -> None:
    intro = net.introducer("I")
    a, b = net.peer("A", intro), net.peer("B", intro)
    link = a.state.links.server_link(b.server_id)
    assert link is not None
    net.drop = drop_from("B")
    net.run_until(lambda: link.suspected_at is not None, 2 * TIMEOUT, "A suspects B")
    net.pause(a)                                     # A stalls for longer than the suspicion lasts...
    net.drop = None                                  # ...while B's frames flow again and wait in A's socket
    net.run(2 * HEARTBEAT)
    net.resume(a)                                    # A's late timer runs first: the stall voids the suspicion
    net.run(HEARTBEAT)
    assert b.server_id in a.state.linked_servers and not a.events_of(LinkDown)
    assert a.state.status()["link_deaths"] == 0 and a.state.status()["stalls"] == 1


def test_a_long_stall_costs_the_stalled_server_its_links_not_its_peers_theirs(net: Net) -> None:
    intro = net.introducer("I")
    a, b, c = (net.peer(name, intro) for name in ("A", "B", "C"))
    net.pause(a)
    net.run(2 * TIMEOUT + HEARTBEAT)
    net.resume(a)
    # The others judged A by their own clocks (it was silent) and closed their links; A accused nobody.
    assert a.state.status()["link_deaths"] == 0 and a.state.status()["stalls"] == 1
    assert all(node.state.status()["link_deaths"] >= 1 for node in (b, c))
    assert b.server_id in c.state.linked_servers and not b.events_of(LinkDown)[1:]
    net.run_until(lambda: net.full_mesh(), 3 * TIMEOUT + 2 * FAST["backoff_max_ms"], "A links again")


def test_a_peer_silent_while_we_are_awake_is_suspected_then_declared_dead(net: Net) -> None:
    intro = net.introducer("I")
    a, b = net.peer("A", intro), net.peer("B", intro)
    net.drop = drop_from("B")
    elapsed = net.run_until(lambda: b.server_id not in a.state.linked_servers, 3 * TIMEOUT, "A drops B")
    assert TIMEOUT + HEARTBEAT <= elapsed <= TIMEOUT + HEARTBEAT + 2 * TICK
    status = a.state.status()
    assert status["link_deaths"] == 1 and status["stalls"] == 0


def test_a_frame_during_the_suspicion_clears_it(net: Net) -> None:
    intro = net.introducer("I")
    a, b = net.peer("A", intro), net.peer("B", intro)
    net.drop = drop_from("B")
    link = a.state.links.server_link(b.server_id)
    assert link is not None
    net.run_until(lambda: link.suspected_at is not None, 2 * TIMEOUT, "A suspects B")
    net.drop = None                                  # B's next heartbeat gets through
    net.run(2 * HEARTBEAT)
    assert link.suspected_at is None and b.server_id in a.state.linked_servers
    assert a.state.status()["link_deaths"] == 0


def test_a_stall_shorter_than_the_threshold_is_not_counted(net: Net) -> None:
    intro = net.introducer("I")
    a = net.peer("A", intro)
    net.pause(a)
    net.run(a.state.links.detector.stall_ms // 2)
    net.resume(a)
    net.run(HEARTBEAT)
    assert a.state.status()["stalls"] == 0


def test_status_reports_the_counters_at_top_level(net: Net) -> None:
    intro = net.introducer("I")
    a = net.peer("A", intro)
    net.run(3 * HEARTBEAT)
    status = a.state.status()
    assert {key: type(status[key]) for key in ("link_deaths", "stalls", "heartbeat_signatures")} == {
        "link_deaths": int, "stalls": int, "heartbeat_signatures": int}
    assert status["heartbeat_signatures"] <= 3 + 1     # at most one per interval, whatever the links


def test_silence_is_judged_only_up_to_the_input_we_have_processed() -> None:
    # A shell that runs its timer ahead of queued frames (node/core.py) says when the oldest of them arrived:
    # a peer whose frames may be waiting in our own queue is not silent beyond that moment.
    log = logging.LoggerAdapter(logging.getLogger("test"), {})
    detector = FailureDetector(HEARTBEAT, TIMEOUT, now=0)
    last_seen = 0
    detector.promised(TIMEOUT + 1)
    detector.timer_fired(TIMEOUT + 1, log, processed_until=HEARTBEAT)   # our backlog began at HEARTBEAT
    assert detector.silence(last_seen, TIMEOUT + 1) == HEARTBEAT
    assert detector.judge(last_seen, None, TIMEOUT + 1) is Verdict.ALIVE
    # The link is judged again a little later, not at once in a busy loop.
    assert TIMEOUT + 1 < detector.deadline(last_seen, None) <= TIMEOUT + 1 + HEARTBEAT
    detector.promised(detector.deadline(last_seen, None))
    later = TIMEOUT + 1 + HEARTBEAT // 4
    detector.timer_fired(later, log)                                    # the backlog is gone
    assert detector.judge(last_seen, None, later) is Verdict.SUSPECT
    assert detector.stalls == 0


def test_a_busy_node_judges_its_peers_by_the_frames_it_has_read(net: Net) -> None:
    intro = net.introducer("I")
    a, b = net.peer("A", intro), net.peer("B", intro)
    net.run(2 * HEARTBEAT)
    link = a.state.links.server_link(b.server_id)
    assert link is not None
    busy_since = net.now
    net.drop = drop_from("B")                        # B's frames "wait in A's queue" from now on
    end = net.now + 3 * TIMEOUT
    while net.now < end:                             # A's timers keep running, told where its input stands
        net.now += TICK
        if net.now >= a.state.next_deadline():
            a.state.handle_timer(net.now, processed_until=busy_since)
    assert b.server_id in a.state.linked_servers and a.state.status()["link_deaths"] == 0
