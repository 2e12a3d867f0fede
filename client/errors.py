"""Exceptions of the client shell, rooted in :class:`socp.errors.SocpError`.

::

    SocpError
    └── ClientError                 the client could not do what was asked
        ├── ConnectionFailed        no session: connect refused, handshake failed, no ACK in time
        │   └── LoginFailed         a password login failed on this side (bad answer, unusable record)
        ├── ConnectionLost          the established connection went away
        ├── FileTransferError       a file to send is missing, unreadable or too large
        └── SaveError               a received file could not be written (client/downloads.py)

A wrong password is the server's ``AUTH_FAILED`` ERROR, raised as :class:`socp.errors.AuthFailed`; an unknown
login is :class:`socp.errors.UserNotFound`, too many attempts :class:`socp.errors.RateLimited`.

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


class LoginFailed(ConnectionFailed):
    """A password login failed on this side: the server's answer or the stored record is unusable."""


class FileTransferError(ClientError):
    """A file could not be sent: missing, unreadable, or above the size limit."""
