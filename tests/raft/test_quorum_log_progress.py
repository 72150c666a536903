"""The leaf modules alone: quorum arithmetic, the in-memory log, follower progress, membership."""

from __future__ import annotations

import pytest

from raftfleet_agent.raft.errors import MembershipError, SafetyViolation
from raftfleet_agent.raft.log import RaftLog
from raftfleet_agent.raft.membership import ConfOp, apply_change
from raftfleet_agent.raft.progress import Progress, ProgressState
from raftfleet_agent.raft.quorum import committed_index, quorum_size, vote_result
from raftfleet_agent.raft.types import Config, Entry, ReplicaId

from .harness import A, B, C, D, E


def ents(*terms: int, start: int = 1) -> tuple[Entry, ...]:
    return tuple(Entry(t, start + k) for k, t in enumerate(terms))


def shape(log: RaftLog) -> list[tuple[int, int]]:
    return [(e.index, e.term) for e in log.entries]


# ---------------------------------------------------------------- quorum


@pytest.mark.parametrize(("n", "q"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (7, 4)])
def test_quorum_size(n: int, q: int) -> None:
    assert quorum_size(n) == q
    assert Config(frozenset(ReplicaId("x", i) for i in range(n))).quorum() == q


@pytest.mark.parametrize(
    ("matches", "expected"),
    [
        ({A: 5}, 5),
        ({A: 5, B: 3, C: 1}, 3),
        ({A: 5, B: 5, C: 1}, 5),
        ({A: 9, B: 2, C: 7, D: 4}, 4),  # 4 voters need 3: the third highest
        ({A: 9, B: 8, C: 7, D: 1, E: 1}, 7),
        ({A: 9, B: 8, C: 0, D: 0, E: 0}, 0),
    ],
)
def test_committed_index_is_the_quorum_th_highest(matches: dict, expected: int) -> None:
    assert committed_index(matches.keys(), matches) == expected


def test_committed_index_counts_only_voters_and_missing_as_zero() -> None:
    # A non-voter's high match does not help; a voter with no entry counts as 0.
    assert committed_index([A, B, C], {A: 7, D: 7, E: 7}) == 0
    assert committed_index([A, B, C], {A: 7, B: 7, D: 0}) == 7
    assert committed_index([], {A: 7}) == 0


def test_vote_result() -> None:
    voters = frozenset({A, B, C})
    assert vote_result(voters, {A: True}) is None
    assert vote_result(voters, {A: True, B: True}) is True
    assert vote_result(voters, {A: True, B: False}) is None
    assert vote_result(voters, {A: True, B: False, C: False}) is False
    # Votes from non-voters are not counted, either way.
    assert vote_result(voters, {A: True, D: True, E: True}) is None
    assert vote_result(frozenset({A}), {A: True}) is True
    four = frozenset({A, B, C, D})
    assert vote_result(four, {A: True, B: True}) is None
    assert vote_result(four, {A: True, B: False, C: False}) is False


# ---------------------------------------------------------------- log


def test_log_index_arithmetic_after_snapshot_offset() -> None:
    log = RaftLog(10, 3, ents(3, 4, 4, start=11))
    assert (log.first_index, log.last_index, log.last_term) == (11, 13, 4)
    assert log.term_at(10) == 3  # the snapshot's own entry
    assert log.term_at(9) is None  # compacted away
    assert log.term_at(14) is None
    assert log.slice(12, 14) == list(ents(4, 4, start=12))
    assert log.persisted == 13 and log.unstable_from == 14  # loaded from disk: durable


def test_is_up_to_date_compares_last_term_then_length() -> None:
    log = RaftLog(0, 0, ents(1, 2, 2))
    assert log.is_up_to_date(3, 2)
    assert log.is_up_to_date(1, 3)  # a later term wins however short
    assert not log.is_up_to_date(2, 2)
    assert not log.is_up_to_date(9, 1)


def test_merge_duplicate_append_does_not_truncate() -> None:
    """A delayed duplicate of an older append must not erase what followed it."""
    log = RaftLog(0, 0, ents(1, 1, 1, 1))
    assert log.merge(ents(1, 1, start=2), committed=0) is None
    assert shape(log) == [(1, 1), (2, 1), (3, 1), (4, 1)]
    assert log.persisted == 4  # nothing was lost from disk either


