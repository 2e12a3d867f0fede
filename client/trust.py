"""Servers this client has met, pinned by URL, so a changed server key is noticed across sessions."""

from __future__ import annotations

import json
import os
from pathlib import Path

from socp import crypto
from socp.errors import BadKey


class KnownServers:
    """``KEY_DIR/known_servers.json``: server URL → its public key, first seen wins (like SSH known_hosts)."""

    def __init__(self, key_dir: Path) -> None:
        self.path = key_dir.expanduser() / "known_servers.json"

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}  # unreadable: behave as on first contact rather than refuse to work
        return {str(url): str(key) for url, key in data.items()} if isinstance(data, dict) else {}

    def expected(self, url: str) -> str | None:
        """The key pinned for ``url``, or None on first contact."""
        key = self._load().get(url)
        if key is None:
            return None
        try:
            return crypto.normalize_public_key(key)
        except BadKey:
            return None

    def remember(self, url: str, server_pub: str) -> bool:
        """Pin ``server_pub`` for ``url`` if nothing is pinned yet; True when this was the first contact."""
        known = self._load()
        if url in known:
            return False
        known[url] = server_pub
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)
        return True
