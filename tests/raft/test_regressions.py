"""Bugs the simulator found, each kept as a test."""

from __future__ import annotations

from raftfleet_agent.raft import messages as m
from raftfleet_agent.sim.cluster import Simulation

from .harness import A, B, C, Cluster


def test_a_candidate_behind_is_told_the_current_term() -> None:
    c = Cluster()
    c.elect(A)
    c[C].term = c[A].term + 5  # C ran ahead (it campaigns with a stale configuration)
    stale = m.Vote(
        frm=B,
        to=C,
        term=c[A].term + 1,
        last_index=c[B].log.last_index,
        last_term=c[B].log.last_term,
    )
    c.inject(stale)
    c.deliver(lambda msg: msg is stale)
    answers = [x for x in c.peek() if isinstance(x, m.VoteResp) and x.to == B]
    assert answers and answers[-1].term == c[C].term and not answers[-1].granted


def test_seed_1056_two_candidates_no_longer_leapfrog_forever() -> None:
    # A candidate with a stale configuration kept raising its term while the one
    # that needed its vote never learned it: liveness lost after healing.
    Simulation(1056).run(2000)
