"""A simulated host for one replica: its disk, its state machine, its Ready loop.

The disk keeps only what a Ready handed over and the host persisted; a crash
loses the Ready in progress (whose early messages may already be out) and
everything in memory, exactly as a kill -9 would.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import attrs
import msgpack

from raftfleet_agent.raft.member import RaftMember, RaftOptions
from raftfleet_agent.raft.messages import Message
from raftfleet_agent.raft.ready import Ready
from raftfleet_agent.raft.types import (
    Config,
    Entry,
    EntryKind,
    HardState,
    ReadState,
    ReplicaId,
    Snapshot,
)


@attrs.define
class Disk:
    hard_state: HardState = attrs.Factory(HardState)
    snapshot: Snapshot | None = None
    entries: list[Entry] = attrs.Factory(list)

    def persist(self, rd: Ready) -> None:
        for snap in (rd.snapshot, rd.compacted):
            if snap is not None and (
                self.snapshot is None or snap.meta.index >= self.snapshot.meta.index
            ):
                self.snapshot = snap
                self.entries = [e for e in self.entries if e.index > snap.meta.index]
        if rd.entries:
            first = rd.entries[0].index
            self.entries = [e for e in self.entries if e.index < first]
            self.entries.extend(rd.entries)
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state

    def newest_config(self) -> tuple[int, int, Config] | None:
        """(index, term, configuration) of the newest configuration on this disk."""
        for e in reversed(self.entries):
            if e.kind is EntryKind.CONFIG:
                return e.index, e.term, e.data  # type: ignore[return-value]
        if self.snapshot is not None:
            meta = self.snapshot.meta
            return meta.index, meta.term, meta.config
        return None


class CounterMachine:
    """The seed's counter with exactly-once commands: the state includes the dedup table.

    A command is `[client, seq, op]` with op "inc" or ["set", n]; a retried
    (client, seq) returns the first reply without applying again.
    """

    def __init__(self) -> None:
        self.value = 0
        self.replies: dict[tuple[str, int], int] = {}
        self.applied = 0

    def apply(self, entry: Entry) -> tuple[int | None, bool]:
        """(reply, whether it took effect) for a command; (None, False) otherwise."""
        self.applied = entry.index
        if entry.kind is not EntryKind.NORMAL:
            return None, False
        client, seq, op = entry.data  # type: ignore[misc]
        key = (client, seq)
        if key in self.replies:
            return self.replies[key], False
        old = self.value
        self.value = old + 1 if op == "inc" else op[1]
        self.replies[key] = old
        return old, True

    def snapshot(self) -> bytes:
        return msgpack.packb([self.value, [[c, s, r] for (c, s), r in self.replies.items()]])

    def restore(self, data: bytes, index: int) -> None:
        self.value, self.replies = 0, {}
        if data:
            self.value, rows = msgpack.unpackb(data)
            self.replies = {(c, s): r for c, s, r in rows}
        self.applied = index


@attrs.define
class PendingRead:
    state: ReadState
    client: int


class SimNode:
    """Host behaviour around one RaftMember, with hooks the checker observes."""

    def __init__(
        self,
        replica: ReplicaId,
        *,
        factory: Callable[..., RaftMember],
        options: RaftOptions,
        seed: int,
        on_apply: Callable[[SimNode, Entry, int | None, bool], None],
        on_read: Callable[[SimNode, PendingRead], None],
        send: Callable[[Message], None],
        compact_every: int,
        on_removed: Callable[[SimNode, RaftMember], None] | None = None,
    ) -> None:
        self.id = replica
        self.factory = factory
        self.options = options
        self.rng = random.Random(seed)
        self.disk = Disk()
        self.member: RaftMember | None = None
        self.sm = CounterMachine()
        self.inflight: Ready | None = None
        self.reads: list[PendingRead] = []
        self.on_apply = on_apply
        self.on_read = on_read
        self.on_removed = on_removed
        self.send = send
        self.compact_every = compact_every
        self.skip_tick_until = 0
        self.paused_at = 0
        self.paused_until = 0  # non-zero while the process is frozen
        self.deferred: list[Callable[[], None]] = []  # client requests waiting for a resume
        self.gone = False  # removed from the group and stopped for good
        # Half the nodes apply committed entries as soon as the Ready is taken,
        # before the disk write, as the agent does (ready.py allows it). From the
        # seed already drawn: no new draw, so every seed's run stays the same.
        self.apply_early = seed & 1 == 1
        self._applied_early = False
        # Half the nodes (another bit of the same seed) advance a Ready that
        # needs no sync at once, as the agent does for groups serving one
        # request at a time: its write (a commit index) reaches the disk with
        # the next write, or is lost if the node crashes first.
        self.advance_unsynced = seed & 2 == 2
        self.unsynced: list[Ready] = []  # taken and advanced, not on the disk yet
        self.advanced_unsynced = 0  # how often (the summary shows the path is taken)

    @property
    def alive(self) -> bool:
        return self.member is not None

    def start(self, member: RaftMember) -> None:
        self.member = member

    def crash(self) -> None:
        self.member = None
        self.paused_until = 0
        self.deferred = []
        self.inflight = None
        self.reads = []
        self.unsynced = []

    def restart(self) -> None:
        d = self.disk
        self.sm = CounterMachine()
        if d.snapshot is not None:
            self.sm.restore(d.snapshot.data, d.snapshot.meta.index)
        self.member = self.factory(
            self.id,
            options=self.options,
            rng=random.Random(self.rng.random()),
            hard_state=d.hard_state,
            snapshot=d.snapshot,
            entries=tuple(d.entries),
        )

    def begin_ready(self) -> bool:
        """Take a Ready; its early messages leave at once, the rest waits for the disk."""
        m = self.member
        if m is not None and self.inflight is not None and self._applied_early:
            # As the agent does: what followers commit while our Ready waits
            # for the disk is applied at once (RaftMember.take_committed).
            self._apply_entries(m.take_committed())
            self._answer_reads()
        if m is None or self.inflight is not None or not m.has_ready():
            return False
        rd = m.ready()
        for msg in rd.early_messages:
            self.send(msg)
        self.inflight = rd
        self._applied_early = self.apply_early and rd.snapshot is None
        if self._applied_early:
            self._apply(rd)
        if self.advance_unsynced and not rd.sync and not rd.removed:
            self.finish_ready(durable=False)
        return True

    def _apply(self, rd: Ready) -> None:
        self._apply_entries(rd.committed)

    def _apply_entries(self, entries: tuple[Entry, ...]) -> None:
        for e in entries:
            reply, effective = self.sm.apply(e)
            self.on_apply(self, e, reply, effective)

    def finish_ready(self, durable: bool = True) -> None:
        """The disk write completed: send, apply, answer, advance.

        `durable=False`: the write was only handed over (a Ready that needs no
        sync); it is persisted before the next durable one, in order.
        """
        rd, m = self.inflight, self.member
        if rd is None or m is None:
            return
        self.inflight = None
        if durable:
            for earlier in self.unsynced:
                self.disk.persist(earlier)
            self.unsynced = []
            self.disk.persist(rd)
        else:
            self.unsynced.append(rd)
            self.advanced_unsynced += 1
        for msg in rd.messages:
            self.send(msg)
        if rd.snapshot is not None:
            self.sm.restore(rd.snapshot.data, rd.snapshot.meta.index)
        if not self._applied_early:
            self._apply(rd)
        self.reads.extend(PendingRead(r, r.ctx) for r in rd.reads)  # type: ignore[arg-type]
        m.advance(rd)
        self._answer_reads()
        if rd.removed:
            if self.on_removed is not None:
                self.on_removed(self, m)
            self.gone = True
            self.member = None
            return
        if self.sm.applied - m.log.offset >= self.compact_every:
            m.compact(self.sm.applied, self.sm.snapshot())

    def _answer_reads(self) -> None:
        ready = [r for r in self.reads if r.state.index <= self.sm.applied]
        self.reads = [r for r in self.reads if r.state.index > self.sm.applied]
        for r in ready:
            self.on_read(self, r)
