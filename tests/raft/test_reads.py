"""Linearizable reads: leases, ReadIndex, and what a leader must not answer."""

from __future__ import annotations

import pytest

from raftfleet_agent.raft import messages as m
from raftfleet_agent.raft.errors import NotLeader
from raftfleet_agent.raft.member import Role

from .harness import A, B, C, Cluster, is_msg, options


def reads(c: Cluster, r: object = A) -> list[tuple[object, int]]:
    return [(s.ctx, s.index) for s in c.replicas[r].reads]  # type: ignore[index]


def test_lease_read_is_served_at_once() -> None:
    c = Cluster()
    c.elect(A)
    c.propose(A, "x")
    c.run(1)  # a heartbeat round acknowledged by a majority: the lease starts
    assert c[A].lease_valid()
    mark = len(c.sent)
    c[A].read("q")
    c.process()
    assert reads(c) == [("q", 2)]
    assert c.sent[mark:] == []  # no messages needed


def test_read_index_needs_a_heartbeat_round_answered_after_the_read() -> None:
    c = Cluster(opts=options(lease_reads=False))
    c.elect(A)
    c.tick(1, A)  # round r goes out...
    c.deliver(is_msg(m.Heartbeat))  # ...and B and C answer it
    assert c.peek(is_msg(m.HeartbeatResp))
    c[A].read("q")
    c.deliver(is_msg(m.HeartbeatResp))  # answers to a round that started before the read
    assert reads(c) == []
    assert c.peek(is_msg(m.Heartbeat))  # a fresh round went out for the read
    c.deliver(is_msg(m.Heartbeat, to=B))
    c.deliver(is_msg(m.HeartbeatResp))  # B answers: A + B is a majority
    assert reads(c) == [("q", 1)]


def test_lone_voter_answers_reads_at_once() -> None:
    c = Cluster((A,), opts=options(lease_reads=False))
    c.elect(A)
    c[A].read("q")
    c.process()
    assert reads(c) == [("q", 1)]


def test_reads_wait_for_the_leaders_noop() -> None:
    c = Cluster()
    c.expire_leases(A, B, C)
    c[A].campaign()
    c.stabilize(drop=is_msg(m.Append))
    assert c[A].role is Role.LEADER and c[A].commit == 0
    c[A].read("q")
    c.process()
    assert reads(c) == []
    c.run(1)
    assert reads(c) == [("q", 1)]  # the no-op's index, never an older commit


def test_followers_refuse_reads() -> None:
    c = Cluster()
    c.elect(A)
    with pytest.raises(NotLeader) as err:
        c[B].read("q")
    assert err.value.leader == A


def test_partitioned_leader_loses_its_lease_before_a_new_leader_can_exist() -> None:
    """Lease < election timeout, counted from when an acknowledged round started."""
    for seed in range(5):
        c = Cluster(rng_seed=seed)
        c.elect(A)
        c.run(3)
        assert c[A].lease_valid()
        c.isolate(A)
        lease_end = None
        for t in range(60):
            c.tick()
            c.stabilize()
            if lease_end is None and not c[A].lease_valid():
                lease_end = t
            others = [r for r in (B, C) if c[r].role is Role.LEADER]
            if others:
                assert lease_end is not None and lease_end < t, (seed, lease_end, t)
                break
        else:
            pytest.fail("no new leader was elected")


def test_pending_reads_fail_when_the_leader_steps_down() -> None:
    c = Cluster(opts=options(lease_reads=False))
    c.elect(A)
    c.isolate(A)
    c[A].read("q")
    c.run(20)  # check-quorum: A steps down
    assert c[A].role is Role.FOLLOWER
    assert c.replicas[A].failed_reads == ["q"]
    assert reads(c) == []


def test_reads_waiting_for_the_noop_fail_on_step_down() -> None:
    c = Cluster()
    c.expire_leases(A, B, C)
    c[A].campaign()
    c.stabilize(drop=is_msg(m.Append))
    c[A].read("early")
    c.inject(m.Append(frm=B, to=A, term=5, prev_index=0, prev_term=0, entries=(), commit=0))
    assert c[A].role is Role.FOLLOWER
    assert c.replicas[A].failed_reads == ["early"]


def test_read_index_now_only_with_a_valid_lease_after_the_noop() -> None:
    from .harness import A, B, Cluster

    c = Cluster()
    assert c[A].read_index_now() is None  # not a leader
    c.elect(A)
    c.run(2)
    assert c[A].lease_valid()
    assert c[A].read_index_now() == c[A].commit
    assert c[B].read_index_now() is None  # followers never
    c.expire_leases(A)
    assert not c[A].lease_valid()
    assert c[A].read_index_now() is None  # no lease: ReadIndex it is
