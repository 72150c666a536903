"""The log's older entries kept as plain tuples ("settled") behave exactly as Entry objects.

A differential test: the same operations on a log that settles every few
entries and on one that never does must give the same answers everywhere.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftfleet_agent.raft import log as log_module
from raftfleet_agent.raft.errors import SafetyViolation
from raftfleet_agent.raft.log import RaftLog
from raftfleet_agent.raft.types import Config, Entry, EntryKind, ReplicaId

CONFIG = Config(frozenset({ReplicaId("a", 1)}))


@contextmanager
def settling_every(n: int) -> Iterator[None]:
    saved = log_module.SETTLE_BATCH
    log_module.SETTLE_BATCH = n
    try:
        yield
    finally:
        log_module.SETTLE_BATCH = saved


def entry(term: int, index: int) -> Entry:
    if index % 7 == 0:
        return Entry(term, index, EntryKind.CONFIG, CONFIG)
    if index % 5 == 0:
        return Entry(term, index, EntryKind.NOOP)
    return Entry(term, index, EntryKind.NORMAL, f"cmd{index}".encode())


ops = st.lists(
    st.tuples(
        st.sampled_from(["append", "merge", "truncate", "compact", "restore"]),
        st.integers(0, 40),  # where, relative to the log
        st.integers(0, 12),  # how many
        st.integers(0, 2),  # term bump
    ),
    max_size=60,
)


def apply(log: RaftLog, op: tuple[str, int, int, int]) -> object:
    kind, where, n, bump = op
    lo, hi = log.offset, log.last_index
    term = log.last_term + bump
    if kind == "append":
        for i in range(n):
            log.append(entry(term, hi + 1 + i))
        return None
    if kind == "merge":
        start = lo + 1 + where % (hi - lo + 1)
        batch = tuple(entry(term if i else log.term_at(start) or term, start + i) for i in range(n))
        try:
            return log.merge(batch, committed=lo)
        except SafetyViolation:
            return "refused"
    if kind == "truncate":
        if hi > lo:
            log.truncate_from(lo + 1 + where % (hi - lo))
        return None
    if kind == "compact":
        index = lo + where % (hi - lo + 1)
        return log.compact(index, log.term_at(index))  # type: ignore[arg-type]
    index = lo + where  # restore: matching or not, past the end or not
    return log.restore(index, log.term_at(index) or term)


def as_entries(items: object) -> object:
    """What compact hands back, as entries (a settled log hands back tuples)."""
    if isinstance(items, list):
        return [
            x if isinstance(x, Entry) else Entry(x[0], x[1], EntryKind(x[2]), x[3]) for x in items
        ]
    return items


def observe(log: RaftLog) -> tuple:
    lo, hi = log.offset, log.last_index
    return (
        lo,
        log.offset_term,
        hi,
        log.last_term,
        log.persisted,
        log.unstable_from,
        log.entries,
        [log.term_at(i) for i in range(max(0, lo - 1), hi + 2)],
        [log.entry(i) for i in range(lo + 1, hi + 1)],
        [log.slice(a, b) for a in range(lo + 1, hi + 2) for b in range(a, hi + 2)],
    )


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(1, 3))
def test_a_settling_log_answers_as_one_that_never_settles(
    operations: list[tuple[str, int, int, int]], batch: int
) -> None:
    subject, reference = RaftLog(), RaftLog()
    for op in operations:
        with settling_every(batch):
            got = apply(subject, op)
        with settling_every(10**9):
            want = apply(reference, op)
        assert as_entries(got) == as_entries(want)
        assert observe(subject) == observe(reference)
        if subject.last_index:
            taken = subject.take_unstable()
            assert taken == reference.take_unstable()
            subject.mark_persisted(taken[1])
            reference.mark_persisted(taken[1])


def test_settled_entries_leave_the_collectors_sight_and_the_tail_does_not_change() -> None:
    with settling_every(4):
        log = RaftLog()
        appended = [entry(1, i) for i in range(1, 21)]
        for e in appended:
            log.append(e)
        assert log.settled == 16  # settles 4 at a time once 8 are unsettled
        gc.collect()
        held = log._items  # what the collector sees is the point
        normal = [x for x in held[:16] if x[2] == EntryKind.NORMAL]  # type: ignore[index]
        assert normal and not any(gc.is_tracked(x) for x in normal)
        # The recent tail is handed out as the very objects appended: no copies.
        assert all(a is b for a, b in zip(log.slice(17, 21), appended[16:], strict=True))
        assert log.entries == appended


def test_a_truncation_below_the_settled_point_keeps_the_log_consistent() -> None:
    with settling_every(2):
        log = RaftLog()
        for i in range(1, 11):
            log.append(entry(1, i))
        assert log.settled == 8
        log.truncate_from(5)
        assert log.settled == 4
        for i in range(5, 9):
            log.append(entry(2, i))
        assert [log.term_at(i) for i in range(1, 9)] == [1, 1, 1, 1, 2, 2, 2, 2]
        with pytest.raises(SafetyViolation):
            log.merge((entry(3, 3),), committed=4)


def test_a_long_log_recovered_at_start_is_settled_at_once() -> None:
    recovered = tuple(entry(1, i) for i in range(11, 31))  # after a snapshot at 10
    with settling_every(4):
        log = RaftLog(10, 1, recovered)
        assert log.settled == 26
        assert (log.offset, log.last_index, log.last_term) == (10, 30, 1)
        assert log.entries == list(recovered)
        assert [log.term_at(i) for i in range(9, 32)] == [None] + [1] * 21 + [None]
        assert log.persisted == 30 and log.unstable_from == 31
