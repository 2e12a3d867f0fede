"""The confidentiality scan: did any node keep a scripted message's plaintext?

Every text the runner sends carries the run's 128-bit marker (:mod:`testbed.history`). After the run this
module searches what the nodes left behind — their logs, their database files with WAL and journal, and
anything else in their data directories — for the marker as written, in hex, and in base64 and base64url at
each of the three byte alignments (a marker inside a longer encoded text). It also looks for the marker's 16
bytes themselves in those forms. Zero hits is the only pass.

The local backend keeps each node's data directory in the run's cluster folder; the Docker backend keeps it
in a volume, which :func:`copy_docker_data` copies out of every container before the teardown removes them.
Inter-node traffic capture on Docker is not done (see the report's notes).
"""

from __future__ import annotations

import base64
import io
import tarfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

READ_LIMIT = 512 * 1024 * 1024
"""Bytes read of one file at most (a node's log or database is far smaller)."""


@dataclass(frozen=True, slots=True)
class Hit:
    """The marker found in ``path`` at byte ``offset``, encoded as ``encoding``."""

    path: str
    offset: int
    encoding: str


def encodings(marker: str) -> dict[str, bytes]:
    """Every byte string whose presence means the marker leaked, by the name of its encoding."""
    forms: dict[str, bytes] = {}
    for label, data in (("text", marker.encode()), ("value", bytes.fromhex(marker))):
        forms[f"raw {label}"] = data
        forms[f"hex of {label}"] = data.hex().encode()
        forms[f"HEX of {label}"] = data.hex().upper().encode()
        for shift in range(3):
            core = _base64_core(data, shift)
            forms[f"base64 of {label} (+{shift})"] = core
            forms[f"base64url of {label} (+{shift})"] = core.translate(bytes.maketrans(b"+/", b"-_"))
    return forms


def _base64_core(data: bytes, shift: int) -> bytes:
    """The base64 characters that encode ``data`` alone when it starts ``shift`` bytes into a 3-byte group.

    Characters that mix bits of the bytes before or after ``data`` are left out, so the core is found
    inside the base64 of any longer text that contains ``data`` at that alignment.
    """
    encoded = base64.b64encode(bytes(shift) + data)
    complete = (shift + len(data)) // 3 * 4  # characters from whole groups: nothing after ``data`` in them
    mixed_head = {0: 0, 1: 2, 2: 3}[shift]  # characters carrying bits of the bytes before ``data``
    return encoded[mixed_head:complete]


def scan(paths: Iterable[Path], marker: str) -> tuple[list[Hit], int]:
    """Search every file under ``paths`` for ``marker``; returns the hits and how many files were read."""
    forms = encodings(marker)
    hits: list[Hit] = []
    files = 0
    for root in paths:
        candidates = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in candidates:
            try:
                with path.open("rb") as handle:
                    data = handle.read(READ_LIMIT)
            except OSError:
                continue
            files += 1
            for name, form in forms.items():
                at = data.find(form)
                if at >= 0:
                    hits.append(Hit(str(path), at, name))
    return hits, files


def copy_docker_data(backend: Any, destination: Path) -> list[Path]:
    """Copy every node container's data directory into ``destination/<node>/`` (Docker backend only).

    Works on stopped and killed containers; a container already gone is skipped.
    """
    from testbed.compose import DATA_DIR

    copied = []
    for node in backend.node_names:
        try:
            stream, _ = backend._container(node).get_archive(DATA_DIR)
        except Exception:  # gone, or the engine did not answer: the scan says how many files it read
            continue
        target = destination / node
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
            for member in archive.getmembers():
                if member.isfile():
                    extracted = archive.extractfile(member)
                    if extracted is not None:
                        out = target / Path(member.name).name
                        out.write_bytes(extracted.read())
                        copied.append(out)
    return copied


def report(hits: list[Hit], files: int) -> dict[str, Any]:
    """The scan's figures for ``report.json``."""
    return {"ok": not hits, "files_scanned": files, "hits": [asdict(hit) for hit in hits[:50]]}
