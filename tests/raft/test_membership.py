"""Single-server membership changes (dissertation §4.1-4.3) driven through the leader."""

from __future__ import annotations

import pytest

from raftfleet_agent.raft import messages as m
from raftfleet_agent.raft.errors import MembershipError, NotLeader
from raftfleet_agent.raft.member import Role
from raftfleet_agent.raft.membership import ConfOp
from raftfleet_agent.raft.types import Config, EntryKind

from .harness import A, B, C, Cluster, D, E, assert_applied_agree, is_msg, options


def with_learner(learner: object = D, **kw: object) -> Cluster:
    c = Cluster(**kw)  # type: ignore[arg-type]
    c.elect(A)
    c.add_replica(learner)  # type: ignore[arg-type]
    c[A].change_membership(ConfOp.ADD_LEARNER, learner)  # type: ignore[arg-type]
    c.run(2)
    return c


def refused(c: Cluster, op: ConfOp, who: object) -> str:
    with pytest.raises(MembershipError) as err:
        c[A].change_membership(op, who)  # type: ignore[arg-type]
    return err.value.code


def test_add_learner_replicates_the_log_to_it() -> None:
    c = Cluster()
    c.elect(A)
    c.propose(A, "before")
    c.add_replica(D)
    c[A].change_membership(ConfOp.ADD_LEARNER, D)
    c.run(2)
    for r in (A, B, C, D):
        assert c[r].config == Config(frozenset({A, B, C}), frozenset({D}))
    assert c.state(D) == ["before"]
    c.propose(A, "after")
    c.run(1)
    assert c.state(D) == ["before", "after"]
    assert c[A].config.quorum() == 2  # learners do not count


def test_learner_neither_votes_nor_campaigns() -> None:
    c = with_learner(rng_seed=3)  # real jitter, so B and C do not split votes forever
    mark = len(c.sent)
    c.crash(A)
    c.run(60)
    assert c[D].role is Role.FOLLOWER
    assert not any(msg.frm == D and isinstance(msg, m.PreVote | m.Vote) for msg in c.sent)
    assert not any(msg.to == D and isinstance(msg, m.PreVote | m.Vote) for msg in c.sent[mark:])
    # A learner told to take over ignores TimeoutNow too.
    c.inject(m.TimeoutNow(frm=c.leader(), to=D, term=c[D].term))
    assert c[D].role is Role.FOLLOWER


def test_learner_votes_are_not_counted() -> None:
    c = with_learner()
    c.crash(A)
    c.expire_leases(B, C, D)
    c[B].campaign()
    c.deliver(is_msg(m.Vote))
    assert c[B].role is Role.CANDIDATE
    c.inject(m.VoteResp(frm=D, to=B, term=c[B].term, granted=True))  # forged: ignored
    assert c[B].role is Role.CANDIDATE
    c.stabilize()
    assert c[B].role is Role.LEADER


def test_promote_only_when_caught_up() -> None:
    c = with_learner(opts=options(promote_lag_max=3))
    c.isolate(D)
    for k in range(10):
        c.propose(A, k)
    assert refused(c, ConfOp.PROMOTE, D) == "learner_behind"
    c.heal()
    c.run(8)  # lost appends are retried after half an election timeout
    c[A].change_membership(ConfOp.PROMOTE, D)
    c.run(2)
    assert c[A].config == Config(frozenset({A, B, C, D}))
    assert c[D].config.voters == {A, B, C, D}
    assert c[D].status().voters == (A, B, C, D)


def test_promote_refuses_an_unresponsive_learner() -> None:
    c = with_learner()
    c.crash(D)
    c.run(12)
    assert refused(c, ConfOp.PROMOTE, D) == "learner_unresponsive"


