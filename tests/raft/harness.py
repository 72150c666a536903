"""A scripted, in-memory network of `RaftMember` replicas for readable core tests.

Think h11's `ConnectionPair` or etcd's interaction tests: the test decides
every tick, every delivery and every crash. Each replica has a fake disk that
receives exactly what its Readys hand over (in the order `ready.py` demands:
persist, then send `messages`, then apply), so a crash loses only what a real
kill -9 would lose.

Deterministic by default: election timeouts are fixed at their maximum
(`2 * election_ticks - 1`, see `MaxRng`), so nobody campaigns unless the test
says `campaign` or ticks that long. Pass `rng_seed=` to get real jitter.

Vocabulary:
- `tick(n, *ids)`: n ticks of logical time (all live replicas by default),
  handling Readys after each; messages stay queued until delivered.
- `deliver(...)`: hand queued messages to their receivers (optionally only the
  ones a predicate selects; `drop=` discards some), then handle Readys.
- `stabilize()`: deliver until the network is quiet.
- `isolate`/`partition`/`heal`: cut links; cut messages are dropped on delivery.
- `hold_disk(id)`/`release_disk(id)`: a slow disk; the Ready's early messages
  leave at once, the rest waits for the write.
- `crash(id)`/`restart(id)`: lose memory, rebuild from the fake disk.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

import attrs
import msgpack

from raftfleet_agent.raft import messages as m
from raftfleet_agent.raft.member import RaftMember, RaftOptions, Role
from raftfleet_agent.raft.ready import Ready
from raftfleet_agent.raft.types import (
    Config,
    Entry,
    EntryKind,
    ReadState,
    ReplicaId,
    Snapshot,
)
from raftfleet_agent.sim.node import Disk as SimDisk

A, B, C, D, E = (ReplicaId(name, 1) for name in "abcde")
ALL = (A, B, C, D, E)

MsgFilter = Callable[[m.Message], bool]


class MaxRng(random.Random):
    """Every `randrange(n)` returns n - 1: election timeouts are always 2E - 1."""

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:  # type: ignore[override]
        return (start if stop is None else stop) - 1


def options(**kw: object) -> RaftOptions:
    base: dict[str, object] = {"election_ticks": 10, "heartbeat_ticks": 1, "lease_drift_ticks": 2}
    base.update(kw)
    return RaftOptions(**base)  # type: ignore[arg-type]


def is_msg(
    cls: type[m.Message] | tuple[type[m.Message], ...] | None = None,
    *,
    frm: ReplicaId | None = None,
    to: ReplicaId | None = None,
) -> MsgFilter:
    """A message predicate: `is_msg(m.Append, to=B)`."""

    def pred(msg: m.Message) -> bool:
        return (
            (cls is None or isinstance(msg, cls))
            and (frm is None or msg.frm == frm)
            and (to is None or msg.to == to)
        )

    return pred


@attrs.define
class Disk(SimDisk):
    """What a replica's store would hold (the simulator's disk), counting writes."""

    writes: int = 0

    def persist(self, rd: Ready) -> None:
        if rd.must_persist:
            self.writes += 1
            super().persist(rd)


@attrs.define(eq=False)
class Replica:
    """A host for one replica: fake disk, a list-of-commands state machine, read answers."""

    id: ReplicaId
    member: RaftMember | None
    disk: Disk = attrs.Factory(Disk)
    state: list[object] = attrs.Factory(list)  # the state machine: NORMAL commands in order
    applied: list[Entry] = attrs.Factory(list)  # every committed entry handed to us (any kind)
    reads: list[ReadState] = attrs.Factory(list)
    failed_reads: list[object] = attrs.Factory(list)
    readys: list[Ready] = attrs.Factory(list)  # every Ready taken, for assertions
    held: Ready | None = None  # a Ready whose disk write has not completed
    hold: bool = False
    gone: bool = False  # removed from the group and stopped

    @property
    def alive(self) -> bool:
        return self.member is not None

    def restore(self, snap: Snapshot) -> None:
        self.state = list(msgpack.unpackb(snap.data)) if snap.data else []


class Cluster:
    def __init__(
        self,
        voters: Iterable[ReplicaId] = (A, B, C),
        *,
        learners: Iterable[ReplicaId] = (),
        opts: RaftOptions | None = None,
        rng_seed: int | None = None,
        member_cls: type[RaftMember] = RaftMember,
    ) -> None:
        self.opts = opts or options()
        self.rng_seed = rng_seed
        self.member_cls = member_cls
        self.config = Config(frozenset(voters), frozenset(learners))
        self.replicas: dict[ReplicaId, Replica] = {}
        self.queue: list[m.Message] = []  # in flight, in send order
        self.sent: list[m.Message] = []  # everything ever sent
        self.cut: set[frozenset[ReplicaId]] = set()
        self._rng_n = 0
        for r in sorted(self.config.members):
            member = member_cls.bootstrap(r, self.config, options=self.opts, rng=self._rng())
            self.replicas[r] = Replica(r, member)
        self.process()

    # ------------------------------------------------------------ access

    def _rng(self) -> random.Random:
        self._rng_n += 1
        if self.rng_seed is None:
            return MaxRng()
        return random.Random(self.rng_seed * 1000 + self._rng_n)

    def __getitem__(self, r: ReplicaId) -> RaftMember:
        member = self.replicas[r].member
        assert member is not None, f"{r} is down"
        return member

    def leaders(self) -> list[ReplicaId]:
        return [
            r
            for r, rep in self.replicas.items()
            if rep.member is not None and rep.member.role is Role.LEADER
        ]

    def leader(self) -> ReplicaId:
        (lead,) = self.leaders()
        return lead

    def state(self, r: ReplicaId) -> list[object]:
        return self.replicas[r].state

    # ------------------------------------------------------------ Readys

    def handle_ready(self, r: ReplicaId) -> Ready | None:
        rep = self.replicas[r]
        member = rep.member
        if member is None or rep.held is not None or not member.has_ready():
            return None
        rd = member.ready()
        rep.readys.append(rd)
        self._send_all(rd.early_messages)
        rep.held = rd
        if not rep.hold:
            self._finish(rep)
        return rd

    def _finish(self, rep: Replica) -> None:
        rd, member = rep.held, rep.member
        assert rd is not None and member is not None
        rep.held = None
        rep.disk.persist(rd)
        self._send_all(rd.messages)
        if rd.snapshot is not None:
            rep.restore(rd.snapshot)
        for e in rd.committed:
            rep.applied.append(e)
            if e.kind is EntryKind.NORMAL:
                rep.state.append(e.data)
        rep.reads.extend(rd.reads)
        rep.failed_reads.extend(rd.failed_reads)
        member.advance(rd)
        if rd.removed:
            rep.gone = True
            rep.member = None

    def process(self) -> None:
        """Handle Readys until no replica has one (held disks excepted)."""
        progress = True
        while progress:
            progress = False
            for r in sorted(self.replicas):
                if self.handle_ready(r) is not None:
                    progress = True

    def _send_all(self, msgs: Iterable[m.Message]) -> None:
        for msg in msgs:
            self.sent.append(msg)
            self.queue.append(msg)

    # ------------------------------------------------------------ time and network

    def tick(self, n: int = 1, *ids: ReplicaId) -> None:
        for _ in range(n):
            for r in sorted(ids or self.replicas):
                rep = self.replicas[r]
                if rep.member is not None:
                    rep.member.tick()
            self.process()

    def take(self, pred: MsgFilter | None = None) -> list[m.Message]:
        """Remove matching messages from the network and return them (to inspect or replay)."""
        keep, taken = [], []
        for msg in self.queue:
            (taken if pred is None or pred(msg) else keep).append(msg)
        self.queue = keep
        return taken

    def peek(self, pred: MsgFilter | None = None) -> list[m.Message]:
        return [msg for msg in self.queue if pred is None or pred(msg)]

    def inject(self, *msgs: m.Message) -> None:
        """Step messages into their receivers directly (a replay, a forged or a delayed one)."""
        for msg in msgs:
            rep = self.replicas.get(msg.to)
            if rep is not None and rep.member is not None:
                rep.member.step(msg)
        self.process()

    def deliver(self, pred: MsgFilter | None = None, *, drop: MsgFilter | None = None) -> int:
        """Deliver the queued messages `pred` selects (all by default); returns how many.

        Pending Readys are handled first, so what was just proposed is on the wire.
        """
        self.process()
        batch = self.take(pred)
        n = 0
        for msg in batch:
            if drop is not None and drop(msg):
                continue
            if frozenset((msg.frm, msg.to)) in self.cut:
                continue
            rep = self.replicas.get(msg.to)
            if rep is None or rep.member is None:
                continue
            rep.member.step(msg)
            n += 1
        self.process()
        return n

    def stabilize(self, *, drop: MsgFilter | None = None, max_rounds: int = 200) -> None:
        for _ in range(max_rounds):
            self.process()
            if not self.queue:
                return
            self.deliver(drop=drop)
        raise AssertionError("network did not settle")

    def run(self, ticks: int, *, drop: MsgFilter | None = None) -> None:
        """`ticks` ticks, each followed by a full exchange of messages."""
        for _ in range(ticks):
            self.tick()
            self.stabilize(drop=drop)

    def isolate(self, r: ReplicaId) -> None:
        for other in self.replicas:
            if other != r:
                self.cut.add(frozenset((r, other)))

    def partition(self, *groups: Iterable[ReplicaId]) -> None:
        sets = [set(g) for g in groups]
        for i, g in enumerate(sets):
            for h in sets[i + 1 :]:
                for x in g:
                    for y in h:
                        self.cut.add(frozenset((x, y)))

    def heal(self) -> None:
        self.cut.clear()

    # ------------------------------------------------------------ disks and crashes

    def hold_disk(self, r: ReplicaId) -> None:
        self.replicas[r].hold = True

    def release_disk(self, r: ReplicaId) -> None:
        rep = self.replicas[r]
        rep.hold = False
        if rep.held is not None:
            self._finish(rep)
        self.process()

    def crash(self, r: ReplicaId) -> None:
        """kill -9: memory and any Ready not yet written are lost; queued messages to it too."""
        rep = self.replicas[r]
        rep.member = None
        rep.held = None
        rep.hold = False
        self.queue = [msg for msg in self.queue if msg.to != r]

    def restart(self, r: ReplicaId) -> RaftMember:
        rep = self.replicas[r]
        d = rep.disk
        rep.state = []
        if d.snapshot is not None:
            rep.restore(d.snapshot)
        rep.member = self.member_cls(
            r,
            options=self.opts,
            rng=self._rng(),
            hard_state=d.hard_state,
            snapshot=d.snapshot,
            entries=tuple(d.entries),
        )
        self.process()
        return rep.member

    def add_replica(self, r: ReplicaId) -> RaftMember:
        """A brand-new, empty replica (not in any configuration until the leader adds it)."""
        member = self.member_cls(r, options=self.opts, rng=self._rng())
        self.replicas[r] = Replica(r, member)
        return member

    # ------------------------------------------------------------ scripts

    def elect(self, r: ReplicaId) -> RaftMember:
        """`r` campaigns (no pre-vote) and the network settles; it must win."""
        self[r].campaign()
        self.stabilize()
        assert self[r].role is Role.LEADER, f"{r} did not win: {self[r].status()}"
        return self[r]

    def propose(self, r: ReplicaId, data: object, *, settle: bool = True) -> int:
        index = self[r].propose(data)
        if settle:
            self.stabilize()
        return index

    def compact(self, r: ReplicaId) -> None:
        """The host snapshots its state machine at its applied index."""
        member, rep = self[r], self.replicas[r]
        member.compact(member.applied, msgpack.packb(rep.state))
        self.process()

    def expire_leases(self, *ids: ReplicaId) -> None:
        """Tick `ids` one election timeout without delivering anything: their leader is stale."""
        self.tick(self.opts.election_ticks, *ids)
        self.take()


def entries_of(rep_log: Iterable[Entry]) -> list[tuple[int, int]]:
    """(index, term) pairs: the shape of a log, for comparing logs in assertions."""
    return [(e.index, e.term) for e in rep_log]


def log_of(member: RaftMember) -> list[tuple[int, int]]:
    return entries_of(member.log.entries)


def assert_applied_agree(cluster: Cluster) -> None:
    """State machine safety (§5.4.3): no two replicas applied different entries at an index."""
    seen: dict[int, tuple[ReplicaId, Entry]] = {}
    for r, rep in cluster.replicas.items():
        for e in rep.applied:
            first = seen.setdefault(e.index, (r, e))
            assert first[1] == e, f"index {e.index}: {first[0]} applied {first[1]}, {r} applied {e}"
