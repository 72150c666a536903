"""One hosted replica: the Raft member, its state machine, and who waits on it.

Waiters are resolved by the loop when entries are applied or reads become
answerable; nothing here awaits.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable

import attrs
import msgpack
import trio

from raftfleet_agent.raft.codec import decode_replica, encode_replica
from raftfleet_agent.raft.member import RaftMember
from raftfleet_agent.raft.types import Entry, ReplicaId
from raftfleet_agent.statemachine import Applier, ApplyResult
from raftfleet_agent.statemachine.applier import SnapshotJob

logger = logging.getLogger("raftfleet.host")


class ReplicaGone(Exception):
    """The replica stopped (removed from its group, or deleted) while a request waited."""


class LostLeadership(Exception):
    """The entry or read was superseded: this replica is (or was) not the leader any more."""


class Expired(Exception):
    """The request's deadline passed before it was answered (its outcome is unknown)."""


@attrs.define(eq=False)
class Waiter:
    """A request waiting for the loop; `result` is an ApplyResult or an exception.

    Whoever waits either awaits `event` (a task per request) or sets `on_done`,
    which the loop calls when the result is in (no task at all: the control
    server's fast path, where a task and an Event per request cost more than
    the replication itself).
    """

    result: object = None
    resolved: bool = False
    on_done: Callable[[Waiter], None] | None = None
    event: trio.Event | None = None
    # For the commit-latency histogram (monotonic seconds): proposal to answer.
    created_s: float = attrs.Factory(time.monotonic)
    resolved_s: float = 0.0

    def resolve(self, result: object) -> None:
        if self.resolved:
            return
        self.resolved = True
        self.result = result
        self.resolved_s = time.monotonic()
        if self.event is not None:
            self.event.set()
        on_done, self.on_done = self.on_done, None
        if on_done is not None:
            # Dropped first: the loop keeps resolved waiters until its next
            # deadline sweep, and the callback holds the whole request (its
            # arguments, its connection's reply slot). Freed here, one at a
            # time, instead of thousands at once in that sweep.
            try:
                on_done(self)
            except Exception:
                # A reply that cannot be delivered must never stop the loop.
                logger.exception("a request's completion callback failed")

    async def wait(self) -> None:
        if not self.resolved:
            self.event = trio.Event()
            await self.event.wait()


@attrs.frozen
class ReplicaMeta:
    """What the store keeps about a replica besides its log: enough to rebuild it."""

    replica: ReplicaId
    data_type: str

    def encode(self) -> bytes:
        return msgpack.packb(
            {"v": 1, "replica": encode_replica(self.replica), "type": self.data_type}
        )

    @classmethod
    def decode(cls, raw: bytes) -> ReplicaMeta:
        d = msgpack.unpackb(raw, raw=False)
        return cls(decode_replica(d["replica"]), str(d["type"]))


class Replica:
    __slots__ = (
        "_read_ids",
        "applier",
        "batch_avg",
        "created_s",
        "group",
        "known_leader",
        "leader_since_s",
        "log_bytes",
        "member",
        "meta",
        "proposals",
        "reads_pending",
        "reads_ready",
        "snapshot_bytes",
        "snapshot_job",
        "stopped",
    )

    def __init__(self, group: str, member: RaftMember, applier: Applier, data_type: str) -> None:
        self.group = group
        self.member = member
        self.applier = applier
        self.meta = ReplicaMeta(member.id, data_type)
        self.proposals: dict[int, tuple[int, Waiter]] = {}  # index -> (term, waiter)
        self._read_ids = itertools.count(1)
        self.reads_pending: dict[int, tuple[object, Waiter]] = {}  # ctx -> (query arg, waiter)
        self.reads_ready: list[tuple[int, object, Waiter]] = []  # (index, arg, waiter)
        self.stopped = False
        self.known_leader: ReplicaId | None = None  # the leader last reported to the router
        self.leader_since_s = time.monotonic()  # when known_leader last changed (wall clock:
        # a quiescent replica's ticks stop)
        self.created_s = self.leader_since_s  # created or loaded by this process
        self.batch_avg = 1.0  # running mean of entries per Ready that had any (the loop's)
        self.snapshot_bytes = 0  # size of the last snapshot taken or restored (the loop's)
        self.log_bytes = 0  # size of the entries applied past the log's offset (see apply)
        self.snapshot_job: SnapshotJob | None = None  # a snapshot being packed (the loop's)

    def propose(self, data: object) -> Waiter:
        index = self.member.propose(data)
        w = Waiter()
        self.proposals[index] = (self.member.term, w)
        return w

    def read(self, arg: object) -> Waiter:
        ctx = next(self._read_ids)
        self.member.read(ctx)
        w = Waiter()
        self.reads_pending[ctx] = (arg, w)
        return w

    def apply(self, entry: Entry) -> None:
        result = self.applier.apply(entry)
        self.log_bytes += entry_bytes(entry)
        waiting = self.proposals.pop(entry.index, None)
        if waiting is None:
            return
        term, w = waiting
        if term == entry.term and result is not None:
            w.resolve(result)
        else:
            w.resolve(LostLeadership(f"entry {entry.index} was replaced by a newer leader"))

    def read_ready(self, ctx: object, index: int) -> None:
        pending = self.reads_pending.pop(ctx, None)  # type: ignore[call-overload]
        if pending is not None:
            self.reads_ready.append((index, *pending))

    def read_failed(self, ctx: object) -> None:
        pending = self.reads_pending.pop(ctx, None)  # type: ignore[call-overload]
        if pending is not None:
            pending[1].resolve(LostLeadership("leadership changed before the read was confirmed"))

    def answer_reads(self) -> None:
        applied = self.applier.applied_index
        if not self.reads_ready:
            return
        still = []
        for index, arg, w in self.reads_ready:
            if index <= applied:
                w.resolve(self.applier.query(arg))
            else:
                still.append((index, arg, w))
        self.reads_ready = still

    def fail_proposals_above(self, index: int) -> None:
        """Proposals past `index` will never be answered by this replica's term."""
        for i in [i for i in self.proposals if i > index]:
            self.proposals.pop(i)[1].resolve(LostLeadership("leadership changed"))

    def stop(self, why: str) -> None:
        self.stopped = True
        for _term, w in self.proposals.values():
            w.resolve(ReplicaGone(why))
        for _arg, w in self.reads_pending.values():
            w.resolve(ReplicaGone(why))
        for _i, _arg, w in self.reads_ready:
            w.resolve(ReplicaGone(why))
        self.proposals.clear()
        self.reads_pending.clear()
        self.reads_ready.clear()


# What an entry whose data is not bytes (NOOP, CONFIG, a command stored
# before commands were kept encoded) counts for in `Replica.log_bytes`.
ENTRY_BYTES_DEFAULT = 64


def entry_bytes(entry: Entry) -> int:
    """The size an entry counts for when weighing the log against a snapshot."""
    data = entry.data
    return len(data) if type(data) is bytes else ENTRY_BYTES_DEFAULT


def is_result(value: object) -> bool:
    return isinstance(value, ApplyResult)
