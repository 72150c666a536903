"""Values shared by the consensus core, the store and the host.

This module does no I/O. Every value here is immutable, so a `Ready` handed to
the host can be persisted on another thread while the core moves on.
"""

from __future__ import annotations

import enum
from typing import NamedTuple, NewType

import attrs

Term = NewType("Term", int)
Index = NewType("Index", int)
GroupName = NewType("GroupName", str)
AgentName = NewType("AgentName", str)


class ReplicaId(NamedTuple):
    """One replica of one group: the agent hosting it and a per-agent number.

    A wiped data dir gets a fresh `n`, so a replica that forgot its vote can
    never pose as the one that cast it (PITFALLS: "a wiped data dir is a new
    replica"). A tuple, because it is a dict key on every hot path.
    """

    agent: str
    n: int

    def __str__(self) -> str:
        return f"{self.agent}/{self.n}"


class EntryKind(enum.IntEnum):
    NORMAL = 0  # data is an opaque command for the state machine
    NOOP = 1  # a new leader's first entry; commits the leader's term
    CONFIG = 2  # data is a `Config`; takes effect when appended


# Kind numbers (wire, store rows, the log's tuples) to kinds: a dict lookup,
# not `EntryKind(k)`, since an enum call per entry showed in profiles.
ENTRY_KINDS: dict[int, EntryKind] = {int(k): k for k in EntryKind}


@attrs.frozen(slots=True)
class Entry:
    term: int
    index: int
    kind: EntryKind = EntryKind.NORMAL
    data: object = None


@attrs.frozen(slots=True)
class Config:
    """Group membership. Voters count toward quorums; learners only receive the log."""

    voters: frozenset[ReplicaId] = frozenset()
    learners: frozenset[ReplicaId] = frozenset()

    def __attrs_post_init__(self) -> None:
        if self.voters & self.learners:
            raise ValueError(f"replicas both voter and learner: {self.voters & self.learners}")

    @property
    def members(self) -> frozenset[ReplicaId]:
        return self.voters | self.learners

    def quorum(self) -> int:
        return len(self.voters) // 2 + 1


@attrs.frozen(slots=True)
class HardState:
    """What a replica must remember across restarts.

    Invariant: written to disk before any message that depends on it is sent.
    """

    term: int = 0
    vote: ReplicaId | None = None
    commit: int = 0


@attrs.frozen(slots=True)
class SnapshotMeta:
    index: int  # the last log index the snapshot covers
    term: int  # the term of that entry
    config: Config  # membership as of `index`


@attrs.frozen(slots=True)
class Snapshot:
    meta: SnapshotMeta
    data: bytes  # the state machine's (and dedup table's) state, opaque to the core


@attrs.frozen(slots=True)
class ReadState:
    """A read that may be answered once the state machine applied `index`."""

    ctx: object
    index: int
