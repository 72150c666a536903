"""Elections beyond the paper: pre-vote, check-quorum, restarts, durable votes, wiped replicas."""

from __future__ import annotations

from raftfleet_agent.raft import messages as m
from raftfleet_agent.raft.member import Role
from raftfleet_agent.raft.membership import ConfOp
from raftfleet_agent.raft.types import HardState, ReplicaId

from .harness import A, B, C, Cluster, is_msg


def test_pre_vote_is_refused_to_a_candidate_with_a_stale_log() -> None:
    c = Cluster()
    c.elect(A)
    c.propose(A, "x")
    c.expire_leases(B)
    c.inject(m.PreVote(frm=C, to=B, term=2, last_index=1, last_term=1))
    (resp,) = c.take(is_msg(m.PreVoteResp, frm=B))
    assert not resp.granted and resp.term == 1


def test_failed_pre_vote_leaves_everybody_at_their_term() -> None:
    c = Cluster()
    c.elect(A)
    c.isolate(C)
    c.propose(A, "C misses this")
    c.heal()
    c.crash(A)
    c.restart(A)
    c.expire_leases(A, B, C)  # nobody has a live leader; A's quiet period is over
    c.tick(9, C)  # C's timeout (19) runs out: it pre-campaigns for term 2
    assert c[C].role is Role.PRE_CANDIDATE
    c.stabilize()
    assert c[C].role is Role.FOLLOWER  # A and B refused: their logs are ahead
    assert [c[r].term for r in (A, B, C)] == [1, 1, 1]
    assert not any(isinstance(msg, m.Vote) and msg.frm == C for msg in c.sent)


def test_check_quorum_leader_cut_off_from_a_majority_steps_down() -> None:
    c = Cluster()
    c.elect(A)
    c.isolate(A)
    c.run(10)  # the first check-quorum round still sees the earlier answers
    assert c[A].role is Role.LEADER
    c.run(10)
    assert c[A].role is Role.FOLLOWER and c[A].leader is None
    assert c[A].term == 1  # it steps down without inventing a term


def test_leader_hearing_from_a_majority_keeps_leading() -> None:
    c = Cluster((A, B, ReplicaId("c", 1), ReplicaId("d", 1), ReplicaId("e", 1)))
    c.elect(A)
    c.isolate(ReplicaId("d", 1))
    c.isolate(ReplicaId("e", 1))
    c.run(35)
    assert c[A].role is Role.LEADER and c[A].term == 1


def test_restarted_replica_ignores_votes_for_one_election_timeout() -> None:
    """It may have acknowledged a leader just before crashing: don't cut that lease short."""
    c = Cluster()
    c.elect(A)
    c.crash(B)
    c.restart(B)
    c.inject(m.Vote(frm=C, to=B, term=2, last_index=1, last_term=1))
    c.inject(m.PreVote(frm=C, to=B, term=2, last_index=1, last_term=1))
    assert not c.peek(is_msg(frm=B)) and c[B].term == 1
    c.tick(10, B)
    c.take()
    c.inject(m.Vote(frm=C, to=B, term=2, last_index=1, last_term=1))
    (resp,) = c.take(is_msg(m.VoteResp, frm=B))
    assert resp.granted


def test_vote_is_durable_before_it_is_sent() -> None:
    c = Cluster()
    c.expire_leases(A, B, C)
    c.hold_disk(B)
    c.inject(m.Vote(frm=C, to=B, term=1, last_index=0, last_term=0))
    assert not c.peek(is_msg(m.VoteResp))
    assert c.replicas[B].disk.hard_state == HardState(0, None, 0)
    c.release_disk(B)
    assert c.replicas[B].disk.hard_state == HardState(1, C, 0)
    (resp,) = c.take(is_msg(m.VoteResp, frm=B))
    assert resp.granted
    (rd,) = [rd for rd in c.replicas[B].readys if rd.hard_state == HardState(1, C, 0)]
    assert rd.messages and not rd.early_messages


def test_restarted_replica_does_not_vote_twice_in_a_term() -> None:
    c = Cluster()
    c.expire_leases(A, B, C)
    c.inject(m.Vote(frm=C, to=B, term=1, last_index=0, last_term=0))
    c.take()
    c.crash(B)
    c.restart(B)
    c.tick(10, B)  # past the post-restart quiet period
    c.take()
    assert (c[B].term, c[B].vote) == (1, C)
    c.inject(m.Vote(frm=A, to=B, term=1, last_index=0, last_term=0))
    (resp,) = c.take(is_msg(m.VoteResp, frm=B))
    assert not resp.granted


def test_crash_before_the_vote_is_durable_forgets_it_and_sends_nothing() -> None:
    c = Cluster()
    c.expire_leases(A, B, C)
    c.hold_disk(B)
    c.inject(m.Vote(frm=C, to=B, term=1, last_index=0, last_term=0))
    c.crash(B)
    assert not c.peek(is_msg(m.VoteResp))
    c.restart(B)
    assert (c[B].term, c[B].vote) == (0, None)


def test_wiped_replica_with_a_new_id_comes_back_only_through_membership() -> None:
    c = Cluster()
    c.elect(A)
    c.propose(A, "x")
    c.crash(B)
    b2 = ReplicaId("b", 2)  # B's data dir was wiped: a new identity
    c.add_replica(b2)
    c.run(40)
    assert c[b2].role is Role.FOLLOWER and c[b2].term == 0  # not a voter: never campaigns
    assert not any(msg.frm == b2 for msg in c.sent)
    assert c.leader() == A
    c[A].change_membership(ConfOp.REMOVE, B)
    c.run(1)
    c[A].change_membership(ConfOp.ADD_LEARNER, b2)
    c.run(2)
    assert c.state(b2) == ["x"]
    c[A].change_membership(ConfOp.PROMOTE, b2)
    c.run(2)
    assert set(c[A].config.voters) == {A, b2, C}
    # The new replica now counts: with C gone, A and b2 still commit.
    c.crash(C)
    c.propose(A, "y")
    c.run(1)
    assert c.state(b2) == ["x", "y"]
