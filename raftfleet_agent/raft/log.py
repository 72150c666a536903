"""A replica's log in memory: the entries after its latest snapshot.

No I/O. The host persists what `take_unstable` hands out and reports back
with `mark_persisted`; the log remembers which prefix is known durable so the
leader only counts durable entries of its own toward a quorum.

Index arithmetic: the k-th item held has index `offset + 1 + k`; `offset`
is the snapshot's index (0 for none) and `offset_term` its term.

Items up to `settled` are kept as plain `(term, index, kind, data)` tuples,
the newer ones as the `Entry` objects they arrived as. A large state's log
holds hundreds of thousands of entries until its next snapshot, and the
cyclic collector walks every `Entry` of a generation each time it collects
it (~100 ms for 600,000), while a tuple of untracked items (ints, bytes)
leaves its lists at the first collection. The recent tail, which the
leader's appends and the applier read, stays as it is, so the hot path
builds nothing; older entries are turned into tuples `SETTLE_BATCH` at a
time and built again only if a lagging follower needs them.
"""

from __future__ import annotations

from typing import Final

from raftfleet_agent.raft.errors import SafetyViolation
from raftfleet_agent.raft.types import ENTRY_KINDS, Entry

Row = tuple[int, int, int, object]  # (term, index, kind as a plain int, data)
SETTLE_BATCH: Final = 4096  # entries turned into rows at a time; as many stay Entry objects


def _entry(r: Row) -> Entry:
    return Entry(r[0], r[1], ENTRY_KINDS[r[2]], r[3])


