"""A run's history: every client action and observation and every fault, one JSON record a line.

The runner writes ``history.jsonl`` in the results folder while the scenario runs; :mod:`testbed.checker`
judges it afterwards (also offline). Each record has ``seq``, ``t`` (monotonic seconds since the run began),
``wall`` (Unix seconds), ``type``, and the ``user`` and ``node`` involved when there is one. Record types:

``session``   ``{user, node, user_id, state: up|down, reason}`` a user's connection opened or ended
``send``      ``{user, node, kind: dm|public, to, to_user, msg_ref, digest, length}`` (``error`` when it raised)
``deliver``   ``{user, node, kind, sender_id, msg_ref, digest, intact}`` a message decrypted and verified
``duplicate`` ``{user, node, msg_ref}`` a second copy the client dropped
``error``     ``{user, node, code, detail, msg_ref}`` an ERROR from the user's server
``rejected``  ``{user, node, reason, frame_type}`` a frame the client refused (bad signature, undecryptable)
``unreadable`` ``{user, node, msg_ref, reason}`` a genuine public message the user could not decrypt
``receipt``   ``{user, node, msg_ref, outcome: delivered|failed, code}`` a delivery receipt (issue 10)
``directory`` ``{user, node, change: online|offline, subject}`` the user's directory changed
``fault``     ``{node, action, phase: begin|end}`` a fault the scenario or the nemesis injected
``step``      ``{index, description, ok, seconds}`` a scenario step ended (``t`` is when it began)

Plaintext is never recorded: a message is named by its ``msg_ref`` and a digest of its text. Every text a
recorded connection sends carries the run's confidentiality marker (:data:`MARK_PREFIX` + 32 hex digits, 128
random bits), which :meth:`History.observe` checks and strips on the receiving side, so the scenario's own
checks see the text as written and :mod:`testbed.confscan` can look for the marker in what the nodes kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from client.connection import ClientConnection
from socp.user import (
    ClientEvent,
    Delivered,
    DeliveryFailed,
    DirectMessage,
    DuplicateDelivery,
    FrameRejected,
    PublicMessage,
    PublicMessageUnreadable,
    ServerError,
    UserOffline,
    UserOnline,
)

HISTORY_FILE = "history.jsonl"
MARK_PREFIX = " ~cm"
"""What separates a text from the run's marker (the marker is the 32 hex digits after it)."""


