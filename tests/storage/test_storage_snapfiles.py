"""Snapshots a replica took itself go to files of their own, off the group commit.

`SqliteLogStore.stage_snapshot` hands the state to a second thread; its row
joins a commit once the file is durable. Here the file writer is held back
with an event to show what happens meanwhile: commits go on, a delete or a
newer snapshot wins, and no file outlives its row.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from raftfleet_agent.raft.types import Config, Entry, ReplicaId, Snapshot, SnapshotMeta
from raftfleet_agent.storage import (
    GroupWrite,
    SqliteLogStore,
    StoreError,
    StoreFatalError,
    WriteBatch,
    _schema,
    _snapfiles,
)
from raftfleet_agent.storage import sqlite as sqlite_store

A1 = ReplicaId("a", 1)
CONFIG = Config(voters=frozenset({A1}))


def ents(lo: int, hi: int, term: int = 1) -> tuple[Entry, ...]:
    return tuple(Entry(term, i, data=f"c{i}") for i in range(lo, hi + 1))


def snap(index: int, data: bytes = b"state", term: int = 1) -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, CONFIG), data)


def write(store: SqliteLogStore, *writes: GroupWrite) -> None:
    store.write(WriteBatch(tuple(writes)))


def snapshot_rows(d: Path) -> dict[str, tuple[int, str | None]]:
    """group -> (index, file), read beside the store."""
    with contextlib.closing(sqlite3.connect(d / "raftfleet.db")) as c:
        return {g: (i, f) for g, i, f in c.execute("SELECT grp, idx, file FROM snapshot")}


def files(d: Path) -> set[str]:
    return {p.name for p in (d / "snapshots").iterdir()}


def until(cond: Callable[[], object], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


class Held:
    """The snapshot file writer waits for `go` before it writes; `written` names its files."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.written: list[str] = []

    def set(self) -> None:
        self.go.set()


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[Held]:
    h = Held()
    real = _snapfiles.write

    def slow_write(d: Path, data: bytes) -> str:
        assert h.go.wait(10), "the test never let the file writer go"
        name = real(d, data)
        h.written.append(name)
        return name

    monkeypatch.setattr(sqlite_store._snapfiles, "write", slow_write)
    yield h
    h.set()


def dropped(d: Path, h: Held, s: SqliteLogStore) -> bool:
    """The held file was written, then let go (its row refused), and the queue is empty."""
    return bool(h.written) and not files(d) and s.statistics().queue_depth == 0


def test_a_staged_snapshot_lands_as_a_file_and_survives_a_restart(tmp_path: Path) -> None:
    state = bytes(range(256)) * 4_000
    with SqliteLogStore(tmp_path) as s:
        write(s, GroupWrite(group="g", entries=ents(1, 50)))
        s.stage_snapshot("g", snap(40, state))
        until(lambda: snapshot_rows(tmp_path).get("g", (0, None))[0] == 40)
        (_idx, name) = snapshot_rows(tmp_path)["g"]
        assert name is not None and files(tmp_path) == {name}
        # Its entries stop being part of the log, as with a written snapshot.
        assert tuple(s.entries("g", 1, 100)) == ents(41, 50)
    with SqliteLogStore(tmp_path) as s:
        (rec,) = s.load()
        assert rec.snapshot == snap(40, state)
        assert rec.entries == ents(41, 50)


def test_commits_go_on_while_a_snapshot_file_is_written(tmp_path: Path, held: Held) -> None:
    with SqliteLogStore(tmp_path) as s:
        write(s, GroupWrite(group="g", entries=ents(1, 50)))
        s.stage_snapshot("g", snap(40))
        done = threading.Event()
        t = threading.Thread(
            target=lambda: (write(s, GroupWrite(group="h", entries=ents(1, 5))), done.set())
        )
        t.start()
        assert done.wait(5), "a commit waited for the snapshot file"
        assert "g" not in snapshot_rows(tmp_path)  # not stored yet: the log still has it all
        assert tuple(s.entries("g", 1, 100)) == ents(1, 50)
        held.set()
        until(lambda: "g" in snapshot_rows(tmp_path))
        t.join()


