"""What the chat shell prints about the fate of a direct message (delivery receipts, issue 10)."""

from __future__ import annotations

from client.cli import ChatShell
from socp.presence import UserRecord
from socp.user import Delivered, DeliveryFailed, UserOffline, UserOnline
from tests.unit.test_public_channel_cli import BOB, StubConnection

OTHER_SERVER = "9a9a9a9a-0000-4000-8000-000000000002"


class DmConnection(StubConnection):
    """The stub, able to send direct messages (to a remote bob)."""

    def __init__(self) -> None:
        super().__init__()
        self.directory.advertise(UserRecord(BOB, OTHER_SERVER, "k", {"display_name": "bob"}))
        self.direct: list[tuple[str, str]] = []

    async def send_direct(self, user_id: str, text: str) -> str:
        self.direct.append((user_id, text))
        return f"MSG_DIRECT:me:{user_id}:{len(self.direct)}"


def make_shell() -> tuple[ChatShell, DmConnection, list[str]]:
    conn = DmConnection()
    lines: list[str] = []
    return ChatShell(conn, lines.append), conn, lines  # type: ignore[arg-type]


async def test_a_delivered_dm_gets_a_tick_and_a_failed_one_its_first_words_and_reason() -> None:
    shell, _, lines = make_shell()
    assert await shell.handle_line("/tell bob see you at the station at nine tonight")
    assert await shell.handle_line("/tell bob second")
    first, second = (f"MSG_DIRECT:me:{BOB}:{n}" for n in (1, 2))
    shell.show(Delivered(first))
    shell.show(DeliveryFailed(second, "TIMEOUT", "no delivery receipt within 10 s (server 9a9a9a9a unreachable)"))
    assert lines == ['✓ delivered to bob: "see you at the station…"',
                     '[error] not delivered to bob ("second"): TIMEOUT: no delivery receipt within 10 s '
                     '(server 9a9a9a9a unreachable)']


async def test_tell_to_a_user_whose_server_is_unreachable_says_so() -> None:
    shell, conn, lines = make_shell()
    record = conn.directory.get(BOB)
    assert record is not None
    conn.directory.remove(BOB, OTHER_SERVER)
    shell.show(UserOffline(record, unreachable=True))
    assert lines[-1] == "🔴 [remote] bob is unreachable: their server 9a9a9a9a stopped answering"
    assert await shell.handle_line("/tell bob hello?")
    assert lines[-1] == "[error] bob's server is unreachable; the message was not sent"
    assert conn.direct == []
    conn.directory.advertise(record)
    shell.show(UserOnline(record, is_new=True))
    assert await shell.handle_line("/tell bob hello again")
    assert conn.direct == [(BOB, "hello again")]