class RaftLog:
    __slots__ = (
        "_items",
        "_min_truncated",
        "offset",
        "offset_term",
        "persisted",
        "settled",
        "unstable_from",
    )

    def __init__(self, offset: int = 0, offset_term: int = 0, entries: tuple[Entry, ...] = ()):
        self.offset = offset
        self.offset_term = offset_term
        # Rows up to index `settled`, Entry objects after it (see the module's doc).
        self._items: list[Row | Entry] = list(entries)
        self.settled = offset
        if len(self._items) >= 2 * SETTLE_BATCH:
            self._settle()  # a long log recovered at start: now, not on the first append
        # Invariant: offset <= persisted <= last_index; entries up to `persisted` are durable.
        self.persisted = self.last_index
        # Entries with index >= unstable_from were not yet handed to the host.
        self.unstable_from = self.last_index + 1
        # Lowest index truncated since the last take_unstable (None: no truncation).
        self._min_truncated: int | None = None

    @property
    def entries(self) -> list[Entry]:
        """Every entry held, as Entry objects (for recovery's scans and tests)."""
        return self.slice(self.offset + 1, self.last_index + 1)

    @property
    def first_index(self) -> int:
        return self.offset + 1

    @property
    def last_index(self) -> int:
        return self.offset + len(self._items)

    @property
    def last_term(self) -> int:
        return self.term_at(self.last_index)  # type: ignore[return-value]

    def term_at(self, index: int) -> int | None:
        """The term of the entry at `index`; None if compacted away (below offset) or absent."""
        if index == self.offset:
            return self.offset_term
        k = index - self.offset - 1
        if 0 <= k < len(self._items):
            item = self._items[k]
            return item[0] if index <= self.settled else item.term  # type: ignore[union-attr,index,return-value]
        return None

    def entry(self, index: int) -> Entry:
        item = self._items[index - self.offset - 1]
        return _entry(item) if index <= self.settled else item  # type: ignore[arg-type,return-value]

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries with lo <= index < hi (lo must be >= first_index)."""
        items = self._items[lo - self.offset - 1 : hi - self.offset - 1]
        if lo > self.settled:
            return items  # type: ignore[return-value]  # the recent tail: Entry objects
        rows = min(self.settled, hi - 1) - lo + 1
        return [_entry(r) for r in items[:rows]] + items[rows:]  # type: ignore[arg-type,operator]

    def matches(self, index: int, term: int) -> bool:
        return self.term_at(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Would a candidate with this log be at least as up to date as ours (§5.4.1)?"""
        return last_term > self.last_term or (
            last_term == self.last_term and last_index >= self.last_index
        )

    def append(self, entry: Entry) -> None:
        assert entry.index == self.last_index + 1, (entry.index, self.last_index)
        self._items.append(entry)
        if entry.index - self.settled >= 2 * SETTLE_BATCH:
            self._settle()

    def merge(self, entries: tuple[Entry, ...], committed: int) -> int | None:
        """Append a leader's entries that follow a matching prev entry.

        Truncates only at the first real conflict (same index, other term): a
        duplicated or delayed append must never erase entries that follow the
        ones it carries. Returns the index where the log was truncated, if it was.
        """
        for k, e in enumerate(entries):
            t = self.term_at(e.index)
            if t == e.term:
                continue
            if t is None and e.index <= self.offset:
                continue  # already compacted into our snapshot, hence committed and equal
            if t is not None:
                if e.index <= committed:
                    raise SafetyViolation(f"conflict at committed index {e.index}")
                self.truncate_from(e.index)
            self._items.extend(entries[k:])
            if self.last_index - self.settled >= 2 * SETTLE_BATCH:
                self._settle()
            return e.index if t is not None else None
        return None

    def _settle(self) -> None:
        """Turn the oldest Entry objects into rows, keeping the newest SETTLE_BATCH as they are."""
        upto = self.last_index - SETTLE_BATCH
        items, base = self._items, self.offset + 1
        for k in range(self.settled + 1 - base, upto + 1 - base):
            e = items[k]
            items[k] = (e.term, e.index, int(e.kind), e.data)  # type: ignore[union-attr]
        self.settled = upto

    def truncate_from(self, index: int) -> None:
        """Drop every entry with index >= `index`."""
        assert index > self.offset
        del self._items[index - self.offset - 1 :]
        self.settled = min(self.settled, index - 1)
        self.persisted = min(self.persisted, index - 1)
        self.unstable_from = min(self.unstable_from, index)
        if self._min_truncated is None or index < self._min_truncated:
            self._min_truncated = index

    def take_unstable(self) -> tuple[tuple[Entry, ...], int | None]:
        """Entries the host has not persisted yet, and a token for `mark_persisted`."""
        entries = tuple(self.slice(self.unstable_from, self.last_index + 1))
        self.unstable_from = self.last_index + 1
        self._min_truncated = None
        return entries, (entries[-1].index if entries else None)

    def mark_persisted(self, last: int | None) -> None:
        """The host made the entries handed out up to `last` durable.

        A truncation since then removed some of them: only the prefix below
        the truncation point is both durable and still ours.
        """
        if last is None:
            return
        if self._min_truncated is not None:
            last = min(last, self._min_truncated - 1)
        self.persisted = max(self.persisted, min(last, self.last_index))

    def compact(self, index: int, term: int) -> list[Row | Entry]:
        """Forget entries up to `index`, now covered by a snapshot; returns them (as held).

        The caller decides when they are freed: thousands of entries freed at
        once take milliseconds of one turn (see `MultiRaftHost`).
        """
        if index <= self.offset:
            return []
        dropped = self._items[: index - self.offset]
        del self._items[: index - self.offset]
        self.offset, self.offset_term = index, term
        self.settled = max(self.settled, index)
        self.persisted = max(self.persisted, index)
        self.unstable_from = max(self.unstable_from, index + 1)
        return dropped

    def restore(self, index: int, term: int) -> None:
        """Install a snapshot at (index, term): keep a matching suffix, else drop everything."""
        if self.term_at(index) == term and index >= self.offset:
            self.compact(index, term)
            return
        self._items = []
        self.offset, self.offset_term = index, term
        self.settled = index
        self.persisted = index
        self.unstable_from = index + 1
        # Entries above `index` that the host may still be writing (handed out
        # before this restore) are not ours any more: like a truncation at
        # index + 1, a later mark_persisted must not count them as durable.
        self._min_truncated = index + 1
