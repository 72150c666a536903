"""Snapshot files: the state of a snapshot a replica took itself, beside the database.

A snapshot rewrites a group's whole state. Inside SQLite that meant every
byte twice (the WAL, then the checkpoint) in the one writer thread, and every
group's commit waited: a 50 MB kv snapshot held the group commit for 0.2-0.3 s,
and up to ~1 s with the checkpoint it set off. Written to its own file by a
thread of its own, it costs the commits nothing; the `snapshot` row then only
names the file.

A file is `<random hex>.snap` in `<data_dir>/snapshots/`: a header (magic, the
data's length, its BLAKE2b-256 digest), then the data. It is written under a
temporary name, fsynced, renamed into place and the directory fsynced, so a
name that exists is a complete file. A file no row names (a crash between the
file and its row, or after a row replaced it) is deleted at the next start.
Reading checks the header, length and digest: a file that does not match
raises `StoreError` naming it.
"""

from __future__ import annotations

import hashlib
import os
import struct
import uuid
from pathlib import Path

from raftfleet_agent.storage.api import StoreError

DIR_NAME = "snapshots"
SUFFIX = ".snap"
_TMP = ".tmp"
_MAGIC = b"RFSNAP1\n"
_HEADER = struct.Struct(">8sQ32s")  # magic, data length, BLAKE2b-256 of the data


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(data_dir: Path) -> Path:
    """`<data_dir>/snapshots`, created (durably) if absent."""
    d = data_dir / DIR_NAME
    if not d.is_dir():
        try:
            d.mkdir()
            _fsync_dir(data_dir)
        except OSError as e:
            raise StoreError(f"{d}: cannot create the snapshot directory: {e}") from None
    return d


def write(d: Path, data: bytes) -> str:
    """Write `data` durably to a new file in `d`; returns its name. Raises OSError."""
    name = uuid.uuid4().hex + SUFFIX
    tmp = d / (name + _TMP)
    with open(tmp, "wb") as f:
        f.write(_HEADER.pack(_MAGIC, len(data), _digest(data)))
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, d / name)
    _fsync_dir(d)
    return name


def read(d: Path, name: str) -> bytes:
    """The data of file `name`, checked; StoreError naming the file if it does not match."""
    path = d / name
    if os.sep in name or not name.endswith(SUFFIX):
        raise StoreError(f"{path}: not a snapshot file name")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise StoreError(f"{path}: cannot read the snapshot file: {e.strerror or e}") from None
    if len(raw) < _HEADER.size:
        raise StoreError(f"{path}: snapshot file is truncated")
    magic, length, digest = _HEADER.unpack_from(raw)
    data = raw[_HEADER.size :]
    if magic != _MAGIC:
        raise StoreError(f"{path}: not a raftfleet snapshot file")
    if len(data) != length or _digest(data) != digest:
        raise StoreError(f"{path}: snapshot file is damaged (length or digest do not match)")
    return data


def sweep(d: Path, keep: set[str]) -> list[str]:
    """Delete every file in `d` that is not in `keep` (ours: orphans and temporaries)."""
    gone = []
    for p in d.iterdir():
        if p.name in keep or not (p.name.endswith(SUFFIX) or p.name.endswith(SUFFIX + _TMP)):
            continue
        p.unlink(missing_ok=True)
        gone.append(p.name)
    return gone


def remove(d: Path, names: list[str]) -> None:
    """Delete files no row names any more; one that is already gone is fine."""
    for name in names:
        (d / name).unlink(missing_ok=True)
