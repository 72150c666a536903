"""Turning core values into msgpack-ready lists and back, validating on the way in.

Plain lists and ints rather than maps: these values cross the network and the
disk by the million, and positional fields keep frames small. Decoding treats
its input as hostile: a wrong shape or type raises `CodecError`, never
anything else, and never builds an object that breaks an invariant.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import msgpack

from raftfleet_agent.raft import messages as m
from raftfleet_agent.raft.types import (
    ENTRY_KINDS,
    Config,
    Entry,
    EntryKind,
    HardState,
    ReplicaId,
    Snapshot,
    SnapshotMeta,
)


class CodecError(ValueError):
    """Input that is not a valid encoding (a remote violation, not a local bug)."""


def _int(v: object, what: str) -> int:
    if type(v) is not int or v < 0:
        raise CodecError(f"{what}: expected a non-negative integer, got {type(v).__name__}")
    return v


def _bool(v: object, what: str) -> bool:
    if type(v) is not bool:
        raise CodecError(f"{what}: expected a boolean")
    return v


def _bytes(v: object, what: str) -> bytes:
    if type(v) is not bytes:
        raise CodecError(f"{what}: expected bytes")
    return v


def _seq(v: object, what: str, n: int | None = None) -> list | tuple:
    if not isinstance(v, list | tuple) or (n is not None and len(v) != n):
        raise CodecError(f"{what}: expected a list" + (f" of {n}" if n is not None else ""))
    return v


def encode_replica(r: ReplicaId) -> list:
    return [r.agent, r.n]


def decode_replica(v: object) -> ReplicaId:
    agent, n = _seq(v, "replica id", 2)
    if type(agent) is not str or not agent:
        raise CodecError("replica id: agent must be a non-empty string")
    return ReplicaId(agent, _int(n, "replica number"))


def encode_config(c: Config) -> list:
    return [
        [encode_replica(r) for r in sorted(c.voters)],
        [encode_replica(r) for r in sorted(c.learners)],
    ]


def decode_config(v: object) -> Config:
    voters, learners = _seq(v, "config", 2)
    vs = frozenset(decode_replica(r) for r in _seq(voters, "voters"))
    ls = frozenset(decode_replica(r) for r in _seq(learners, "learners"))
    try:
        return Config(vs, ls)
    except ValueError as e:
        raise CodecError(str(e)) from None


def encode_entry(e: Entry) -> list:
    data = encode_config(e.data) if e.kind == EntryKind.CONFIG else e.data  # type: ignore[arg-type]
    return [e.term, e.index, int(e.kind), data]


def decode_entry(v: object) -> Entry:
    term, index, kind, data = _seq(v, "entry", 4)
    k = ENTRY_KINDS.get(kind) if type(kind) is int else None
    if k is None:
        raise CodecError(f"entry kind: unknown {kind!r:.40}")
    if k is EntryKind.CONFIG:
        data = decode_config(data)
    return Entry(_int(term, "entry term"), _int(index, "entry index"), k, data)


def encode_hard_state(h: HardState) -> list:
    return [h.term, None if h.vote is None else encode_replica(h.vote), h.commit]


def decode_hard_state(v: object) -> HardState:
    term, vote, commit = _seq(v, "hard state", 3)
    return HardState(
        _int(term, "term"), None if vote is None else decode_replica(vote), _int(commit, "commit")
    )


def encode_meta(s: SnapshotMeta) -> list:
    return [s.index, s.term, encode_config(s.config)]


def decode_meta(v: object) -> SnapshotMeta:
    index, term, config = _seq(v, "snapshot meta", 3)
    return SnapshotMeta(
        _int(index, "snapshot index"), _int(term, "snapshot term"), decode_config(config)
    )


def encode_snapshot(s: Snapshot) -> list:
    return [encode_meta(s.meta), s.data]


def decode_snapshot(v: object) -> Snapshot:
    meta, data = _seq(v, "snapshot", 2)
    return Snapshot(decode_meta(meta), _bytes(data, "snapshot data"))


def _entries(v: object) -> tuple[Entry, ...]:
    es = tuple(decode_entry(e) for e in _seq(v, "entries"))
    for a, b in pairwise(es):
        if b.index != a.index + 1:
            raise CodecError("entries: indexes not contiguous")
    return es


# (message class, [(field, encoder, decoder)]) in wire order after frm/to/term.
def _ident(x: object) -> object:
    return x


_FIELDS: dict[type[m.Message], list[tuple[str, Any, Any]]] = {
    m.PreVote: [("last_index", _ident, _int), ("last_term", _ident, _int)],
    m.PreVoteResp: [("granted", _ident, _bool)],
    m.Vote: [
        ("last_index", _ident, _int),
        ("last_term", _ident, _int),
        ("transfer", _ident, _bool),
    ],
    m.VoteResp: [("granted", _ident, _bool)],
    m.Append: [
        ("prev_index", _ident, _int),
        ("prev_term", _ident, _int),
        ("entries", lambda es: [encode_entry(e) for e in es], lambda v, _w: _entries(v)),
        ("commit", _ident, _int),
        ("round", _ident, _int),
    ],
    m.AppendResp: [
        ("success", _ident, _bool),
        ("index", _ident, _int),
        ("hint_index", _ident, _int),
        ("hint_term", _ident, _int),
        ("round", _ident, _int),
    ],
    m.Heartbeat: [("commit", _ident, _int), ("round", _ident, _int), ("quiesce", _ident, _bool)],
    m.HeartbeatResp: [("round", _ident, _int)],
    m.TimeoutNow: [],
    m.InstallSnapshot: [
        ("meta", encode_meta, lambda v, _w: decode_meta(v)),
        ("offset", _ident, _int),
        ("chunk", _ident, _bytes),
        ("done", _ident, _bool),
        ("round", _ident, _int),
    ],
    m.InstallSnapshotResp: [
        ("index", _ident, _int),
        ("next_offset", _ident, _int),
        ("done", _ident, _bool),
        ("round", _ident, _int),
    ],
    m.Removed: [],
}
_CODE = {cls: i for i, cls in enumerate(m.MESSAGE_TYPES)}


def encode_message(msg: m.Message) -> list:
    cls = type(msg)
    out = [_CODE[cls], msg.frm.agent, msg.frm.n, msg.to.agent, msg.to.n, msg.term]
    for name, enc, _dec in _FIELDS[cls]:
        out.append(enc(getattr(msg, name)))
    return out


# Per type code: the class, its field count, and (name, decoder) of its own fields.
_DECODERS: tuple[tuple[type[m.Message], int, tuple[tuple[str, Any], ...]], ...] = tuple(
    (cls, 6 + len(_FIELDS[cls]), tuple((name, dec) for name, _enc, dec in _FIELDS[cls]))
    for cls in m.MESSAGE_TYPES
)

# Replica ids already decoded (and checked), shared by every message that
# names them: a peer names the same few replicas over and over. Bounded, as a
# hostile peer could name new ones forever.
_REPLICAS: dict[tuple[object, object], ReplicaId] = {}
_REPLICAS_MAX = 4096


def _message_replica(agent: object, n: object) -> ReplicaId:
    # Exact types first: a list is unhashable, and True == 1 would find (a, 1).
    if type(agent) is not str or type(n) is not int:
        return decode_replica([agent, n])  # raises CodecError
    key = (agent, n)
    r = _REPLICAS.get(key)
    if r is None:
        r = decode_replica(key)
        if len(_REPLICAS) >= _REPLICAS_MAX:
            _REPLICAS.clear()
        _REPLICAS[key] = r
    return r


def decode_message(v: object) -> m.Message:
    if not isinstance(v, list | tuple):
        raise CodecError("message: expected a list")
    code = v[0] if v else None
    if len(v) < 6 or type(code) is not int or not 0 <= code < len(_DECODERS):
        raise CodecError("message: unknown type")
    cls, n, fields = _DECODERS[code]
    if len(v) != n:
        raise CodecError(f"{cls.__name__}: expected {n} fields, got {len(v)}")
    kw = {
        "frm": _message_replica(v[1], v[2]),
        "to": _message_replica(v[3], v[4]),
        "term": _int(v[5], "term"),
    }
    i = 6
    for name, dec in fields:
        kw[name] = dec(v[i], name)
        i += 1
    if cls is m.Append and kw["entries"] and kw["entries"][0].index != kw["prev_index"] + 1:
        # The follower's log would get entries at the wrong positions.
        raise CodecError("Append: entries do not start right after prev_index")
    return cls(**kw)


def packb(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpackb(data: bytes) -> object:
    """Decode one msgpack value. Callers bound `len(data)` first (frame size cap)."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException) as e:
        # TypeError: an unhashable map key (a list); the others as in framing.py.
        raise CodecError(f"not valid msgpack: {type(e).__name__}: {e}") from None
