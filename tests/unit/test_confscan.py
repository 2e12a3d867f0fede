"""The confidentiality scan finds the marker however it was written, and nothing else."""

from __future__ import annotations

import base64
from pathlib import Path

from testbed import confscan
from testbed.history import History, new_marker


def test_the_marker_is_found_raw_hex_and_in_base64_at_every_alignment(tmp_path: Path) -> None:
    marker = new_marker()
    assert len(bytes.fromhex(marker)) == 16
    text = History(None, marker).marked("the quiet words")
    leaks = {"raw.log": text.encode(), "hex.db": text.encode().hex().encode(),
             "value.db-wal": b"\x00\x01" + bytes.fromhex(marker) + b"\xff"}
    for prefix in ("", "a", "ab"):
        leaks[f"b64-{len(prefix)}.log"] = base64.b64encode((prefix + text).encode())
        leaks[f"url-{len(prefix)}.log"] = base64.urlsafe_b64encode(b"\xfb\xff" + (prefix + text).encode())
    for name, data in leaks.items():
        (tmp_path / "nodes" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "nodes" / name).write_bytes(b"noise " * 10 + data + b" more noise")
    (tmp_path / "nodes" / "clean.sqlite3").write_bytes(History(None, new_marker()).marked("other run").encode())
    hits, files = confscan.scan([tmp_path / "nodes"], marker)
    assert files == len(leaks) + 1
    assert {Path(hit.path).name for hit in hits} == set(leaks)
    assert {hit.encoding for hit in hits if Path(hit.path).name == "raw.log"} >= {"raw text"}
    assert confscan.report(hits, files)["ok"] is False


def test_a_clean_tree_passes(tmp_path: Path) -> None:
    (tmp_path / "peer1.log").write_text("2026-01-01 00:00:00,000 INFO socp [abcd] linked\n")
    hits, files = confscan.scan([tmp_path], new_marker())
    assert (hits, files) == ([], 1)
    assert confscan.report(hits, files) == {"ok": True, "files_scanned": 1, "hits": []}


def _masked_frame(payload: bytes, key: bytes = b"\x37\xfa\x21\x3d") -> bytes:
    """A client's WebSocket text frame (masked, as RFC 6455 makes every client frame)."""
    size = len(payload)
    head = bytes([0x81]) + (bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + size.to_bytes(2, "big"))
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def _pcap(segments: list[tuple[int, int, int, bytes]]) -> bytes:
    """A pcap (Linux cooked capture, as ``tcpdump -i any`` writes) of TCP segments (source port, target port,
    sequence number, payload) from 10.0.0.2 to 10.0.0.3."""
    out = bytearray(b"\xd4\xc3\xb2\xa1" + (2).to_bytes(2, "little") + (4).to_bytes(2, "little") + bytes(8)
                    + (262144).to_bytes(4, "little") + (113).to_bytes(4, "little"))
    for source, target, seq, payload in segments:
        tcp = (source.to_bytes(2, "big") + target.to_bytes(2, "big") + seq.to_bytes(4, "big") + bytes(4)
               + bytes([5 << 4, 0x18]) + bytes(6))
        ip = (bytes([0x45, 0]) + (20 + len(tcp) + len(payload)).to_bytes(2, "big") + bytes(5) + bytes([6])
              + bytes(2) + bytes([10, 0, 0, 2, 10, 0, 0, 3]))
        frame = bytes(14) + b"\x08\x00" + ip + tcp + payload
        out += bytes(8) + len(frame).to_bytes(4, "little") + len(frame).to_bytes(4, "little") + frame
    return bytes(out)


def test_a_capture_is_searched_as_unmasked_websocket_messages_in_sequence_order(tmp_path: Path) -> None:
    marker = new_marker()
    text = History(None, marker).marked("the quiet words").encode()
    upgrade = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"
    stream = upgrade + _masked_frame(b'{"type":"HEARTBEAT"}') + _masked_frame(b'{"text":"' + text + b'"}')
    cut = len(upgrade) + 30  # the marked frame straddles two segments
    # A connection whose capture began inside a frame: its first bytes are the tail of one.
    late = b"\x11\x22\x33 tail of an earlier frame" + _masked_frame(b"x" * 200 + text)
    data = _pcap([(40000, 9001, 1000 + cut, stream[cut:]), (40000, 9001, 1000, stream[:cut]),
                  (40000, 9001, 1000, stream[:cut]),  # retransmitted
                  (40002, 9001, 5, late)])
    assert text not in data and marker.encode() not in data  # masked: a search of the raw bytes finds nothing
    (tmp_path / "peer1-1.pcap").write_bytes(data)
    hits, files = confscan.scan([tmp_path], marker)
    assert files == 1
    assert {hit.path.split(" ", 1)[1] for hit in hits} == {"10.0.0.2:40000>10.0.0.3:9001",
                                                           "10.0.0.2:40002>10.0.0.3:9001"}


def test_websocket_payloads_join_frames_and_keep_what_is_no_frame() -> None:
    assert confscan.websocket_payloads(_masked_frame(b"a" * 300) + _masked_frame(b"bc")) == b"a" * 300 + b"bc"
    assert confscan.websocket_payloads(b"HTTP/1.1 101 Switching\r\n\r\n\x81\x02hi") == b"hi"
    assert confscan.websocket_payloads(b"\x81\x7f\x00") == b"\x81\x7f\x00"  # cut off: kept as is
