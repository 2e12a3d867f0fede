"""client/downloads.py: hostile names stay inside the downloads folder, nothing is ever overwritten."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.downloads import MAX_NAME_BYTES, DiskSink, SaveError, safe_file_name, save_file


@pytest.mark.parametrize(("name", "expected"), [
    ("report.pdf", "report.pdf"),
    ("../../etc/passwd", "passwd"),
    ("/etc/shadow", "shadow"),
    ("..\\..\\Windows\\System32\\drivers", "drivers"),
    ("C:\\boot.ini", "boot.ini"),
    ("..", "file"),
    (".", "file"),
    ("", "file"),
    ("/", "file"),
    ("dir/", "file"),
    (".bashrc", "_bashrc"),
    ("...hidden", "_hidden"),
    ("CON", "_CON"),
    ("nul.txt", "_nul.txt"),
    ("com1", "_com1"),
    ("a\nb\x1b[31mc\x00d", "a_b_[31mc_d"),
    ("bell\x07.txt", "bell_.txt"),
    ('we<ird>:"na|me?*', "we_ird___na_me__"),
    ("trailing dots...", "trailing dots"),
    ("  spaced  ", "spaced"),
    ("Grüße.txt", "Grüße.txt"),
    ("\u202eexe.txt", "_exe.txt"),
])
def test_safe_file_name(name: str, expected: str) -> None:
    assert safe_file_name(name) == expected


def test_long_names_are_shortened_keeping_the_extension() -> None:
    name = "é" * 500 + ".tar"
    safe = safe_file_name(name)
    assert len(safe.encode("utf-8")) <= MAX_NAME_BYTES and safe.endswith(".tar") and safe.startswith("é")
    safe = safe_file_name("x" * 1000)
    assert safe == "x" * MAX_NAME_BYTES


@pytest.mark.parametrize("hostile", ["../escape.txt", "/tmp/absolute.txt", "..\\..\\escape.txt",
                                     "sub/dir/../../../escape.txt", "....//....//escape.txt"])
def test_traversal_names_land_inside_the_folder(tmp_path: Path, hostile: str) -> None:
    folder = tmp_path / "downloads"
    path = save_file(folder, hostile, b"data")
    assert path.parent == folder and path.read_bytes() == b"data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["downloads"]


def test_existing_files_are_never_overwritten(tmp_path: Path) -> None:
    first = save_file(tmp_path, "a.txt", b"one")
    second = save_file(tmp_path, "a.txt", b"two")
    third = save_file(tmp_path, "../a.txt", b"three")
    assert [p.name for p in (first, second, third)] == ["a.txt", "a (1).txt", "a (2).txt"]
    assert [p.read_bytes() for p in (first, second, third)] == [b"one", b"two", b"three"]
    assert save_file(tmp_path, "noext", b"x").name == "noext"
    assert save_file(tmp_path, "noext", b"y").name == "noext (1)"


def test_a_planted_symlink_is_not_written_through(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_bytes(b"precious")
    folder = tmp_path / "downloads"
    folder.mkdir()
    (folder / "evil.txt").symlink_to(target)
    path = save_file(folder, "evil.txt", b"attack")
    assert path.name == "evil (1).txt" and path.read_bytes() == b"attack"
    assert target.read_bytes() == b"precious"


def test_files_are_private_and_the_folder_is_created(tmp_path: Path) -> None:
    folder = tmp_path / "new" / "downloads"
    path = save_file(folder, "x.bin", b"\x00" * 10)
    assert path.stat().st_mode & 0o777 == 0o600
    assert folder.is_dir()


def test_a_folder_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "downloads"
    blocker.write_bytes(b"")
    with pytest.raises(SaveError, match="cannot create downloads folder"):
        save_file(blocker, "x", b"x")


def test_a_streamed_file_is_written_aside_then_named_without_overwriting(tmp_path: Path) -> None:
    folder = tmp_path / "dl"
    (tmp_path / "passwd").write_text("outside")
    folder.mkdir()
    (folder / "passwd").write_text("already here")
    sink = DiskSink(folder, "../passwd")
    sink.write(b"abc")
    sink.write(b"def")
    [partial] = list(folder.glob(".socp-partial-*"))  # the content goes to a hidden temporary file meanwhile
    assert partial.stat().st_mode & 0o777 == 0o600
    data, path = sink.finish()
    assert (data, path) == (b"", str(folder / "passwd (1)"))
    assert Path(path).read_bytes() == b"abcdef"
    assert (folder / "passwd").read_text() == "already here" and (tmp_path / "passwd").read_text() == "outside"
    assert sorted(p.name for p in folder.iterdir()) == ["passwd", "passwd (1)"]  # no temporary file left


def test_a_discarded_stream_leaves_nothing(tmp_path: Path) -> None:
    sink = DiskSink(tmp_path, "x.bin")
    sink.write(b"partial")
    sink.discard()
    sink.discard()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SaveError):
        sink.write(b"more")
