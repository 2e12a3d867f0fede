"""socp.presence: the directory rules of WIRE §4.5 and the listing order of §5."""

from __future__ import annotations

from typing import Any

import pytest

from socp.presence import Directory, UserRecord, display_label, meta_of

S1, S2, S3 = "server-1", "server-2", "server-3"


def rec(user_id: str, server_id: str = S1, name: str | None = None, pubkey: str = "key") -> UserRecord:
    meta: dict[str, Any] = {"display_name": name} if name is not None else {}
    return UserRecord(user_id, server_id, f"{pubkey}-{user_id}", meta)


def test_display_label() -> None:
    assert display_label("u1", {"display_name": "Alice"}) == "Alice"
    assert display_label("u1", {"display_name": "  Alice  "}) == "Alice"
    assert display_label("u1", {"display_name": "   "}) == "u1"
    assert display_label("u1", {"display_name": 5}) == "u1"
    assert display_label("u1", {}) == "u1"
    assert display_label("u1", None) == "u1"  # type: ignore[arg-type]
    assert rec("u1", name="Bob").label == "Bob"


def test_meta_of() -> None:
    assert meta_of({"meta": {"a": 1}}) == {"a": 1}
    assert meta_of({"meta": "x"}) == {}
    assert meta_of({"meta": None}) == {}
    assert meta_of({}) == {}


def test_user_record_to_wire() -> None:
    assert rec("u1", S2, "Al").to_wire() == {"user_id": "u1", "server_id": S2, "pubkey": "key-u1",
                                             "meta": {"display_name": "Al"}}


def test_advertise_reports_changes() -> None:
    directory = Directory()
    assert directory.advertise(rec("u1", S1, "Al"))
    assert not directory.advertise(rec("u1", S1, "Al"))
    assert directory.advertise(rec("u1", S1, "Alfred"))           # meta change
    assert directory.advertise(rec("u1", S2, "Alfred"))           # moved
    assert directory.advertise(rec("u1", S2, "Alfred", pubkey="other"))
    assert directory.location("u1") == S2
    assert len(directory) == 1 and "u1" in directory
    record = directory.get("u1")
    assert record is not None and record.label == "Alfred" and record.pubkey == "other-u1"


def test_remove_only_if_mapping_still_points_to_that_server() -> None:
    directory = Directory()
    directory.advertise(rec("u1", S1))
    directory.advertise(rec("u1", S2))                             # user moved to S2
    assert directory.remove("u1", S1) is None                      # late removal from S1 is ignored
    assert directory.location("u1") == S2
    removed = directory.remove("u1", S2)
    assert removed is not None and removed.server_id == S2
    assert "u1" not in directory and directory.location("u1") is None and directory.get("u1") is None
    assert directory.remove("u1", S2) is None
    assert directory.remove("nobody", S1) is None


def test_replace_server_snapshot_semantics() -> None:
    directory = Directory()
    for record in (rec("a", S1), rec("b", S1, "B"), rec("c", S1), rec("x", S2)):
        directory.advertise(record)
    added, removed = directory.replace_server(S1, [rec("b", S1, "B"), rec("c", S1, "Cee"), rec("d", S1)])
    assert sorted(r.user_id for r in added) == ["c", "d"]          # changed meta, new; unchanged b not reported
    assert [r.user_id for r in removed] == ["a"]
    assert sorted(r.user_id for r in directory.users_of(S1)) == ["b", "c", "d"]
    assert [r.user_id for r in directory.users_of(S2)] == ["x"]    # other servers untouched


def test_replace_server_ignores_records_of_other_servers() -> None:
    directory = Directory()
    directory.advertise(rec("x", S2))
    added, removed = directory.replace_server(S1, [rec("x", S3), rec("y", S1)])
    assert [r.user_id for r in added] == ["y"] and removed == []
    assert directory.location("x") == S2


def test_replace_server_takes_over_a_user_that_moved() -> None:
    directory = Directory()
    directory.advertise(rec("u", S2))
    added, _ = directory.replace_server(S1, [rec("u", S1)])
    assert [r.server_id for r in added] == [S1]
    assert directory.location("u") == S1
    _, removed = directory.replace_server(S2, [])                  # S2's empty snapshot does not remove it
    assert removed == [] and directory.location("u") == S1


def test_replace_server_empty_snapshot_and_drop_server() -> None:
    directory = Directory()
    for record in (rec("a", S1), rec("b", S1), rec("x", S2)):
        directory.advertise(record)
    dropped = directory.drop_server(S1)
    assert sorted(r.user_id for r in dropped) == ["a", "b"]
    assert directory.users_of(S1) == [] and len(directory) == 1
    assert directory.drop_server(S1) == []
    assert directory.drop_server("unknown") == []


def test_listing_order_label_casefold_then_id() -> None:
    directory = Directory()
    records = [rec("id-9", S1, "bob"), rec("id-3", S2, "Alice"), rec("id-1", S1, "alice"),
               rec("id-2", S3, "ALICE"), rec("zed-id", S1), rec("aaa-id", S2), rec("id-5", S1, "Émile"),
               rec("id-7", S1, "Straße"), rec("id-6", S1, "STRASSE")]
    for record in reversed(records):
        directory.advertise(record)
    assert [r.user_id for r in directory.listing()] == [
        "aaa-id", "id-1", "id-2", "id-3", "id-9", "id-6", "id-7", "zed-id", "id-5"]


def test_find_by_id_and_by_label() -> None:
    directory = Directory()
    for record in (rec("u1", S1, "Alice"), rec("u2", S2, "alice"), rec("u3", S1, "Bob"), rec("Bob", S2)):
        directory.advertise(record)
    assert [r.user_id for r in directory.find("u3")] == ["u3"]
    assert [r.user_id for r in directory.find("ALICE")] == ["u1", "u2"]
    assert [r.user_id for r in directory.find("Bob")] == ["Bob"]    # an exact id wins over labels
    assert [r.user_id for r in directory.find("bob")] == ["Bob", "u3"]  # label match, then id order
    assert directory.find("carol") == []


@pytest.mark.parametrize("name", ["", "  "])
def test_blank_display_name_falls_back_to_id(name: str) -> None:
    directory = Directory()
    directory.advertise(rec("u1", S1, name))
    assert directory.find("u1")[0].label == "u1"
