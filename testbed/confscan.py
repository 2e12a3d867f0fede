"""The confidentiality scan: did any node keep a scripted message's plaintext?

Every text the runner sends carries the run's 128-bit marker (:mod:`testbed.history`). After the run this
module searches what the nodes left behind — their logs, their database files with WAL and journal, and
anything else in their data directories — for the marker as written, in hex, and in base64 and base64url at
each of the three byte alignments (a marker inside a longer encoded text). It also looks for the marker's 16
bytes themselves in those forms. Zero hits is the only pass.

The local backend keeps each node's data directory in the run's cluster folder; the Docker backend keeps it
in a volume, which :func:`copy_docker_data` copies out of every container before the teardown removes them.

On Docker the inter-node traffic is captured too (pcap files, :mod:`testbed.netem`). A pcap is searched as it
is, and also as the WebSocket messages its TCP connections carried (:func:`pcap_messages`): the segments of
each connection put in sequence order (a marker may straddle two segments), the HTTP upgrade skipped, and each
frame unmasked (a dialling node's frames are masked with a random key, RFC 6455, which hides them from a search
of the raw bytes). The nodes do not compress frames (no permessage-deflate), so nothing else hides a marker.
"""

from __future__ import annotations

import base64
import io
import struct
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
            views = {str(path): data}
            if path.suffix == ".pcap":
                views |= {f"{path} {flow}": messages for flow, messages in pcap_messages(data).items()}
            for where, view in views.items():
                for name, form in forms.items():
                    at = view.find(form)
                    if at >= 0:
                        hits.append(Hit(where, at, name))
    return hits, files


LINK_HEADERS = {1: (14, 12), 113: (16, 14), 276: (20, 0)}
"""pcap link type → (header length, offset of the EtherType): Ethernet, Linux cooked v1 and v2 (``-i any``)."""


def pcap_streams(data: bytes) -> dict[str, bytes]:
    """The bytes each TCP connection (one direction: ``src:port>dst:port``) carried in a pcap file, in sequence
    order (a retransmitted segment counted once, a missing one leaving a gap). IPv4 only; unreadable: empty."""
    if len(data) < 24:
        return {}
    magic = data[:4]
    order = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    if order == ">" and magic not in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        return {}
    link = struct.unpack(order + "I", data[20:24])[0] & 0xFFFF
    if link not in LINK_HEADERS:
        return {}
    header, ethertype_at = LINK_HEADERS[link]
    segments: dict[str, dict[int, bytes]] = {}
    offset = 24
    while offset + 16 <= len(data):
        length = struct.unpack(order + "I", data[offset + 8:offset + 12])[0]
        frame = data[offset + 16:offset + 16 + length]
        offset += 16 + length
        if len(frame) < header + 20 or frame[ethertype_at:ethertype_at + 2] != b"\x08\x00":
            continue
        ip = frame[header:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[0] >> 4 != 4 or ip[9] != 6 or len(ip) < ihl + 20:
            continue
        ip = ip[:struct.unpack(">H", ip[2:4])[0]]
        tcp = ip[ihl:]
        source, target, seq = struct.unpack(">HHI", tcp[:8])
        payload = tcp[(tcp[12] >> 4) * 4:]
        if payload:
            flow = f"{'.'.join(map(str, ip[12:16]))}:{source}>{'.'.join(map(str, ip[16:20]))}:{target}"
            segments.setdefault(flow, {}).setdefault(seq, payload)
    streams = {}
    for flow, parts in segments.items():
        stream = bytearray()
        end: int | None = None
        for seq in sorted(parts):  # a connection of a test run never wraps its 32-bit sequence numbers
            payload = parts[seq]
            if end is not None and seq < end:
                payload = payload[end - seq:]  # overlaps what is there already: a retransmission
            stream += payload
            end = max(end or seq, seq + len(parts[seq]))
        streams[flow] = bytes(stream)
    return streams


OPCODES = frozenset({0, 1, 2, 8, 9, 10})
"""WebSocket opcodes: continuation, text, binary, close, ping, pong."""


def _frame(stream: bytes, at: int) -> tuple[int, int, bytes] | None:
    """Where the payload of the WebSocket frame at ``at`` starts and ends (the next frame's start), and its mask
    key (empty: not masked); None when no whole, well-formed frame starts there (reserved bits set, unknown
    opcode, or cut off)."""
    if at + 2 > len(stream) or stream[at] & 0x70 or stream[at] & 0x0F not in OPCODES:
        return None
    masked, length = stream[at + 1] & 0x80, stream[at + 1] & 0x7F
    start = at + 2
    extra = {126: 2, 127: 8}.get(length, 0)  # a 16- or 64-bit length follows
    if start + extra > len(stream):
        return None
    if extra:
        length = int.from_bytes(stream[start:start + extra], "big")
        start += extra
    key = stream[start:start + 4] if masked else b""
    start += len(key)
    if (masked and len(key) < 4) or start + length > len(stream):
        return None
    return start, start + length, key


def _resync(stream: bytes, at: int) -> int:
    """The first position after ``at`` where a frame starts that is followed by another frame or by the end (a
    capture that began in the middle of a connection starts in the middle of a frame); the end when none."""
    for i in range(at + 1, len(stream) - 1):
        found = _frame(stream, i)
        if found is not None and (found[1] == len(stream) or _frame(stream, found[1]) is not None):
            return i
    return len(stream)


def websocket_payloads(stream: bytes) -> bytes:
    """The payloads of the WebSocket frames in one direction of a connection, unmasked and joined (after the HTTP
    upgrade when the stream starts with it); bytes that are no frame (the rest of one the capture began inside
    of, or after a gap) are kept as they are."""
    if stream.startswith((b"GET ", b"HTTP/")):
        head = stream.find(b"\r\n\r\n")
        stream = stream[head + 4:] if head >= 0 else b""
    out = bytearray()
    at = 0
    while at < len(stream):
        found = _frame(stream, at)
        if found is None:
            after = _resync(stream, at)
            out += stream[at:after]
            at = after
            continue
        start, at, key = found
        out += _unmask(stream[start:at], key) if key else stream[start:at]
    return bytes(out)


def _unmask(payload: bytes, key: bytes) -> bytes:
    """``payload`` XOR the repeated 4-byte ``key`` (as one big integer: fast for megabyte frames)."""
    mask = (key * (len(payload) // 4 + 1))[:len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(len(payload), "big")


def pcap_messages(data: bytes) -> dict[str, bytes]:
    """Each TCP connection's WebSocket payloads in a pcap (:func:`pcap_streams`, :func:`websocket_payloads`)."""
    return {flow: websocket_payloads(stream) for flow, stream in pcap_streams(data).items()}


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
