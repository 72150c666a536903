"""Forced recovery of a group that lost its majority for good (unsafe by design)."""

from __future__ import annotations

from raftfleet_agent.raft import messages as m
from raftfleet_agent.raft.types import Config

from .harness import A, B, C, Cluster


def test_a_lone_survivor_becomes_sole_voter_and_serves_again() -> None:
    c = Cluster()
    c.elect(A)
    c.propose(A, "kept")
    c.crash(A)
    c.crash(B)
    c.run(40)
    assert not c.leaders()  # one of three: no majority, no leader
    term_before = c[C].term
    c[C].force_sole_voter(min_term=term_before)
    c.process()
    assert c[C].is_leader
    assert c[C].term > term_before + 1
    assert c[C].config == Config(frozenset({C}))
    c.propose(C, "after")
    assert c.state(C) == ["kept", "after"]


def test_old_members_are_told_they_were_removed() -> None:
    c = Cluster()
    c.elect(A)
    c.propose(A, "x")
    c.partition([A, B], [C])
    c.crash(A)
    c[C].force_sole_voter(min_term=c[B].term)
    c.process()
    c.heal()
    c.run(40)
    # B is not a member of C's configuration any more: the leader tells it so.
    assert c.replicas[B].gone
    assert c[C].is_leader and c.leaders() == [C]
    assert not any(isinstance(msg, m.Vote | m.PreVote) for msg in c.peek())