def digest(text: str) -> str:
    """A short digest of a message text: enough to tell a changed text, never the text itself."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def new_marker() -> str:
    """A fresh 128-bit confidentiality marker, as 32 hex digits."""
    return secrets.token_hex(16)


class History:
    """The records of one run, kept in memory and appended to ``history.jsonl`` as they happen."""

    def __init__(self, path: Path | None, marker: str | None = None) -> None:
        self.path = path
        self.marker = marker or new_marker()
        self.records: list[dict[str, Any]] = []
        self._start = time.monotonic()
        self._file: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("w", encoding="utf-8")

    def now(self) -> float:
        """Seconds since the history began (monotonic)."""
        return time.monotonic() - self._start

    def record(self, record_type: str, /, *, at: float | None = None, **fields: Any) -> dict[str, Any]:
        """Append a record of type ``record_type`` (``at``: its monotonic offset when it is not now)."""
        t = self.now() if at is None else at
        entry = {"seq": len(self.records), "t": round(t, 6), "wall": round(time.time() - (self.now() - t), 6),
                 "type": record_type, **fields}
        self.records.append(entry)
        if self._file is not None:
            self._file.write(json.dumps(entry, separators=(",", ":")) + "\n")
            self._file.flush()
        return entry

    def close(self) -> None:
        """Close the file (the records stay in memory)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    # --- the marker ------------------------------------------------------------------------------

    def marked(self, text: str) -> str:
        """``text`` with the run's marker appended."""
        return f"{text}{MARK_PREFIX}{self.marker}"

    def unmarked(self, text: str) -> tuple[str, bool]:
        """``text`` without the marker, and whether the marker was there intact."""
        suffix = f"{MARK_PREFIX}{self.marker}"
        if text.endswith(suffix):
            return text[: -len(suffix)], True
        return text, False

    # --- observations ----------------------------------------------------------------------------

    def observe(self, user: str, node: str, event: ClientEvent) -> ClientEvent:
        """Record what ``event`` tells about the run and return it as the scenario should see it (unmarked)."""
        if isinstance(event, DirectMessage | PublicMessage):
            text, intact = self.unmarked(event.text)
            kind = "dm" if isinstance(event, DirectMessage) else "public"
            # The digest is of the marked text as received: the checker compares it with the one sent.
            self.record("deliver", user=user, node=node, kind=kind, sender_id=event.sender_id,
                        msg_ref=event.msg_ref, digest=digest(event.text), intact=intact)
            return dataclasses.replace(event, text=text)
        if isinstance(event, DuplicateDelivery):
            self.record("duplicate", user=user, node=node, sender_id=event.sender_id, msg_ref=event.msg_ref)
        elif isinstance(event, ServerError):
            self.record("error", user=user, node=node, code=event.code, detail=event.detail, msg_ref=event.msg_ref)
        elif isinstance(event, FrameRejected):
            self.record("rejected", user=user, node=node, reason=event.reason, frame_type=event.frame_type)
        elif isinstance(event, PublicMessageUnreadable):
            self.record("unreadable", user=user, node=node, sender_id=event.sender_id, msg_ref=event.msg_ref,
                        reason=event.reason)
        elif isinstance(event, UserOnline | UserOffline):
            if not isinstance(event, UserOnline) or event.is_new:
                self.record("directory", user=user, node=node, subject=event.record.user_id,
                            change="online" if isinstance(event, UserOnline) else "offline")
        elif isinstance(event, Delivered):
            self.record("receipt", user=user, node=node, msg_ref=event.msg_ref, outcome="delivered", code=None)
        elif isinstance(event, DeliveryFailed):
            self.record("receipt", user=user, node=node, msg_ref=event.msg_ref, outcome="failed", code=event.code)
        return event


class RecordedConnection(ClientConnection):
    """A client connection that records what it sends in a :class:`History`, each text carrying the marker.

    Create it with :meth:`ClientConnection.connect` on this class, then :meth:`attach`.
    """

    history: History | None = None
    user_name = ""
    node = ""
    names: dict[str, str]
    """User id → scripted user name, shared by every connection of the run (to name recipients)."""

    def attach(self, history: History, user: str, node: str, names: dict[str, str]) -> None:
        """Record into ``history`` as ``user`` on ``node``."""
        self.history, self.user_name, self.node, self.names = history, user, node, names

    async def send_direct(self, name_or_id: str, text: str) -> str:
        """Send as :meth:`ClientConnection.send_direct` does, marked and recorded."""
        return await self._recorded("dm", name_or_id, text, super().send_direct)

    async def send_public(self, text: str) -> str:
        """Send as :meth:`ClientConnection.send_public` does, marked and recorded."""
        return await self._recorded("public", "public", text, lambda _to, marked: super(
            RecordedConnection, self).send_public(marked))

    async def _recorded(self, kind: str, to: str, text: str, send: Any) -> str:
        history = self.history
        if history is None:
            result: str = await send(to, text)
            return result
        marked = history.marked(text)
        at = history.now()
        fields = {"user": self.user_name, "node": self.node, "kind": kind, "to": to,
                  "to_user": self.names.get(to, to), "digest": digest(marked), "length": len(text)}
        try:
            msg_ref: str = await send(to, marked)
        except Exception as exc:
            history.record("send", at=at, msg_ref=None, error=f"{type(exc).__name__}: {exc}", **fields)
            raise
        history.record("send", at=at, msg_ref=msg_ref, **fields)
        return msg_ref


def read_history(path: Path) -> list[dict[str, Any]]:
    """The records of a ``history.jsonl`` (a folder holding one may be given); a torn last line is skipped."""
    if path.is_dir():
        path = path / HISTORY_FILE
    return list(_records(path.read_text(encoding="utf-8").splitlines()))


def _records(lines: list[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # the run was cut while writing it
        if isinstance(entry, dict):
            yield entry
