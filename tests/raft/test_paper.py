"""Tests that read like the Raft paper (Ongaro & Ousterhout 2014) and Ongaro's dissertation.

Section numbers refer to the paper unless they say "dissertation".
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from raftfleet_agent.raft import messages as m
from raftfleet_agent.raft.member import RaftMember, Role
from raftfleet_agent.raft.quorum import committed_index
from raftfleet_agent.raft.types import Config, Entry, EntryKind

from .harness import A, B, C, Cluster, D, E, assert_applied_agree, is_msg, log_of, options

# ---------------------------------------------------------------- §5.2 leader election


def test_5_2_follower_campaigns_after_its_election_timeout() -> None:
    c = Cluster()
    c.tick(18, A)  # MaxRng: A's timeout is 2E - 1 = 19
    assert c[A].role is Role.FOLLOWER and not c.peek()
    c.tick(1, A)
    assert c[A].role is Role.PRE_CANDIDATE
    assert c[A].term == 0  # pre-vote first: no term change yet (dissertation §9.6)
    assert {msg.to for msg in c.peek(is_msg(m.PreVote))} == {B, C}
    c.stabilize()
    assert c[A].role is Role.LEADER and c[A].term == 1
    assert c[B].leader == A and c[C].leader == A


def test_5_2_election_timeouts_are_randomized_in_e_to_2e() -> None:
    """Split votes are rare because each replica draws its own timeout from [E, 2E)."""
    seen = set()
    for seed in range(40):
        member = RaftMember.bootstrap(A, Config(frozenset({A, B, C})), rng=random.Random(seed))
        ticks = 0
        while member.role is Role.FOLLOWER:
            member.tick()
            ticks += 1
        seen.add(ticks)
    e = member.opts.election_ticks
    assert min(seen) >= e and max(seen) < 2 * e
    assert len(seen) >= 5  # really spread, not one fixed value


def test_5_2_candidate_with_majority_becomes_leader_and_appends_a_noop() -> None:
    c = Cluster()
    c.elect(A)
    assert c[A].term == 1
    noop = c[A].log.entry(1)
    assert (noop.term, noop.kind) == (1, EntryKind.NOOP)
    assert c[A].commit == 1
    c.run(1)  # followers learn the commit index with the next heartbeat
    assert c[B].commit == 1 and c[C].commit == 1


def test_5_2_a_replica_votes_at_most_once_per_term() -> None:
    c = Cluster()
    c.expire_leases(A, B, C)
    c[B].step(m.Vote(frm=A, to=B, term=1, last_index=0, last_term=0))
    c[B].step(m.Vote(frm=C, to=B, term=1, last_index=0, last_term=0))
    c[B].step(m.Vote(frm=A, to=B, term=1, last_index=0, last_term=0))  # a retry: granted again
    c.process()
    answers = [(msg.to, msg.granted) for msg in c.take(is_msg(m.VoteResp, frm=B))]
    assert answers == [(A, True), (C, False), (A, True)]
    assert c.replicas[B].disk.hard_state.vote == A


def test_5_2_candidate_rejected_by_a_majority_steps_down() -> None:
    c = Cluster()
    c.elect(A)
    c.propose(A, "x")
    c.isolate(C)
    c.propose(A, "y")  # C misses it
    c.heal()
    c.crash(A)
    c.restart(A)
    c.expire_leases(A, B, C)  # also ends A's post-restart quiet period
    c[C].campaign()
    c.stabilize()
    assert c[C].role is Role.FOLLOWER  # both A and B have a more up-to-date log
    assert c[C].term == 2


# ---------------------------------------------------------------- §5.3 log replication


def test_5_3_leader_overwrites_a_followers_conflicting_uncommitted_entries() -> None:
    c = Cluster()
    c.elect(A)
    c.propose(A, "a1")
    # A appends two entries nobody else sees, then is cut off.
    c.isolate(A)
    c[A].propose("lost1")
    c[A].propose("lost2")
    c.stabilize()
    assert log_of(c[A]) == [(1, 1), (2, 1), (3, 1), (4, 1)]
    c.expire_leases(B, C)
    c.elect(B)
    c.propose(B, "b1")
    c.propose(B, "b2")
    c.propose(B, "b3")
    c.heal()
    c.run(3)
    assert c[A].role is Role.FOLLOWER
    assert log_of(c[A]) == log_of(c[B]) == log_of(c[C])
    assert [t for _i, t in log_of(c[A])][2:] == [2, 2, 2, 2]
    assert c.state(A) == c.state(B) == ["a1", "b1", "b2", "b3"]
    assert_applied_agree(c)


def test_5_3_follower_commit_is_min_of_leader_commit_and_last_new_entry() -> None:
    c = Cluster()
    c.elect(A)
    c.propose(A, "x")
    # A (forged) append carrying entry 3 only, with a leader commit far ahead.
    c.inject(
        m.Append(
            frm=A,
            to=C,
            term=1,
            prev_index=2,
            prev_term=1,
            entries=(Entry(1, 3, EntryKind.NORMAL, "y"),),
            commit=10,
        )
    )
    assert c[C].commit == 3
    # A delayed, older append with a smaller commit never moves commit back.
    c.inject(m.Append(frm=A, to=C, term=1, prev_index=1, prev_term=1, entries=(), commit=1))
    assert c[C].commit == 3


# ---------------------------------------------------------------- §5.4.1 election restriction


def test_5_4_1_voters_refuse_a_candidate_with_a_less_up_to_date_log() -> None:
    c = Cluster()
    c.elect(A)
    c.propose(A, "x", settle=False)
    c.stabilize(drop=is_msg(m.Append, to=C))  # committed on A and B only
    assert c[A].commit == 2 and c[C].log.last_index == 1
    c.crash(A)
    c.expire_leases(B, C)
    mark = len(c.sent)
    c[C].campaign()
    c.stabilize()
    grants = [(msg.frm, msg.granted) for msg in c.sent[mark:] if isinstance(msg, m.VoteResp)]
    assert grants == [(B, False)]
    assert c[C].role is Role.CANDIDATE
    # B, whose log holds the committed entry, can win with C's vote.
    c.expire_leases(B)
    c.elect(B)
    assert c.state(B) == ["x"]


# ---------------------------------------------------------------- §5.4.2 / Figure 8


def figure8(member_cls: type[RaftMember]) -> tuple[Cluster, list[int]]:
    """Script Figure 8 with S1..S5 = A..E; returns the cluster and A's commit in step (c).

    (a) A leads term 1 and replicates entry 2 ("x") to B only, then crashes.
    (b) E is elected in term 2 by C, D, E; its entry 2 (its no-op) reaches nobody.
    (c) A restarts and is elected in term 3; it replicates entry 2 (term 1) to C
        and D, so a majority (A, B, C, D) stores it - but its own no-op (entry 3,
        term 3) reaches nobody. Counting replicas would commit entry 2 here.
    (d) A crashes; E is elected in term 4 (its last term, 2, beats 1) and
        overwrites entry 2 everywhere. Had A committed it, a committed entry
        would be lost.
    """
    c = Cluster((A, B, C, D, E), opts=options(max_append_entries=1), member_cls=member_cls)
    c.elect(A)
    # (a)
    c.propose(A, "x", settle=False)
    c.stabilize(drop=_not_to(B))
    assert log_of(c[B]) == [(1, 1), (2, 1)] and log_of(c[C]) == [(1, 1)]
    c.crash(A)
    # (b)
    c.expire_leases(C, D, E)
    c[E].campaign()
    c.stabilize(drop=is_msg(m.Append))  # E's appends are lost
    assert c[E].role is Role.LEADER and c[E].term == 2
    assert log_of(c[E]) == [(1, 1), (2, 2)]
    c.crash(E)
    # (c)
    c.restart(A)
    c.expire_leases(B, C, D)

    def carries_3(msg: m.Message) -> bool:
        # Lose every append of A's no-op that would be accepted (rejections still flow).
        return (
            isinstance(msg, m.Append)
            and any(e.index == 3 for e in msg.entries)
            and c.replicas[msg.to].alive
            and c[msg.to].log.matches(msg.prev_index, msg.prev_term)
        )

    c[A].campaign()  # term 2: C and D already voted for E there
    c.stabilize(drop=carries_3)
    c[A].campaign()  # term 3
    c.stabilize(drop=carries_3)
    assert c[A].role is Role.LEADER and c[A].term == 3
    assert [log_of(c[r])[1] for r in (A, B, C, D)] == [(2, 1)] * 4  # a majority stores it
    commit_in_c = [c[A].commit]
    # (d)
    c.crash(A)
    c.restart(E)
    c.expire_leases(B, C, D)
    c[E].campaign()  # term 3: everybody voted for A
    c.stabilize()
    c[E].campaign()  # term 4
    c.stabilize()
    assert c[E].role is Role.LEADER and c[E].term == 4
    c.restart(A)
    c.run(2)
    return c, commit_in_c


def _not_to(r: object) -> Callable[[m.Message], bool]:
    return lambda msg: isinstance(msg, m.Append) and msg.to != r


def test_5_4_2_figure_8_leader_never_commits_an_older_term_entry_by_counting() -> None:
    c, (commit_in_c,) = figure8(RaftMember)
    assert commit_in_c == 1  # entry 2 of term 1 on a majority, yet not committed
    for r in (A, B, C, D, E):
        assert log_of(c[r])[:3] == [(1, 1), (2, 2), (3, 4)]
        assert c.state(r) == []  # "x" was never applied anywhere
    assert_applied_agree(c)


class CommitsOldTerms(RaftMember):
    """The bug Figure 8 warns about: commit whatever a majority stores."""

    def _maybe_commit(self) -> None:
        match = {r: pr.match for r, pr in self.progress.items()}
        match[self.id] = self.log.persisted
        ci = committed_index(self.config.voters, match)
        if ci > self.commit:
            self.commit = ci
            self._on_commit()


def test_5_4_2_figure_8_script_catches_a_leader_that_counts_old_terms() -> None:
    """The scenario above has teeth: the buggy rule commits "x", which is then lost."""
    c, (commit_in_c,) = figure8(CommitsOldTerms)
    assert commit_in_c == 2
    assert Entry(1, 2, EntryKind.NORMAL, "x") in c.replicas[A].applied
    with pytest.raises(AssertionError, match="index 2"):
        assert_applied_agree(c)


def test_5_4_2_older_entries_commit_indirectly_with_the_new_leaders_noop() -> None:
    c = Cluster()
    c.elect(A)
    c.propose(A, "x", settle=False)
    # B stores x but its acknowledgement is lost: x is on a majority, uncommitted.
    c.stabilize(drop=lambda msg: is_msg(m.Append, to=C)(msg) or isinstance(msg, m.AppendResp))
    assert c[A].commit == 1 and log_of(c[B])[-1] == (2, 1)
    c.crash(A)
    c.expire_leases(B, C)
    c.elect(B)  # B's no-op of term 2 commits x with it
    assert c[B].commit == 3 and c.state(B) == ["x"]
    c.run(1)
    assert c.state(C) == ["x"]


# ---------------------------------------------------------------- commit index monotonic


def test_commit_index_never_decreases_across_restarts() -> None:
    c = Cluster()
    c.elect(A)
    for k in range(3):
        c.propose(A, k)
    c.run(1)
    assert c[C].commit == 4
    assert c.replicas[C].disk.hard_state.commit == 4
    c.crash(C)
    c.restart(C)
    assert c[C].commit == 4
    assert c.state(C) == [0, 1, 2]  # re-applied from the log up to the stored commit
    c.inject(m.Heartbeat(frm=A, to=C, term=1, commit=1, round=99))
    assert c[C].commit == 4


# ---------------------------------------------------------------- dissertation §9.6 pre-vote


def test_9_6_pre_vote_does_not_change_terms() -> None:
    c = Cluster()
    c.elect(A)
    c.isolate(C)
    c.run(60)  # C times out again and again, but cannot win a pre-vote
    assert c[C].term == 1
    assert any(isinstance(msg, m.PreVote) and msg.frm == C for msg in c.sent)
    assert not any(isinstance(msg, m.Vote) and msg.frm == C for msg in c.sent)
    c.heal()
    c.run(3)
    assert c.leader() == A and c[A].term == 1  # the returning replica did not disrupt A
    assert c[C].leader == A


def test_9_6_pre_vote_asks_for_term_plus_one_and_a_grant_changes_no_term() -> None:
    c = Cluster()
    c.elect(A)
    c.expire_leases(B, C)
    c[C].tick()  # not yet its timeout
    c.inject(m.PreVote(frm=C, to=B, term=5, last_index=1, last_term=1))
    (resp,) = c.take(is_msg(m.PreVoteResp, frm=B))
    assert resp.granted and resp.term == 5
    assert c[B].term == 1 and c[B].vote == A
    assert c.replicas[B].disk.hard_state.term == 1


# ---------------------------------------------------------------- dissertation §4.2.3 stickiness


def test_4_2_3_votes_are_ignored_while_a_leader_is_alive() -> None:
    c = Cluster()
    c.elect(A)
    c.inject(m.Vote(frm=C, to=B, term=2, last_index=9, last_term=9))
    assert c[B].term == 1 and not c.peek(is_msg(m.VoteResp, frm=B))


def test_4_2_3_stickiness_is_bypassed_for_timeout_now() -> None:
    c = Cluster()
    c.elect(A)
    c.inject(m.Vote(frm=C, to=B, term=2, last_index=1, last_term=1, transfer=True))
    (resp,) = c.take(is_msg(m.VoteResp, frm=B))
    assert resp.granted and c[B].term == 2
