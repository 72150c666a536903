"""The client session table: what makes commands exactly-once.

Theory of operation. Each client id has a session holding the results of
its recent requests by sequence number. A retry (same client id and seq) is
answered from there, never applied again. Three bounds keep the table small,
and every one is decided from replicated data only, so all replicas (and a
replica restored from a snapshot) keep and drop exactly the same sessions:

- Time: `now_ms` is the largest `ts_ms` seen in applied envelopes (the
  leaders' clocks, written into the log). A session expires once
  `now_ms - last_ts_ms > window_ms`. The window must be longer than any
  client's retry window; a retry that arrives after its session expired is
  indistinguishable from a new request (the same trade-off as Ratis's
  retry cache).
- Results per session: at most `max_results` are kept, dropping the lowest
  seq first. `floor` remembers the highest seq dropped: a request at or
  below it that is not cached may have been applied already, so it is
  refused (`request_expired`) instead of being applied a second time. A seq
  above the floor that is not cached has never been applied, even if it is
  lower than some cached seq (a client's concurrent requests can commit out
  of order).
- Sessions: at most `max_sessions`; a new client evicts the least recently
  used one, ordered by `(last_ts_ms, client_id)`.

Expiry and eviction use one min-heap of `(last_ts_ms, client_id)`. Touching a
session pushes a fresh pair and leaves the old one stale; a popped pair counts
only if it still matches its session. The heap is rebuilt when stale pairs
outnumber live ones, so it stays O(sessions) and each operation O(log n)
amortized; the common case (nothing to expire) is one comparison.
"""

from __future__ import annotations

import heapq
from typing import Any, Final

import attrs

from raftfleet_agent.statemachine.envelope import CLIENT_ID_CHARS_MAX, SEQ_MAX, TS_MS_MAX
from raftfleet_agent.statemachine.protocol import ERROR_CODES, ApplyResult

DEFAULT_WINDOW_MS: Final = 120_000
DEFAULT_MAX_RESULTS_PER_SESSION: Final = 256
DEFAULT_MAX_SESSIONS: Final = 50_000


@attrs.define(slots=True, eq=False)
class Session:
    client_id: str
    last_ts_ms: int  # the largest ts_ms of this client's requests
    # Highest seq dropped from `results`; -1 when none was. Invariant: every
    # key of `results` is greater than `floor`.
    floor: int = -1
    # Invariant: keys in ascending order, so the lowest seq is the first key.
    results: dict[int, ApplyResult] = attrs.Factory(dict)


