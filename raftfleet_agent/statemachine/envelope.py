"""The command envelope: what a NORMAL log entry's `data` is.

    msgpack of [client_id: str, seq: int, ts_ms: int, arg]

`client_id` + `seq` identify a request: a client retries with the same pair,
and the applier answers a retry from its result cache instead of applying it
again. `ts_ms` is the proposing leader's wall clock in milliseconds. It is
written into the entry, so every replica sees the same value and expires
sessions at the same log position (PITFALLS: expire by replicated time, never
by each replica's own clock). The leader reads its clock; nothing here does.

A list rather than a map: it is on every entry, and msgpack of a 4-list is
smaller and faster than of a map with key strings.

The entry holds the envelope *encoded*: one bytes object instead of two
lists and their strings. The log of a busy group holds hundreds of thousands
of entries; as bytes they are invisible to the cyclic collector (whose full
collections walked every list of them, 100-300 ms at 440,000 entries), go
over the wire and into the store as one bin copy, and are decoded once, where
they are applied. Every replica decodes the same bytes, so the leader applies
exactly what its followers apply. Stores written before hold the decoded
list; `decode_command` and the applier take both forms.
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


def unpack_envelope(data: Any) -> Any:
    """An entry's data as the envelope list: bytes are decoded, anything else returned.

    Raises ValueError if the bytes are not one msgpack value. Map keys may be
    any msgpack value a data type accepts (`strict_map_key=False`), as over
    the control protocol.
    """
    if type(data) is not bytes:
        return data
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        # ValueError covers truncated input and bad UTF-8; TypeError an
        # unhashable map key.
        raise ValueError("command envelope is not a msgpack value") from None


def decode_command(data: Any) -> CommandEnvelope:
    """Parse an envelope, encoded or not; raises ValueError with the reason if malformed."""
    data = unpack_envelope(data)
    problem = envelope_problem(data)
    if problem is not None:
        raise ValueError(problem)
    return CommandEnvelope(*data)


def encode_command(client_id: str, seq: int, ts_ms: int, arg: Any) -> bytes:
    """The envelope a leader proposes, encoded. Raises ValueError/TypeError on misuse.

    Packing `arg` proves it is a msgpack value; the bytes are also the log's
    private copy, so a caller changing its object afterwards changes nothing.
    """
    problem = envelope_problem([client_id, seq, ts_ms, None])
    if problem is not None:
        raise ValueError(problem)
    try:
        return msgpack.packb([client_id, seq, ts_ms, arg], use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"command argument is not a msgpack value: {exc}") from exc
