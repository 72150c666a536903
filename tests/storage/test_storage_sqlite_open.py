"""SqliteLogStore's startup checks: refuse anything that is not a healthy store of ours,
say which file, and leave it byte-for-byte as it was."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest

from raftfleet_agent.raft.types import Entry, EntryKind, HardState
from raftfleet_agent.storage import (
    GroupWrite,
    SqliteLogStore,
    StoreError,
    WriteBatch,
    _schema,
    open_store,
)


def dir_state(d: Path) -> dict[str, str]:
    """Every file under `d` (the snapshot directory too) with a hash of its bytes."""
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(d.rglob("*"))
        if p.is_file()
    }


def fill(d: Path, groups: int = 200, entries: int = 50) -> None:
    payload = "p" * 200
    with SqliteLogStore(d) as s:
        s.write(
            WriteBatch(
                tuple(
                    GroupWrite(
                        group=f"group-{g:04d}",
                        entries=tuple(
                            Entry(1, i, EntryKind.NORMAL, [g, i, payload])
                            for i in range(1, entries + 1)
                        ),
                        hard_state=HardState(1, None, entries),
                    )
                    for g in range(groups)
                )
            )
        )


def refuses(d: Path, *words: str) -> StoreError:
    """Opening `d` must raise StoreError naming the file and mention `words`; nothing changes."""
    before = dir_state(d)
    with pytest.raises(StoreError) as info:
        SqliteLogStore(d)
    msg = str(info.value)
    assert str(d / "raftfleet.db") in msg
    for w in words:
        assert w in msg, msg
    assert dir_state(d) == before
    return info.value


def test_new_store_layout(tmp_path: Path) -> None:
    with SqliteLogStore(tmp_path) as s:
        assert s.path == tmp_path / "raftfleet.db"
        assert s._wconn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s._wconn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    conn = sqlite3.connect(tmp_path / "raftfleet.db")
    try:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == _schema.APPLICATION_ID
        assert conn.execute("PRAGMA user_version").fetchone()[0] == _schema.SCHEMA_VERSION
        sql = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type='table'"))
    finally:
        conn.close()
    assert set(sql) == {"entries", "hard_state", "snapshot", "meta"}
    for t in ("entries", "hard_state", "meta"):
        assert "WITHOUT ROWID" in sql[t]
    assert "PRIMARY KEY (grp, idx)" in sql["entries"]
    assert not (tmp_path / "raftfleet.db.new").exists()


def test_open_store_picks_implementation(tmp_path: Path) -> None:
    mem = open_store(None, in_memory=True)
    mem.close()
    assert type(mem).__name__ == "MemoryLogStore"
    durable = open_store(tmp_path)
    durable.close()
    assert isinstance(durable, SqliteLogStore)
    with pytest.raises(StoreError):
        open_store(None)


def test_missing_data_dir(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        SqliteLogStore(tmp_path / "nope")
    assert not (tmp_path / "nope").exists()


def test_leftover_of_crashed_creation_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "raftfleet.db.new").write_bytes(b"half-written")
    with SqliteLogStore(tmp_path) as s:
        s.write(WriteBatch((GroupWrite(group="g", meta=b"m"),)))
    assert not (tmp_path / "raftfleet.db.new").exists()
    with SqliteLogStore(tmp_path) as s:
        assert [r.group for r in s.load()] == ["g"]


def test_garbage_file(tmp_path: Path) -> None:
    (tmp_path / "raftfleet.db").write_bytes(os.urandom(10_000))
    refuses(tmp_path, "not a SQLite database")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "raftfleet.db").write_bytes(b"")
    refuses(tmp_path, "not a SQLite database")


def test_foreign_sqlite_database(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "raftfleet.db")
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.execute("INSERT INTO users VALUES ('alice')")
    conn.commit()
    conn.close()
    refuses(tmp_path, "another application")


def test_newer_schema_version(tmp_path: Path) -> None:
    fill(tmp_path, groups=2, entries=2)
    conn = sqlite3.connect(tmp_path / "raftfleet.db")
    conn.execute(f"PRAGMA user_version = {_schema.SCHEMA_VERSION + 1}")
    conn.close()
    refuses(tmp_path, "newer", "upgrade")


def test_stray_wal_without_database(tmp_path: Path) -> None:
    (tmp_path / "raftfleet.db-wal").write_bytes(b"x" * 100)
    with pytest.raises(StoreError, match=r"raftfleet\.db-wal"):
        SqliteLogStore(tmp_path)
    assert not (tmp_path / "raftfleet.db").exists()


@pytest.mark.parametrize("where", [0.3, 0.5, 0.8])
def test_damaged_pages(tmp_path: Path, where: float) -> None:
    fill(tmp_path)
    db = tmp_path / "raftfleet.db"
    assert set(os.listdir(tmp_path)) == {"raftfleet.db", "snapshots"}  # checkpointed: no WAL
    size = db.stat().st_size
    page = 4096
    assert size > 40 * page
    raw = bytearray(db.read_bytes())
    # Scribble over eight pages around `where`, from the middle of each page
    # across the next page's header: b-tree headers and cells both get hit.
    first = int(size * where) // page
    for p in range(first, first + 8):
        start = p * page + page // 2
        raw[start : start + page] = os.urandom(page)
    db.write_bytes(bytes(raw))
    refuses(tmp_path, "corrupt")


def test_unreadable_file_real(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode; see the simulated test")
    fill(tmp_path, groups=1, entries=1)
    db = tmp_path / "raftfleet.db"
    db.chmod(0)
    try:
        refuses(tmp_path, "permission denied")
    finally:
        db.chmod(0o600)


def test_unreadable_file_simulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fill(tmp_path, groups=1, entries=1)

    def denied(path: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(_schema, "read_header", denied)
    refuses(tmp_path, "permission denied")


def test_healthy_store_reopens_many_times(tmp_path: Path) -> None:
    fill(tmp_path, groups=20, entries=5)
    for _ in range(3):
        with SqliteLogStore(tmp_path) as s:
            recs = s.load()
            assert len(recs) == 20
            assert all(len(r.entries) == 5 for r in recs)


def test_second_open_in_same_process_refused(tmp_path: Path) -> None:
    with SqliteLogStore(tmp_path) as s:
        s.write(WriteBatch((GroupWrite(group="g", meta=b"m"),)))
        with pytest.raises(StoreError, match="already open"):
            SqliteLogStore(tmp_path)
        s.write(WriteBatch((GroupWrite(group="h", meta=b"m"),)))  # the first is unharmed
    with SqliteLogStore(tmp_path) as s:  # and closing released it
        assert [r.group for r in s.load()] == ["g", "h"]


@pytest.mark.parametrize(
    "row",
    [
        ("g", 2, 1, 0, b"\xc1"),  # 0xc1 is never valid msgpack
        ("g", 2, 1, 7, b"\xc0"),  # unknown entry kind
        ("g", 2, 1, 2, b"\x92\x01\x02"),  # a CONFIG entry whose data is not a config
    ],
)
def test_malformed_rows_are_refused_at_load(tmp_path: Path, row: tuple) -> None:
    fill(tmp_path, groups=1, entries=1)
    conn = sqlite3.connect(tmp_path / "raftfleet.db")
    conn.execute("INSERT INTO entries VALUES (?, ?, ?, ?, ?)", row)
    conn.commit()
    conn.close()
    with SqliteLogStore(tmp_path) as s, pytest.raises(StoreError) as info:
        s.load()
    assert str(tmp_path / "raftfleet.db") in str(info.value)
