"""The command envelope: what a NORMAL log entry's `data` is.

    [client_id: str, seq: int, ts_ms: int, arg]

`client_id` + `seq` identify a request: a client retries with the same pair,
and the applier answers a retry from its result cache instead of applying it
again. `ts_ms` is the proposing leader's wall clock in milliseconds. It is
written into the entry, so every replica sees the same value and expires
sessions at the same log position (PITFALLS: expire by replicated time, never
by each replica's own clock). The leader reads its clock; nothing here does.

A list rather than a map: it is on every entry, and msgpack of a 4-list is
smaller and faster than of a map with key strings.
"""

from __future__ import annotations

from typing import Any, Final

import attrs
import msgpack

CLIENT_ID_CHARS_MAX: Final = 128
# msgpack carries unsigned 64-bit ints; signed 64-bit keeps us clear of the edge.
SEQ_MAX: Final = 2**63 - 1
TS_MS_MAX: Final = 2**63 - 1


@attrs.frozen(slots=True)
class CommandEnvelope:
    client_id: str
    seq: int
    ts_ms: int
    arg: Any


def envelope_problem(data: Any) -> str | None:
    """Why `data` is not a valid envelope, or None if it is one.

    Returns instead of raising because the applier calls it on every entry
    and a malformed entry is an error reply, not an exception.
    """
    if type(data) is not list and type(data) is not tuple:
        return f"command envelope must be a list, got {type(data).__name__}"
    if len(data) != 4:
        return f"command envelope must have 4 items [client_id, seq, ts_ms, arg], got {len(data)}"
    client_id, seq, ts_ms, _ = data
    if type(client_id) is not str or not 0 < len(client_id) <= CLIENT_ID_CHARS_MAX:
        return f"client_id must be a string of 1 to {CLIENT_ID_CHARS_MAX} characters"
    # type() rather than isinstance(): a bool is not a sequence number.
    if type(seq) is not int or not 0 <= seq <= SEQ_MAX:
        return "seq must be an integer in [0, 2**63)"
    if type(ts_ms) is not int or not 0 <= ts_ms <= TS_MS_MAX:
        return "ts_ms must be an integer in [0, 2**63)"
    return None


def decode_command(data: Any) -> CommandEnvelope:
    """Parse an envelope; raises ValueError with the reason if it is malformed."""
    problem = envelope_problem(data)
    if problem is not None:
        raise ValueError(problem)
    return CommandEnvelope(*data)


def encode_command(client_id: str, seq: int, ts_ms: int, arg: Any) -> list[Any]:
    """Build the envelope a leader proposes. Raises ValueError/TypeError on misuse.

    `arg` goes through a msgpack round trip: that proves it is a msgpack
    value, and hands the log a private copy in the exact form followers will
    decode (tuples become lists), so the leader applies what they apply.
    """
    envelope = [client_id, seq, ts_ms, None]
    problem = envelope_problem(envelope)
    if problem is not None:
        raise ValueError(problem)
    try:
        packed = msgpack.packb(arg, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"command argument is not a msgpack value: {exc}") from exc
    envelope[3] = msgpack.unpackb(packed, raw=False, strict_map_key=False)
    return envelope
