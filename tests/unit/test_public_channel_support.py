"""Real :class:`socp.user.UserSession` clients on the fake wire of ``harness.py`` (no event loop, no sockets).

A :class:`SessionUser` is a :class:`FakeUser` (so every frame its server sends is recorded and must parse) that
also feeds each frame to a genuine ``UserSession`` and keeps the events it produces. Shared by the public
channel, file and login unit tests; it holds no tests itself.
"""

from __future__ import annotations

from typing import Any

from socp.envelope import Envelope, FrameType
from socp.user import ClientEvent, HelloReaddressed, OutgoingFile, UserSession
from tests.unit.harness import FakeUser, Net, Node


class SessionUser(FakeUser):
    """A user whose frames are produced and consumed by a real ``UserSession``."""

    def __init__(self, net: Net, name: str, **session_options: Any) -> None:
        key = net.pool.key(net.key_index())
        super().__init__(net, name, key, net.new_id(), {"display_name": name})
        self.session = UserSession(self.user_id, key, self.meta, **session_options)
        self.events: list[ClientEvent] = []
        net.users[name] = self

    def _receive(self, text: str) -> None:
        super()._receive(text)
        self.events.extend(self.session.receive_text(text, self.net.now))

    def join(self, node: Node) -> SessionUser:
        """Connect to ``node`` and say hello; the session is welcomed afterwards."""
        self.open(node)
        self.send(self.session.hello(self.net.now))
        if any(isinstance(event, HelloReaddressed) for event in self.events):
            # The server refused the "*" hello and named its id (PROTOCOL.md §3.6), as it does for a client
            # that does not know it yet; the real client says hello again, signed for that id.
            self.send(self.session.hello(self.net.now))
            self.inbox = [f for f in self.inbox if not (f.type is FrameType.ERROR and "server_id" in f.payload)]
        assert self.session.welcomed, f"{self} was not welcomed: {self.events}"
        return self

    def send_frames(self, frames: list[str]) -> None:
        """Send several frames in order, then let the network settle."""
        for frame in frames:
            self.send(frame, pump=False)
        self.net.pump()

    def public(self, text: str) -> list[str]:
        """Send ``text`` to the public channel; returns the frames sent."""
        frames = self.session.public_message(text, self.net.now)
        self.send_frames(frames)
        return frames

    def file_frames(self, to: str, name: str, data: bytes) -> list[str]:
        """Every frame of a file transfer, produced now (not sent)."""
        outgoing: OutgoingFile = self.session.send_file(to, name, data, self.net.now)
        frames = []
        while (frame := outgoing.next_frame(self.net.now)) is not None:
            frames.append(frame)
        return frames

    def of(self, kind: type) -> list[Any]:
        """Events of one class, in order."""
        return [event for event in self.events if isinstance(event, kind)]

    def frames(self, frame_type: FrameType) -> list[Envelope]:
        """Frames of one type received from the server."""
        return self.received(frame_type)


def session_users(net: Net, node: Node, *names: str, **options: Any) -> list[SessionUser]:
    """Users called ``names``, all connected to ``node``."""
    return [SessionUser(net, name, **options).join(node) for name in names]
