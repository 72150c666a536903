"""The stores free what a snapshot made dead a little at a time, never a live entry.

SqliteLogStore deletes dead rows a budget per commit. They are counted with
a separate connection on the database file: the store's own reads hide dead
rows by design, so only the table shows them. MemoryLogStore lets go of the
entries a slice per submit.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftfleet_agent.raft.types import Config, Entry, HardState, ReplicaId, Snapshot, SnapshotMeta
from raftfleet_agent.storage import GroupWrite, MemoryLogStore, SqliteLogStore, WriteBatch
from raftfleet_agent.storage import memory as memory_store
from raftfleet_agent.storage import sqlite as sqlite_store

A1 = ReplicaId("a", 1)
CONFIG = Config(voters=frozenset({A1}))
TRIM = 50  # _TRIM_ROWS for these tests: small, so a few hundred rows show the pacing


def ents(lo: int, hi: int, term: int = 1) -> tuple[Entry, ...]:
    return tuple(Entry(term, i, data=f"c{i}") for i in range(lo, hi + 1))


def snap(index: int, term: int = 1) -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, CONFIG), b"state")


def rows(path: Path, group: str) -> list[int]:
    """The indexes stored for `group`, dead or alive, read beside the store."""
    with contextlib.closing(sqlite3.connect(path / "raftfleet.db")) as c:
        found = c.execute("SELECT idx FROM entries WHERE grp=? ORDER BY idx", (group,))
        return [i for (i,) in found]


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SqliteLogStore]:
    monkeypatch.setattr(sqlite_store, "_TRIM_ROWS", TRIM)
    s = SqliteLogStore(tmp_path)
    try:
        yield s
    finally:
        s.close()


def write(store: SqliteLogStore | MemoryLogStore, *writes: GroupWrite) -> None:
    store.write(WriteBatch(tuple(writes)))


def test_a_snapshot_deletes_its_rows_over_the_next_commits(
    store: SqliteLogStore, tmp_path: Path
) -> None:
    write(store, GroupWrite(group="g", entries=ents(1, 300)))
    write(store, GroupWrite(group="g", snapshot=snap(200)))
    # The snapshot's own commit deleted no more than its budget...
    assert rows(tmp_path, "g") == list(range(TRIM + 1, 301))
    # ...and no reader sees the dead ones.
    (rec,) = store.load()
    assert rec.entries == ents(201, 300)
    assert tuple(store.entries("g", 1, 1000)) == ents(201, 300)
    assert store.last_index_term()["g"] == (300, 1)
    # Each later commit deletes its budget plus as many rows as it inserts.
    write(store, GroupWrite(group="g", entries=ents(301, 310)))
    assert rows(tmp_path, "g")[0] == 2 * TRIM + 10 + 1
    for _ in range(5):
        write(store, GroupWrite(group="other", hard_state=HardState(1, A1, 0)))
    # Done, and not one row past the snapshot went with them.
    assert rows(tmp_path, "g") == list(range(201, 311))
    assert store.load()[0].entries == ents(201, 310)


def test_a_deleted_and_recreated_group_keeps_its_new_rows(
    store: SqliteLogStore, tmp_path: Path
) -> None:
    write(store, GroupWrite(group="g", entries=ents(1, 400)))
    write(store, GroupWrite(group="g", snapshot=snap(390)))
    assert len(rows(tmp_path, "g")) > 100  # dead rows still waiting
    # The group is deleted and created again: its new log is all alive, though
    # its indexes are below the old snapshot whose trim was still pending.
    write(store, GroupWrite(group="g", delete=True, entries=ents(1, 120, term=2)))
    for _ in range(10):
        write(store, GroupWrite(group="other", hard_state=HardState(1, A1, 0)))
    assert rows(tmp_path, "g") == list(range(1, 121))
    assert store.load()[0].entries == ents(1, 120, term=2)
    # Its own snapshot later makes its own rows dead, and only those.
    write(store, GroupWrite(group="g", snapshot=snap(100, term=2)))
    for _ in range(3):
        write(store, GroupWrite(group="other", hard_state=HardState(1, A1, 0)))
    assert rows(tmp_path, "g") == list(range(101, 121))


def test_dead_rows_left_by_a_crash_are_found_at_load_and_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "_TRIM_ROWS", TRIM)
    with SqliteLogStore(tmp_path) as s:
        write(s, GroupWrite(group="g", entries=ents(1, 300)))
        write(s, GroupWrite(group="g", snapshot=snap(250)))
    assert len(rows(tmp_path, "g")) == 300 - TRIM  # closed with dead rows in the table
    with SqliteLogStore(tmp_path) as s:
        assert s.load()[0].entries == ents(251, 300)
        for _ in range(5):
            write(s, GroupWrite(group="other", hard_state=HardState(1, A1, 0)))
        assert rows(tmp_path, "g") == list(range(251, 301))


def test_trims_take_groups_in_turn_within_one_budget(store: SqliteLogStore, tmp_path: Path) -> None:
    write(store, *(GroupWrite(group=g, entries=ents(1, 100)) for g in "abc"))
    write(store, *(GroupWrite(group=g, snapshot=snap(90)) for g in "abc"))
    left = sum(len(rows(tmp_path, g)) for g in "abc")
    assert left == 300 - TRIM  # one budget for the whole commit, not one per group
    for _ in range(10):
        write(store, GroupWrite(group="other", hard_state=HardState(1, A1, 0)))
    assert [rows(tmp_path, g) for g in "abc"] == [list(range(91, 101))] * 3


def test_the_memory_store_lets_go_of_compacted_entries_a_slice_per_submit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(memory_store, "_FREE_PER_SUBMIT", TRIM)
    store = MemoryLogStore()
    write(store, GroupWrite(group="g", entries=ents(1, 300)))
    write(store, GroupWrite(group="g", snapshot=snap(200)))
    assert store._compacted.waiting == 200 - TRIM  # the snapshot's submit freed one slice
    assert store.load()[0].entries == ents(201, 300)
    write(store, GroupWrite(group="g", entries=ents(301, 310)))
    assert store._compacted.waiting == 200 - 2 * TRIM - 10  # a slice, plus the entries added
    for _ in range(3):
        write(store, GroupWrite(group="other", hard_state=HardState(1, A1, 0)))
    assert store._compacted.waiting == 0
    assert tuple(store.entries("g", 1, 1000)) == ents(201, 310)
