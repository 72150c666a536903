"""Leadership transfer (dissertation §3.10): catch up, TimeoutNow, and what is refused meanwhile."""

from __future__ import annotations

import pytest

from raftfleet_agent.raft import messages as m
from raftfleet_agent.raft.errors import NotLeader, ProposalDropped, TransferError
from raftfleet_agent.raft.member import Role

from .harness import A, B, C, Cluster, D, is_msg


def transfer_error(c: Cluster, target: object) -> str:
    with pytest.raises(TransferError) as err:
        c[A].transfer_leadership(target)  # type: ignore[arg-type]
    return err.value.code


def test_transfer_catches_the_target_up_then_sends_timeout_now() -> None:
    c = Cluster()
    c.elect(A)
    c.isolate(C)
    for k in range(5):
        c.propose(A, k)
    c.heal()
    c[A].transfer_leadership(C)
    assert not c.peek(is_msg(m.TimeoutNow))  # C is behind: no TimeoutNow yet
    with pytest.raises(ProposalDropped):
        c[A].propose("refused during the transfer")
    c.run(8)
    assert c.leader() == C and c[C].term == 2
    (tn,) = [msg for msg in c.sent if isinstance(msg, m.TimeoutNow)]
    assert tn.frm == A and tn.to == C
    assert c[A].role is Role.FOLLOWER and c[A].leader == C
    c.propose(C, "after")
    c.run(1)
    assert c.state(A) == c.state(C) == [0, 1, 2, 3, 4, "after"]


def test_transfer_to_a_caught_up_target_is_immediate() -> None:
    c = Cluster()
    c.elect(A)
    c[A].transfer_leadership(B)
    c.stabilize()
    assert c.leader() == B and c[B].term == 2


def test_cancel_transfer_accepts_proposals_again() -> None:
    c = Cluster()
    c.elect(A)
    c.isolate(C)
    c.propose(A, "x")
    c[A].transfer_leadership(C)
    assert c[A].status().transfer_target == C
    c[A].cancel_transfer()
    assert c[A].status().transfer_target is None
    c.propose(A, "y")
    assert c[A].role is Role.LEADER


def test_transfer_refuses_unknown_self_and_unresponsive_targets() -> None:
    c = Cluster()
    c.elect(A)
    assert transfer_error(c, D) == "unknown_target"
    assert transfer_error(c, A) == "already_leader"
    c.crash(C)
    c.run(12)
    assert transfer_error(c, C) == "unresponsive_target"
    with pytest.raises(NotLeader):
        c[B].transfer_leadership(A)


def test_transfer_times_out_after_an_election_timeout() -> None:
    c = Cluster()
    c.elect(A)
    c.isolate(C)  # C answered recently, so the transfer starts, but it cannot catch up
    c.propose(A, "x")
    c[A].transfer_leadership(C)
    c.run(9)
    assert c[A].status().transfer_target == C
    c.run(1)
    assert c[A].status().transfer_target is None
    c.propose(A, "y")  # accepted again
    assert c[A].role is Role.LEADER


def test_old_leaders_lease_is_off_once_timeout_now_is_sent() -> None:
    c = Cluster()
    c.elect(A)
    c.run(1)
    assert c[A].lease_valid()
    c[A].transfer_leadership(B)  # caught up: TimeoutNow goes out at once
    assert not c[A].lease_valid()
    c.process()
    c.take(is_msg(m.TimeoutNow))  # lost: A stays leader, but its lease stays off
    c[A].cancel_transfer()
    c.run(3)
    assert c[A].role is Role.LEADER and not c[A].lease_valid()
    # Reads now go through ReadIndex: not answered before a heartbeat round.
    c[A].read("r")
    c.process()
    assert c.replicas[A].reads == []
    c.stabilize()
    assert [r.ctx for r in c.replicas[A].reads] == ["r"]
