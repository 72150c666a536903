"""The in-memory log store: the `LogStore` contract without a disk.

Used by tests, the simulator and `--in-memory` agents. `submit()` applies the
batch at once and calls `on_durable(None)` before returning (on the caller's
thread), so nothing here ever needs a thread or a lock of its own beyond
making concurrent callers safe.

Values go through the same msgpack round trip as in the SQLite store, so a
value that the durable store could not hold fails here too (at submit), and
what comes back has the same shape (tuples come back as lists).
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Sequence

import attrs

from raftfleet_agent.raft.types import Entry, HardState, Snapshot
from raftfleet_agent.slow_free import SlowFree
from raftfleet_agent.storage._rows import EncodedWrite, decode_entry_rows, encode_write
from raftfleet_agent.storage.api import (
    DurableCallback,
    GroupRecord,
    GroupWrite,
    StoreError,
    StoreStats,
    WriteBatch,
)

log = logging.getLogger(__name__)

_FREE_PER_SUBMIT = 1_000  # compacted entries let go per submit, besides as many as it adds


@attrs.define(slots=True)
class _Group:
    hard_state: HardState | None = None
    snapshot: Snapshot | None = None
    meta: bytes | None = None
    entries: list[Entry] = attrs.Factory(list)  # ascending by index

    def truncate_from(self, index: int) -> None:
        """Drop every entry with index >= `index`."""
        del self.entries[bisect.bisect_left(self.entries, index, key=_index) :]

    def compact_to(self, index: int) -> list[Entry]:
        """Drop every entry with index <= `index`; returns them."""
        cut = bisect.bisect_right(self.entries, index, key=_index)
        dropped = self.entries[:cut]
        del self.entries[:cut]
        return dropped

    def is_empty(self) -> bool:
        return (
            self.hard_state is None
            and self.snapshot is None
            and self.meta is None
            and not self.entries
        )


def _index(e: Entry) -> int:
    return e.index


class MemoryLogStore:
    """`LogStore` held in dicts. Thread-safe; durable callbacks run inside `submit`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: dict[str, _Group] = {}
        self._batches = 0
        self._entries = 0
        self._closed = False
        # Entries a snapshot compacted away, freed a slice per submit as in
        # the SQLite store's trims: submit runs on the agent's loop thread.
        self._compacted = SlowFree(_FREE_PER_SUBMIT)

    def submit(self, batch: WriteBatch, on_durable: DurableCallback) -> None:
        """Apply `batch` and call `on_durable(None)` before returning.

        Raises ValueError/TypeError (nothing applied) if a value cannot be
        encoded, StoreError if the store is closed.
        """
        encoded = [(w, encode_write(w)) for w in batch.writes]
        with self._lock:
            if self._closed:
                raise StoreError("in-memory log store: closed")
            for w, enc in encoded:
                self._apply(w, enc)
            if self._compacted.waiting:
                self._compacted.step(batch.entry_count)
            self._batches += 1
            self._entries += batch.entry_count
        try:
            on_durable(None)
        except Exception:  # as in the SQLite store: a broken callback is logged, not raised
            log.exception("on_durable callback failed")

    def _apply(self, w: GroupWrite, enc: EncodedWrite) -> None:
        if w.delete:
            self._groups.pop(w.group, None)
        g = self._groups.setdefault(w.group, _Group())
        if w.meta is not None:
            g.meta = w.meta
        if w.snapshot is not None:
            g.snapshot = w.snapshot
            self._compacted.put(g.compact_to(w.snapshot.meta.index))
        if w.entries:
            g.truncate_from(w.entries[0].index)
            # Round-trip through msgpack: the caller gets back what SQLite would give.
            g.entries.extend(decode_entry_rows(list(enc.entries)))
        if w.hard_state is not None:
            g.hard_state = w.hard_state
        if g.is_empty():
            del self._groups[w.group]

    def write(self, batch: WriteBatch) -> None:
        self.submit(batch, _ignore)

    def stage_snapshot(self, group: str, snapshot: Snapshot) -> None:
        """Nothing to take off a commit path here: stored at once, like a write."""
        if type(snapshot.data) is not bytes or snapshot.meta.index < 1:
            raise ValueError(f"stage_snapshot of {group!r}: needs bytes at an index > 0")
        self.submit(WriteBatch((GroupWrite(group=group, snapshot=snapshot),)), _ignore)

    def load(self) -> list[GroupRecord]:
        with self._lock:
            return [self._record(name, g) for name, g in sorted(self._groups.items())]

    @staticmethod
    def _record(name: str, g: _Group) -> GroupRecord:
        after = g.snapshot.meta.index if g.snapshot is not None else 0
        return GroupRecord(
            group=name,
            hard_state=g.hard_state if g.hard_state is not None else HardState(),
            snapshot=g.snapshot,
            entries=tuple(e for e in g.entries if e.index > after),
            meta=g.meta,
        )

    def entries(self, group: str, lo: int, hi: int) -> Sequence[Entry]:
        with self._lock:
            g = self._groups.get(group)
            if g is None:
                return ()
            start = bisect.bisect_left(g.entries, lo, key=_index)
            stop = bisect.bisect_left(g.entries, hi, key=_index)
            return tuple(g.entries[start:stop])

    def last_index_term(self) -> dict[str, tuple[int, int]]:
        with self._lock:
            out = {}
            for name, g in self._groups.items():
                last = (0, 0)
                if g.snapshot is not None:
                    last = (g.snapshot.meta.index, g.snapshot.meta.term)
                if g.entries and g.entries[-1].index > last[0]:
                    last = (g.entries[-1].index, g.entries[-1].term)
                out[name] = last
            return out

    def statistics(self) -> StoreStats:
        with self._lock:
            return StoreStats(
                commits=self._batches,
                batches=self._batches,
                entries=self._entries,
                queue_depth=0,
                last_commit_s=0.0,
            )

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def __enter__(self) -> MemoryLogStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ignore(err: BaseException | None) -> None:
    assert err is None, err  # the memory store never fails a commit
