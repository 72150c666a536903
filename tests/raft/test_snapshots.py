"""Snapshots: compaction, chunked InstallSnapshot, stale snapshots, kept suffixes, membership."""

from __future__ import annotations

import msgpack

from raftfleet_agent.raft import messages as m
from raftfleet_agent.raft.member import RaftMember
from raftfleet_agent.raft.membership import ConfOp
from raftfleet_agent.raft.types import Config, Entry, HardState, Snapshot, SnapshotMeta

from .harness import A, B, C, Cluster, D, assert_applied_agree, is_msg, log_of, options


def lagging_follower(**kw: object) -> Cluster:
    """A leads; C misses 20 commands; A compacts them away."""
    c = Cluster(opts=options(snapshot_chunk_bytes=8, **kw))
    c.elect(A)
    c.isolate(C)
    for k in range(20):
        c.propose(A, f"cmd{k}")
    c.compact(A)
    assert c[A].log.offset == 21 and c.replicas[A].disk.snapshot.meta.index == 21  # type: ignore[union-attr]
    return c


def test_lagging_follower_gets_the_snapshot_in_chunks_and_catches_up() -> None:
    c = lagging_follower()
    c.heal()
    c.run(15)
    chunks = [msg for msg in c.sent if isinstance(msg, m.InstallSnapshot) and msg.to == C]
    data = c.replicas[A].disk.snapshot.data  # type: ignore[union-attr]
    assert len(chunks) == -(-len(data) // 8) and len(chunks) > 3
    assert [ch.offset for ch in chunks] == list(range(0, len(data), 8))
    assert chunks[-1].done and not any(ch.done for ch in chunks[:-1])
    assert c[C].log.offset == 21 and c.replicas[C].disk.snapshot.meta.index == 21  # type: ignore[union-attr]
    c.propose(A, "after")
    c.run(1)
    assert c.state(C) == c.state(A) == [*(f"cmd{k}" for k in range(20)), "after"]
    # And it survives a restart from its own disk.
    c.crash(C)
    c.restart(C)
    c.run(2)
    assert c.state(C) == c.state(A)
    assert_applied_agree(c)


def test_lost_chunk_is_resent() -> None:
    c = lagging_follower()
    c.heal()
    c.tick()
    c.stabilize(drop=lambda msg: isinstance(msg, m.InstallSnapshot) and msg.offset == 16)
    assert c[C].log.offset == 0
    c.run(15)
    assert c[C].log.offset == 21


def test_stale_or_duplicate_snapshot_is_ignored() -> None:
    c = lagging_follower()
    c.heal()
    c.run(15)
    chunks = [msg for msg in c.sent if isinstance(msg, m.InstallSnapshot) and msg.to == C]
    c.propose(A, "newer")
    c.run(1)
    before = (log_of(c[C]), c[C].commit, c[C].log.offset)
    n_readys = len(c.replicas[C].readys)
    c.inject(*chunks)  # the whole snapshot again, late
    assert (log_of(c[C]), c[C].commit, c[C].log.offset) == before
    assert all(rd.snapshot is None for rd in c.replicas[C].readys[n_readys:])
    resp = c.take(is_msg(m.InstallSnapshotResp, frm=C))
    assert resp and all(r.done and r.index == 21 for r in resp)


def test_entries_after_a_matching_snapshot_index_are_kept() -> None:
    config = Config(frozenset({A, B, C}))
    entries = tuple(Entry(1, i) for i in range(1, 11))
    follower = RaftMember(
        C,
        hard_state=HardState(1, A, 3),
        snapshot=Snapshot(SnapshotMeta(0, 0, config), b""),
        entries=entries,
    )
    meta = SnapshotMeta(5, 1, config)
    follower.step(m.InstallSnapshot(frm=A, to=C, term=1, meta=meta, offset=0, chunk=b"", done=True))
    assert follower.log.offset == 5
    assert [e.index for e in follower.log.entries] == [6, 7, 8, 9, 10]
    assert follower.commit == 5
    rd = follower.ready()
    assert rd.snapshot is not None and rd.snapshot.meta == meta
    assert rd.committed == ()  # 1..5 come from the snapshot, not from apply


def test_conflicting_entries_after_the_snapshot_index_are_dropped() -> None:
    config = Config(frozenset({A, B, C}))
    follower = RaftMember(
        C,
        hard_state=HardState(2, A, 0),
        snapshot=Snapshot(SnapshotMeta(0, 0, config), b""),
        entries=tuple(Entry(1, i) for i in range(1, 11)),
    )
    meta = SnapshotMeta(5, 2, config)  # our entry 5 has term 1: the log goes
    follower.step(m.InstallSnapshot(frm=A, to=C, term=2, meta=meta, offset=0, chunk=b"", done=True))
    assert (follower.log.offset, follower.log.last_index, follower.log.entries) == (5, 5, [])


def test_snapshot_carries_the_configuration() -> None:
    c = Cluster()
    c.elect(A)
    for k in range(5):
        c.propose(A, k)
    c.add_replica(D)
    c[A].change_membership(ConfOp.ADD_LEARNER, D)
    c.isolate(D)
    c.run(1)
    c.compact(A)  # the log, config entry included, is gone: D must get a snapshot
    learner_cfg = Config(frozenset({A, B, C}), frozenset({D}))
    assert c[A].snapshot.meta.config == learner_cfg  # type: ignore[union-attr]
    assert c[A].log.offset >= c[A].config_index
    assert c[D].config == Config()
    c.heal()
    c.run(12)
    assert any(isinstance(msg, m.InstallSnapshot) and msg.to == D for msg in c.sent)
    assert c[D].config == learner_cfg
    assert c.state(D) == [0, 1, 2, 3, 4]
    assert msgpack.unpackb(c.replicas[D].disk.snapshot.data) == [0, 1, 2, 3, 4]  # type: ignore[union-attr]
    c.crash(D)
    c.restart(D)
    assert c[D].config == learner_cfg  # from its stored snapshot


def test_compact_beyond_applied_is_refused() -> None:
    c = Cluster()
    c.elect(A)
    try:
        c[A].compact(c[A].applied + 1, b"")
    except ValueError:
        pass
    else:
        raise AssertionError("compact past applied accepted")


def test_idle_follower_after_a_snapshot_gets_heartbeats_only() -> None:
    """Regression: after InstallSnapshot the follower's progress stayed in PROBE.

    Every heartbeat answer then triggered another empty probe append, forever,
    until new entries arrived (etcd moves a probe answered at `match` to REPLICATE).
    """
    c = lagging_follower()
    c.heal()
    c.run(15)
    assert c[A].progress[C].match == c[A].log.last_index
    assert c[A].progress[C].state.value == "replicate"
    mark = len(c.sent)
    c.run(5)
    assert not [msg for msg in c.sent[mark:] if isinstance(msg, m.Append) and msg.to == C]
