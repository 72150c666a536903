"""Log replication mechanics: batching, pipelining, fast backtracking, durability of acks."""

from __future__ import annotations

from raftfleet_agent.raft import messages as m
from raftfleet_agent.raft.member import Role

from .harness import A, B, C, Cluster, assert_applied_agree, is_msg, log_of, options


def test_many_proposals_in_one_turn_make_one_append_per_follower() -> None:
    c = Cluster()
    c.elect(A)
    for k in range(10):
        c[A].propose(k)
    c.process()
    appends = c.peek(is_msg(m.Append))
    assert sorted(msg.to for msg in appends) == [B, C]
    assert all([e.data for e in msg.entries] == list(range(10)) for msg in appends)
    assert len(c.replicas[A].readys[-1].entries) == 10  # one disk write for the batch too
    c.stabilize()
    c.run(1)  # B learns the commit index from the next heartbeat
    assert c.state(B) == list(range(10))


def test_pipelining_keeps_several_appends_in_flight() -> None:
    c = Cluster(opts=options(max_append_entries=2, max_inflight=3))
    c.elect(A)
    for k in range(10):
        c[A].propose(k)
    c.process()
    to_b = c.peek(is_msg(m.Append, to=B))
    assert [[e.index for e in msg.entries] for msg in to_b] == [[2, 3], [4, 5], [6, 7]]
    assert c[A].progress[B].state.value == "replicate"
    # Window full: nothing more until an acknowledgement frees a slot.
    c[A].propose("more")
    c.process()
    assert len(c.peek(is_msg(m.Append, to=B))) == 3
    c.stabilize()
    c.run(1)
    assert c.state(B) == [*range(10), "more"]


def test_stale_rejection_does_not_undo_a_newer_acknowledgement() -> None:
    c = Cluster(opts=options(max_append_entries=1))
    c.elect(A)
    c.propose(A, "x")
    match_before = c[A].progress[B].match
    assert match_before == 2
    # A delayed rejection of an old probe (prev_index 0) with a hint back to the start.
    c.inject(m.AppendResp(frm=B, to=A, term=1, success=False, index=0, hint_index=0))
    assert c[A].progress[B].match == 2 and c[A].progress[B].next == 3
    assert c[A].progress[B].state.value == "replicate"


def test_fast_backtracking_repairs_a_long_conflicting_suffix_in_few_round_trips() -> None:
    c = Cluster()
    c.elect(A)
    for k in range(4):
        c.propose(A, k)
    # A, cut off, appends 50 entries nobody else will ever have.
    c.isolate(A)
    for k in range(50):
        c[A].propose(f"lost{k}")
    c.process()
    c.take()
    c.expire_leases(B, C)
    c.elect(B)
    for k in range(50):
        c[B].propose(f"b{k}")
    c.stabilize()
    # C takes over (transfer), so its progress for A starts at its own last index.
    c[B].transfer_leadership(C)
    c.stabilize()
    assert c[C].role is Role.LEADER and c[C].term == 3 and c[C].log.last_index == 57
    mark = len(c.sent)
    c.heal()
    c.run(3)
    rejections = [
        msg
        for msg in c.sent[mark:]
        if isinstance(msg, m.AppendResp) and msg.frm == A and not msg.success
    ]
    # One rejection with a hint skips the whole conflicting term (50 entries).
    assert 1 <= len(rejections) <= 2, rejections
    assert (rejections[0].hint_index, rejections[0].hint_term) == (55, 1)
    assert log_of(c[A]) == log_of(c[C])
    assert c.state(A) == [0, 1, 2, 3, *(f"b{k}" for k in range(50))]
    assert_applied_agree(c)


def test_follower_acknowledges_only_after_persisting() -> None:
    c = Cluster()
    c.elect(A)
    c.hold_disk(B)
    c[A].propose("x")
    c.deliver()  # B gets the append but its disk is slow
    assert not c.peek(is_msg(m.AppendResp, frm=B))
    assert [e.index for e in c.replicas[B].disk.entries] == [1]
    rd = c.replicas[B].held
    assert rd is not None and [e.index for e in rd.entries] == [2]
    acks = [msg for msg in rd.messages if isinstance(msg, m.AppendResp)]
    assert acks and acks[0].index == 2
    assert not any(isinstance(msg, m.AppendResp) for msg in rd.early_messages)
    c.release_disk(B)
    assert [e.index for e in c.replicas[B].disk.entries] == [1, 2]
    assert c.peek(is_msg(m.AppendResp, frm=B))


def test_follower_crash_before_persisting_never_acknowledged() -> None:
    c = Cluster()
    c.elect(A)
    c.hold_disk(B)
    c.hold_disk(C)
    c[A].propose("x")
    c.deliver()
    c.crash(B)
    c.crash(C)
    c.stabilize()
    assert c[A].commit == 1  # nothing durable anywhere else: not committed
    c.restart(B)
    assert c[B].log.last_index == 1


