"""Property tests: replicas fed the same log agree, snapshots included."""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from raftfleet_agent.raft.types import Entry, EntryKind
from raftfleet_agent.statemachine import Applier, encode_command

# Small limits so that short logs exercise expiry, eviction and dropped results.
LIMITS = {"window_ms": 500, "max_results_per_session": 3, "max_sessions": 3}

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=4)
    | st.binary(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)
keys = st.sampled_from(["x", "y", "z"]) | st.integers(0, 1)
kv_args = st.one_of(
    st.tuples(st.just("put"), keys, msgpack_values),
    st.tuples(st.just("delete"), keys),
    st.tuples(st.just("cas"), keys, msgpack_values, msgpack_values),
    st.sampled_from(["nope", ("get", "x"), ()]),
).map(lambda arg: list(arg) if isinstance(arg, tuple) else arg)

commands = st.tuples(
    st.just("cmd"),
    st.sampled_from(["a", "b", "c", "d", "e"]),  # client
    st.integers(0, 8),  # seq: small, so retries are common
    st.integers(-300, 400),  # clock step; negative is a leader with a slower clock
    kv_args,
)
others = st.tuples(st.just("noop")) | st.tuples(
    st.just("garbage"), st.none() | st.integers() | st.lists(st.integers(), max_size=5)
)
ops = st.lists(commands | others, max_size=60)


def build_log(operations: list[tuple[Any, ...]]) -> list[Entry]:
    entries, clock = [], 1_000
    for index, op in enumerate(operations, start=1):
        if op[0] == "cmd":
            _, client, seq, step, arg = op
            clock = max(0, clock + step)
            entries.append(
                Entry(1, index, EntryKind.NORMAL, encode_command(client, seq, clock, arg))
            )
        elif op[0] == "noop":
            entries.append(Entry(1, index, EntryKind.NOOP))
        else:
            entries.append(Entry(1, index, EntryKind.NORMAL, op[1]))
    return entries


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(0, 60))
def test_replicas_and_restored_replicas_agree(operations: list[Any], split: int) -> None:
    entries = build_log(operations)
    split = min(split, len(entries))
    a, b = Applier("kv", **LIMITS), Applier("kv", **LIMITS)
    results_a = [a.apply(e) for e in entries[:split]]
    assert [b.apply(e) for e in entries[:split]] == results_a
    # A third replica joins here by snapshot install, as a lagging follower would.
    c = Applier.from_snapshot("kv", a.snapshot(), **LIMITS)
    rest = entries[split:]
    results_a = [a.apply(e) for e in rest]
    assert [b.apply(e) for e in rest] == results_a
    assert [c.apply(e) for e in rest] == results_a
    assert a.snapshot() == b.snapshot() == c.snapshot()
    assert a.state == b.state == c.state
    assert a.statistics().cached_results == c.statistics().cached_results


@settings(max_examples=200, deadline=None)
@given(ops, st.integers(0, 60))
def test_a_log_written_before_commands_were_kept_encoded_applies_the_same(
    operations: list[Any], split: int
) -> None:
    """Stores written by earlier versions hold each envelope decoded (a list);
    a replica reading such a log up to `split` and encoded entries after it
    (an upgrade mid-log) reaches the same replies, state and snapshot."""
    encoded = build_log(operations)
    upgraded = [
        Entry(e.term, e.index, e.kind, msgpack.unpackb(e.data, raw=False, strict_map_key=False))
        if i < split and type(e.data) is bytes
        else e
        for i, e in enumerate(encoded)
    ]
    a, b = Applier("kv", **LIMITS), Applier("kv", **LIMITS)
    assert [a.apply(e) for e in encoded] == [b.apply(e) for e in upgraded]
    assert a.snapshot() == b.snapshot()


class SessionModel:
    """The session rules written the slow, obvious way (full scans, no heap)."""

    def __init__(self, window_ms: int, max_results_per_session: int, max_sessions: int) -> None:
        self.window_ms, self.max_results, self.max_sessions = (
            window_ms,
            max_results_per_session,
            max_sessions,
        )
        self.now = 0
        self.counter = 0
        self.sessions: dict[str, dict[str, Any]] = {}

    def inc(self, client: str, seq: int, ts: int) -> int | str:
        self.now = max(self.now, ts)
        for old in [c for c, s in self.sessions.items() if self.now - s["ts"] > self.window_ms]:
            del self.sessions[old]
        session = self.sessions.get(client)
        if session is None:
            while len(self.sessions) >= self.max_sessions:
                lru = min(self.sessions, key=lambda c: (self.sessions[c]["ts"], c))
                del self.sessions[lru]
            session = self.sessions[client] = {"ts": ts, "floor": -1, "results": {}}
        session["ts"] = max(session["ts"], ts)
        results = session["results"]
        if seq in results:
            return results[seq]
        if seq <= session["floor"]:
            return "request_expired"
        reply = results[seq] = self.counter
        self.counter += 1
        while len(results) > self.max_results:  # may drop this very result
            lowest = min(results)
            del results[lowest]
            session["floor"] = max(session["floor"], lowest)
        return reply


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 6), st.integers(-50, 300))))
def test_sessions_match_a_simple_model(requests: list[tuple[str, int, int]]) -> None:
    applier, model = Applier("counter", **LIMITS), SessionModel(**LIMITS)
    clock = 1_000
    for index, (client, seq, step) in enumerate(requests, start=1):
        clock = max(0, clock + step)
        entry = Entry(1, index, EntryKind.NORMAL, encode_command(client, seq, clock, "inc"))
        result = applier.apply(entry)
        assert result is not None
        assert (result.reply if result.ok else result.error) == model.inc(client, seq, clock)
    assert applier.state == model.counter
    assert applier.statistics().sessions == len(model.sessions)