def test_remove_voter_and_the_removed_replica_stops() -> None:
    c = Cluster()
    c.elect(A)
    c[A].change_membership(ConfOp.REMOVE, C)
    c.run(2)
    assert c[A].config == Config(frozenset({A, B}))
    assert c.replicas[C].gone  # it got Ready.removed and its host stopped it
    assert any(rd.removed for rd in c.replicas[C].readys)
    c.propose(A, "x")
    c.run(1)
    assert c.state(B) == ["x"]


def test_only_one_uncommitted_change_at_a_time() -> None:
    c = Cluster()
    c.elect(A)
    c.add_replica(D)
    c.add_replica(E)
    c[A].change_membership(ConfOp.ADD_LEARNER, D)
    assert refused(c, ConfOp.ADD_LEARNER, E) == "change_in_progress"
    c.run(1)
    c[A].change_membership(ConfOp.ADD_LEARNER, E)  # committed now: allowed
    c.run(2)
    assert c[A].config.learners == {D, E}


def test_no_change_before_the_leader_committed_its_noop() -> None:
    c = Cluster()
    c.expire_leases(A, B, C)
    c[A].campaign()
    c.stabilize(drop=is_msg(m.Append))
    assert c[A].role is Role.LEADER and c[A].commit == 0
    c.add_replica(D)
    assert refused(c, ConfOp.ADD_LEARNER, D) == "not_ready"
    c.run(1)
    c[A].change_membership(ConfOp.ADD_LEARNER, D)


def test_change_refused_by_a_follower() -> None:
    c = Cluster()
    c.elect(A)
    with pytest.raises(NotLeader) as err:
        c[B].change_membership(ConfOp.REMOVE, C)
    assert err.value.leader == A


def test_refuse_a_removal_that_breaks_the_quorum_of_healthy_voters() -> None:
    c = Cluster()
    c.elect(A)
    c.crash(C)
    c.run(12)  # C has been silent for over an election timeout
    assert refused(c, ConfOp.REMOVE, B) == "would_lose_quorum"  # {A, C}: only A healthy
    c[A].change_membership(ConfOp.REMOVE, C)  # removing the dead one is fine
    c.run(1)
    assert c[A].config.voters == {A, B}


def test_config_takes_effect_on_append_and_reverts_when_truncated() -> None:
    c = Cluster((A, B, C, D, E))
    c.elect(A)
    x = ReplicaX = type(A)("x", 1)
    c.add_replica(ReplicaX)
    index = c[A].change_membership(ConfOp.ADD_LEARNER, x)
    assert c[A].config.learners == {x}  # on append, before any commit
    # Only B stores the config entry, and its acknowledgement is lost.
    c.stabilize(
        drop=lambda msg: (is_msg(m.Append)(msg) and msg.to != B) or is_msg(m.AppendResp)(msg)
    )
    assert c[B].log.last_index == index and c[B].commit < index
    assert c[B].config.learners == {x}  # a follower applies it on append too
    c.crash(A)
    c.expire_leases(B, C, D, E)
    c.elect(C)  # B refuses (its log is longer); D and E elect C
    c.run(2)
    assert c[B].log.entry(index).kind is EntryKind.NOOP  # the config entry was truncated
    assert c[B].config == Config(frozenset({A, B, C, D, E}))  # and its config with it
    assert_applied_agree(c)


def test_removing_the_leader_itself() -> None:
    c = Cluster()
    c.elect(A)
    c.propose(A, "x")
    c[A].change_membership(ConfOp.REMOVE, A)
    # Until the entry commits A still leads, but it no longer counts itself.
    assert c[A].role is Role.LEADER
    c.stabilize()
    c.run(3)
    assert c.replicas[A].gone
    new = c.leader()
    assert new in (B, C) and c[new].term == 2  # handed over at once (TimeoutNow)
    assert c[new].config.voters == {B, C}
    c.propose(new, "y")
    c.run(1)
    assert c.state(B) == c.state(C) == ["x", "y"]


