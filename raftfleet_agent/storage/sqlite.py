"""The durable log store: one SQLite database per agent, with group commit.

Theory of operation. `submit()` encodes a batch into rows on the caller's
thread and queues it. One writer thread (plain `threading`: storage never
touches trio) takes every batch queued at that moment, applies them in
submission order inside ONE transaction, commits (one fsync, since the
database runs `journal_mode=WAL` + `synchronous=FULL`), and only then calls
each batch's `on_durable(None)`, in submission order. Batches arriving during
a commit wait for the next one, so the more writers there are, the more each
fsync carries.

Any exception while committing is fatal (an fsync that failed may have lost
pages the kernel already dropped, so retrying could report durable what is
not): every pending callback gets a `StoreFatalError`, later `submit()`s
raise it, and the writer stops. The agent is expected to crash and recover.

Reads (`load`, `entries`, `last_index_term`) go through a second connection:
WAL lets them run beside the writer and they only ever see committed rows.

A snapshot makes every entry at or below its index dead. The rows are not
deleted in the snapshot's own commit: a group that snapshots every 10,000
entries would then delete 10,000 rows in one commit, which stalled that
commit by 4-9 ms, on every replica at once since they snapshot at the same
index (the 64-client p999). Instead the writer deletes up to `_TRIM_ROWS`
dead rows per commit, plus as many as the commit inserted, so it keeps up
with any write rate. Reads never see a dead row: `load`, `entries` and
`last_index_term` all stop at the group's snapshot, which is what the
`LogStore` contract promises. The SQL of a trim is bounded by the group's
*current* snapshot row, so a trim can never reach a live entry, not even
one of a group deleted and created again meanwhile.

A snapshot the replica took itself (`stage_snapshot`) does not go through
the group commit at all: a second thread writes its state to a file of its
own (see `_snapfiles`), and only once that file is durable does a small row
naming it join the next commit. Until then the stored log still holds every
entry the snapshot covers, so a crash loses nothing. The row is written
only if the group was not deleted since the snapshot was staged (deletes
are counted on both sides of the queue) and no newer snapshot was stored
meanwhile; a file that no row names any more is deleted after the commit
that dropped it, or at the next start.
"""

from __future__ import annotations

import collections
import gc
import itertools
import logging
import operator
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs

from raftfleet_agent.raft.codec import CodecError, encode_config, packb
from raftfleet_agent.raft.types import Entry, HardState, Snapshot
from raftfleet_agent.storage import _schema, _snapfiles
from raftfleet_agent.storage._rows import (
    EncodedWrite,
    decode_entry_rows,
    decode_hard_state,
    decode_snapshot,
    encode_write,
)
from raftfleet_agent.storage.api import (
    DurableCallback,
    GroupRecord,
    StoreError,
    StoreFatalError,
    StoreStats,
    WriteBatch,
)

log = logging.getLogger(__name__)

_Queued = tuple[list[EncodedWrite], int, DurableCallback]  # rows, entry count, callback


@attrs.frozen(slots=True)
class _Staged:
    """A staged snapshot whose file is durable: its row, for the next commit."""

    group: str
    index: int
    term: int
    config: bytes  # msgpack of the membership at index
    file: str
    incarnation: int  # deletes of the group submitted before it was staged


_TRIM_ROWS = 1_000  # dead rows deleted per commit, besides as many as it inserted
# The oldest `:n` dead rows of one group, never past its current snapshot
# (none if it has none); the caller reads `rowcount` to learn whether any are
# left. One upper bound, not two: SQLite seeks on one and filters on the
# other, which scanned every dead row of the group at each step.
_TRIM_SQL = """
DELETE FROM entries WHERE grp = :g AND idx <= min(
    (SELECT idx FROM snapshot WHERE grp = :g),
    (SELECT idx FROM entries WHERE grp = :g ORDER BY idx LIMIT 1) + :n - 1
)
"""

_LAST_ENTRY_SQL = """
WITH RECURSIVE g(grp) AS (
    SELECT (SELECT min(grp) FROM entries)
    UNION ALL
    SELECT (SELECT min(grp) FROM entries WHERE grp > g.grp) FROM g WHERE g.grp IS NOT NULL
)
SELECT e.grp, e.idx, e.term FROM g JOIN entries e
    ON e.grp = g.grp
    AND e.idx = (SELECT idx FROM entries WHERE grp = g.grp ORDER BY idx DESC LIMIT 1)
"""  # a skip-scan: a few index seeks per group instead of a scan of every entry
# (`ORDER BY idx DESC LIMIT 1`, not `max(idx)`: SQLite does not turn a
# correlated max() into one seek, and that made this 5x slower.)


