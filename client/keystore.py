"""A user's identity on disk: ``KEY_DIR/<user>.json`` and ``KEY_DIR/<user>.key.pem``.

Layout (other code and tests rely on it exactly)::

    KEY_DIR/            mode 0700 when we create it
      alice.json        {"user_id": "<uuid>", "display_name": "alice"}         mode 0600
      alice.key.pem     PKCS#8 PEM, encrypted when a passphrase is given         mode 0600

A PEM without its json is adopted (tests pre-place pooled keys that way): the json is written with the
given ``--id`` or a fresh UUID v4.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from socp import crypto
from socp.errors import ConfigError

logger = logging.getLogger("socp.client.keystore")

DEFAULT_KEY_DIR = Path("~/.socp")
"""Where identities live unless ``--key-dir`` says otherwise (expanded at use)."""

# The user name becomes a file name: no separators, no leading dot, nothing a shell would mangle.
_USER_NAME = re.compile(r"[\w][\w.-]{0,63}")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the client is: a user id, the name shown to others, and the private key."""

    user_id: str
    display_name: str
    key: crypto.PrivateKey = field(repr=False)  # never in a repr, so never in a log line


def identity_paths(key_dir: Path, user: str) -> tuple[Path, Path]:
    """The json and PEM paths of ``user`` under ``key_dir``."""
    return key_dir / f"{user}.json", key_dir / f"{user}.key.pem"


def load_or_create_identity(key_dir: Path, user: str, user_id: str | None,
                            passphrase: bytes | None) -> Identity:
    """Load ``user``'s identity from ``key_dir``, creating the missing parts.

    - PEM and json present: load both; a given ``user_id`` must equal the stored one.
    - PEM only: adopt it, writing the json with ``user_id`` or a fresh UUID v4.
    - neither: generate an RSA-4096 key (about half a second) and write both.
    - json only: refuse, because the id is bound to a key the servers remember and a new key would be refused.

    Raises :class:`ConfigError` for a bad user name, id or key directory and :class:`socp.errors.CryptoError`
    when the PEM cannot be loaded (wrong passphrase).
    """
    if not _USER_NAME.fullmatch(user):
        raise ConfigError(f"user name {user!r} must be 1-64 letters, digits, '.', '_' or '-', "
                          "not starting with '.' or '-'")
    wanted_id = _canonical_uuid(user_id) if user_id is not None else None
    key_dir = key_dir.expanduser()
    _ensure_dir(key_dir)
    json_path, pem_path = identity_paths(key_dir, user)

    stored_id = _read_user_id(json_path) if json_path.exists() else None
    if stored_id is not None and wanted_id is not None and stored_id != wanted_id:
        raise ConfigError(f"{json_path} holds user id {stored_id}, but --id {wanted_id} was given; "
                          "use another --user or --key-dir, or drop --id")

    if pem_path.exists():
        _warn_if_readable_by_others(pem_path)
        try:
            pem = pem_path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {pem_path}: {exc.strerror}") from exc
        key = crypto.private_key_from_pem(pem, passphrase)
    elif stored_id is not None:
        raise ConfigError(f"{json_path} exists but its key {pem_path} is missing; servers bind user id "
                          f"{stored_id} to the lost key, so remove {json_path} to start a new identity")
    else:
        key = crypto.generate_private_key()
        _write_private(pem_path, crypto.private_key_to_pem(key, passphrase))
        logger.info("generated a new RSA-4096 key for %s in %s", user, pem_path)

    if stored_id is None:
        stored_id = wanted_id or str(uuid.uuid4())
        document = {"user_id": stored_id, "display_name": user}
        _write_private(json_path, (json.dumps(document, indent=2) + "\n").encode("utf-8"))
    return Identity(stored_id, user, key)


def _canonical_uuid(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ConfigError(f"--id {value!r} is not a UUID (e.g. {uuid.uuid4()})") from None


def _ensure_dir(key_dir: Path) -> None:
    if key_dir.is_dir():
        return
    try:
        key_dir.mkdir(mode=0o700, parents=True)
        # mkdir's mode is filtered by the umask; the key directory must not be group- or world-readable.
        key_dir.chmod(0o700)
    except OSError as exc:
        raise ConfigError(f"cannot create key directory {key_dir}: {exc.strerror}") from exc


def _read_user_id(json_path: Path) -> str:
    try:
        document = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read identity file {json_path}: {exc}") from exc
    user_id = document.get("user_id") if isinstance(document, dict) else None
    if not isinstance(user_id, str):
        raise ConfigError(f"identity file {json_path} has no 'user_id' string")
    return _canonical_uuid(user_id)


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically (a crash leaves the old file or none)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from exc


def _warn_if_readable_by_others(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning("private key %s is accessible by other users; chmod 600 it", path)
