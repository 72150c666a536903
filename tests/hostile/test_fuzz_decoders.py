"""Fuzzing every decoder that reads bytes or values from the network or the disk.

The contract under test, for each decoder: on hostile input it raises its
own error type and nothing else (FrameError, CodecError, WireError,
ValueError/SnapshotError for the state machine), it never builds a value
that breaks an invariant, and it does not blow up memory on small inputs
that *declare* something huge. tests/transport and tests/raft already cover
random bytes and bodies; here the inputs are shaped to hit the edges:
nested containers, declared lengths, near-valid encodings with one field
replaced, and mixed chunked streams.
"""

from __future__ import annotations

import struct
import tracemalloc

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftfleet_agent.host import wire
from raftfleet_agent.raft import codec
from raftfleet_agent.raft import messages as m
from raftfleet_agent.raft.types import (
    Config,
    Entry,
    EntryKind,
    HardState,
    ReplicaId,
    Snapshot,
    SnapshotMeta,
)
from raftfleet_agent.statemachine import Applier
from raftfleet_agent.statemachine.envelope import decode_command, encode_command
from raftfleet_agent.statemachine.protocol import SnapshotError
from raftfleet_agent.transport.framing import (
    FRAME_BYTES_MAX,
    NEED_DATA,
    FrameDecoder,
    FrameError,
    encode_frame,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies ---------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
# Every value msgpack can decode into (map keys: the hashable scalars).
msgpack_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=8)
        | st.dictionaries(
            st.none()
            | st.booleans()
            | st.integers(-5, 5)
            | st.text(max_size=5)
            | st.binary(max_size=4),
            inner,
            max_size=5,
        )
    ),
    max_leaves=30,
)
# Values that look like fields: small ints, negative ints, huge ints, wrong types.
fieldish = (
    st.integers(-3, 3)
    | st.sampled_from([2**63 - 1, 2**64 - 1, -(2**63)])
    | st.booleans()
    | st.none()
    | st.text(max_size=4)
    | st.binary(max_size=4)
    | st.lists(st.integers(-1, 3), max_size=3)
)

R1, R2 = ReplicaId("a1", 1), ReplicaId("a2", 2)
CFG = Config(frozenset({R1, R2}), frozenset({ReplicaId("a3", 3)}))
META = SnapshotMeta(7, 2, CFG)
ENTRIES = (Entry(2, 5, EntryKind.NORMAL, ["c", 1, 0, "inc"]), Entry(2, 6, EntryKind.CONFIG, CFG))
VALID_MESSAGES = [
    m.PreVote(frm=R1, to=R2, term=3, last_index=4, last_term=2),
    m.PreVoteResp(frm=R1, to=R2, term=3, granted=True),
    m.Vote(frm=R1, to=R2, term=3, last_index=4, last_term=2, transfer=True),
    m.VoteResp(frm=R1, to=R2, term=3, granted=False),
    m.Append(frm=R1, to=R2, term=3, prev_index=4, prev_term=2, entries=ENTRIES, commit=4, round=9),
    m.AppendResp(frm=R1, to=R2, term=3, success=True, index=6, hint_index=1, hint_term=1, round=9),
    m.Heartbeat(frm=R1, to=R2, term=3, commit=4, round=9),
    m.HeartbeatResp(frm=R1, to=R2, term=3, round=9),
    m.TimeoutNow(frm=R1, to=R2, term=3),
    m.InstallSnapshot(frm=R1, to=R2, term=3, meta=META, offset=0, chunk=b"xy", done=True, round=1),
    m.InstallSnapshotResp(frm=R1, to=R2, term=3, index=7, next_offset=2, done=True, round=1),
    m.Removed(frm=R1, to=R2, term=3),
]
VALID_ENCODED = [codec.encode_message(msg) for msg in VALID_MESSAGES]
CODEC_DECODERS = [
    codec.decode_message,
    codec.decode_entry,
    codec.decode_config,
    codec.decode_snapshot,
    codec.decode_meta,
    codec.decode_hard_state,
    codec.decode_replica,
]


