"""Framing: round trips, arbitrary chunking, and hostile input."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftfleet_agent.transport.framing import (
    NEED_DATA,
    FrameDecoder,
    FrameError,
    encode_frame,
    encode_frames,
)

# msgpack values as the layer above sends them (maps with int keys included).
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=40)
)
values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), inner, max_size=5)
    ),
    max_leaves=20,
)


def _decode_all(decoder: FrameDecoder, data: bytes) -> list[object]:
    decoder.feed(data)
    return list(decoder)


def test_round_trip_simple() -> None:
    objs = [{"group": "g1", "term": 3}, [1, 2, b"\x00"], None, "x", 0]
    decoder = FrameDecoder()
    assert _decode_all(decoder, encode_frames(objs)) == objs
    assert decoder.buffered_bytes == 0
    assert decoder.next_frame() is NEED_DATA


def test_encode_frames_equals_concatenated_encode_frame() -> None:
    objs = [1, "two", {3: [4]}]
    assert encode_frames(objs) == b"".join(encode_frame(o) for o in objs)


def test_header_is_big_endian_length() -> None:
    frame = encode_frame("hi")
    assert frame[:4] == struct.pack(">I", len(frame) - 4)
    assert msgpack.unpackb(frame[4:]) == "hi"


def test_none_payload_is_not_confused_with_need_data() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(None))
    assert decoder.next_frame() is None
    assert decoder.next_frame() is NEED_DATA


@settings(max_examples=150, deadline=None)
@given(objs=st.lists(values, max_size=12), cuts=st.lists(st.integers(0, 10_000), max_size=20))
def test_random_chunking_decodes_the_same(objs: list[object], cuts: list[int]) -> None:
    stream = encode_frames(objs)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    decoder = FrameDecoder()
    out: list[object] = []
    for chunk in chunks:
        out.extend(_decode_all(decoder, chunk))
    # msgpack turns tuples into lists; our strategies only make lists, so equality holds.
    assert out == objs
    assert decoder.buffered_bytes == 0


def test_oversized_length_rejected_before_the_body_arrives() -> None:
    decoder = FrameDecoder(frame_bytes_max=1000)
    decoder.feed(b"\x00\x00")  # half a header: nothing to judge yet
    with pytest.raises(FrameError, match="exceeds the cap"):
        decoder.feed(b"\x03\xe9")  # 1001: refused before one body byte is buffered
    with pytest.raises(FrameError):  # and the decoder stays broken
        decoder.feed(b"\x00")


def test_oversized_frame_after_a_good_one_is_rejected() -> None:
    decoder = FrameDecoder(frame_bytes_max=100)
    decoder.feed(encode_frame("ok") + struct.pack(">I", 101))
    assert decoder.next_frame() == "ok"
    with pytest.raises(FrameError):
        decoder.next_frame()


def test_frame_exactly_at_the_cap_is_accepted() -> None:
    payload = b"x" * 95
    frame = encode_frame(payload)
    decoder = FrameDecoder(frame_bytes_max=len(frame) - 4)
    assert _decode_all(decoder, frame) == [payload]


def test_encode_refuses_frames_over_the_cap() -> None:
    with pytest.raises(ValueError, match="exceeds the cap"):
        encode_frame(b"x" * 100, frame_bytes_max=50)
    with pytest.raises(ValueError, match="exceeds the cap"):
        encode_frames([1, b"x" * 100], frame_bytes_max=50)


def test_unencodable_value_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        encode_frame(object())


def test_a_failed_encoding_leaves_nothing_behind_for_the_next_frame() -> None:
    # The packer is reused: half a list packed before the failure must not
    # end up in front of the next frame.
    with pytest.raises(TypeError):
        encode_frame(["x" * 50, 1, object()])
    frame = encode_frame({"id": 1})
    assert _decode_all(FrameDecoder(), frame) == [{"id": 1}]
    assert len(frame) == 4 + len(msgpack.packb({"id": 1}))


def test_zero_length_frame_is_invalid() -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameError, match="zero-length"):
        decoder.feed(b"\x00\x00\x00\x00")


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",  # a byte msgpack never uses
        b"\x92\x01",  # an array missing an element (truncated body)
        b"\x01\x02",  # trailing data after a value
        b"\xa2\xff\xfe",  # invalid UTF-8 in a str
        b"\x81\x91\x01\x01",  # a map keyed by an array (unhashable)
        b"\xd6\xff\x00\x00\x00",  # a timestamp ext of a wrong length
        b"\x91" * 5000 + b"\x01",  # nesting deeper than the unpacker allows
    ],
)
def test_garbage_body_raises_frame_error(body: bytes) -> None:
    decoder = FrameDecoder()
    decoder.feed(struct.pack(">I", len(body)) + body)
    with pytest.raises(FrameError):
        decoder.next_frame()
    with pytest.raises(FrameError):
        decoder.next_frame()


def test_truncated_frame_waits_for_more() -> None:
    frame = encode_frame({"k": "v" * 50})
    decoder = FrameDecoder()
    assert _decode_all(decoder, frame[:-1]) == []
    assert decoder.buffered_bytes == len(frame) - 1
    assert _decode_all(decoder, frame[-1:]) == [{"k": "v" * 50}]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_only_ever_raise_frame_error(data: bytes) -> None:
    decoder = FrameDecoder(frame_bytes_max=1000)
    try:
        decoder.feed(data)
        list(decoder)
    except FrameError:
        pass


@settings(max_examples=300, deadline=None)
@given(body=st.binary(min_size=1, max_size=200))
def test_arbitrary_bodies_decode_or_raise_frame_error(body: bytes) -> None:
    decoder = FrameDecoder()
    decoder.feed(struct.pack(">I", len(body)) + body)
    try:
        decoder.next_frame()
    except FrameError:
        pass


def test_large_stream_of_frames_keeps_the_buffer_small() -> None:
    decoder = FrameDecoder()
    frame = encode_frame(b"y" * 1000)
    stream = frame * 500
    total = 0
    for i in range(0, len(stream), 7000):
        decoder.feed(stream[i : i + 7000])
        total += len(list(decoder))
        assert decoder.buffered_bytes < len(frame)
    assert total == 500
