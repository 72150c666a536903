"""Forged Raft messages against the core, deterministically (the scripted harness).

The process-level version is test_hostile_peers.py; this pins the rules of
`RaftMember.step` that make it pass, one message at a time:
- a follower that hears from a live leader ignores higher-term messages from
  a replica that is not a member;
- in its term, a follower takes leader messages only from its leader;
- TimeoutNow only from the follower's leader.
And what must still work: a real transfer, a removed replica's Removed
notice, and a new leader not in a lagging follower's config once the lease
runs out.
"""

from __future__ import annotations

import pytest

from raftfleet_agent.raft import messages as m
from raftfleet_agent.raft.member import Role
from raftfleet_agent.raft.types import Config, Entry, EntryKind, ReplicaId
from tests.raft.harness import A, B, C, Cluster, is_msg

HUGE = 2**62
EVE = ReplicaId("eve", 9)


def _forgeries(to: ReplicaId, term: int, last: int) -> list[m.Message]:
    cfg = Config(frozenset({EVE}))
    return [
        m.Vote(frm=EVE, to=to, term=HUGE, last_index=HUGE, last_term=HUGE, transfer=True),
        m.Append(frm=EVE, to=to, term=HUGE, prev_index=0, prev_term=0, entries=(), commit=0),
        m.Heartbeat(frm=EVE, to=to, term=HUGE, commit=HUGE, round=1),
        m.TimeoutNow(frm=EVE, to=to, term=HUGE),
        m.AppendResp(frm=EVE, to=to, term=HUGE, success=False, index=0),
        # Same term: a second "leader", a forged commit, a forged transfer.
        m.Append(
            frm=EVE,
            to=to,
            term=term,
            prev_index=last,
            prev_term=term,
            entries=(Entry(term, last + 1, EntryKind.CONFIG, cfg),),
            commit=last + 1,
        ),
        m.Heartbeat(frm=EVE, to=to, term=term, commit=HUGE, round=1),
        m.TimeoutNow(frm=EVE, to=to, term=term),
    ]


@pytest.mark.parametrize("index", range(8))
@pytest.mark.parametrize("target", [B, C])
def test_a_forged_message_to_a_follower_changes_nothing(index: int, target: ReplicaId) -> None:
    c = Cluster()
    c.elect(A)
    c.propose(A, "x")
    c.stabilize()
    term, last = c[A].term, c[target].log.last_index
    forged = _forgeries(target, term, last)[index]
    c.inject(forged)
    c.stabilize()
    c.run(30)  # three election timeouts of heartbeats: nothing brews
    assert c.leader() == A and c[A].role is Role.LEADER
    assert [c[r].term for r in (A, B, C)] == [term] * 3, forged
    assert c[target].leader == A
    assert c[target].log.last_index == c[A].log.last_index  # no forged entry
    assert c[target].config == c[A].config


def test_the_real_transfer_still_works() -> None:
    c = Cluster()
    c.elect(A)
    c.stabilize()
    c[A].transfer_leadership(B)
    c.process()
    c.stabilize()
    assert c.leader() == B and c[B].term == 2


def test_a_stranger_is_heard_once_the_lease_is_over() -> None:
    """Liveness: a leader unknown to a follower's config (say, added while it
    lagged) is not ignored forever, only while the old leader's lease lasts."""
    c = Cluster()
    c.elect(A)
    c.stabilize()
    c.expire_leases(B)
    c.inject(m.Append(frm=EVE, to=B, term=5, prev_index=0, prev_term=0, entries=(), commit=0))
    assert c[B].term == 5 and c[B].leader == EVE
    assert c.take(is_msg(m.AppendResp, frm=B))
