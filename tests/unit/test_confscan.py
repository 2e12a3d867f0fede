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
