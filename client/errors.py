"""Exceptions of the client shell, rooted in :class:`socp.errors.SocpError`.

::

    SocpError
    └── ClientError                 the client could not do what was asked
        ├── ConnectionFailed        no session: connect refused, handshake failed, no ACK in time
        └── ConnectionLost          the established connection went away

An ``ERROR`` frame answering USER_HELLO is raised as the matching :class:`socp.errors.ProtocolError`
subclass (``NameInUse``, ``BadKey``, …) so that callers can catch the precise refusal.
"""

from __future__ import annotations

from socp.errors import SocpError


class ClientError(SocpError):
    """Base of the client shell's own failures."""


class ConnectionFailed(ClientError):
    """Connecting failed before the server welcomed us; the message says where and why."""


class ConnectionLost(ClientError):
    """The connection closed after the welcome; no more events will arrive."""
