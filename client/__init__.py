"""The SOCP client: an asyncio library (:class:`ClientConnection`) with a thin command-line shell.

The protocol logic lives in :mod:`socp.user`; this package adds the socket, the clock, key files and the
terminal. ``python -m client`` and the ``socp-client`` console script run :func:`client.__main__.main`.
"""

from client.connection import ClientConnection
from client.errors import ClientError, ConnectionFailed, ConnectionLost
from client.keystore import Identity, load_or_create_identity

__all__ = ["ClientConnection", "ClientError", "ConnectionFailed", "ConnectionLost", "Identity",
           "load_or_create_identity"]
