"""Where received files go: a name made safe, written only inside the downloads folder, never over a file.

The name in FILE_START is chosen by the sender and may be hostile (``../../.bashrc``, ``/etc/passwd``,
``C:\\Windows\\x``, ``CON``, control characters, a 10 000-character name). :func:`safe_file_name` keeps the last
path component, replaces what a file system or a terminal would misread, and :func:`save_file` creates the
file exclusively (``O_EXCL``, so neither an existing file nor a planted symlink is ever written through),
adding `` (1)``, `` (2)``, … before the extension when the name is taken.

An incoming file streams into a :class:`DiskSink`: a hidden temporary file created the same way inside the
folder, written chunk by chunk as verified plaintext arrives (the whole file is never held in memory), then
hard-linked under its final, safe name (which never replaces an existing file) once size and SHA-256 match, or
removed when the transfer fails.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import unicodedata
from pathlib import Path
from typing import BinaryIO

from client.errors import ClientError

DEFAULT_DOWNLOADS = Path("downloads")
"""The CLI's default downloads folder (relative to the working directory)."""

MAX_NAME_BYTES = 200
"""Longest file name written (UTF-8 bytes), leaving room for a `` (n)`` suffix under the usual 255."""

_RESERVED = re.compile(r"(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?", re.IGNORECASE)
_UNSAFE = re.compile(r'[<>:"/\\|?*]')
_MAX_SUFFIX = 10_000
_PARTIAL_PREFIX = ".socp-partial-"
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)


class SaveError(ClientError):
    """A received file could not be written (folder unusable, disk full, …)."""


def safe_file_name(name: str) -> str:
    """A harmless file name for ``name``: one path component, no control or reserved characters.

    Never empty, never ``.``/``..``, never hidden (a leading dot becomes ``_``), never a Windows device
    name, at most :data:`MAX_NAME_BYTES` bytes of UTF-8 with the extension kept when possible.
    """
    # Both separators count: a name from a Windows sender must not smuggle a path either.
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join("_" if unicodedata.category(char)[0] == "C" or _UNSAFE.match(char) else char
                      for char in base)
    cleaned = cleaned.strip().rstrip(".")
    if cleaned.startswith("."):
        cleaned = "_" + cleaned.lstrip(".")
    if not cleaned or cleaned in (".", ".."):
        cleaned = "file"
    if _RESERVED.fullmatch(cleaned):
        cleaned = "_" + cleaned
    return _shorten(cleaned, MAX_NAME_BYTES)


def _shorten(name: str, limit: int) -> str:
    if len(name.encode("utf-8")) <= limit:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext.encode("utf-8")) > 16:
        stem, ext = name, ""
    suffix = f".{ext}" if ext else ""
    budget = limit - len(suffix.encode("utf-8"))
    return stem.encode("utf-8")[:budget].decode("utf-8", "ignore") + suffix


def _candidates(name: str) -> list[str]:
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    suffix = f".{ext}" if ext else ""
    return [name] + [f"{stem} ({n}){suffix}" for n in range(1, _MAX_SUFFIX)]


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise SaveError(f"cannot create downloads folder {folder}: {exc.strerror}") from None


def _create_new(folder: Path, safe: str) -> tuple[Path, int]:
    """Create the first free candidate of ``safe`` in ``folder`` exclusively: its path and an open descriptor."""
    for candidate in _candidates(safe):
        path = folder / candidate
        try:
            return path, os.open(path, _CREATE_FLAGS, 0o600)
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a symlink in the way: never write through it
                continue
            raise SaveError(f"cannot create {path}: {exc.strerror}") from None
    raise SaveError(f"too many files named like {safe} in {folder}")


def save_file(folder: Path, name: str, data: bytes) -> Path:
    """Write ``data`` as a new file named after ``name`` inside ``folder``; returns its path.

    The folder is created (mode 0700) when missing. Raises :class:`SaveError` when nothing could be written;
    a partly written file is removed.
    """
    _make_folder(folder)
    path, fd = _create_new(folder, safe_file_name(name))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.unlink()
        raise SaveError(f"cannot write {path}: {exc.strerror}") from None
    return path


class DiskSink:
    """Where one incoming file streams to (a :class:`socp.user.FileSink`): a temporary file in ``folder``
    while it arrives, the final safe name once it is verified.

    Raises :class:`SaveError` (from the constructor and each method) when the disk refuses.
    """

    def __init__(self, folder: Path, name: str) -> None:
        _make_folder(folder)
        self._folder = folder
        self._name = name
        self._partial, fd = _create_new(folder, f"{_PARTIAL_PREFIX}{secrets.token_hex(8)}")
        self._handle: BinaryIO | None = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        """Append verified plaintext to the temporary file."""
        if self._handle is None:
            raise SaveError(f"{self._partial} is closed")
        try:
            self._handle.write(data)
        except OSError as exc:
            raise SaveError(f"cannot write {self._partial}: {exc.strerror}") from None

    def finish(self) -> tuple[bytes, str | None]:
        """Give the verified file its final name (never over an existing file); ``(b"", path)``."""
        self._close()
        safe = safe_file_name(self._name)
        try:
            for candidate in _candidates(safe):
                path = self._folder / candidate
                try:
                    os.link(self._partial, path)  # fails when the name exists (no replace, no symlink followed)
                except FileExistsError:
                    continue
                return b"", str(path)
            raise SaveError(f"too many files named like {safe} in {self._folder}")
        except OSError as exc:
            raise SaveError(f"cannot name {self._partial} {safe}: {exc.strerror}") from None
        finally:
            self.discard()

    def discard(self) -> None:
        """Remove the temporary file (idempotent)."""
        self._close()
        with contextlib.suppress(OSError):  # gone already, or the folder went away: nothing left to keep
            self._partial.unlink()

    def _close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            try:
                handle.close()
            except OSError as exc:
                raise SaveError(f"cannot write {self._partial}: {exc.strerror}") from None