def test_removed_leader_does_not_count_itself_toward_the_new_quorum() -> None:
    c = Cluster()
    c.elect(A)
    index = c[A].change_membership(ConfOp.REMOVE, A)
    # Only B answers: A itself plus B would be a majority of the old config,
    # but the new config {B, C} needs both.
    c.stabilize(drop=is_msg(m.Append, to=C))
    assert c[A].commit < index and c[A].role is Role.LEADER
    c.run(6)  # C gets the entry too: now it commits, and A leaves
    assert c.replicas[A].gone
    assert c[B].commit >= index and c[C].commit >= index


def test_removed_follower_that_missed_the_news_is_told_by_the_leader() -> None:
    c = Cluster()
    c.elect(A)
    c.isolate(C)
    c[A].change_membership(ConfOp.REMOVE, C)
    c.run(2)
    assert c[A].config.voters == {A, B}
    c.heal()
    c.run(25)  # C never got the entry; it pre-campaigns and A answers "Removed"
    assert any(isinstance(msg, m.Removed) and msg.to == C for msg in c.sent)
    assert c.replicas[C].gone
    assert c.leader() == A and c[A].term == 1


def test_a_new_leader_counts_as_healthy_only_voters_it_heard_from() -> None:
    # Fault campaign, seed 7225: a leader elected moments before removed a
    # live voter from {a1, a4, a5} because it counted a4, dead for 8 s, as
    # healthy: every follower looked freshly contacted at the election. The
    # group was left as {a4, a5} with a4 dead, then a4's disk was wiped.
    c = Cluster()
    c.elect(A)
    c.crash(C)
    c.run(2)
    c[A].transfer_leadership(B)
    c.stabilize()
    assert c[B].role is Role.LEADER and c[B].commit >= c[B].status().last_index
    with pytest.raises(MembershipError) as err:
        c[B].change_membership(ConfOp.REMOVE, A)  # {B, C}: C never answered B
    assert err.value.code == "would_lose_quorum"
    c[B].change_membership(ConfOp.REMOVE, C)  # removing the silent one is fine
    c.run(1)
    assert c[B].config.voters == {A, B}


def test_a_new_leader_does_not_promote_a_learner_it_never_heard_from() -> None:
    c = with_learner()
    c.crash(D)
    c.run(1)  # D's last answer to A was a moment ago
    c[A].transfer_leadership(B)
    c.stabilize()
    assert c[B].role is Role.LEADER
    with pytest.raises(MembershipError) as err:
        c[B].change_membership(ConfOp.PROMOTE, D)
    assert err.value.code == "learner_unresponsive"


def test_a_deposed_leaders_removal_notice_does_not_remove_a_newer_voter() -> None:
    # Fault campaign, seed 7701: a leader cut off from the group kept its old
    # configuration; a voter added after it was deposed wrote to it, heard
    # "Removed", believed it and deleted itself. With another voter's disk
    # wiped, the group was left with 2 of its 4 voters. A notice is only
    # believed from a term at least our own: the deposed leader's is older.
    c = Cluster(rng_seed=3)
    c.elect(A)
    c.isolate(A)
    c.run(40)  # B and C elect one of them once A's lease is over
    new = next(r for r in (B, C) if c[r].role is Role.LEADER)
    c.add_replica(D)
    c[new].change_membership(ConfOp.ADD_LEARNER, D)
    c.run(4)
    c[new].change_membership(ConfOp.PROMOTE, D)
    c.run(4)
    assert D in c[new].config.voters and c[D].term == c[new].term > c[A].term
    assert D not in c[A].config.members  # A never heard of D
    # What A says the moment it hears from D, if it still believes it leads
    # (a resumed pause, before check-quorum deposes it):
    c.inject(m.Removed(frm=A, to=D, term=c[A].term))
    assert not c.replicas[D].gone and not c[D].removed
    # The leader of the current term is believed (the notice a removed replica gets).
    c.inject(m.Removed(frm=new, to=D, term=c[new].term))
    assert c.replicas[D].gone
