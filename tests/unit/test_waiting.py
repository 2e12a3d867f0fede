"""The testbed's one wait: returns the check's value, explains a timeout, stops at once when a node dies."""

from __future__ import annotations

import asyncio
import time

import pytest

from testbed.waiting import Diagnose, NodeExited, Pending, WaitTimeout, poll


def diagnose(exited: dict[str, str] | None = None) -> Diagnose:
    async def gone() -> dict[str, str]:
        return exited or {}

    async def tails(lines: int) -> dict[str, str]:
        return {"peer2": "[peer2] Listening on ws://127.0.0.1:40127\n[peer2] bootstrap: introducer refused us"}

    return Diagnose(gone, tails, "/tmp/run", "look for 'joined the network' in the log")


async def test_returns_what_the_check_returns_once_it_is_not_pending() -> None:
    calls = []

    async def check() -> int | Pending:
        calls.append(1)
        return 42 if len(calls) == 3 else Pending(f"{len(calls)} calls")

    assert await poll(check, 5, "the answer", interval=0.01) == 42
    assert len(calls) == 3


async def test_a_timeout_says_what_it_waited_for_what_it_saw_the_logs_and_a_hint() -> None:
    async def check() -> bool | Pending:
        return Pending("peer2: http 0, not linked to ['introducer', 'peer1']")

    start = time.monotonic()
    with pytest.raises(WaitTimeout) as caught:
        await poll(check, 0.3, "a healthy full mesh", diagnose(), interval=0.05)
    assert time.monotonic() - start < 1.0
    error = caught.value
    assert isinstance(error, TimeoutError) and error.last.startswith("peer2: http 0")
    message = str(error)
    print(message)  # shown with `pytest -s`: this is what a failed wait looks like
    assert message.startswith("timed out after 0.3s (")
    assert "checks) waiting for a healthy full mesh" in message
    assert "  last seen: peer2: http 0, not linked to ['introducer', 'peer1']" in message
    assert "  peer2 log (last 2 lines; all of it in /tmp/run):" in message
    assert "    | [peer2] bootstrap: introducer refused us" in message
    assert message.endswith("  hint: look for 'joined the network' in the log")
    assert 3 <= error.checks <= 0.3 / 0.05 + 2


async def test_a_node_that_exited_ends_the_wait_at_once() -> None:
    async def never() -> bool | Pending:
        return Pending("not yet")

    start = time.monotonic()
    with pytest.raises(NodeExited) as caught:
        await poll(never, 30, "peer2 to listen", diagnose({"peer2": "exit code 1"}))
    assert time.monotonic() - start < 1.0
    assert isinstance(caught.value, RuntimeError) and caught.value.exited == {"peer2": "exit code 1"}
    assert str(caught.value).startswith("peer2 (exit code 1) exited after ")
    assert "waiting for peer2 to listen" in str(caught.value)


async def test_a_check_that_hangs_cannot_outlast_the_deadline() -> None:
    async def hangs() -> bool | Pending:
        await asyncio.sleep(60)
        return True

    start = time.monotonic()
    with pytest.raises(WaitTimeout, match="the last check was still running"):
        await poll(hangs, 0.2, "a check that hangs", interval=0.05)
    assert time.monotonic() - start < 1.0


async def test_a_failing_log_read_does_not_hide_the_timeout() -> None:
    async def broken_tails(lines: int) -> dict[str, str]:
        raise OSError("disk on fire")

    async def check() -> bool | Pending:
        return Pending("nothing")

    with pytest.raises(WaitTimeout, match="could not read the logs: OSError: disk on fire"):
        await poll(check, 0.05, "anything", Diagnose(log_tails=broken_tails), interval=0.01)
