"""The SQLite file: its schema, identity checks, and safe creation.

Theory of operation. A data dir holds one database, `raftfleet.db`. Before
anything opens it for writing we check, without modifying it:
1. the file is readable and starts with SQLite's magic header;
2. its `application_id` is ours (a foreign SQLite file is refused, never
   "upgraded") and its `user_version` is not newer than this code's schema;
3. `PRAGMA quick_check` passes (on a read-only connection).
Any failure raises `StoreError` naming the file; the agent prints it and
exits, leaving the file exactly as it was for an operator to inspect.

A new store is built under a temporary name and renamed into place once its
schema is committed, so `raftfleet.db` existing always means "a complete
raftfleet store": a crash during creation leaves only the temporary file,
which the next start discards.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import urllib.parse
from pathlib import Path

from raftfleet_agent.storage.api import StoreError

DB_NAME = "raftfleet.db"
APPLICATION_ID = 0x52464C54  # "RFLT": marks the file as a raftfleet store
SCHEMA_VERSION = 2  # 2: snapshot.file (a store of version 1 is migrated on open)
PAGE_SIZE = 4096
_MAGIC = b"SQLite format 3\x00"
_HEADER_BYTES = 100

# Entries, hard states and metadata are small rows looked up by key: WITHOUT
# ROWID stores them in the primary-key b-tree itself (one lookup, no rowid
# indirection). Snapshots may be megabytes; SQLite advises against large rows
# in WITHOUT ROWID tables, so that one keeps a rowid and a unique key on grp.
SCHEMA = """
CREATE TABLE entries (
    grp TEXT NOT NULL,
    idx INTEGER NOT NULL,
    term INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    data BLOB NOT NULL,          -- msgpack of the entry's data (a config for CONFIG entries)
    PRIMARY KEY (grp, idx)
) WITHOUT ROWID;
CREATE TABLE hard_state (
    grp TEXT NOT NULL PRIMARY KEY,
    term INTEGER NOT NULL,
    vote_agent TEXT,             -- NULL: no vote in this term
    vote_n INTEGER,
    commit_idx INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE snapshot (
    grp TEXT NOT NULL UNIQUE,
    idx INTEGER NOT NULL,
    term INTEGER NOT NULL,
    config BLOB NOT NULL,        -- msgpack of the membership at idx
    data BLOB NOT NULL,          -- opaque state machine state (its data type is in meta)
    file TEXT                    -- if set, data is empty and this file in snapshots/ holds it
);
CREATE TABLE meta (
    grp TEXT NOT NULL PRIMARY KEY,
    meta BLOB NOT NULL
) WITHOUT ROWID;
"""
TABLES = ("entries", "hard_state", "snapshot", "meta")


def _uri_ro(path: Path) -> str:
    # Without a WAL file the database file is the whole store (the last
    # close checkpointed it), and the caller holds the store's lock, so read
    # it as immutable: SQLite then creates no -wal/-shm files next to a file
    # we may be about to refuse. With a WAL (after a crash) it must be read.
    wal = Path(str(path) + "-wal")
    mode = "mode=ro" if wal.exists() else "mode=ro&immutable=1"
    return "file:" + urllib.parse.quote(str(path)) + "?" + mode


def read_header(path: Path) -> bytes:
    """The first 100 bytes of the file (separate so tests can simulate OS errors)."""
    with path.open("rb") as f:
        return f.read(_HEADER_BYTES)


def check_existing(path: Path) -> None:
    """Refuse a file that is not a healthy raftfleet store. Never writes to it."""
    try:
        header = read_header(path)
    except PermissionError:
        raise StoreError(
            f"{path}: permission denied reading the log store; "
            "check the owner and mode of the file and of its directory"
        ) from None
    except OSError as e:
        raise StoreError(f"{path}: cannot read the log store: {e.strerror or e}") from None
    if len(header) < _HEADER_BYTES or not header.startswith(_MAGIC):
        raise StoreError(
            f"{path}: not a SQLite database, so not a raftfleet log store; "
            "refusing to use or modify it"
        )
    if not os.access(path, os.R_OK | os.W_OK):
        raise StoreError(f"{path}: permission denied: the log store must be readable and writable")
    _check_identity(
        path, int.from_bytes(header[68:72], "big"), int.from_bytes(header[60:64], "big")
    )
    try:
        conn = sqlite3.connect(_uri_ro(path), uri=True, isolation_level=None)
    except sqlite3.Error as e:
        raise StoreError(f"{path}: cannot open the log store: {e}") from None
    try:
        # The header bytes may predate a change still in the WAL: ask SQLite too.
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        _check_identity(path, app_id, version)
        problems = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
    except sqlite3.Error as e:
        raise StoreError(f"{path}: the log store is corrupt or unreadable: {e}") from None
    finally:
        conn.close()
    if problems != ["ok"]:
        raise StoreError(
            f"{path}: the log store is corrupt (quick_check: {'; '.join(map(str, problems))}); "
            "refusing to use or modify it"
        )


def _check_identity(path: Path, app_id: int, version: int) -> None:
    if app_id != APPLICATION_ID:
        raise StoreError(
            f"{path}: a SQLite database of another application (application_id {app_id:#x}), "
            "not a raftfleet log store; refusing to use or modify it"
        )
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: log store schema version {version} is newer than this raftfleet "
            f"supports ({SCHEMA_VERSION}); upgrade raftfleet"
        )
    if version < 1:
        raise StoreError(f"{path}: log store has no schema version; it is damaged")


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring a store of an older schema version up to this one, in one transaction."""
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version >= SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        if version < 2:
            conn.execute("ALTER TABLE snapshot ADD COLUMN file TEXT")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except sqlite3.Error as e:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise StoreError(f"{path}: cannot upgrade the log store's schema: {e}") from None


def _fsync_path(path: Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create(path: Path) -> None:
    """Build an empty store at `path`, atomically (temporary file + rename)."""
    tmp = path.with_name(path.name + ".new")
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(tmp) + suffix).unlink(missing_ok=True)  # ours: a creation that crashed
    try:
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # only effective before the first write
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute("COMMIT")
        finally:
            conn.close()  # checkpoints the WAL into the file and removes it
        _fsync_path(tmp)
        os.rename(tmp, path)
        _fsync_path(path.parent)
    except (sqlite3.Error, OSError) as e:
        raise StoreError(f"{path}: cannot create the log store: {e}") from None


# Stores open in this process, by real path: a second open of the same file
# must be refused before it even opens the file, because closing any fd of a
# file drops every POSIX lock this process holds on it (SQLite's included).
_open_paths: set[str] = set()
_open_paths_lock = threading.Lock()


def _lock(path: Path) -> int:
    """An fd holding an exclusive flock on the store: one agent per data dir.

    flock locks are independent of the POSIX locks SQLite uses, and the kernel
    drops them when the process dies, so a crashed agent never blocks a restart.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except PermissionError:
        raise StoreError(
            f"{path}: permission denied opening the log store; "
            "check the owner and mode of the file and of its directory"
        ) from None
    except OSError as e:
        raise StoreError(f"{path}: cannot open the log store: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StoreError(f"{path}: the log store is in use by another process") from None
    return fd


def open_checked(path: Path) -> int:
    """Make sure `path` is a healthy raftfleet store, creating an empty one if absent.

    Returns an fd holding the store's lock; pass it to `release()` after the
    last SQLite connection to the file is closed.
    """
    if not path.parent.is_dir():
        raise StoreError(f"{path.parent}: data directory does not exist")
    key = os.path.realpath(path)
    with _open_paths_lock:
        if key in _open_paths:
            raise StoreError(f"{path}: the log store is already open in this process")
        _open_paths.add(key)
    try:
        if not (path.exists() or path.is_symlink()):
            for suffix in ("-wal", "-journal"):
                stray = Path(str(path) + suffix)
                if stray.exists():
                    # SQLite would replay it into whatever database takes this name.
                    raise StoreError(
                        f"{stray}: journal without its database {path.name}; refusing to start"
                    )
            create(path)
        fd = _lock(path)
        try:
            check_existing(path)
        except BaseException:
            os.close(fd)
            raise
    except BaseException:
        with _open_paths_lock:
            _open_paths.discard(key)
        raise
    return fd


def release(path: Path, fd: int) -> None:
    """Undo `open_checked`: drop the lock (after SQLite closed the file)."""
    os.close(fd)
    with _open_paths_lock:
        _open_paths.discard(os.path.realpath(path))