def _check_positive(name: str, value: int) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class SessionTable:
    """Per-client result caches with deterministic, replicated-time expiry."""

    __slots__ = (
        "_heap",
        "_sessions",
        "cached_results",
        "max_results",
        "max_sessions",
        "now_ms",
        "window_ms",
    )

    def __init__(
        self,
        *,
        window_ms: int = DEFAULT_WINDOW_MS,
        max_results: int = DEFAULT_MAX_RESULTS_PER_SESSION,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
    ) -> None:
        _check_positive("window_ms", window_ms)
        _check_positive("max_results", max_results)
        _check_positive("max_sessions", max_sessions)
        self.window_ms = window_ms
        self.max_results = max_results
        self.max_sessions = max_sessions
        self.now_ms = 0  # Invariant: never decreases
        self.cached_results = 0  # Invariant: sum of len(s.results) over sessions
        self._sessions: dict[str, Session] = {}
        # Invariant: holds (s.last_ts_ms, s.client_id) for every live session s.
        self._heap: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, client_id: str) -> Session | None:
        return self._sessions.get(client_id)

    def advance(self, ts_ms: int) -> None:
        """Move replicated time to `ts_ms` (if later) and expire old sessions."""
        if ts_ms <= self.now_ms:
            return
        self.now_ms = ts_ms
        horizon = ts_ms - self.window_ms  # expired iff last_ts_ms < horizon
        heap = self._heap
        while heap and heap[0][0] < horizon:
            self._drop_if_current(*heapq.heappop(heap))

    def touch(self, client_id: str, ts_ms: int) -> Session:
        """The session of `client_id`, seen at `ts_ms`; created if absent."""
        session = self._sessions.get(client_id)
        if session is None:
            while len(self._sessions) >= self.max_sessions:
                self._evict_least_recent()
            session = self._sessions[client_id] = Session(client_id, ts_ms)
            self._push(ts_ms, client_id)
        elif ts_ms > session.last_ts_ms:
            session.last_ts_ms = ts_ms
            self._push(ts_ms, client_id)
        return session

    def remember(self, session: Session, seq: int, result: ApplyResult) -> None:
        """Cache the result of a newly applied request (seq not cached, above floor)."""
        results = session.results
        out_of_order = bool(results) and seq < next(reversed(results))
        results[seq] = result
        if out_of_order:  # rare: restore the ascending-keys invariant
            results = session.results = dict(sorted(results.items()))
        self.cached_results += 1
        while len(results) > self.max_results:
            dropped = next(iter(results))
            del results[dropped]
            session.floor = dropped  # keys ascend, so this only rises
            self.cached_results -= 1

    def _push(self, ts_ms: int, client_id: str) -> None:
        heap = self._heap
        heapq.heappush(heap, (ts_ms, client_id))
        if len(heap) > 2 * len(self._sessions) + 64:
            self._heap = [(s.last_ts_ms, cid) for cid, s in self._sessions.items()]
            heapq.heapify(self._heap)

    def _drop_if_current(self, ts_ms: int, client_id: str) -> bool:
        session = self._sessions.get(client_id)
        if session is None or session.last_ts_ms != ts_ms:
            return False  # a stale heap pair
        del self._sessions[client_id]
        self.cached_results -= len(session.results)
        return True

    def _evict_least_recent(self) -> None:
        # The heap holds a pair for every live session, so this terminates.
        while not self._drop_if_current(*heapq.heappop(self._heap)):
            pass

    # -- snapshot form ---------------------------------------------------------

    def to_wire(self) -> list[Any]:
        """Sessions as msgpack-ready lists, sorted by client id (canonical bytes).

        A result is `[seq, reply]` when ok and `[seq, error, message]` otherwise.
        """
        wire = []
        for client_id in sorted(self._sessions):
            s = self._sessions[client_id]
            results = [
                [seq, r.reply] if r.ok else [seq, r.error, r.message]
                for seq, r in s.results.items()
            ]
            wire.append([client_id, s.last_ts_ms, s.floor, results])
        return wire

    def load_wire(self, wire: Any) -> None:
        """Replace the sessions with `wire` (from to_wire); ValueError if malformed.

        Builds everything aside first, so a bad input changes nothing.
        """
        if type(wire) is not list:
            raise ValueError("sessions must be a list")
        sessions: dict[str, Session] = {}
        cached = 0
        for item in wire:
            session = _session_from_wire(item)
            if session.client_id in sessions:
                raise ValueError(f"duplicate session {session.client_id!r}")
            sessions[session.client_id] = session
            cached += len(session.results)
        self._sessions = sessions
        self.cached_results = cached
        self._heap = [(s.last_ts_ms, cid) for cid, s in sessions.items()]
        heapq.heapify(self._heap)


def _is_int_in(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _session_from_wire(item: Any) -> Session:
    if type(item) is not list or len(item) != 4:
        raise ValueError("a session must be [client_id, last_ts_ms, floor, results]")
    client_id, last_ts_ms, floor, wire_results = item
    if type(client_id) is not str or not 0 < len(client_id) <= CLIENT_ID_CHARS_MAX:
        raise ValueError("invalid session client id")
    if not _is_int_in(last_ts_ms, 0, TS_MS_MAX) or not _is_int_in(floor, -1, SEQ_MAX):
        raise ValueError(f"session {client_id!r}: invalid last_ts_ms or floor")
    if type(wire_results) is not list:
        raise ValueError(f"session {client_id!r}: results must be a list")
    results: dict[int, ApplyResult] = {}
    previous = floor
    for r in wire_results:
        if type(r) is not list or len(r) not in (2, 3) or not _is_int_in(r[0], 0, SEQ_MAX):
            raise ValueError(f"session {client_id!r}: malformed result")
        if r[0] <= previous:
            raise ValueError(f"session {client_id!r}: result seqs must ascend above the floor")
        previous = r[0]
        if len(r) == 2:
            results[r[0]] = ApplyResult(True, r[1])
        elif type(r[1]) is str and r[1] in ERROR_CODES and type(r[2]) is str:
            results[r[0]] = ApplyResult(False, None, r[1], r[2])
        else:
            raise ValueError(f"session {client_id!r}: malformed error result")
    return Session(client_id, last_ts_ms, floor, results)