def _unique_group_runs(writes: list[EncodedWrite]) -> Iterator[list[EncodedWrite]]:
    """Split writes (in order) into runs in which no group appears twice.

    Inside such a run the writes touch disjoint rows, so each step of the
    GroupWrite semantics (delete, meta, snapshot, entries, hard state) can be
    done for the whole run with one `executemany`, and the result is the same
    as applying the writes one by one.
    """
    run: list[EncodedWrite] = []
    seen: set[str] = set()
    for w in writes:
        if w.group in seen:
            yield run
            run, seen = [], set()
        run.append(w)
        seen.add(w.group)
    if run:
        yield run


class SqliteLogStore:
    """`LogStore` in `<data_dir>/raftfleet.db`. Thread-safe; see the module docstring."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        cache_mib: int = 64,
        checkpoint_pages: int = 10_000,
    ) -> None:
        """Open (or create) the store; raises StoreError naming the file if it is unusable.

        `checkpoint_pages`: WAL size (in 4 KiB pages) that triggers a checkpoint.
        Each commit rewrites the tail page of every group it touches, so the
        same few hundred pages are written to the WAL over and over; a large
        threshold lets one checkpoint copy each hot page once instead of
        after every few commits (measured: +35% entries/s with 100 groups
        over SQLite's default of 1,000), at the cost of a WAL of up to ~40 MB.
        """
        self.path = Path(data_dir) / _schema.DB_NAME
        self._lock_fd = _schema.open_checked(self.path)
        try:
            self._wconn = self._connect(cache_mib)
            _schema.migrate(self._wconn, self.path)
            self._rconn = self._connect(cache_mib)
            self._rconn.execute("PRAGMA query_only=1")
            self._wconn.execute(f"PRAGMA wal_autocheckpoint={int(checkpoint_pages)}")
            self._snap_dir = _snapfiles.ensure_dir(Path(data_dir))
        except BaseException:
            if hasattr(self, "_rconn"):
                self._rconn.close()
            if hasattr(self, "_wconn"):
                self._wconn.close()
            _schema.release(self.path, self._lock_fd)
            raise
        self._rlock = threading.Lock()  # one reader at a time on _rconn
        self._cond = threading.Condition()
        # Guarded by _cond:
        self._queue: list[_Queued | _Staged] = []
        self._deletes_submitted: dict[str, int] = {}  # per group, in submission order
        self._staged_any = False
        self._dead_found: list[str] = []  # groups whose dead rows `load` saw
        self._fatal: StoreFatalError | None = None
        self._closing = False
        self._closed = False  # set once the connections are closed
        self._commits = 0
        self._batches = 0
        self._entries = 0
        self._last_commit_s = 0.0
        self._recent_commit_s: collections.deque[float] = collections.deque(maxlen=10_000)
        # Only the writer thread touches these: groups that may hold dead rows,
        # and deletes applied per group (compared with a staged snapshot's
        # incarnation: equal means no delete came between).
        self._trims: dict[str, None] = {}
        self._deletes_applied: dict[str, int] = {}
        self._staging: queue.SimpleQueue[tuple[str, Snapshot, int] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, name="raftfleet-store-writer", daemon=True
        )
        self._thread.start()
        self._files_thread = threading.Thread(
            target=self._run_files, name="raftfleet-store-snapshots", daemon=True
        )
        self._files_thread.start()

    def _connect(self, cache_mib: int) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30
            )
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(f"{self.path}: cannot switch to WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA cache_size={-1024 * cache_mib}")
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot open the log store for writing: {e}") from None
        return conn

    # -- writing -------------------------------------------------------------

    def submit(self, batch: WriteBatch, on_durable: DurableCallback) -> None:
        """Queue `batch`; `on_durable(None)` runs on the writer thread once it is durable.

        Raises `StoreFatalError` at once if an earlier commit failed (the
        callback is then never called), `StoreError` if the store is closed,
        and ValueError/TypeError if the batch holds a value msgpack cannot
        encode or a malformed field (nothing is queued then).
        """
        self._check_usable()
        rows = [encode_write(w) for w in batch.writes]
        with self._cond:
            self._check_usable()
            for w in batch.writes:
                if w.delete:
                    self._deletes_submitted[w.group] = self._deletes_submitted.get(w.group, 0) + 1
            self._queue.append((rows, batch.entry_count, on_durable))
            self._batches += 1
            self._cond.notify()

    def stage_snapshot(self, group: str, snapshot: Snapshot) -> None:
        """Persist a snapshot this replica took, off the commit path (see the module doc).

        Only for a snapshot at an index > 0 whose entries are all durable in
        this store already: until its row is committed, recovery rebuilds the
        same state from the previous snapshot and those entries. Nothing is
        called back; a file that cannot be written makes the store fatal.
        """
        if type(snapshot.data) is not bytes or snapshot.meta.index < 1:
            raise ValueError(f"stage_snapshot of {group!r}: needs bytes at an index > 0")
        self._check_usable()
        with self._cond:
            self._check_usable()
            incarnation = self._deletes_submitted.get(group, 0)
            self._staged_any = True
        self._staging.put((group, snapshot, incarnation))

    def _run_files(self) -> None:
        while True:
            job = self._staging.get()
            if job is None:
                return
            group, snap, incarnation = job
            try:
                name = _snapfiles.write(self._snap_dir, snap.data)
            except Exception as e:  # a failed fsync is fatal, as in a commit
                self._fail([], e, "writing a snapshot file")
                return
            staged = _Staged(
                group,
                snap.meta.index,
                snap.meta.term,
                packb(encode_config(snap.meta.config)),
                name,
                incarnation,
            )
            with self._cond:
                if self._fatal is not None:
                    return
                self._queue.append(staged)
                self._cond.notify()

    def _check_usable(self) -> None:
        fatal = self._fatal
        if fatal is not None:
            raise StoreFatalError(f"{fatal}") from fatal.__cause__
        if self._closing:
            raise StoreError(f"{self.path}: the log store is closed")

    def write(self, batch: WriteBatch) -> None:
        """Submit and block until durable. Never call it from an `on_durable` callback."""
        done = threading.Event()
        result: list[BaseException | None] = []

        def on_durable(err: BaseException | None) -> None:
            result.append(err)
            done.set()

        self.submit(batch, on_durable)
        done.wait()
        if result[0] is not None:
            raise result[0]

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return  # closing, and everything queued is committed
                items, self._queue = self._queue, []
                self._trims.update(dict.fromkeys(self._dead_found))
                self._dead_found.clear()
            taken = [q for q in items if not isinstance(q, _Staged)]
            start = time.perf_counter()
            try:
                garbage = self._commit(items)
            except Exception as e:  # every commit failure is fatal, see module doc
                self._fail(taken, e)
                return
            took = time.perf_counter() - start
            with self._cond:
                self._commits += 1
                self._entries += sum(n for _rows, n, _cb in taken)
                self._last_commit_s = took
                self._recent_commit_s.append(took)
            for _rows, _n, cb in taken:
                _call(cb, None)
            if garbage:
                self._remove_files(garbage)

    def _commit(self, items: list[_Queued | _Staged]) -> list[str]:
        """Apply the queued items in order, in one transaction; returns the files it freed."""
        c = self._wconn
        garbage: list[str] = []
        inserted = 0
        c.execute("BEGIN IMMEDIATE")
        try:
            writes: list[EncodedWrite] = []
            for item in items:
                if isinstance(item, _Staged):
                    self._apply_writes(c, writes, garbage)
                    writes = []
                    self._apply_staged(c, item, garbage)
                else:
                    writes.extend(item[0])
                    inserted += sum(len(w.entries) for w in item[0])
            self._apply_writes(c, writes, garbage)
            if self._trims:
                self._trim(c, _TRIM_ROWS + inserted)
            self._commit_hook()
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                try:
                    c.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # already failing fatally; the first error is the one to report
            raise
        return garbage

    def _apply_writes(
        self, c: sqlite3.Connection, writes: list[EncodedWrite], garbage: list[str]
    ) -> None:
        for run in _unique_group_runs(writes):
            replaced = [(w.group,) for w in run if w.delete or w.snapshot is not None]
            if replaced:  # their snapshot files are let go once this commits
                garbage.extend(_files_of(c, replaced))
            _apply_run(c, run)
            for w in run:
                if w.delete:
                    self._deletes_applied[w.group] = self._deletes_applied.get(w.group, 0) + 1
                if w.snapshot is not None:
                    self._trims[w.group] = None

    def _apply_staged(self, c: sqlite3.Connection, s: _Staged, garbage: list[str]) -> None:
        """Write a staged snapshot's row, unless the group was deleted or moved past it."""
        stored = c.execute("SELECT idx, file FROM snapshot WHERE grp=?", (s.group,)).fetchone()
        deleted_since = self._deletes_applied.get(s.group, 0) != s.incarnation
        if deleted_since or (stored is not None and stored[0] >= s.index):
            garbage.append(s.file)
            return
        if stored is not None and stored[1] is not None:
            garbage.append(stored[1])
        c.execute(
            "INSERT OR REPLACE INTO snapshot (grp, idx, term, config, data, file)"
            " VALUES (?, ?, ?, ?, x'', ?)",
            (s.group, s.index, s.term, s.config, s.file),
        )
        self._trims[s.group] = None

    def _remove_files(self, names: list[str]) -> None:
        try:
            _snapfiles.remove(self._snap_dir, names)
        except OSError as e:  # only space is lost: the next start sweeps them
            log.warning("%s: cannot delete old snapshot files: %s", self._snap_dir, e)

    def _trim(self, c: sqlite3.Connection, budget: int) -> None:
        """Delete up to `budget` dead rows, oldest groups first."""
        for g in list(self._trims):
            deleted = c.execute(_TRIM_SQL, {"g": g, "n": budget}).rowcount
            if deleted < budget:  # none left below its snapshot
                del self._trims[g]
            budget -= deleted
            if budget <= 0:
                return

    def _commit_hook(self) -> None:
        """Called in each transaction just before COMMIT; tests override it to inject failures."""

    def _fail(self, taken: list[_Queued], cause: Exception, what: str = "commit") -> None:
        fatal = StoreFatalError(
            f"{self.path}: {what} failed ({type(cause).__name__}: {cause}); "
            "the log store is unusable until the agent restarts"
        )
        fatal.__cause__ = cause
        log.error("%s", fatal)
        with self._cond:
            if self._fatal is None:
                self._fatal = fatal
            pending = taken + [q for q in self._queue if not isinstance(q, _Staged)]
            self._queue = []
        for _rows, _n, cb in pending:
            _call(cb, fatal)

    # -- reading -------------------------------------------------------------

    def _read(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        if self._closed:
            raise StoreError(f"{self.path}: the log store is closed")
        try:
            return self._rconn.execute(sql, params)
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: read failed: {e}") from None

    def load(self) -> list[GroupRecord]:
        """Every stored group, sorted by name: one ordered scan per table."""
        # Recovery allocates a million objects and no cycles: the cyclic GC
        # would rescan them again and again (measured: ~40% of the reopen
        # time), so pause it while loading. Called once, at start.
        was_enabled = gc.isenabled()
        gc.disable()
        with self._rlock:
            try:
                return self._load()
            except CodecError as e:
                raise StoreError(f"{self.path}: malformed row in the log store: {e}") from None
            except sqlite3.Error as e:
                raise StoreError(
                    f"{self.path}: the log store is corrupt or unreadable: {e}"
                ) from None
            finally:
                if was_enabled:
                    gc.enable()

    def _load(self) -> list[GroupRecord]:
        hard = {
            g: decode_hard_state(*r)
            for g, *r in self._read(
                "SELECT grp, term, vote_agent, vote_n, commit_idx FROM hard_state"
            )
        }
        snaps = {}
        files = set()
        for g, idx, term, config, inline, file in self._read(
            "SELECT grp, idx, term, config, data, file FROM snapshot"
        ):
            data = inline
            if file is not None:
                if type(file) is not str:
                    raise CodecError(f"snapshot of {g!r}: malformed file name")
                data = _snapfiles.read(self._snap_dir, file)
                files.add(file)
            snaps[g] = decode_snapshot(idx, term, config, data)
        with self._cond:
            # Only before anything was staged: a staged file waits for its
            # row, and no row names it yet.
            sweep = not self._staged_any
        if sweep:
            swept = _snapfiles.sweep(self._snap_dir, files)
            if swept:
                log.info("%s: deleted %d snapshot files no row names", self._snap_dir, len(swept))
        metas: dict[str, bytes] = dict(self._read("SELECT grp, meta FROM meta"))
        logs: dict[str, tuple[Entry, ...]] = {}
        dead: list[str] = []
        cursor = self._read("SELECT grp, idx, term, kind, data FROM entries ORDER BY grp, idx")
        cursor.arraysize = 4096
        for g, group_rows in itertools.groupby(cursor, key=operator.itemgetter(0)):
            rows = list(group_rows)
            snap = snaps.get(g)
            if snap is not None and rows[0][1] <= snap.meta.index:
                dead.append(g)  # not yet trimmed (see the module doc): not part of the log
                rows = [r for r in rows if r[1] > snap.meta.index]
            logs[g] = decode_entry_rows(rows)
        with self._cond:
            self._dead_found.extend(dead)  # trimmed from the next commit on
        groups = sorted(hard.keys() | snaps.keys() | metas.keys() | logs.keys())
        return [
            GroupRecord(
                group=g,
                hard_state=hard.get(g, HardState()),
                snapshot=snaps.get(g),
                entries=logs.get(g, ()),
                meta=metas.get(g),
            )
            for g in groups
        ]

    def entries(self, group: str, lo: int, hi: int) -> Sequence[Entry]:
        """Stored entries with lo <= index < hi, in order."""
        with self._rlock:
            rows = self._read(
                "SELECT grp, idx, term, kind, data FROM entries WHERE grp=? AND idx>=? AND idx<?"
                " AND idx > coalesce((SELECT idx FROM snapshot WHERE grp=?), 0) ORDER BY idx",
                (group, lo, hi, group),
            ).fetchall()
        try:
            return decode_entry_rows(rows)
        except CodecError as e:
            raise StoreError(f"{self.path}: malformed entry of {group!r}: {e}") from None

    def last_index_term(self) -> dict[str, tuple[int, int]]:
        with self._rlock:
            out = {g: (0, 0) for (g,) in self._read("SELECT grp FROM hard_state")}
            out.update((g, (0, 0)) for (g,) in self._read("SELECT grp FROM meta"))
            out.update((g, (i, t)) for g, i, t in self._read("SELECT grp, idx, term FROM snapshot"))
            for g, i, t in self._read(_LAST_ENTRY_SQL):
                if g is not None and i > out.get(g, (0, 0))[0]:
                    out[g] = (i, t)
        return out

    # -- the rest ------------------------------------------------------------

    def statistics(self) -> StoreStats:
        with self._cond:
            return StoreStats(
                commits=self._commits,
                batches=self._batches,
                entries=self._entries,
                queue_depth=len(self._queue),
                last_commit_s=self._last_commit_s,
            )

    def recent_commit_durations(self) -> list[float]:
        """Durations (s) of up to the last 10,000 commits, oldest first (benchmarks, metrics)."""
        with self._cond:
            return list(self._recent_commit_s)

    def close(self) -> None:
        """Commit everything queued, stop the writer, close the database. Idempotent.

        Snapshots staged and not yet written are dropped: their entries are
        still in the log, so nothing is lost.
        """
        self._staging.put(None)
        self._files_thread.join()
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()
        with self._rlock:
            if self._closed:
                return
            self._closed = True
            self._rconn.close()
        self._wconn.close()
        _schema.release(self.path, self._lock_fd)

    def __enter__(self) -> SqliteLogStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _files_of(c: sqlite3.Connection, groups: list[tuple[str]]) -> list[str]:
    """The snapshot files the stored rows of `groups` name."""
    out = []
    for (g,) in groups:
        row = c.execute("SELECT file FROM snapshot WHERE grp=?", (g,)).fetchone()
        if row is not None and row[0] is not None:
            out.append(row[0])
    return out


def _apply_run(c: sqlite3.Connection, run: list[EncodedWrite]) -> None:
    """Apply writes for distinct groups, step by step in the GroupWrite order."""
    deleted = [(w.group,) for w in run if w.delete]
    if deleted:
        for table in _schema.TABLES:
            c.executemany(f"DELETE FROM {table} WHERE grp=?", deleted)
    metas = [(w.group, w.meta) for w in run if w.meta is not None]
    if metas:
        c.executemany("INSERT OR REPLACE INTO meta (grp, meta) VALUES (?, ?)", metas)
    snaps = [w.snapshot for w in run if w.snapshot is not None]
    if snaps:
        c.executemany(
            "INSERT OR REPLACE INTO snapshot (grp, idx, term, config, data) VALUES (?, ?, ?, ?, ?)",
            snaps,
        )
        # The entries it covers are now dead; SqliteLogStore._trim deletes them.
    appends = [w.entries for w in run if w.entries]
    if appends:
        # Truncate the suffix each write replaces (a no-op seek when appending).
        c.executemany(
            "DELETE FROM entries WHERE grp=? AND idx>=?", [(e[0][0], e[0][1]) for e in appends]
        )
        c.executemany(
            "INSERT INTO entries VALUES (?, ?, ?, ?, ?)", itertools.chain.from_iterable(appends)
        )
    hard = [w.hard_state for w in run if w.hard_state is not None]
    if hard:
        c.executemany("INSERT OR REPLACE INTO hard_state VALUES (?, ?, ?, ?, ?)", hard)


def _call(cb: DurableCallback, err: BaseException | None) -> None:
    try:
        cb(err)
    except Exception:  # a broken callback must not stop the writer or starve the others
        log.exception("on_durable callback failed")
