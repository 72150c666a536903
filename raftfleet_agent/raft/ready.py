"""The `Ready` contract: what a replica needs its host to do, and in which order.

A host handles a Ready in this order, then calls `member.advance(ready)`:

1. Persist, in one durable write (it may share a commit with other groups):
   `snapshot` (store it, delete the log up to its index), `compacted`
   (same), `entries` (delete stored entries from `entries[0].index` on, then
   append), `hard_state`.
   `early_messages` may be sent before or while this happens: they are a
   leader's appends, heartbeats and snapshot chunks, which depend on no
   unpersisted state of this replica.
2. Only after the write is durable, send `messages` (votes and append
   acknowledgements promise that something is on disk).
3. If `snapshot` is set, restore the state machine from it, then apply
   `committed` in order. Answer each of `reads` once the state machine has
   applied `ReadState.index`; fail each of `failed_reads` (not the leader).
   Without a snapshot, `committed` may be applied (and its clients answered)
   as soon as the Ready is taken, before step 1 completes: those entries are
   durable on a majority, and what step 1 adds (the commit index in
   `hard_state`) is learned again from the leader after a crash. etcd's
   server applies in parallel with its WAL write for the same reason.
4. If `removed`, this replica was removed from its group: stop it.

`sync` is False when the only thing to persist is a new commit index (no
entries, snapshot, term or vote): etcd's `MustSync`. Such a write still has
to reach the store, in order with the writes after it, but nothing waits
for it to be durable: a host may send `messages` and call `advance()` as
soon as it has handed the write over. Those messages promise only what is
durable already (the entries, term and vote of Readys advanced before, each
after its own write), and a commit index is learned again from the leader
after a crash.

`ready()` raises if called again before `advance()`; inputs (`tick`, `step`,
`propose`, ...) may arrive in between and go into the next Ready. A host
that applied the Ready's `committed` when it took it may also call
`take_committed()` in between: entries committed since (a leader's followers
are often durable before the leader is) are handed out at once, in order,
and never again.
"""

from __future__ import annotations

import attrs

from raftfleet_agent.raft.messages import Message
from raftfleet_agent.raft.types import Entry, HardState, ReadState, Snapshot


@attrs.frozen(slots=True, kw_only=True)
class Ready:
    hard_state: HardState | None = None
    entries: tuple[Entry, ...] = ()
    snapshot: Snapshot | None = None  # received from the leader: persist, then restore from it
    compacted: Snapshot | None = None  # taken locally (`compact`): persist only
    early_messages: tuple[Message, ...] = ()
    messages: tuple[Message, ...] = ()
    committed: tuple[Entry, ...] = ()
    reads: tuple[ReadState, ...] = ()
    failed_reads: tuple[object, ...] = ()
    removed: bool = False
    sync: bool = False  # see the module doc; set by RaftMember.ready()

    @property
    def must_persist(self) -> bool:
        return bool(self.hard_state or self.entries or self.snapshot or self.compacted)
