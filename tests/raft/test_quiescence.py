"""Idle groups go quiet (no heartbeats, no election timers) and wake correctly."""

from __future__ import annotations

from raftfleet_agent.raft import messages as m
from raftfleet_agent.raft.membership import ConfOp

from .harness import A, B, C, Cluster, options

QUIET = options(quiesce_after_ticks=5)


def quiet_cluster(**kw: object) -> Cluster:
    c = Cluster(opts=QUIET, **kw)  # type: ignore[arg-type]
    c.elect(A)
    c.propose(A, "x")
    c.run(8)
    return c


def test_an_idle_caught_up_group_goes_quiet_everywhere() -> None:
    c = quiet_cluster()
    assert all(c[r].quiescent for r in (A, B, C))
    sent = len(c.sent)
    c.run(50)  # fifty ticks: no heartbeat, no election, nothing at all
    assert len(c.sent) == sent
    assert c[A].is_leader and c[A].status().quiescent


def test_a_quiet_leader_has_no_lease() -> None:
    c = quiet_cluster()
    assert not c[A].lease_valid()
    c[A].read("r")
    c.run(2)
    # The read woke the group and went through a heartbeat round (ReadIndex).
    assert [r.ctx for r in c.replicas[A].reads] == ["r"]
    assert not c[B].quiescent


def test_a_proposal_wakes_the_group_and_commits() -> None:
    c = quiet_cluster()
    c.propose(A, "y")
    c.run(2)
    assert c.state(B) == ["x", "y"]
    assert not c[A].quiescent


def test_followers_woken_after_the_leaders_agent_died_elect_a_new_leader() -> None:
    c = quiet_cluster(rng_seed=7)  # real jitter: the woken followers must not tie forever
    c.crash(A)
    c.run(60)
    assert not c.leaders()  # quiet followers do not notice on their own...
    c[B].wake()  # ...the host tells them when A's agent is unreachable
    c[C].wake()
    c.run(60)
    assert c.leaders() in ([B], [C])


def test_a_restarted_follower_wakes_a_quiet_leader() -> None:
    c = quiet_cluster()
    c.crash(B)
    c.restart(B)
    c.run(40)  # B times out and pre-votes; the quiet leader wakes and heartbeats
    assert c[B].leader == A
    assert c.leaders() == [A]
    assert any(isinstance(msg, m.Heartbeat) and not msg.quiesce for msg in c.sent[-20:])


def test_a_lost_quiesce_heartbeat_only_delays_quiet() -> None:
    c = Cluster(opts=QUIET)
    c.elect(A)
    c.propose(A, "x")
    c.run(5, drop=lambda msg: isinstance(msg, m.Heartbeat) and msg.quiesce and msg.to == C)
    assert c[A].quiescent and not c[C].quiescent
    c.run(40)  # C times out, pre-votes, wakes A; in the end everyone is quiet again
    assert c.leaders() == [A]
    c.run(20)
    assert all(c[r].quiescent for r in (A, B, C))


def test_late_acks_of_the_quiesce_round_grant_no_lease_on_waking() -> None:
    # Simulator seed 314: the acks of the quiesce heartbeat arrived after the
    # leader went quiet and set a lease measured in ticks that had stopped; cut
    # off, then woken by a read, it answered from its lease a value a new
    # majority had already overwritten.
    c = Cluster(opts=QUIET)
    c.elect(A)
    c.propose(A, "x")
    late: list[m.Message] = []
    for _ in range(20):
        c.tick()
        c.deliver()
        late += c.take(lambda msg: isinstance(msg, m.HeartbeatResp) and msg.to == A)
        if c[A].quiescent:
            break
    c.deliver()  # the quiesce heartbeat reaches B and C, which answer
    late += c.take(lambda msg: isinstance(msg, m.HeartbeatResp) and msg.to == A)
    assert c[A].quiescent and late
    c.inject(*late)  # the answers arrive after A went quiet
    assert not c[A].lease_valid()
    c.isolate(A)
    c[A].read("stale?")
    assert c[A].read_index_now() is None  # no lease: ReadIndex needs a majority it cannot reach
    c.run(3)
    assert c.replicas[A].reads == []


def test_a_quiet_follower_told_to_campaign_keeps_its_election_timer() -> None:
    # A quiet replica that campaigns must tick again: were it to stay quiet,
    # a lost election would never be retried and the group could stay leaderless.
    c = quiet_cluster()
    c.crash(A)
    c[B].campaign()
    assert not c[B].quiescent
    c.process()

    def asked_by_b() -> int:
        return sum(1 for msg in c.sent if isinstance(msg, m.Vote | m.PreVote) and msg.frm == B)

    first = asked_by_b()
    c.run(40, drop=lambda msg: isinstance(msg, m.Vote | m.PreVote | m.VoteResp | m.PreVoteResp))
    assert asked_by_b() > first  # the lost election was tried again
    c.run(60)
    assert c.leaders() in ([B], [C])


