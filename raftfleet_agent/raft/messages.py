"""The messages replicas of one group exchange. Small frozen values, no I/O.

Every message names its sender, its receiver and the sender's term. The
group is not part of the message: the host wraps messages in an envelope
that names the group (see `raftfleet_agent.raft.codec`).

Terms: for `PreVote` the term is the *proposed* term (the sender's term + 1);
the sender's own term does not change (dissertation §9.6).
"""

from __future__ import annotations

import attrs

from raftfleet_agent.raft.types import Entry, ReplicaId, SnapshotMeta


@attrs.frozen(slots=True, kw_only=True)
class Message:
    frm: ReplicaId
    to: ReplicaId
    term: int


@attrs.frozen(slots=True, kw_only=True)
class PreVote(Message):
    last_index: int
    last_term: int


@attrs.frozen(slots=True, kw_only=True)
class PreVoteResp(Message):
    granted: bool


@attrs.frozen(slots=True, kw_only=True)
class Vote(Message):
    last_index: int
    last_term: int
    # Set when the election was started by TimeoutNow: voters then ignore
    # their "leader is alive" guard, or transfers could never complete.
    transfer: bool = False


@attrs.frozen(slots=True, kw_only=True)
class VoteResp(Message):
    granted: bool


@attrs.frozen(slots=True, kw_only=True)
class Append(Message):
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int
    # The leader's heartbeat round when this was sent; echoed back so the
    # leader can time its lease from when the round *started*.
    round: int = 0


@attrs.frozen(slots=True, kw_only=True)
class AppendResp(Message):
    success: bool
    # success: the highest index now known to match the leader's log.
    # failure: the prev_index that was rejected.
    index: int
    # On failure: where the follower suggests the leader retry (a hint only:
    # the leader never moves next_index below match_index + 1).
    hint_index: int = 0
    hint_term: int = 0
    round: int = 0


@attrs.frozen(slots=True, kw_only=True)
class Heartbeat(Message):
    commit: int  # min(leader commit, follower match): never past what the follower holds
    round: int
    # The leader goes quiet: the group is idle and everyone is caught up, so
    # the follower may stop its election timer until something happens.
    quiesce: bool = False


@attrs.frozen(slots=True, kw_only=True)
class HeartbeatResp(Message):
    round: int


@attrs.frozen(slots=True, kw_only=True)
class TimeoutNow(Message):
    """Leadership transfer: campaign now, bypassing pre-vote and the stickiness guard."""


@attrs.frozen(slots=True, kw_only=True)
class InstallSnapshot(Message):
    meta: SnapshotMeta
    offset: int  # byte offset of `chunk` in the snapshot data
    chunk: bytes
    done: bool
    round: int = 0


@attrs.frozen(slots=True, kw_only=True)
class InstallSnapshotResp(Message):
    index: int  # meta.index of the snapshot this answers
    next_offset: int  # the offset the follower wants next (0 after a reset)
    done: bool  # the snapshot is installed (and durable, as this is sent after persistence)
    round: int = 0


@attrs.frozen(slots=True, kw_only=True)
class Removed(Message):
    """The leader tells a replica that is not a member any more that it was removed."""


MESSAGE_TYPES: tuple[type[Message], ...] = (
    PreVote,
    PreVoteResp,
    Vote,
    VoteResp,
    Append,
    AppendResp,
    Heartbeat,
    HeartbeatResp,
    TimeoutNow,
    InstallSnapshot,
    InstallSnapshotResp,
    Removed,
)
