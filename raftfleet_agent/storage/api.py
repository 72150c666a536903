"""The log store interface, shaped for group commit.

One store per agent holds every group's log. The host hands it one
`WriteBatch` per loop turn covering any number of groups; the store makes the
whole batch durable at once (one transaction, one fsync) and then reports it
durable. Nothing in a batch may be acknowledged to anyone before that report.

Semantics of one `GroupWrite`, applied in this order:
1. `delete`: remove every row of the group (entries, hard state, snapshot,
   metadata). Nothing else in this GroupWrite is applied after a delete
   unless it is set explicitly (a re-created group in the same batch).
2. `meta`: replace the group's metadata (opaque bytes chosen by the host).
3. `snapshot`: store it as the group's latest snapshot (replacing an older
   one; its index is never below the stored one's, as Raft only compacts
   forward). Every entry with index <= snapshot.meta.index stops being part
   of the log in the same transaction; a store may free their space later.
4. `entries`: delete every stored entry with index >= entries[0].index, then
   store these (contiguous, ascending). Truncation only happens here, so a
   follower that overwrites a conflicting suffix does it atomically.
5. `hard_state`: replace the stored hard state.

Several batches are applied in submission order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import attrs

from raftfleet_agent.raft.types import Entry, HardState, Snapshot


class StoreError(Exception):
    """The store cannot be used (corrupt, foreign, newer schema, unreadable).

    The message names the file and says what is wrong; the agent prints it
    and exits non-zero without touching the file.
    """


class StoreFatalError(StoreError):
    """A write or fsync failed. The store is unusable from now on: never retry a failed fsync."""


@attrs.frozen(slots=True, kw_only=True)
class GroupWrite:
    group: str
    entries: tuple[Entry, ...] = ()
    hard_state: HardState | None = None
    snapshot: Snapshot | None = None
    meta: bytes | None = None
    delete: bool = False

    def __attrs_post_init__(self) -> None:
        for a, b in zip(self.entries, self.entries[1:], strict=False):
            if b.index != a.index + 1:
                raise ValueError(f"entries of {self.group!r} not contiguous: {a.index}, {b.index}")


@attrs.frozen(slots=True)
class WriteBatch:
    writes: tuple[GroupWrite, ...]

    @property
    def entry_count(self) -> int:
        return sum(len(w.entries) for w in self.writes)


@attrs.frozen(slots=True, kw_only=True)
class GroupRecord:
    """Everything stored for one group, as recovery returns it."""

    group: str
    hard_state: HardState
    snapshot: Snapshot | None
    entries: tuple[Entry, ...]  # contiguous, all after snapshot.meta.index
    meta: bytes | None


@attrs.frozen(slots=True)
class StoreStats:
    commits: int  # transactions committed (each one fsync in durable mode)
    batches: int  # batches submitted
    entries: int  # entries written
    queue_depth: int  # batches waiting for the next commit
    last_commit_s: float  # duration of the last commit


DurableCallback = Callable[[BaseException | None], None]


class LogStore(Protocol):
    """Implemented by `MemoryLogStore` and `SqliteLogStore`."""

    def submit(self, batch: WriteBatch, on_durable: DurableCallback) -> None:
        """Queue a batch; `on_durable(None)` is called once it is durable.

        The callback may run on the store's writer thread: it must only hand
        the news over (e.g. `trio.from_thread.run_sync` or a threading.Event).
        On failure it gets the exception (a `StoreFatalError`), and every later
        submit fails the same way.
        """

    def write(self, batch: WriteBatch) -> None:
        """Submit and wait until durable (for tests, tools and benchmarks)."""

    def stage_snapshot(self, group: str, snapshot: Snapshot) -> None:
        """Store a snapshot this replica took itself, when it suits the store.

        For a snapshot at an index > 0 whose entries are all durable in this
        store already, so nothing waits for it: until it is stored, recovery
        rebuilds the same state from the previous snapshot and those entries.
        It is stored as if written by a batch submitted when it is stored,
        except that it is dropped if the group was deleted after this call
        or a snapshot at the same or a later index is stored first. Raises
        `StoreFatalError` like `submit` once the store is unusable.
        """

    def load(self) -> Iterable[GroupRecord]:
        """Every stored group, for recovery at start. Call before any submit."""

    def entries(self, group: str, lo: int, hi: int) -> Sequence[Entry]:
        """Stored entries with lo <= index < hi (durable ones only)."""

    def last_index_term(self) -> dict[str, tuple[int, int]]:
        """(last index, its term) of every group; the snapshot's if no entries follow it."""

    def statistics(self) -> StoreStats: ...

    def close(self) -> None:
        """Finish the commit in progress and queued batches, then release the store."""