def test_merge_truncates_at_the_first_conflict_only() -> None:
    log = RaftLog(0, 0, ents(1, 1, 1, 1))
    log.take_unstable()
    assert log.merge(ents(1, 2, 2, start=2), committed=1) == 3
    assert shape(log) == [(1, 1), (2, 1), (3, 2), (4, 2)]
    assert log.persisted == 2
    entries, _token = log.take_unstable()
    assert [e.index for e in entries] == [3, 4]


def test_merge_appends_new_entries_past_the_end() -> None:
    log = RaftLog(0, 0, ents(1))
    assert log.merge(ents(1, 2, 2, start=1), committed=0) is None
    assert shape(log) == [(1, 1), (2, 2), (3, 2)]


def test_merge_skips_entries_already_compacted() -> None:
    log = RaftLog(5, 2, ents(2, start=6))
    assert log.merge(ents(2, 2, 2, start=4), committed=5) is None
    assert shape(log) == [(6, 2)]


def test_merge_refuses_to_truncate_committed_entries() -> None:
    log = RaftLog(0, 0, ents(1, 1, 1))
    with pytest.raises(SafetyViolation):
        log.merge(ents(2, start=2), committed=2)


def test_mark_persisted_excludes_entries_truncated_while_being_written() -> None:
    log = RaftLog(0, 0, ())
    log.merge(ents(1, 1, 1, 1), committed=0)
    _entries, token = log.take_unstable()  # the host starts writing 1..4
    log.merge(ents(2, 2, start=3), committed=0)  # a new leader replaces 3..4 meanwhile
    log.mark_persisted(token)
    assert log.persisted == 2  # the new 3 and 4 are not on disk yet
    _entries, token = log.take_unstable()
    log.mark_persisted(token)
    assert log.persisted == 4


def test_compact_keeps_the_suffix_and_hands_back_the_prefix() -> None:
    log = RaftLog(0, 0, ents(1, 1, 2, 2))
    first = log.entries[:2]
    assert log.compact(2, 1) == first  # the host frees them when it suits it
    assert (log.offset, log.offset_term, shape(log)) == (2, 1, [(3, 2), (4, 2)])
    assert log.compact(1, 1) == []  # older than what we have: ignored
    assert log.offset == 2
    assert [e.index for e in log.compact(4, 2)] == [3, 4]
    assert (log.offset, log.last_index, log.last_term, log.entries) == (4, 4, 2, [])


def test_restore_keeps_a_matching_suffix_and_drops_a_conflicting_log() -> None:
    log = RaftLog(0, 0, ents(1, 1, 2, 2))
    log.restore(2, 1)
    assert (log.offset, shape(log)) == (2, [(3, 2), (4, 2)])
    log = RaftLog(0, 0, ents(1, 1, 2, 2))
    log.restore(3, 3)  # our entry 3 has another term: the whole log goes
    assert (log.offset, log.offset_term, log.entries, log.last_index) == (3, 3, [], 3)
    assert log.persisted == 3 and log.unstable_from == 4


def test_restore_during_a_write_does_not_count_replaced_entries_as_durable() -> None:
    """Regression: entries handed out before a conflicting snapshot replaced the log.

    The host is writing the old 3..6 when a snapshot at 2 (another term) wipes
    the log and the new leader's 3..6 arrive. Finishing the old write makes
    only the snapshot durable, not the new 3..6.
    """
    log = RaftLog(0, 0, ())
    log.merge(ents(1, 1, 1, 1, 1, 1), committed=0)
    _entries, token = log.take_unstable()  # old 1..6 being written
    log.restore(2, 2)
    log.merge(ents(3, 3, 3, 3, start=3), committed=2)
    log.mark_persisted(token)
    assert log.persisted == 2


# ---------------------------------------------------------------- progress


def replicating(match: int, next_index: int | None = None) -> Progress:
    pr = Progress(match + 1, now=0)
    pr.maybe_update(match)
    pr.become_replicate()
    if next_index is not None:
        pr.next = next_index
    return pr