def test_leader_counts_only_its_own_persisted_entries() -> None:
    c = Cluster()
    c.elect(A)
    c.hold_disk(A)
    c[A].propose("x")
    c.process()  # A's appends leave early (they depend on nothing unpersisted)
    c.stabilize(drop=is_msg(m.Append, to=C))
    assert c[A].progress[B].match == 2
    assert c[A].log.persisted == 1
    assert c[A].commit == 1  # B plus an unpersisted leader is not a majority
    c.release_disk(A)
    assert c[A].commit == 2
    c.stabilize()
    assert c.state(A) == ["x"]


def test_followers_commit_while_the_leaders_ready_is_out_and_it_is_taken_once() -> None:
    c = Cluster()
    c.elect(A)
    assert c[A].take_committed() == ()  # no Ready out: the Ready hands entries out
    c.hold_disk(A)
    c[A].propose("x")
    c.process()  # A's Ready (entry 2) waits for the disk; its appends are out
    c.stabilize()
    assert c[A].log.persisted == 1 and c[A].commit == 2  # B and C durable: a majority
    assert c.replicas[A].held is not None
    taken = c[A].take_committed()
    assert [(e.index, e.data) for e in taken] == [(2, "x")]
    assert c[A].take_committed() == ()  # handed out once
    c.release_disk(A)
    later = [e.index for rd in c.replicas[A].readys for e in rd.committed]
    assert 2 not in later  # no Ready hands entry 2 out again
    assert c[A].applied == 2


def test_nothing_is_taken_early_while_a_snapshot_waits_to_be_restored() -> None:
    c = Cluster()
    c.elect(A)
    c.isolate(C)
    for k in range(3):
        c.propose(A, k)
    c.compact(A)  # C, far behind, can only be sent a snapshot
    c.heal()
    for _ in range(20):
        if c.peek(is_msg(m.InstallSnapshot, to=C)):
            break
        c.tick()
        c.deliver(lambda msg: not isinstance(msg, m.InstallSnapshot))
    c.hold_disk(C)
    c.deliver(is_msg(m.InstallSnapshot, to=C))  # the Ready installing it waits for C's disk
    held = c.replicas[C].held
    assert held is not None and held.snapshot is not None
    c[A].propose("after")
    c.process()
    (entry,) = c.replicas[A].readys[-1].entries
    # As a pipelined append would: "after" lands behind the snapshot, committed.
    c[C].step(m.Append(frm=A, to=C, term=1, prev_index=4, prev_term=1, entries=(entry,), commit=5))
    assert c[C].commit == 5 and held.snapshot.meta.index == 4
    assert c[C].take_committed() == ()  # the state machine is not at the snapshot yet
    c.release_disk(C)
    c.run(2)
    assert c.state(C) == [0, 1, 2, "after"]


def test_leader_appends_are_early_messages_but_not_its_votes() -> None:
    c = Cluster()
    c.expire_leases(A, B, C)
    c[A].campaign()
    c.process()
    rd = c.replicas[A].readys[-1]
    assert rd.hard_state is not None and rd.hard_state.term == 1
    assert {type(msg) for msg in rd.messages} == {m.Vote} and not rd.early_messages
    c.stabilize()
    assert c[A].role is Role.LEADER
    c[A].propose("x")
    c.process()
    rd = c.replicas[A].readys[-1]
    assert {type(msg) for msg in rd.early_messages} == {m.Append} and not rd.messages


def test_duplicated_and_reordered_appends_lose_nothing() -> None:
    c = Cluster(opts=options(max_append_entries=1))
    c.elect(A)
    for k in range(5):
        c[A].propose(k)
    c.process()
    to_b = c.take(is_msg(m.Append, to=B))
    c.inject(*reversed(to_b))  # out of order: later ones are rejected, none truncates
    c.inject(*to_b)
    c.inject(*to_b)  # duplicates
    assert [e.data for e in c[B].log.entries[1:]] == list(range(5))
    c.stabilize()
    c.run(2)
    assert c.state(B) == list(range(5))
    assert_applied_agree(c)


def test_only_a_ready_that_writes_more_than_the_commit_index_must_be_synced() -> None:
    # etcd's MustSync: entries, a snapshot, a term or a vote must be durable
    # before the Ready is advanced; a commit index alone is learned again
    # from the leader, so a host may advance without waiting for its write.
    c = Cluster()
    c.elect(A)
    first = len(c.replicas[A].readys)
    c[A].propose("x")
    c.stabilize()
    mine = c.replicas[A].readys[first:]
    with_entries = [rd for rd in mine if rd.entries]
    assert with_entries and all(rd.sync for rd in with_entries)
    commit_only = [rd for rd in mine if rd.hard_state is not None and not rd.entries]
    assert commit_only, "the leader writes its new commit index"
    assert all(not rd.sync for rd in commit_only)
    assert commit_only[-1].hard_state.commit == c[A].commit  # type: ignore[union-attr]
    # A new term (and the vote that comes with it) must be synced, entries or not.
    before = len(c.replicas[B].readys)
    c[B].campaign()
    c.process()
    votes = [rd for rd in c.replicas[B].readys[before:] if rd.hard_state is not None]
    assert votes and votes[0].hard_state.term > 1 and votes[0].sync  # type: ignore[union-attr]