def test_a_group_deleted_meanwhile_is_not_brought_back(tmp_path: Path, held: Held) -> None:
    with SqliteLogStore(tmp_path) as s:
        write(s, GroupWrite(group="g", entries=ents(1, 50), meta=b"m"))
        s.stage_snapshot("g", snap(40))
        write(s, GroupWrite(group="g", delete=True))
        held.set()
        until(lambda: dropped(tmp_path, held, s))
        write(s, GroupWrite(group="other", meta=b"m"))  # a commit after it, to be sure
        assert "g" not in snapshot_rows(tmp_path)
    with SqliteLogStore(tmp_path) as s:
        assert [r.group for r in s.load()] == ["other"]


def test_a_group_recreated_before_staging_keeps_its_snapshot(tmp_path: Path) -> None:
    with SqliteLogStore(tmp_path) as s:
        write(s, GroupWrite(group="g", entries=ents(1, 50), meta=b"m"))
        write(s, GroupWrite(group="g", delete=True))
        write(s, GroupWrite(group="g", entries=ents(1, 30, term=2), meta=b"m2"))
        s.stage_snapshot("g", snap(20, term=2))
        until(lambda: "g" in snapshot_rows(tmp_path))
        assert s.load()[0].entries == ents(21, 30, term=2)


def test_a_newer_snapshot_stored_first_wins(tmp_path: Path, held: Held) -> None:
    with SqliteLogStore(tmp_path) as s:
        write(s, GroupWrite(group="g", entries=ents(1, 50)))
        s.stage_snapshot("g", snap(30, b"old"))
        write(s, GroupWrite(group="g", snapshot=snap(45, b"installed")))  # from a leader
        held.set()
        until(lambda: dropped(tmp_path, held, s))
        write(s, GroupWrite(group="other", meta=b"m"))
        assert snapshot_rows(tmp_path)["g"] == (45, None)
        assert s.load()[0].snapshot == snap(45, b"installed")


def test_a_replaced_snapshot_file_is_deleted(tmp_path: Path) -> None:
    with SqliteLogStore(tmp_path) as s:
        write(s, GroupWrite(group="g", entries=ents(1, 50)))
        s.stage_snapshot("g", snap(20, b"first"))
        until(lambda: snapshot_rows(tmp_path).get("g", (0,))[0] == 20)
        s.stage_snapshot("g", snap(40, b"second"))
        until(lambda: snapshot_rows(tmp_path)["g"][0] == 40 and len(files(tmp_path)) == 1)
        assert files(tmp_path) == {snapshot_rows(tmp_path)["g"][1]}
        # A snapshot written inline (installed from a leader) lets its file go too.
        write(s, GroupWrite(group="g", snapshot=snap(45, b"installed")))
        assert files(tmp_path) == set()


def test_files_no_row_names_are_swept_at_load(tmp_path: Path) -> None:
    with SqliteLogStore(tmp_path) as s:
        write(s, GroupWrite(group="g", entries=ents(1, 50)))
        s.stage_snapshot("g", snap(40))
        until(lambda: "g" in snapshot_rows(tmp_path))
    kept = files(tmp_path)
    (tmp_path / "snapshots" / "0123abcd.snap").write_bytes(b"a crash left me")
    (tmp_path / "snapshots" / "4567.snap.tmp").write_bytes(b"half written")
    (tmp_path / "snapshots" / "README").write_text("not ours: left alone")
    with SqliteLogStore(tmp_path) as s:
        assert s.load()[0].snapshot == snap(40)
    assert files(tmp_path) == kept | {"README"}


