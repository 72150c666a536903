"""`RaftMember.status()`: the frozen record the CLI and metrics render."""

from __future__ import annotations

from raftfleet_agent.raft.membership import ConfOp

from .harness import A, B, C, Cluster, D


def test_leader_status() -> None:
    c = Cluster()
    c.elect(A)
    c.add_replica(D)
    c[A].change_membership(ConfOp.ADD_LEARNER, D)
    c.run(2)
    c.propose(A, "x")
    c.crash(C)
    c.run(4)
    s = c[A].status()
    assert (s.replica, s.role, s.term, s.leader) == (A, "leader", 1, A)
    assert (s.voters, s.learners) == ((A, B, C), (D,))
    assert (s.commit_index, s.applied_index, s.last_index, s.snapshot_index) == (3, 3, 3, 0)
    assert s.lease_valid and s.transfer_target is None and not s.removed
    by = {f.replica: f for f in s.followers}
    assert set(by) == {B, C, D}
    assert by[B].voter and not by[D].voter
    assert (by[B].match_index, by[B].next_index, by[B].state) == (3, 4, "replicate")
    assert by[B].ticks_since_contact == 0
    assert by[C].match_index == 3 and by[C].ticks_since_contact == 4  # silent since the crash


def test_follower_status() -> None:
    c = Cluster()
    c.elect(A)
    c.propose(A, "x")
    c.run(1)
    c.compact(B)
    s = c[B].status()
    assert (s.role, s.term, s.leader, s.followers, s.lease_valid) == ("follower", 1, A, (), False)
    assert (s.commit_index, s.applied_index, s.snapshot_index) == (2, 2, 2)


def test_status_after_transfer_and_removal() -> None:
    c = Cluster()
    c.elect(A)
    c[A].transfer_leadership(B)
    c.stabilize()
    assert c[B].status().role == "leader" and c[A].status().leader == B
    c[B].change_membership(ConfOp.REMOVE, A)
    c.run(2)
    assert c.replicas[A].gone
    assert c[B].status().voters == (B, C)
