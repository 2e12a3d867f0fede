"""SOCP v1.3 protocol core: pure, deterministic, no I/O.

Nothing in this package imports asyncio, sockets, the clock or the environment: time (``now``, in
milliseconds since the Unix epoch) and the randomness behind protocol decisions are arguments.
Key and nonce generation stay inside :mod:`socp.crypto`.
"""

PROTOCOL_VERSION = "1.3"
