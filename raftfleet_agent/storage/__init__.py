"""Log stores: every group's Raft log, hard state and snapshot, per agent.

`open_store()` picks the implementation; both follow `LogStore` (see `api`).
"""

from __future__ import annotations

from pathlib import Path

from raftfleet_agent.storage.api import (
    DurableCallback,
    GroupRecord,
    GroupWrite,
    LogStore,
    StoreError,
    StoreFatalError,
    StoreStats,
    WriteBatch,
)
from raftfleet_agent.storage.memory import MemoryLogStore
from raftfleet_agent.storage.sqlite import SqliteLogStore

__all__ = [
    "DurableCallback",
    "GroupRecord",
    "GroupWrite",
    "LogStore",
    "MemoryLogStore",
    "SqliteLogStore",
    "StoreError",
    "StoreFatalError",
    "StoreStats",
    "WriteBatch",
    "open_store",
]


def open_store(data_dir: str | Path | None, in_memory: bool = False) -> LogStore:
    """The agent's store: in memory (`--in-memory`), else `<data_dir>/raftfleet.db`.

    Raises `StoreError` (naming the file) if the existing store is foreign,
    corrupt, newer than this code or unreadable; the file is left untouched.
    """
    if in_memory:
        return MemoryLogStore()
    if data_dir is None:
        raise StoreError("a data directory is required unless the store is in memory")
    return SqliteLogStore(data_dir)