def test_a_load_while_a_file_waits_for_its_row_keeps_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep is for files a past run left, never for one staged now."""
    row_may_go = threading.Event()
    real_commit = SqliteLogStore._commit

    def commit_later(self: SqliteLogStore, items: list) -> list[str]:
        if any(isinstance(i, sqlite_store._Staged) for i in items):
            assert row_may_go.wait(10)
        return real_commit(self, items)

    monkeypatch.setattr(SqliteLogStore, "_commit", commit_later)
    with SqliteLogStore(tmp_path) as s:
        write(s, GroupWrite(group="g", entries=ents(1, 50)))
        s.stage_snapshot("g", snap(40))
        until(lambda: files(tmp_path))  # written, its row not committed
        s.load()
        assert files(tmp_path)
        row_may_go.set()
        until(lambda: "g" in snapshot_rows(tmp_path))
    with SqliteLogStore(tmp_path) as s:
        assert s.load()[0].snapshot == snap(40)


@pytest.mark.parametrize("damage", ["missing", "flipped", "truncated"])
def test_a_damaged_snapshot_file_is_refused_by_name(tmp_path: Path, damage: str) -> None:
    with SqliteLogStore(tmp_path) as s:
        write(s, GroupWrite(group="g", entries=ents(1, 50)))
        s.stage_snapshot("g", snap(40, b"x" * 1000))
        until(lambda: "g" in snapshot_rows(tmp_path))
    (name,) = files(tmp_path)
    path = tmp_path / "snapshots" / name
    raw = path.read_bytes()
    if damage == "missing":
        path.unlink()
    elif damage == "flipped":
        path.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    else:
        path.write_bytes(raw[:20])
    with SqliteLogStore(tmp_path) as s, pytest.raises(StoreError, match=name):
        s.load()


def test_a_failed_snapshot_file_makes_the_store_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_d: Path, _data: bytes) -> str:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(sqlite_store._snapfiles, "write", broken)
    s = SqliteLogStore(tmp_path)
    try:
        write(s, GroupWrite(group="g", entries=ents(1, 50)))
        s.stage_snapshot("g", snap(40))

        def refused() -> bool:
            try:
                write(s, GroupWrite(group="h", entries=ents(1, 1)))
            except StoreFatalError as e:
                return "snapshot file" in str(e)
            return False

        until(refused)
        with pytest.raises(StoreFatalError):
            s.stage_snapshot("g", snap(45))
    finally:
        s.close()


def test_stage_snapshot_refuses_index_zero(tmp_path: Path) -> None:
    with SqliteLogStore(tmp_path) as s, pytest.raises(ValueError, match="index > 0"):
        s.stage_snapshot("g", snap(0))


V1_SNAPSHOT_TABLE = """
CREATE TABLE snapshot (
    grp TEXT NOT NULL UNIQUE,
    idx INTEGER NOT NULL,
    term INTEGER NOT NULL,
    config BLOB NOT NULL,
    data BLOB NOT NULL
)"""


def test_a_version_1_store_is_upgraded_in_place(tmp_path: Path) -> None:
    with SqliteLogStore(tmp_path) as s:
        write(s, GroupWrite(group="g", entries=ents(1, 50), snapshot=snap(10, b"inline")))
    # Rebuild the snapshot table as version 1 had it (no `file` column).
    with contextlib.closing(sqlite3.connect(tmp_path / "raftfleet.db")) as c:
        c.execute("ALTER TABLE snapshot RENAME TO old")
        c.execute(V1_SNAPSHOT_TABLE)
        c.execute("INSERT INTO snapshot SELECT grp, idx, term, config, data FROM old")
        c.execute("DROP TABLE old")
        c.execute("PRAGMA user_version = 1")
        c.commit()
    with SqliteLogStore(tmp_path) as s:
        (rec,) = s.load()
        assert rec.snapshot == snap(10, b"inline")
        s.stage_snapshot("g", snap(40))
        until(lambda: snapshot_rows(tmp_path)["g"][0] == 40)
    with contextlib.closing(sqlite3.connect(tmp_path / "raftfleet.db")) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == _schema.SCHEMA_VERSION == 2
