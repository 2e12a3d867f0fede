"""socp.envelope: parsing at the edge, msg_ref, replay key, signing (WIRE §2, §3)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from socp import crypto
from socp import envelope as env
from socp.envelope import Envelope, FrameType
from socp.errors import BadFrame, ErrorCode, TooLarge, UnknownType
from tests.keypool import KeyPool

A = "6c1b9a52-29f5-4c44-9a43-5f3a3c1f5a10"
B = "0b3c7f3e-8a2d-4d1e-b2b6-6a9f0e1d2c3b"
TS = 1_760_000_000_123


def frame(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"type": "MSG_DIRECT", "from": A, "to": B, "ts": TS,
                            "payload": {"ciphertext": "Y3Q", "sender_pub": "cHVi", "content_sig": "c2ln"},
                            "sig": ""}
    base.update(overrides)
    return base


def text(**overrides: Any) -> str:
    return json.dumps(frame(**overrides))


def drop(name: str) -> str:
    data = frame()
    del data[name]
    return json.dumps(data)


# --- valid frames ---------------------------------------------------------------------------------

def test_parse_valid_frame() -> None:
    parsed = env.parse(text())
    assert parsed == Envelope(FrameType.MSG_DIRECT, A, B, TS,
                              {"ciphertext": "Y3Q", "sender_pub": "cHVi", "content_sig": "c2ln"}, "")
    assert parsed.msg_ref == f"MSG_DIRECT:{A}:{B}:{TS}"


def test_parse_accepts_bytes() -> None:
    assert env.parse(text().encode("utf-8")) == env.parse(text())


@pytest.mark.parametrize("frame_type", list(FrameType))
def test_parse_every_frame_type_with_its_required_fields(frame_type: FrameType) -> None:
    samples: dict[tuple[type, ...], Any] = {(str,): "x", (int,): 1, (list,): [], (dict,): {}}
    payload = {name: samples[types] for name, types in env.PAYLOAD_SCHEMA[frame_type].items()}
    parsed = env.parse(json.dumps({"type": frame_type.value, "from": A, "to": "*", "ts": TS, "payload": payload}))
    assert parsed.type is frame_type
    assert parsed.sig == ""


def test_sig_absent_or_null_reads_as_empty() -> None:
    data = frame()
    del data["sig"]
    assert env.parse(json.dumps(data)).sig == ""
    assert env.parse(text(sig=None)).sig == ""


def test_unknown_envelope_and_payload_fields_ignored() -> None:
    data = frame(id="abc", relay=["x"])
    data["payload"]["extra"] = {"deep": [1]}
    parsed = env.parse(json.dumps(data))
    assert parsed.type is FrameType.MSG_DIRECT
    assert parsed.payload["extra"] == {"deep": [1]}


def test_to_wire_parse_round_trip(key_pool: KeyPool) -> None:
    original = env.make(FrameType.USER_ADVERTISE, A, "*", TS,
                        {"user_id": B, "server_id": A, "pubkey": "k", "meta": {"display_name": "Zoë ✓"}},
                        key_pool.key(0))
    wire = original.to_wire()
    assert "\n" not in wire
    assert env.parse(wire) == original
    assert env.parse(wire.encode("utf-8")) == original
    assert set(json.loads(wire)) == {"type", "from", "to", "ts", "payload", "sig", "id"}


def test_every_frame_carries_a_fresh_random_id(key_pool: KeyPool) -> None:
    """WIRE §2: a random UUID v4 "id" on every frame, covered by no signature, kept when parsed."""
    frame = env.make(FrameType.HEARTBEAT, A, "*", TS, {}, key_pool.key(0))
    first, second = json.loads(frame.to_wire())["id"], json.loads(frame.to_wire())["id"]
    assert env.is_uuid(first) and env.is_uuid(second) and first != second
    parsed = env.parse(frame.to_wire())
    assert env.is_uuid(parsed.id) and json.loads(parsed.to_wire())["id"] == parsed.id
    assert parsed.verify(key_pool.key(0).public_key())


# --- bad frames -----------------------------------------------------------------------------------

@pytest.mark.parametrize("data", ["", "not json", "{", '{"type": "MSG_DIRECT"', "\x00", "[1,2", "{'a': 1}"])
def test_non_json_is_bad_frame(data: str) -> None:
    with pytest.raises(BadFrame):
        env.parse(data)


@pytest.mark.parametrize("data", ["[]", "[1]", "1", '"MSG_DIRECT"', "null", "true"])
def test_non_object_is_bad_frame(data: str) -> None:
    with pytest.raises(BadFrame):
        env.parse(data)


def test_invalid_utf8_bytes_is_bad_frame() -> None:
    with pytest.raises(BadFrame):
        env.parse(b'{"type": "\xff\xfe"}')


def test_deep_nesting_is_bad_frame() -> None:
    with pytest.raises(BadFrame):
        env.parse('{"type":"HEARTBEAT","from":"a","to":"b","ts":1,"payload":' + "[" * 100_000 + "]" * 100_000
                  + "}")


@pytest.mark.parametrize("name", ["type", "from", "to", "ts", "payload"])
def test_missing_envelope_field_is_bad_frame(name: str) -> None:
    with pytest.raises(BadFrame):
        env.parse(drop(name))


@pytest.mark.parametrize(("name", "value"), [
    ("type", 5), ("type", None), ("from", 5), ("from", None), ("to", ["*"]), ("to", 1),
    ("ts", str(TS)), ("ts", True), ("ts", False), ("ts", None), ("payload", []), ("payload", "x"),
    ("payload", None), ("sig", 5), ("sig", ["x"]),
])
def test_mistyped_envelope_field_is_bad_frame(name: str, value: object) -> None:
    with pytest.raises(BadFrame):
        env.parse(text(**{name: value}))


@pytest.mark.parametrize("where", ["ts", "payload", "nested", "list", "exponent"])
def test_float_anywhere_is_bad_frame(where: str) -> None:
    raw = {
        "ts": text().replace(f'"ts": {TS}', f'"ts": {TS}.0'),
        "payload": text().replace('"ciphertext": "Y3Q"', '"ciphertext": "Y3Q", "x": 0.5'),
        "nested": text().replace('"ciphertext": "Y3Q"', '"ciphertext": "Y3Q", "x": {"y": [1, 2.25]}'),
        "list": text().replace('"ciphertext": "Y3Q"', '"ciphertext": "Y3Q", "x": [-1.0]'),
        "exponent": text().replace(f'"ts": {TS}', '"ts": 1e12'),
    }[where]
    with pytest.raises(BadFrame):
        env.parse(raw)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_bad_frame(constant: str) -> None:
    with pytest.raises(BadFrame):
        env.parse(text().replace('"ciphertext": "Y3Q"', f'"ciphertext": "Y3Q", "x": {constant}'))


@pytest.mark.parametrize(("name", "value"), [
    ("ciphertext", None), ("ciphertext", 5), ("sender_pub", ["k"]), ("content_sig", {"s": 1}),
])
def test_missing_or_mistyped_payload_field_is_bad_frame_with_msg_ref(name: str, value: object) -> None:
    data = frame()
    if value is None:
        del data["payload"][name]
    else:
        data["payload"][name] = value
    with pytest.raises(BadFrame) as info:
        env.parse(json.dumps(data))
    assert info.value.msg_ref == f"MSG_DIRECT:{A}:{B}:{TS}"
    assert info.value.code is ErrorCode.BAD_FRAME


def test_bool_is_not_an_integer_payload_field() -> None:
    data = {"type": "FILE_CHUNK", "from": A, "to": B, "ts": TS,
            "payload": {"file_id": "f", "index": True, "ciphertext": "x"}}
    with pytest.raises(BadFrame):
        env.parse(json.dumps(data))


@pytest.mark.parametrize("frame_type", ["MSG_SECRET", "msg_direct", "Msg_Direct", "", "HEARTBEAT "])
def test_unknown_type_with_msg_ref(frame_type: str) -> None:
    with pytest.raises(UnknownType) as info:
        env.parse(text(type=frame_type))
    assert info.value.code is ErrorCode.UNKNOWN_TYPE
    assert info.value.msg_ref == f"{frame_type}:{A}:{B}:{TS}"
    assert not info.value.fatal


def test_too_large() -> None:
    data = text()
    size = len(data.encode("utf-8"))
    assert env.parse(data, max_bytes=size).type is FrameType.MSG_DIRECT
    with pytest.raises(TooLarge) as info:
        env.parse(data, max_bytes=size - 1)
    assert info.value.fatal
    assert info.value.code is ErrorCode.TOO_LARGE


def test_too_large_counts_utf8_bytes_not_characters() -> None:
    data = json.dumps(frame(pad="é" * 100), ensure_ascii=False)
    with pytest.raises(TooLarge):
        env.parse(data, max_bytes=len(data) + 50)       # 100 more bytes than characters


def test_too_large_checked_before_json() -> None:
    with pytest.raises(TooLarge):
        env.parse("x" * 101, max_bytes=100)


def test_default_limit_is_2_mib() -> None:
    assert env.DEFAULT_MAX_FRAME_BYTES == 2 * 1024 * 1024
    big = text(pad="x" * (2 * 1024 * 1024))
    with pytest.raises(TooLarge):
        env.parse(big)


# --- msg_ref, replay key, signatures --------------------------------------------------------------

BASE = Envelope(FrameType.USER_REMOVE, A, "*", TS, {"user_id": B, "server_id": A})


def test_replay_key_is_stable() -> None:
    same = Envelope(FrameType.USER_REMOVE, A, "*", TS, {"server_id": A, "user_id": B}, sig="whatever")
    assert BASE.replay_key == same.replay_key
    assert len(BASE.replay_key) == 32
    assert env.parse(BASE.to_wire()).replay_key == BASE.replay_key


@pytest.mark.parametrize("change", [
    {"type": FrameType.USER_ADVERTISE},
    {"sender": B},
    {"to": B},
    {"ts": TS + 1},
    {"payload": {"user_id": B, "server_id": B}},
    {"payload": {"user_id": B, "server_id": A, "extra": 0}},
])
def test_replay_key_sensitive_to_each_field(change: dict[str, Any]) -> None:
    from dataclasses import replace

    assert replace(BASE, **change).replay_key != BASE.replay_key


def test_replay_key_fields_are_delimited() -> None:
    first = Envelope(FrameType.HEARTBEAT, "ab", "c", TS, {})
    second = Envelope(FrameType.HEARTBEAT, "a", "bc", TS, {})
    assert first.replay_key != second.replay_key


def test_signed_and_verify(key_pool: KeyPool) -> None:
    key, other = key_pool.key(0), key_pool.key(1)
    signed = BASE.signed(key)
    assert signed.sig and signed.payload == BASE.payload and BASE.sig == ""
    assert signed.verify(key.public_key())
    assert not signed.verify(other.public_key())
    assert not BASE.verify(key.public_key())
    assert env.parse(signed.to_wire()).verify(key.public_key())


def test_verify_refuses_tampered_payload(key_pool: KeyPool) -> None:
    key = key_pool.key(0)
    data = json.loads(BASE.signed(key).to_wire())
    data["payload"]["user_id"] = A
    assert not env.parse(json.dumps(data)).verify(key.public_key())


@pytest.mark.parametrize("field", ["type", "from", "to", "ts"])
def test_signature_covers_every_envelope_field(key_pool: KeyPool, field: str) -> None:
    """WIRE §2 (issue 11 finding 4): ``sig`` covers type, from, to, ts and payload, so a captured frame
    re-timestamped, re-addressed or re-typed no longer verifies (it did when ``sig`` covered the payload)."""
    key = key_pool.key(0)
    data = json.loads(BASE.signed(key).to_wire())
    data[field] = {"type": "USER_ADVERTISE", "from": B, "to": B, "ts": TS + 5}[field]
    assert not env.parse(json.dumps(data)).verify(key.public_key())
    assert not env.parse(json.dumps(data)).verify(key.public_key(), legacy=True)


def test_signature_is_over_the_canonical_envelope(key_pool: KeyPool) -> None:
    key = key_pool.key(0)
    signed = BASE.signed(key)
    canonical = json.dumps({"type": BASE.type.value, "from": A, "to": BASE.to, "ts": TS, "payload": BASE.payload},
                           sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    assert crypto.verify(key.public_key(), canonical, signed.sig)
    # the extra "id" field is covered by nothing: another id still verifies
    data = json.loads(signed.to_wire())
    data["id"] = "not even a uuid"
    assert env.parse(json.dumps(data)).verify(key.public_key())


def test_payload_only_signature_only_under_the_legacy_switch(key_pool: KeyPool) -> None:
    key = key_pool.key(0)
    legacy = replace(BASE, sig=crypto.sign_payload(key, BASE.payload))
    assert not legacy.verify(key.public_key())
    assert legacy.verify(key.public_key(), legacy=True)
    assert not legacy.verify(key_pool.key(1).public_key(), legacy=True)


def test_make_signs_only_with_a_key(key_pool: KeyPool) -> None:
    unsigned = env.make(FrameType.HEARTBEAT, A, B, TS, {})
    assert unsigned.sig == ""
    signed = env.make(FrameType.HEARTBEAT, A, B, TS, {}, key_pool.key(0))
    assert crypto.verify(key_pool.key(0).public_key(), signed.signed_bytes, signed.sig)
    assert not crypto.verify_payload(key_pool.key(0).public_key(), {}, signed.sig)


def test_error_frame_and_error_from_exception(key_pool: KeyPool) -> None:
    error = env.error_frame(A, B, TS, ErrorCode.USER_NOT_FOUND, "nobody", key_pool.key(0), msg_ref="X:a:b:1")
    assert error.type is FrameType.ERROR
    assert error.payload == {"code": "USER_NOT_FOUND", "detail": "nobody", "msg_ref": "X:a:b:1"}
    assert error.verify(key_pool.key(0).public_key())
    no_ref = env.error_frame(A, B, TS, ErrorCode.BAD_FRAME, "bad", None)
    assert "msg_ref" not in no_ref.payload
    exc = UnknownType("what is this", msg_ref="NOPE:a:b:1")
    from_exc = env.error_from_exception(A, B, TS, exc, None)
    assert from_exc.payload == {"code": "UNKNOWN_TYPE", "detail": "what is this", "msg_ref": "NOPE:a:b:1"}


@pytest.mark.parametrize(("value", "expected"), [
    (A, True), (B, True), ("00000000-0000-4000-8000-000000000000", True),
    ("not-a-uuid", False), ("", False), (None, False), (5, False),
    ("6c1b9a5229f54c449a435f3a3c1f5a10", False), ("{" + A + "}", False), ("urn:uuid:" + A, False),
    (A + " ", False), (A.upper(), False),
])
def test_is_uuid(value: object, expected: bool) -> None:
    assert env.is_uuid(value) is expected


@pytest.mark.parametrize("where", ["type", "from", "to", "payload", "sig", "id", "key"])
def test_lone_surrogate_anywhere_is_bad_frame(where: str) -> None:
    """Issue 11 finding 8: a lone surrogate (JSON escape \\ud800) anywhere in a frame is BAD_FRAME, never a
    UnicodeEncodeError escaping later (msg_ref, replay key, signature bytes)."""
    frame: dict[str, Any] = {"type": "HEARTBEAT", "from": A, "to": B, "ts": TS, "payload": {}, "sig": ""}
    bad = "x\ud800"
    if where == "payload":
        frame["payload"] = {"note": bad}
    elif where == "key":
        frame["payload"] = {bad: 1}
    elif where == "type":
        frame["type"] = bad
    else:
        frame[where] = bad
    text = json.dumps(frame)  # ensure_ascii: the surrogate travels as an escape
    assert "\\ud800" in text
    with pytest.raises(BadFrame) as caught:
        env.parse(text)
    assert caught.value.msg_ref is None
    json.dumps(env.error_from_exception(A, B, TS, caught.value, None).to_wire()).encode("utf-8")
