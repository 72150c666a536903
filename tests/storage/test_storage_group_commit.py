"""SqliteLogStore's writer thread: group commit, ordering, visibility, fatal errors."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from raftfleet_agent.raft.types import Entry, EntryKind, HardState
from raftfleet_agent.storage import (
    GroupWrite,
    SqliteLogStore,
    StoreError,
    StoreFatalError,
    WriteBatch,
)

DEADLINE_S = 10.0


class GatedStore(SqliteLogStore):
    """A store whose commit number `gate_at` waits for `release` (and may then fail)."""

    def __init__(self, path: Path, gate_at: int = 1, fail: BaseException | None = None) -> None:
        self.gate_at = gate_at
        self.fail = fail
        self.hook_calls = 0
        self.in_commit = threading.Event()
        self.release = threading.Event()
        super().__init__(path)

    def _commit_hook(self) -> None:
        self.hook_calls += 1
        if self.hook_calls == self.gate_at:
            self.in_commit.set()
            assert self.release.wait(DEADLINE_S), "test never released the commit"
            if self.fail is not None:
                raise self.fail


class Recorder:
    """Collects (batch number, error) from durable callbacks, in call order."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, BaseException | None]] = []
        self._cond = threading.Condition()

    def cb(self, n: int) -> Callable[[BaseException | None], None]:
        def on_durable(err: BaseException | None) -> None:
            with self._cond:
                self.calls.append((n, err))
                self._cond.notify_all()

        return on_durable

    def wait_for(self, count: int) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.calls) >= count, timeout=DEADLINE_S)
        assert ok, f"only {len(self.calls)} of {count} callbacks within {DEADLINE_S}s"


def batch(n: int, group: str = "g") -> WriteBatch:
    return WriteBatch(
        (
            GroupWrite(
                group=group, entries=(Entry(1, n, EntryKind.NORMAL, n),), hard_state=HardState(1)
            ),
        )
    )


@contextlib.contextmanager
def gated(path: Path, **kw: object) -> Iterator[GatedStore]:
    s = GatedStore(path, **kw)  # type: ignore[arg-type]
    try:
        yield s
    finally:
        s.release.set()
        s.close()


def test_batches_queued_during_a_commit_share_the_next_one(tmp_path: Path) -> None:
    rec = Recorder()
    with gated(tmp_path) as s:
        s.submit(batch(1), rec.cb(1))
        assert s.in_commit.wait(DEADLINE_S)
        for n in range(2, 52):
            s.submit(batch(n), rec.cb(n))
        assert rec.calls == []  # nothing is durable while the first commit is held
        assert s.statistics().queue_depth == 50
        # Not visible to readers either: only committed rows are.
        assert list(s.entries("g", 0, 100)) == []
        s.release.set()
        rec.wait_for(51)
        assert rec.calls == [(n, None) for n in range(1, 52)]
        st = s.statistics()
        assert (st.commits, st.batches, st.entries, st.queue_depth) == (2, 51, 51, 0)
        assert [e.index for e in s.entries("g", 0, 100)] == list(range(1, 52))
        assert s.last_index_term() == {"g": (51, 1)}
        assert len(s.recent_commit_durations()) == 2


def test_commit_failure_is_fatal(tmp_path: Path) -> None:
    rec = Recorder()
    with gated(tmp_path, gate_at=2, fail=sqlite3.OperationalError("disk I/O error")) as s:
        s.write(batch(1))  # commit 1 succeeds
        s.submit(batch(2), rec.cb(2))  # commit 2 will fail...
        assert s.in_commit.wait(DEADLINE_S)
        s.submit(batch(3), rec.cb(3))  # ...and these are queued behind it
        s.submit(batch(4, group="other"), rec.cb(4))
        s.release.set()
        rec.wait_for(3)
        assert [n for n, _ in rec.calls] == [2, 3, 4]
        for _, err in rec.calls:
            assert isinstance(err, StoreFatalError)
            assert "disk I/O error" in str(err)
            assert str(tmp_path / "raftfleet.db") in str(err)
        # Every later submit fails at once; the callback is never called. No retry.
        with pytest.raises(StoreFatalError):
            s.submit(batch(5), rec.cb(5))
        with pytest.raises(StoreFatalError):
            s.write(batch(5))
        assert len(rec.calls) == 3
        assert s.hook_calls == 2
    with SqliteLogStore(tmp_path) as s:  # batch 1 durable, the failed commit rolled back
        [r] = s.load()
        assert [e.index for e in r.entries] == [1]


def test_broken_callback_does_not_stop_the_writer(tmp_path: Path) -> None:
    def boom(err: BaseException | None) -> None:
        raise RuntimeError("callback bug")

    with SqliteLogStore(tmp_path) as s:
        s.submit(batch(1), boom)
        s.write(batch(2))
        assert [e.index for e in s.entries("g", 0, 10)] == [1, 2]


def test_close_commits_everything_queued(tmp_path: Path) -> None:
    rec = Recorder()
    with gated(tmp_path) as s:
        s.submit(batch(1), rec.cb(1))
        assert s.in_commit.wait(DEADLINE_S)
        for n in range(2, 22):
            s.submit(batch(n), rec.cb(n))
        closer = threading.Thread(target=s.close)
        closer.start()
        s.release.set()
        closer.join(DEADLINE_S)
        assert not closer.is_alive()
        assert rec.calls == [(n, None) for n in range(1, 22)]
        with pytest.raises(StoreError):
            s.submit(batch(99), rec.cb(99))
    with SqliteLogStore(tmp_path) as s:
        assert [e.index for e in s.load()[0].entries] == list(range(1, 22))


def test_concurrent_submitters(tmp_path: Path) -> None:
    """Threads submitting at once: every batch lands once, in each thread's order."""
    threads, per_thread = 8, 100
    rec = Recorder()
    with SqliteLogStore(tmp_path) as s:

        def writer(t: int) -> None:
            for n in range(1, per_thread + 1):
                s.submit(batch(n, group=f"t{t}"), rec.cb(t * 1000 + n))

        ts = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(DEADLINE_S)
        rec.wait_for(threads * per_thread)
        assert all(err is None for _, err in rec.calls)
        for t in range(threads):
            mine = [n - t * 1000 for n, _ in rec.calls if n // 1000 == t]
            assert mine == list(range(1, per_thread + 1))
        recs = s.load()
        assert [len(r.entries) for r in recs] == [per_thread] * threads
        assert s.statistics().commits <= threads * per_thread


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the injected-error test covers this path")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30, check=False)


def test_full_disk_is_fatal(tiny_fs: Path) -> None:
    s = SqliteLogStore(tiny_fs)
    try:
        payload = os.urandom(8192)  # incompressible and larger than a page
        fatal: BaseException | None = None
        for n in range(1, 1000):  # 1 MiB fills up long before this bound
            try:
                s.write(
                    WriteBatch(
                        (GroupWrite(group="g", entries=(Entry(1, n, EntryKind.NORMAL, payload),)),)
                    )
                )
            except StoreFatalError as e:
                fatal = e
                break
        assert fatal is not None, "the disk never filled up"
        assert "full" in str(fatal)
        with pytest.raises(StoreFatalError):
            s.submit(batch(1), lambda err: None)
    finally:
        s.close()