def _mutate(value: object, path: list[int], replacement: object) -> object:
    """`value` with the list item at `path` (indexes, taken modulo) replaced."""
    if not path or not isinstance(value, list) or not value:
        return replacement
    i = path[0] % len(value)
    out = list(value)
    out[i] = _mutate(value[i], path[1:], replacement)
    return out


def _check_message_invariants(msg: m.Message) -> None:
    """What decode_message promises about any message it returns."""
    assert isinstance(msg, m.Message)
    for r in (msg.frm, msg.to):
        assert type(r.agent) is str and r.agent and type(r.n) is int and r.n >= 0
    assert type(msg.term) is int and msg.term >= 0
    if isinstance(msg, m.Append):
        for i, e in enumerate(msg.entries):
            assert e.index == msg.prev_index + 1 + i  # contiguous, right after prev_index
            if e.kind == EntryKind.CONFIG:
                assert isinstance(e.data, Config)
    # Round trip: what was accepted encodes back to an equal message.
    assert codec.decode_message(codec.encode_message(msg)) == msg


# -- framing ------------------------------------------------------------------


def _frame_of(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


hostile_chunks = st.one_of(
    st.binary(max_size=64),  # noise
    st.builds(encode_frame, msgpack_values),  # valid frames
    st.builds(lambda n: struct.pack(">I", n), st.integers(0, 2**32 - 1)),  # bare headers
    st.builds(
        lambda b, k: _frame_of(b)[:k], st.binary(min_size=1, max_size=40), st.integers(0, 44)
    ),  # truncated
    st.sampled_from(
        [
            _frame_of(b"\xdd\xff\xff\xff\xff"),  # array32 declaring 4 G items
            _frame_of(b"\xdf\xff\xff\xff\xff"),  # map32 declaring 4 G pairs
            _frame_of(b"\xdb\xff\xff\xff\xff"),  # str32 declaring 4 GiB
            _frame_of(b"\xc6\xff\xff\xff\xff"),  # bin32 declaring 4 GiB
            _frame_of(b"\xc9\xff\xff\xff\xff\x01"),  # ext32 declaring 4 GiB
            _frame_of(b"\xd6\xff\x00"),  # a truncated timestamp ext
            _frame_of(b"\xd7\xff" + b"\xff" * 8),  # timestamp with nanoseconds > 1e9
            _frame_of(b"\x81\x90\xc0"),  # a map with an array as key (unhashable)
            _frame_of(b"\xc1"),  # the never-used byte
            _frame_of(b"\xc0\xc0"),  # two values in one body
            _frame_of(b"\xd9\x02\xff\xfe"),  # invalid utf-8
            _frame_of(b"\x91" * 3000 + b"\xc0"),  # nesting past the unpacker's limit
        ]
    ),
)


@FUZZ
@given(st.lists(hostile_chunks, max_size=12), st.integers(1, 4096))
def test_hostile_streams_raise_only_frame_error_and_stay_broken(
    chunks: list[bytes], cap: int
) -> None:
    decoder = FrameDecoder(cap)
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            while (obj := decoder.next_frame()) is not NEED_DATA:
                msgpack.packb(obj)  # what came out is a value msgpack can encode again
    except FrameError:
        # Broken for good: the stream lost its frame boundaries.
        with pytest.raises(FrameError):
            decoder.feed(b"\x00\x00\x00\x01\xc0")
        with pytest.raises(FrameError):
            decoder.next_frame()
    assert decoder.buffered_bytes <= sum(map(len, chunks))


@pytest.mark.parametrize(
    "body",
    [
        b"\x91" * 100_000 + b"\xc0",  # 100k nested lists
        b"\x81\xc0" * 100_000 + b"\xc0",  # 100k nested maps {nil: {nil: ...}}
        b"\x92\x90" * 50_000 + b"\xc0",  # nested, with a sibling at every level
        b"\xdd\x00\x00\x00\x01" * 100_000 + b"\xc0",  # array32 of 1, nested 100k deep
    ],
    ids=["lists", "maps", "pairs", "array32"],
)
def test_deep_nesting_is_a_frame_error(body: bytes) -> None:
    decoder = FrameDecoder()
    decoder.feed(_frame_of(body))
    with pytest.raises(FrameError):
        decoder.next_frame()


def test_moderate_nesting_still_decodes() -> None:
    # Not "reject anything nested": 500 levels are a value, not an attack.
    decoder = FrameDecoder()
    decoder.feed(_frame_of(b"\x91" * 500 + b"\xc0"))
    value = decoder.next_frame()
    for _ in range(500):
        assert isinstance(value, list) and len(value) == 1
        value = value[0]
    assert value is None


def test_declared_sizes_do_not_allocate_memory() -> None:
    """Headers and msgpack prefixes that declare gigabytes cost (almost) nothing."""
    hostile = [
        struct.pack(">I", 2**32 - 1),  # a frame of 4 GiB: refused at the header
        struct.pack(">I", FRAME_BYTES_MAX + 1) + b"x" * 100,
        _frame_of(b"\xdd\xff\xff\xff\xff"),
        _frame_of(b"\xdf\xff\xff\xff\xff"),
        _frame_of(b"\xdb\xff\xff\xff\xff" + b"a" * 100),
        _frame_of(b"\xc6\xff\xff\xff\xff" + b"a" * 100),
        _frame_of(b"\xc9\xff\xff\xff\xff\x01"),
        _frame_of(b"\x91" * 100_000 + b"\xc0"),
        # A frame whose header promises 16 MiB, followed by only 1 KiB: buffered, not reserved.
        struct.pack(">I", FRAME_BYTES_MAX) + b"\x00" * 1024,
    ]
    tracemalloc.start()
    try:
        for _ in range(20):
            for data in hostile:
                decoder = FrameDecoder()
                try:
                    decoder.feed(data)
                    assert decoder.next_frame() is NEED_DATA
                except FrameError:
                    pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes for inputs of at most 200 KB"


def test_memory_amplification_of_a_full_frame_is_bounded() -> None:
    """The worst honest case: a frame at the cap full of the smallest containers.

    One byte on the wire (0x90, an empty list) becomes a Python list (~56
    bytes plus a pointer). The frame caps are what bound this: 1 MiB for a
    control request, 4 KiB before a peer has authenticated. Measured so a
    regression (say, a decoder that copies the body per nesting level) shows.
    """
    body = b"\xdd" + struct.pack(">I", 1024 * 1024 - 6) + b"\x90" * (1024 * 1024 - 6)
    tracemalloc.start()
    try:
        decoder = FrameDecoder(1024 * 1024)
        decoder.feed(_frame_of(body))
        value = decoder.next_frame()
        assert isinstance(value, list) and len(value) == 1024 * 1024 - 6
        del value
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # ~70x amplification: 1 MiB -> ~70 MiB; fail if it gets much worse.
    assert peak < 128 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB for a 1 MiB frame"


@FUZZ
@given(st.binary(min_size=1, max_size=200), st.lists(st.integers(1, 7), min_size=1, max_size=50))
def test_any_chunking_of_a_body_gives_the_same_outcome(body: bytes, sizes: list[int]) -> None:
    """Whole or trickled byte by byte, a body decodes to the same value or error."""
    data = _frame_of(body) * 2

    def outcome(pieces: list[bytes]) -> object:
        decoder = FrameDecoder()
        out = []
        try:
            for piece in pieces:
                decoder.feed(piece)
                while (obj := decoder.next_frame()) is not NEED_DATA:
                    out.append(obj)
        except FrameError:
            return ("error", len(out))
        return ("ok", out)

    pieces, pos, k = [], 0, 0
    while pos < len(data):
        size = sizes[k % len(sizes)]
        pieces.append(data[pos : pos + size])
        pos, k = pos + size, k + 1
    assert outcome([data]) == outcome(pieces)


# -- the Raft codec -----------------------------------------------------------


@FUZZ
@given(msgpack_values)
def test_codec_decoders_raise_only_codec_error(value: object) -> None:
    for decode in CODEC_DECODERS:
        try:
            result = decode(value)
        except codec.CodecError:
            continue
        if decode is codec.decode_message:
            _check_message_invariants(result)  # type: ignore[arg-type]


@FUZZ
@given(
    st.sampled_from(range(len(VALID_ENCODED))),
    st.lists(st.integers(0, 20), min_size=1, max_size=4),
    fieldish,
)
def test_near_valid_messages_decode_cleanly_or_raise_codec_error(
    which: int, path: list[int], replacement: object
) -> None:
    """A valid encoding with one field (at any depth) replaced by a hostile value."""
    encoded = _mutate(VALID_ENCODED[which], path, replacement)
    try:
        msg = codec.decode_message(encoded)
    except codec.CodecError:
        return
    _check_message_invariants(msg)


@FUZZ
@given(st.sampled_from(range(len(VALID_ENCODED))), st.integers(0, 12), msgpack_values)
def test_truncated_or_extended_messages_raise_codec_error(
    which: int, keep: int, extra: object
) -> None:
    encoded = VALID_ENCODED[which]
    for bad in (encoded[:keep] if keep < len(encoded) else None, [*encoded, extra]):
        if bad is None:
            continue
        with pytest.raises(codec.CodecError):
            codec.decode_message(bad)


@pytest.mark.parametrize("prev_index", [0, 3, 5, 100, 2**63])
def test_append_entries_must_follow_prev_index(prev_index: int) -> None:
    """Regression: entries at indexes other than prev_index+1.. would be merged into
    the follower's log at the wrong positions (a gap or an overlap the merge does not see)."""
    msg = m.Append(frm=R1, to=R2, term=3, prev_index=4, prev_term=2, entries=ENTRIES, commit=4)
    encoded = codec.encode_message(msg)
    encoded[6] = prev_index
    with pytest.raises(codec.CodecError):
        codec.decode_message(encoded)


def test_valid_encodings_still_decode() -> None:
    for msg, encoded in zip(VALID_MESSAGES, VALID_ENCODED, strict=True):
        assert codec.decode_message(msgpack.unpackb(msgpack.packb(encoded))) == msg
    assert codec.decode_entry(codec.encode_entry(ENTRIES[1])) == ENTRIES[1]
    snap = Snapshot(META, b"data")
    assert codec.decode_snapshot(codec.encode_snapshot(snap)) == snap
    hs = HardState(3, R1, 2)
    assert codec.decode_hard_state(codec.encode_hard_state(hs)) == hs


@FUZZ
@given(st.binary(max_size=200))
def test_codec_unpackb_raises_only_codec_error(data: bytes) -> None:
    try:
        codec.unpackb(data)
    except codec.CodecError:
        pass


@pytest.mark.parametrize(
    "data",
    [b"\x91" * 100_000 + b"\xc0", b"\x81\x90\xc0", b"\xd7\xff" + b"\xff" * 8, b"\xc1", b""],
    ids=["deep", "unhashable-key", "bad-timestamp", "reserved-byte", "empty"],
)
def test_codec_unpackb_hostile_bodies(data: bytes) -> None:
    with pytest.raises(codec.CodecError):
        codec.unpackb(data)


# -- the agent-to-agent wire --------------------------------------------------


@FUZZ
@given(msgpack_values)
def test_wire_split_and_decode_raft_raise_only_wire_error(value: object) -> None:
    for frame in (value, [wire.RAFT, value], [wire.CALL, value, "op", {}], [wire.ANSWER, value]):
        try:
            kind, rest = wire.split(frame)
        except wire.WireError:
            continue
        assert kind in (wire.RAFT, wire.CALL, wire.ANSWER)
        if kind == wire.RAFT:
            try:
                batch = wire.decode_raft(rest[0])
            except wire.WireError:
                continue
            for group, msg in batch:
                assert type(group) is str and 0 < len(group) <= wire.GROUP_NAME_MAX
                _check_message_invariants(msg)


@FUZZ
@given(
    st.lists(st.sampled_from(range(len(VALID_ENCODED))), max_size=5),
    st.lists(st.integers(0, 20), min_size=1, max_size=5),
    fieldish | st.text(min_size=0, max_size=300),
)
def test_near_valid_raft_batches_raise_only_wire_error(
    which: list[int], path: list[int], replacement: object
) -> None:
    frame = [wire.RAFT, [["g1", VALID_ENCODED[i]] for i in which]]
    bad = _mutate(frame, path, replacement)
    try:
        kind, rest = wire.split(bad)
        if kind == wire.RAFT:
            wire.decode_raft(rest[0])
    except wire.WireError:
        pass


# -- the state machine: command envelopes and snapshots ----------------------


@FUZZ
@given(msgpack_values)
def test_envelope_decoding_raises_only_value_error(value: object) -> None:
    for data in (value, ["client", 1, 2, value], [value, 1, 2, 3], ["c", value, 0, 1]):
        try:
            env = decode_command(data)
        except ValueError:
            continue
        assert type(env.client_id) is str and 0 <= env.seq < 2**63 and 0 <= env.ts_ms < 2**63


@FUZZ
@given(msgpack_values, st.sampled_from(["counter", "kv"]))
def test_applier_turns_any_entry_into_a_result_never_an_exception(
    value: object, data_type: str
) -> None:
    """A committed NORMAL entry with any data: an error *reply*, never an exception
    (an exception would stop the host loop, i.e. the whole agent)."""
    applier = Applier(data_type)
    for i, data in enumerate(
        (
            value,
            ["c", 1, 0, value],
            ["c", 2, 0, ["set", value]],
            ["c", 3, 0, ["put", value, 1]],
            msgpack.packb(["c", 4, 0, ["put", "k", value]]),
            msgpack.packb(value),
        ),
        start=1,
    ):
        result = applier.apply(Entry(1, i, EntryKind.NORMAL, data))
        assert result is not None
        applier.query(value)  # queries too: a result, whatever the argument
    # And the state still snapshots and restores.
    Applier(data_type).restore(applier.snapshot())


@FUZZ
@given(msgpack_values, st.sampled_from(["counter", "kv"]))
def test_hostile_snapshots_raise_only_snapshot_error(value: object, data_type: str) -> None:
    good = msgpack.unpackb(Applier(data_type).snapshot(), raw=False)
    candidates = [msgpack.packb(value)]
    for key in good:
        candidates.append(msgpack.packb({**good, key: value}))
    candidates.append(msgpack.packb({**good, "sessions": [["c", 1, 0, [value]]]}))
    candidates.append(msgpack.packb({**good, "sessions": [value]}))
    for data in candidates:
        applier = Applier(data_type)
        try:
            applier.restore(data)
        except SnapshotError:
            assert applier.applied_index == 0  # a failed restore changes nothing


@FUZZ
@given(msgpack_values)
def test_encode_command_raises_only_type_or_value_error(value: object) -> None:
    for client, seq in (("c", 1), (value, 1), ("c", value)):
        try:
            env = encode_command(client, seq, 0, value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        try:
            arg = decode_command(env).arg
        except ValueError:
            continue  # e.g. a map key Python cannot hash: refused where applied
        # What every replica decodes packs as the value did (NaN-proof).
        assert msgpack.packb(arg) == msgpack.packb(value)
