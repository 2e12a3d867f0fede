"""Scripted users for integration and docker tests: one factory, one convergence helper."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client.connection import ClientConnection
from client.keystore import Identity
from testbed import checks
from tests import scaled
from tests.keypool import KeyPool

FIRST_USER_KEY = 10
"""Pool key indexes of users start here (nodes take the lower ones)."""
USER_KEYS = 8
"""How many pool keys users cycle through (ids differ, so keys may repeat)."""


class UserFactory:
    """``await users("peer1", "alice")``: a connected library client with a pool key and a fresh id."""

    def __init__(self, url_of: Callable[[str], str], key_pool: KeyPool, downloads: Path | None = None) -> None:
        self.url_of = url_of
        self.key_pool = key_pool
        self.downloads = downloads
        self.opened: list[ClientConnection] = []

    async def __call__(self, node: str, name: str, **options: Any) -> ClientConnection:
        identity = Identity(str(uuid.uuid4()), name,
                            self.key_pool.key(FIRST_USER_KEY + len(self.opened) % USER_KEYS))
        if self.downloads is not None:
            options.setdefault("downloads", self.downloads / name)
        client = await ClientConnection.connect(self.url_of(node), identity, timeout=scaled(10), **options)
        self.opened.append(client)
        return client

    async def close_all(self) -> None:
        """Close every client this factory opened (errors ignored: the node may be gone)."""
        for client in self.opened:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await client.close()


async def converge(clients: list[ClientConnection], *others: str, timeout: float = 15) -> None:
    """Assert that ``clients`` all list exactly themselves plus the user ids ``others``."""
    result = await checks.converged(clients, {c.user_id for c in clients} | set(others), timeout=scaled(timeout))
    assert result.ok, result.detail
