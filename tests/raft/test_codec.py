"""The msgpack codec: messages round-trip; hostile input raises CodecError and nothing else."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftfleet_agent.raft import codec
from raftfleet_agent.raft import messages as m
from raftfleet_agent.raft.codec import CodecError
from raftfleet_agent.raft.types import (
    Config,
    Entry,
    EntryKind,
    HardState,
    ReplicaId,
    Snapshot,
    SnapshotMeta,
)

from .harness import A, B, C, D

CFG = Config(frozenset({A, B, C}), frozenset({D}))
META = SnapshotMeta(40, 3, CFG)
ENTRIES = (
    Entry(3, 7, EntryKind.NOOP, None),
    Entry(3, 8, EntryKind.NORMAL, ["c1", 4, "inc"]),
    Entry(3, 9, EntryKind.CONFIG, CFG),
    Entry(4, 10, EntryKind.NORMAL, b"\x00bytes"),
)
H = {"frm": A, "to": ReplicaId("b", 7), "term": 5}
SAMPLES: list[m.Message] = [
    m.PreVote(**H, last_index=9, last_term=4),
    m.PreVoteResp(**H, granted=True),
    m.Vote(**H, last_index=9, last_term=4, transfer=True),
    m.VoteResp(**H, granted=False),
    m.Append(**H, prev_index=6, prev_term=3, entries=ENTRIES, commit=6, round=12),
    m.Append(**H, prev_index=0, prev_term=0, entries=(), commit=0),
    m.AppendResp(**H, success=False, index=6, hint_index=3, hint_term=2, round=12),
    m.Heartbeat(**H, commit=6, round=13),
    m.HeartbeatResp(**H, round=13),
    m.TimeoutNow(**H),
    m.InstallSnapshot(**H, meta=META, offset=16, chunk=b"abc", done=False, round=2),
    m.InstallSnapshotResp(**H, index=40, next_offset=19, done=False, round=2),
    m.Removed(**H),
]


def test_samples_cover_every_message_type() -> None:
    assert {type(s) for s in SAMPLES} == set(m.MESSAGE_TYPES)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda s: type(s).__name__)
def test_every_message_round_trips_through_msgpack(msg: m.Message) -> None:
    wire = codec.packb(codec.encode_message(msg))
    assert codec.decode_message(codec.unpackb(wire)) == msg


def test_hard_state_and_snapshot_round_trip() -> None:
    for hs in (HardState(), HardState(7, B, 30)):
        assert (
            codec.decode_hard_state(codec.unpackb(codec.packb(codec.encode_hard_state(hs)))) == hs
        )
    snap = Snapshot(META, b"state")
    assert codec.decode_snapshot(codec.unpackb(codec.packb(codec.encode_snapshot(snap)))) == snap


@pytest.mark.parametrize(
    "bad",
    [
        [],
        [99, "a", 1, "b", 1, 5],
        [-1, "a", 1, "b", 1, 5],
        [True, "a", 1, "b", 1, 5, 0, 0],  # bool is not an int type code
        [0, "a", 1, "b", 1, 5],  # PreVote missing fields
        [0, "a", 1, "b", 1, -5, 1, 1],  # negative term
        [0, "", 1, "b", 1, 5, 1, 1],  # empty agent
        [1, "a", 1, "b", 1, 5, 1],  # granted must be a bool
        [4, "a", 1, "b", 1, 5, 0, 0, [[1, 2, 0, None], [1, 4, 0, None]], 0, 0],  # gap
        [4, "a", 1, "b", 1, 5, 0, 0, [[1, 1, 9, None]], 0, 0],  # unknown entry kind
        [4, "a", 1, "b", 1, 5, 0, 0, [[1, 1, 2, [[["a", 1]], [["a", 1]]]]], 0, 0],  # voter+learner
        [9, "a", 1, "b", 1, 5, [1, 1, [[], []]], 0, "not bytes", True, 0],
        {"not": "a list"},
        "junk",
        None,
    ],
)
def test_malformed_messages_raise_codec_error(bad: object) -> None:
    with pytest.raises(CodecError):
        codec.decode_message(bad)


def test_invalid_msgpack_raises_codec_error() -> None:
    for data in (b"\xc1", b"\x92\x01", b"\x01\x02"):
        with pytest.raises(CodecError):
            codec.unpackb(data)


def _check_decode(value: object) -> None:
    try:
        msg = codec.decode_message(value)
    except CodecError:
        return
    # Whatever decodes must be a valid message that encodes back to the same value.
    assert isinstance(msg, m.Message)
    assert codec.decode_message(codec.encode_message(msg)) == msg


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=5)
    | st.binary(max_size=5)
    | st.floats(allow_nan=False),
    lambda inner: (
        st.lists(inner, max_size=12) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=40,
)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_codec_error(data: bytes) -> None:
    try:
        value = codec.unpackb(data)
    except CodecError:
        return
    _check_decode(value)


@settings(max_examples=200, deadline=None)
@given(msgpack_values)
def test_random_values_raise_only_codec_error(value: object) -> None:
    _check_decode(value)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(SAMPLES),
    st.data(),
)
def test_mutated_messages_raise_only_codec_error(msg: m.Message, data: st.DataObject) -> None:
    """Near-valid input: one field of a real encoding replaced by junk."""
    encoded = codec.encode_message(msg)
    i = data.draw(st.integers(0, len(encoded) - 1))
    encoded[i] = data.draw(msgpack_values)
    _check_decode(codec.unpackb(codec.packb(encoded)))


def test_decoded_replica_ids_are_shared_checked_and_bounded() -> None:
    raw = codec.encode_message(m.HeartbeatResp(frm=A, to=ReplicaId("b", 1), term=5, round=1))
    first, second = codec.decode_message(raw), codec.decode_message(list(raw))
    assert first == second and first.frm is second.frm  # one object per replica id
    # A cached ("b", 1) must not stand in for ("b", True): True == 1 in a dict.
    with pytest.raises(CodecError):
        codec.decode_message([*raw[:3], "b", True, *raw[5:]])
    for n in range(codec._REPLICAS_MAX + 10):  # a peer naming replicas forever
        codec.decode_message([*raw[:3], "z", n, *raw[5:]])
    assert len(codec._REPLICAS) <= codec._REPLICAS_MAX
