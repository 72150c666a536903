"""The command envelope carried in NORMAL entries."""

from __future__ import annotations

import msgpack
import pytest

from raftfleet_agent.statemachine import CommandEnvelope, decode_command, encode_command


def test_encode_decode_round_trip() -> None:
    data = encode_command("client-1", 7, 1_700_000_000_000, ["put", "k", 1])
    assert type(data) is bytes
    assert msgpack.unpackb(data) == ["client-1", 7, 1_700_000_000_000, ["put", "k", 1]]
    assert decode_command(data) == CommandEnvelope(
        "client-1", 7, 1_700_000_000_000, ["put", "k", 1]
    )
    # The decoded list (what stores written before hold) means the same.
    assert decode_command(msgpack.unpackb(data)) == decode_command(data)


def test_the_log_holds_a_private_copy_in_the_form_followers_decode() -> None:
    arg = ("set", (1, 2))
    data = encode_command("c", 1, 0, arg)
    assert decode_command(data).arg == ["set", [1, 2]]
    inner = [1]
    data = encode_command("c", 1, 0, ["put", "k", inner])
    inner.append(2)  # the caller's object is not the log's
    assert decode_command(data).arg == ["put", "k", [1]]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("", 1, 0), "client_id"),
        (("x" * 129, 1, 0), "client_id"),
        ((1, 1, 0), "client_id"),
        (("c", -1, 0), "seq"),
        (("c", True, 0), "seq"),
        (("c", 2**63, 0), "seq"),
        (("c", 1.0, 0), "seq"),
        (("c", 1, -5), "ts_ms"),
        (("c", 1, 1.5), "ts_ms"),
        (("c", 1, None), "ts_ms"),
    ],
)
def test_encode_rejects_bad_ids(args: tuple[object, object, object], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        encode_command(*args, "inc")  # type: ignore[arg-type]


@pytest.mark.parametrize("arg", [{1, 2}, object(), 2**64, ["ok", {"nested": object()}]])
def test_encode_rejects_non_msgpack_arguments(arg: object) -> None:
    with pytest.raises(TypeError, match="not a msgpack value"):
        encode_command("c", 1, 0, arg)


@pytest.mark.parametrize(
    "data",
    [
        None,
        "inc",
        5,
        b"x",
        {"client_id": "c"},
        [],
        ["c", 1, 0],
        ["c", 1, 0, "inc", 5],
        msgpack.packb(["c", 1, 0]),
        msgpack.packb(["c", 1, 0, "inc"])[:-1],  # truncated
        msgpack.packb(["c", 1, 0, "inc"]) + b"\x00",  # trailing bytes
        msgpack.packb(["c", 1, 0, {(1, 2): 3}]),  # a key Python cannot hash
        b"\x94\xa2\xff\xfe\x01\x00\xc0",  # a client id that is not UTF-8
    ],
)
def test_decode_rejects_malformed(data: object) -> None:
    with pytest.raises(ValueError, match="envelope"):
        decode_command(data)
