"""A hybrid file cut by a link loss between two real nodes resumes where it stopped (issue 10): the sender's
window holds back new chunks while receipts stop, the origin server resends only the chunks it holds
unacknowledged, the receiver drops repeats by index, and the file arrives whole."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from client.connection import FILE_WINDOW, ClientConnection
from socp.features import Feature
from socp.user import HYBRID_CHUNK_BYTES, FileReceived, FileRejected
from socp.user import session as session_module
from testbed.backend import ClusterBackend
from tests import scaled
from tests.clients import UserFactory, converge

pytestmark = pytest.mark.asyncio(loop_scope="module")


def count_chunks(receiver: ClientConnection) -> Counter[int]:
    """Count every FILE_CHUNK frame that reaches ``receiver``'s session, by index (repeats included)."""
    seen: Counter[int] = Counter()
    session = receiver.session
    original = session.receive_text

    def counting(text: str | bytes, now: int) -> Any:
        head = text[:40] if isinstance(text, str) else text[:40].decode("ascii", "replace")
        if '"FILE_CHUNK"' in head and isinstance(text, str):
            at = text.rfind('"index":')
            digits = text[at + 8:at + 20].split(",")[0].split("}")[0]
            if at >= 0 and digits.isdigit():
                seen[int(digits)] += 1
        return original(text, now)

    session.receive_text = counting  # type: ignore[method-assign]
    return seen


async def resent_by(cluster: ClusterBackend, node: str) -> tuple[int, int, int]:
    """``(receipts.resent, receipts.resend_rounds, link_deaths)`` from the node's /status."""
    code, body = await cluster.status(node)
    assert code == 200, (code, body)
    receipts = body["receipts"]
    assert isinstance(receipts, dict)
    return int(receipts["resent"]), int(receipts["resend_rounds"]), int(str(body["link_deaths"]))


async def poll(condition: Any, timeout: float, what: str) -> None:
    """Wait until ``await condition()`` is true (bounded in time)."""
    try:
        async with asyncio.timeout(timeout):
            while not await condition():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"no {what} within {timeout:g} s") from None


async def test_a_file_cut_by_a_link_loss_resumes_without_resending_acknowledged_chunks(
        connect: UserFactory, cluster: ClusterBackend, tmp_path: Path) -> None:
    alice = await connect("peer1", "fsender")
    bob = await connect("peer2", "freceiver")
    await converge([alice, bob])
    assert alice.session.receipts_enabled and alice.session.takes_hybrid_files(bob.user_id)
    chunks = 16  # 8 MiB
    data = os.urandom(chunks * HYBRID_CHUNK_BYTES)
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    seen = count_chunks(bob)
    resent_before, rounds_before, deaths_before = await resent_by(cluster, "peer1")
    acked: list[int] = []
    sending = asyncio.create_task(alice.send_file(bob.user_id, source,
                                                  progress=lambda done, size: acked.append(done)))
    try:
        async def some_acknowledged() -> bool:
            return bool(acked) and acked[-1] >= 3 * HYBRID_CHUNK_BYTES

        await poll(some_acknowledged, scaled(60), "the first receipts")
        await cluster.pause("peer2")
        try:
            async def link_lost() -> bool:
                return (await resent_by(cluster, "peer1"))[2] > deaths_before

            # The link is declared dead after the peer timeout (2 s): about a 3 s loss in all.
            await poll(link_lost, scaled(30), "peer1 noticing the lost link")
            stalled_at = acked[-1]
        finally:
            await cluster.unpause("peer2")
        done = await bob.wait_for(lambda e: isinstance(e, FileReceived | FileRejected), scaled(120),
                                  description="the resumed file")
        await asyncio.wait_for(sending, scaled(60))
    finally:
        sending.cancel()
    assert isinstance(done, FileReceived) and done.path is not None, done
    assert Path(done.path).read_bytes() == data
    assert stalled_at < len(data)  # the loss did cut the transfer
    resent_after, rounds_after, _ = await resent_by(cluster, "peer1")
    resent, rounds = resent_after - resent_before, rounds_after - rounds_before
    # Only frames still unacknowledged when the link died are sent again: at most the window, plus FILE_START
    # and FILE_END, each time the link comes back (once here; again if a loaded machine flaps it after the
    # resume, when the frames resent the first time still await their receipts).
    assert rounds >= 1 and 0 < resent <= (FILE_WINDOW + 2) * rounds, (resent, rounds)
    assert sorted(seen) == list(range(chunks))
    # The far server delivers a chunk once, however often it is resent; and no chunk acknowledged to the
    # sender before the loss is ever sent again.
    acknowledged = stalled_at // HYBRID_CHUNK_BYTES
    repeated = sorted(index for index, count in seen.items() if count > 1)
    assert all(index >= acknowledged for index in repeated), (acknowledged, seen)
    assert len(repeated) <= FILE_WINDOW, seen


async def test_without_receipts_for_the_file_it_goes_without_a_window(
        connect: UserFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sender whose server gives it no receipts (here: its hello leaves the extension out, as a recipient's
    legacy server would leave the frames unacknowledged) waits for FILE_START's receipt only briefly, then
    sends the chunks as the plain standard does: the file still arrives."""
    monkeypatch.setattr(session_module, "CLIENT_FEATURES", (Feature.HYBRID_FILE_CHUNKS,))
    alice = await connect("peer1", "nosender")
    monkeypatch.undo()
    bob = await connect("peer2", "noreceiver")
    await converge([alice, bob])
    assert alice.session.receipts_enabled  # the server announced receipts, but sends this client none
    data = os.urandom(5 * HYBRID_CHUNK_BYTES + 7)
    source = tmp_path / "plain.bin"
    source.write_bytes(data)
    await asyncio.wait_for(alice.send_file(bob.user_id, source), scaled(60))
    done = await bob.wait_for(lambda e: isinstance(e, FileReceived | FileRejected), scaled(60))
    assert isinstance(done, FileReceived) and done.path is not None, done
    assert Path(done.path).read_bytes() == data