def test_a_woken_leader_counts_a_voter_healthy_only_once_it_answers_again() -> None:
    # The host does not tick a quiet leader: its clock stands still, so a
    # follower that died meanwhile still looks just heard from. Removing a
    # live voter then would leave the dead one as half of the group.
    from raftfleet_agent.raft.errors import MembershipError
    from raftfleet_agent.raft.membership import ConfOp

    c = quiet_cluster()
    assert c[A].quiescent
    c.crash(C)  # no tick reaches the quiet leader meanwhile, as on the agent
    try:
        c[A].change_membership(ConfOp.REMOVE, B)  # {A, C}: C is dead
    except MembershipError as e:
        assert e.code == "would_lose_quorum"
    else:
        raise AssertionError("removed a live voter of a group whose other follower is dead")
    c.run(1)  # B answers the wake-up round; C cannot
    c[A].change_membership(ConfOp.REMOVE, C)
    c.run(1)
    assert c[A].config.voters == {A, B}


# -- past followers on unreachable agents ------------------------------------------


def quiet_past(*unreachable: str) -> Cluster:
    """A quiet cluster (A leads, "x" applied) whose host calls `unreachable` agents down."""
    gone = set(unreachable)
    c = Cluster(opts=options(quiesce_after_ticks=5, peer_unreachable=lambda _f, to: to in gone))
    c.elect(A)
    c.propose(A, "x")
    c.run(8)
    return c


def test_a_leader_with_a_dead_follower_stays_awake_without_a_reachability_view() -> None:
    c = Cluster(opts=QUIET)
    c.elect(A)
    c.crash(C)
    c.propose(A, "x")
    c.run(30)
    assert not c[A].quiescent  # C never answers: it cannot go quiet


def test_a_leader_goes_quiet_past_a_follower_on_an_unreachable_agent() -> None:
    # Otherwise every group with a replica on a dead agent heartbeats until the
    # agent is purged, or for ever when the purge waits for room.
    c = quiet_past("c")
    c.crash(C)
    c.propose(A, "y")  # C misses it
    c.run(8)
    assert c[A].quiescent and c[B].quiescent
    sent = len(c.sent)
    c.run(50)
    assert len(c.sent) == sent
    # Back, C times out, pre-votes, wakes A and is caught up.
    c.restart(C)
    c.run(40)
    assert c.state(C) == ["x", "y"] and c.leaders() == [A]


def test_the_quiesce_heartbeat_never_commits_past_what_a_follower_holds() -> None:
    # Simulator seeds 105 and 133: a follower behind (on an unreachable agent,
    # holding other entries at those indexes) got the leader's whole commit
    # index with the quiesce heartbeat and applied its own entries.
    c = quiet_past("c")
    c.isolate(C)
    c.propose(A, "y")
    c.run(8)
    assert c[A].quiescent
    match_c = c[A].progress[C].match
    quiet = [msg for msg in c.sent if isinstance(msg, m.Heartbeat) and msg.quiesce and msg.to == C]
    assert quiet and quiet[-1].commit <= match_c < c[A].commit


def test_a_quorum_must_have_answered_whatever_the_host_believes() -> None:
    # A leader woken from quiet has heard from nobody since: even when the host
    # calls every follower unreachable it must not fall quiet again (it would
    # lead for ever, with check-quorum never run).
    c = quiet_past("b", "c")
    assert c[A].quiescent
    c.isolate(A)
    c[A].wake()
    c.run(8)
    assert not c[A].quiescent


def wake_without(c: Cluster, r: object) -> None:
    """Wake the leader (a membership change needs answers heard awake), not `r`."""
    c[A].read("wake")
    c.run(1, drop=lambda msg: msg.to == r)
    assert not c[A].quiescent and c[r].quiescent  # type: ignore[index]


def test_a_quiet_follower_whose_removal_notice_was_lost_is_told_again() -> None:
    # The leader stops replicating to a replica when it appends its removal:
    # the notice sent on commit is all it hears. A quiet follower that lost
    # it never times out, and followed the old leader for good.
    c = quiet_cluster()
    wake_without(c, C)
    c[A].change_membership(ConfOp.REMOVE, C)
    lost: list[m.Message] = []

    def lose_the_first(msg: m.Message) -> bool:
        if isinstance(msg, m.Removed) and msg.to == C and not lost:
            lost.append(msg)
            return True
        return False

    c.run(3, drop=lose_the_first)
    assert lost and c[A].config.voters == {A, B}
    c.run(10)
    assert c.replicas[C].gone
    told = sum(1 for msg in c.sent if isinstance(msg, m.Removed) and msg.to == C)
    c.run(40)  # the notices stop, and the group goes quiet again
    assert sum(1 for msg in c.sent if isinstance(msg, m.Removed) and msg.to == C) == told
    assert c[A].quiescent and c[B].quiescent


def test_a_replica_added_back_is_not_told_it_was_removed() -> None:
    c = quiet_cluster()
    wake_without(c, C)
    c[A].change_membership(ConfOp.REMOVE, C)
    c.run(1, drop=lambda msg: isinstance(msg, m.Removed))  # C misses every notice so far
    assert c[A].config.voters == {A, B} and not c.replicas[C].gone
    c[A].change_membership(ConfOp.ADD_LEARNER, C)
    c.run(20)
    assert not c.replicas[C].gone
    assert c[C].config.learners == {C}
