"""What the chat shell prints for public-channel and file events, and how it parses /all, /file and /whois."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from client.cli import ChatShell
from socp.errors import UserNotFound
from socp.presence import Directory, UserRecord
from socp.user import (
    DuplicateDelivery,
    FileIncoming,
    FileProgress,
    FileReceived,
    FileRejected,
    PublicKeyReceived,
    PublicMessage,
    PublicMessageUnreadable,
    ServerError,
)

ME = "a11ce000-0000-4000-8000-0000000000a1"
BOB = "b0b00000-0000-4000-8000-0000000000b0"
SERVER = "5e6f7a8b-0000-4000-8000-000000000001"


class _Session:
    """Like ``UserSession``: labels of users seen once stay known after they leave the directory."""

    def __init__(self, directory: Directory) -> None:
        self.directory = directory
        self._labels = {record.user_id: record.label for record in directory.listing()}

    def resolve(self, name: str) -> UserRecord:
        found = self.directory.find(name)
        if len(found) != 1:
            raise UserNotFound(f"user {name} is not online")
        return found[0]

    def display(self, user_id: str) -> str:
        record = self.directory.get(user_id)
        if record is not None:
            self._labels[user_id] = record.label
        return self._labels.get(user_id, user_id)


class StubConnection:
    """The parts of ClientConnection the shell uses, recording what it was asked to send."""

    def __init__(self) -> None:
        self.user_id, self.server_id = ME, SERVER
        self.directory = Directory()
        self.directory.advertise(UserRecord(BOB, SERVER, "k", {"display_name": "bob"}))
        self.session = _Session(self.directory)
        self.public: list[str] = []
        self.files: list[tuple[str, Path]] = []

    async def send_public(self, text: str) -> str:
        self.public.append(text)
        return "ref"

    async def send_file(self, target: str, path: Path, **_: Any) -> str:
        self.files.append((target, path))
        return "file-id"


@pytest.fixture
def shell() -> tuple[ChatShell, StubConnection, list[str]]:
    conn = StubConnection()
    lines: list[str] = []
    return ChatShell(conn, lines.append), conn, lines  # type: ignore[arg-type]


def test_public_events_are_shown_one_line_each(shell: tuple[ChatShell, StubConnection, list[str]]) -> None:
    chat, _, lines = shell
    chat.show(PublicMessage(BOB, "bob", "hello\nall", 1, "ref", "k1"))
    chat.show(PublicMessageUnreadable(BOB, "bob", 1, "ref", "k2", "it is encrypted under key k2, which bob never "
                                                                    "shared with us"))
    chat.show(PublicKeyReceived(BOB, "bob", "k1"))
    assert lines == ["[all] bob: hello\\nall",
                     "[warning] public message from bob could not be read: it is encrypted under key k2, which bob "
                     "never shared with us"]


def test_file_events_are_shown_one_line_each(shell: tuple[ChatShell, StubConnection, list[str]]) -> None:
    chat, _, lines = shell
    chat.show(FileIncoming(BOB, "bob", "f", "report.pdf", 1258291, "dm"))
    chat.show(FileProgress(BOB, "bob", "f", "report.pdf", 503317, 1258291))
    chat.show(FileReceived(BOB, "bob", "f", "report.pdf", 1258291, "0" * 64, "dm", b"", "downloads/report.pdf"))
    chat.show(FileRejected(BOB, "bob", "f", "../x", "SHA-256 mismatch: the file was altered in transit"))
    chat.show(ServerError("TOO_LARGE", "file of 99999999 bytes exceeds this server's limit of 16777216 bytes (16 MiB)",
                          f"FILE_START:{ME}:{BOB}:1"))
    chat.show(ServerError("USER_NOT_FOUND", "gone", f"MSG_DIRECT:{ME}:{BOB}:2"))
    chat.show(DuplicateDelivery(BOB, "bob", f"MSG_DIRECT:{BOB}:{ME}:3"))
    assert lines == [
        "[file] bob is sending report.pdf (1.2 MiB)",
        "[file] report.pdf from bob: 40% (491.5 KiB of 1.2 MiB)",
        "[file] received report.pdf from bob (1.2 MiB, SHA-256 verified): downloads/report.pdf",
        "[file] rejected ../x from bob: SHA-256 mismatch: the file was altered in transit; nothing was saved",
        "[error] TOO_LARGE: file of 99999999 bytes exceeds this server's limit of 16777216 bytes (16 MiB)",
        "[error] USER_NOT_FOUND: user bob is not online",
        "[warning] ignored a second copy of a message from bob",
    ]


async def test_all_and_file_commands(shell: tuple[ChatShell, StubConnection, list[str]], tmp_path: Path) -> None:
    chat, conn, lines = shell
    note = tmp_path / "note.txt"
    note.write_bytes(b"x" * 2048)
    assert await chat.handle_line("/all   hi there  ")
    assert await chat.handle_line("/all")
    assert await chat.handle_line(f"/file bob {note}")
    assert await chat.handle_line(f"/file all {note}")
    assert await chat.handle_line("/file carol x")
    assert await chat.handle_line("/file bob")
    assert conn.public == ["hi there"]
    assert conn.files == [(BOB, note), ("all", note)]
    assert lines == ["[error] usage: /all <text>",
                     "[file] sent note.txt to bob (2.0 KiB)",
                     "[file] sent note.txt to everyone (2.0 KiB)",
                     "[error] USER_NOT_FOUND: user carol is not online",
                     "[error] usage: /file <name|id|all> <path>"]
