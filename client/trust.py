"""Servers and users this client has met, pinned (first key wins), so a changed key is noticed across sessions:
servers by URL (``known_servers.json``), users by id (``known_users.json``: key and last display name)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
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


class KnownUsers:
    """``KEY_DIR/known_users.json``: user id → ``{"pubkey", "label"}``, first key wins (issue 11, findings 2 and 6).

    Loaded into the session at connect (:class:`socp.user.UserSession` ``known_users``) and saved when the
    session ends, so that a user id keeps its first key, and a display name its first holder, across runs.
    """

    def __init__(self, key_dir: Path) -> None:
        self.path = key_dir.expanduser() / "known_users.json"

    def load(self) -> dict[str, tuple[str, str]]:
        """The remembered pins (unreadable file or entries: left out, as on first contact)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        pins: dict[str, tuple[str, str]] = {}
        for user_id, entry in (data.items() if isinstance(data, dict) else ()):
            if not isinstance(entry, dict):
                continue
            try:
                key = crypto.normalize_public_key(entry.get("pubkey"))
            except BadKey:
                continue
            label = entry.get("label")
            pins[str(user_id)] = (key, label if isinstance(label, str) else str(user_id))
        return pins

    def save(self, pins: Mapping[str, tuple[str, str]]) -> int:
        """Add the pins not known yet (a known id keeps its first key; its label is updated); returns how many
        ids were new. Written atomically, readable by this user only."""
        known = self.load()
        new = 0
        for user_id, (key, label) in pins.items():
            if user_id not in known:
                new += 1
                known[user_id] = (key, label)
            elif known[user_id][0] == key:
                known[user_id] = (key, label)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({uid: {"pubkey": key, "label": label} for uid, (key, label) in known.items()},
                                  indent=1, sort_keys=True) + "\n", encoding="utf-8")
        tmp.chmod(0o600)
        os.replace(tmp, self.path)
        return new