def test_new_progress_probes_one_append_at_a_time() -> None:
    pr = Progress(8, now=0)
    assert pr.state is ProgressState.PROBE and pr.can_send(64)
    pr.sent(10, 3)
    assert pr.paused and not pr.can_send(64)
    assert pr.next == 8  # a probe does not move next optimistically
    assert pr.maybe_update(10)
    assert (pr.match, pr.next, pr.paused) == (10, 11, False)


def test_replicate_pipelines_up_to_max_inflight() -> None:
    pr = replicating(5)
    for last in (7, 9, 11):
        assert pr.can_send(3)
        pr.sent(last, 2)
    assert not pr.can_send(3)
    assert pr.next == 12 and list(pr.inflight) == [7, 9, 11]
    pr.maybe_update(9)  # acknowledgement frees both windows up to 9
    assert list(pr.inflight) == [11] and pr.can_send(3)
    assert not pr.maybe_update(8)  # an older ack does not move match back
    assert pr.match == 9


def test_stale_rejection_in_replicate_is_ignored() -> None:
    """Pipelining: a rejection of an old append must not undo a newer acknowledgement."""
    pr = replicating(10, next_index=20)
    assert not pr.maybe_decrease_to(rejected=7, hint_next=3)
    assert not pr.maybe_decrease_to(rejected=10, hint_next=3)
    assert (pr.match, pr.next) == (10, 20)


def test_hint_never_pushes_next_to_or_below_match() -> None:
    pr = replicating(10, next_index=20)
    assert pr.maybe_decrease_to(rejected=15, hint_next=2)
    assert pr.next == 11  # not 2: everything up to match is known to match
    pr.become_probe()
    assert pr.next == 11 and pr.state is ProgressState.PROBE


def test_hint_moves_next_back_to_the_hint_not_past_rejected() -> None:
    pr = Progress(20, now=0)
    pr.sent(19, 0)
    assert pr.maybe_decrease_to(rejected=19, hint_next=12)
    assert pr.next == 12 and not pr.paused
    # A hint beyond the rejected index cannot move next forward.
    pr.sent(11, 0)
    assert pr.maybe_decrease_to(rejected=11, hint_next=30)
    assert pr.next == 11


def test_probe_ignores_rejections_of_other_appends() -> None:
    pr = Progress(20, now=0)
    pr.sent(19, 0)
    assert not pr.maybe_decrease_to(rejected=15, hint_next=3)  # not the one we wait for
    assert pr.next == 20 and pr.paused


def test_snapshot_state_sends_no_appends() -> None:
    pr = Progress(3, now=0)
    pr.become_snapshot(50)
    assert not pr.can_send(64)
    pr.maybe_update(50)
    pr.become_probe()
    assert (pr.match, pr.next, pr.state) == (50, 51, ProgressState.PROBE)


# ---------------------------------------------------------------- membership


def test_apply_change_builds_new_configs() -> None:
    cfg = Config(frozenset({A, B, C}))
    with_d = apply_change(cfg, ConfOp.ADD_LEARNER, D)
    assert with_d == Config(frozenset({A, B, C}), frozenset({D}))
    assert apply_change(with_d, ConfOp.PROMOTE, D) == Config(frozenset({A, B, C, D}))
    assert apply_change(with_d, ConfOp.REMOVE, D) == cfg
    assert apply_change(cfg, ConfOp.REMOVE, A) == Config(frozenset({B, C}))
    assert cfg == Config(frozenset({A, B, C}))  # the input is untouched


@pytest.mark.parametrize(
    ("op", "who", "code"),
    [
        (ConfOp.ADD_LEARNER, A, "already_member"),
        (ConfOp.PROMOTE, A, "not_learner"),
        (ConfOp.REMOVE, D, "not_member"),
    ],
)
def test_apply_change_refuses_nonsense(op: ConfOp, who: ReplicaId, code: str) -> None:
    with pytest.raises(MembershipError) as err:
        apply_change(Config(frozenset({A, B, C})), op, who)
    assert err.value.code == code


def test_cannot_remove_the_last_voter() -> None:
    with pytest.raises(MembershipError) as err:
        apply_change(Config(frozenset({A}), frozenset({B})), ConfOp.REMOVE, A)
    assert err.value.code == "last_voter"


def test_config_rejects_overlapping_voters_and_learners() -> None:
    with pytest.raises(ValueError):
        Config(frozenset({A}), frozenset({A}))
