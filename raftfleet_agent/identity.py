"""Who this agent is: `<data_dir>/identity.json`, written once, checked on every start.

Theory of operation. On first start the agent writes its identity: format
version, agent name, a random 128-bit node id, creation time, the cluster id
(None until the agent joins or founds a cluster) and the next replica number
to hand out. On every later start the file must agree with the configured
name (and cluster id, when known), or the agent refuses to start: pointing
`--data-dir` at another agent's directory would otherwise let two agents vote
with one log, or one agent vote with another cluster's log.

Replica numbers and wiped data dirs. A replica is `(group, agent, n)`. A
replica that lost its disk also lost its vote, so it must never come back
under an old `n` (DESIGN.md, "a wiped data dir gets a new replica id"). The
counter lives in this file, so a wiped data dir loses it too; that is why a
new identity starts its counter at the creation time in microseconds since
the epoch: every `n` it hands out is above every `n` the previous incarnation
handed out, unless that one created more replicas than microseconds passed
between the two first starts (a million per second). The fleet also sees the
node id change for the same agent name and can treat every replica the agent
had as lost.

Every write is atomic: temporary file, fsync, rename over, fsync the
directory. A crash leaves either the old file or the new one, plus at worst a
temporary file that the next `open_identity` removes. The counter is written
before numbers are handed out, so a crash can skip numbers but never reuse
one. Writes fsync: these calls block, so call them from a worker thread
(`trio.to_thread.run_sync`) or accept a short stall; they run rarely (first
start, joining, creating or moving a replica), and `allocate_replica_ns`
reserves many numbers with one write.

A damaged identity file is never repaired or replaced: IdentityError names
the file and the file stays as it was, for the operator to inspect.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import secrets
import threading
import time
from typing import Any

import attrs

FILE_NAME = "identity.json"
FORMAT_VERSION = 1
_TMP_MARKER = ".tmp-"
_NODE_ID_RE = re.compile(r"[0-9a-f]{32}")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
# Present on freshly formatted ext* file systems; not a sign of old data.
_IGNORED_ENTRIES = frozenset({"lost+found"})


class IdentityError(Exception):
    """The data dir cannot be used by this agent; the message says why and where."""


@attrs.frozen(kw_only=True)
class Identity:
    """The contents of identity.json."""

    format_version: int = FORMAT_VERSION
    agent_name: str
    node_id: str  # 32 lowercase hex digits; new for every new data dir
    cluster_id: str | None
    created_at: str  # ISO 8601, UTC, for operators
    next_replica_n: int  # the next replica number to hand out

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def _new_identity(name: str, cluster_id: str | None) -> Identity:
    now_ns = time.time_ns()
    created = datetime.datetime.fromtimestamp(now_ns / 1e9, datetime.UTC)
    return Identity(
        agent_name=name,
        node_id=secrets.token_hex(16),
        cluster_id=cluster_id,
        created_at=created.isoformat(timespec="seconds"),
        next_replica_n=now_ns // 1000,
    )


def _parse(path: str, raw: bytes) -> Identity:
    """Validate the file's contents completely; raise IdentityError naming the file."""

    def corrupt(why: str) -> IdentityError:
        return IdentityError(f"identity file {path} is damaged ({why}); it was left unchanged")

    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise corrupt(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise corrupt("not a JSON object")
    version = data.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise IdentityError(
            f"identity file {path} has format {version}, newer than this raftfleet "
            f"understands ({FORMAT_VERSION}); upgrade raftfleet"
        )
    expected = {f.name for f in attrs.fields(Identity)}
    if set(data) != expected:
        missing, extra = sorted(expected - set(data)), sorted(set(data) - expected)
        raise corrupt(f"missing keys {missing}, unexpected keys {extra}")
    checks = {
        "format_version": version == FORMAT_VERSION,
        "agent_name": isinstance(data["agent_name"], str)
        and bool(_NAME_RE.fullmatch(data["agent_name"])),
        "node_id": isinstance(data["node_id"], str)
        and bool(_NODE_ID_RE.fullmatch(data["node_id"])),
        "cluster_id": data["cluster_id"] is None
        or (isinstance(data["cluster_id"], str) and data["cluster_id"] != ""),
        "created_at": isinstance(data["created_at"], str),
        "next_replica_n": isinstance(data["next_replica_n"], int)
        and not isinstance(data["next_replica_n"], bool)
        and data["next_replica_n"] >= 1,
    }
    for key, ok in checks.items():
        if not ok:
            raise corrupt(f"bad {key}: {data[key]!r}")
    return Identity(**data)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: str, data: bytes) -> None:
    """Replace `path` with `data` so a crash leaves the old or the new contents."""
    directory = os.path.dirname(path)
    tmp = f"{path}{_TMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    # The rename is durable only once the directory entry is.
    _fsync_dir(directory)


class IdentityFile:
    """The agent's identity, loaded or created, and the writes it allows.

    Thread-safe: a lock serialises writes, so several worker threads may
    allocate replica numbers at once. `path` is None for an in-memory agent,
    whose identity lives and dies with the process.
    """

    def __init__(self, path: str | None, identity: Identity):
        self.path = path
        self._identity = identity
        self._lock = threading.Lock()

    @property
    def identity(self) -> Identity:
        return self._identity

    @property
    def agent_name(self) -> str:
        return self._identity.agent_name

    @property
    def node_id(self) -> str:
        return self._identity.node_id

    @property
    def cluster_id(self) -> str | None:
        return self._identity.cluster_id

    def set_cluster_id(self, cluster_id: str) -> None:
        """Record the cluster this data dir belongs to; once, never changed.

        Setting the same id again is a no-op; a different one raises
        IdentityError and writes nothing.
        """
        if not isinstance(cluster_id, str) or not cluster_id:
            raise ValueError(f"cluster id must be a non-empty string, got {cluster_id!r}")
        with self._lock:
            current = self._identity.cluster_id
            if current == cluster_id:
                return
            if current is not None:
                raise IdentityError(_wrong_cluster(self.path, current, cluster_id))
            self._store(attrs.evolve(self._identity, cluster_id=cluster_id))

    def next_replica_n(self) -> int:
        """A replica number never handed out before by this data dir."""
        return self.allocate_replica_ns(1).start

    def allocate_replica_ns(self, count: int) -> range:
        """Reserve `count` fresh replica numbers with one durable write.

        The counter is persisted before the numbers are returned: a crash
        afterwards skips them, never hands them out twice.
        """
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        with self._lock:
            start = self._identity.next_replica_n
            self._store(attrs.evolve(self._identity, next_replica_n=start + count))
            return range(start, start + count)

    def _store(self, new: Identity) -> None:
        # Write first, then adopt: if the write fails, memory still matches disk.
        if self.path is not None:
            _write_atomic(self.path, _encode(new))
        self._identity = new


def _encode(identity: Identity) -> bytes:
    return (json.dumps(identity.to_json(), indent=2, sort_keys=True) + "\n").encode()


def _wrong_cluster(path: str | None, recorded: str, wanted: str) -> str:
    where = f"data dir {os.path.dirname(path)}" if path else "this agent"
    return (
        f"{where} belongs to cluster {recorded!r}, not {wanted!r}; "
        "use the data dir of this cluster or a new, empty one"
    )


def _remove_stale_tmp_files(data_dir: str) -> None:
    # Left by a crash between creating and renaming; never the live file.
    prefix = FILE_NAME + _TMP_MARKER
    for entry in os.listdir(data_dir):
        if entry.startswith(prefix):
            try:
                os.unlink(os.path.join(data_dir, entry))
            except FileNotFoundError:
                pass


def open_identity(data_dir: str, name: str, cluster_id: str | None = None) -> IdentityFile:
    """Load `<data_dir>/identity.json`, or create it on first start.

    Refuses (IdentityError) a data dir that belongs to another agent name or,
    when `cluster_id` is given and one is recorded, to another cluster; a
    damaged identity file; and a data dir that holds files but no identity
    (its data would be served under a new node id). Creates `data_dir`
    (mode 0700) if needed. A `cluster_id` given for an identity without one
    is recorded. Blocks on fsync.
    """
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"invalid agent name {name!r}")
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    _remove_stale_tmp_files(data_dir)
    path = os.path.join(data_dir, FILE_NAME)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return _create(data_dir, path, name, cluster_id)
    except OSError as exc:
        raise IdentityError(f"cannot read identity file {path}: {exc.strerror}") from None
    identity = _parse(path, raw)
    if identity.agent_name != name:
        raise IdentityError(
            f"data dir {data_dir} belongs to agent {identity.agent_name!r}, not {name!r}; "
            f"start it with --name {identity.agent_name} or give {name!r} its own --data-dir"
        )
    handle = IdentityFile(path, identity)
    if cluster_id is not None:
        handle.set_cluster_id(cluster_id)
    return handle


def _create(data_dir: str, path: str, name: str, cluster_id: str | None) -> IdentityFile:
    leftovers = sorted(set(os.listdir(data_dir)) - _IGNORED_ENTRIES)
    if leftovers:
        raise IdentityError(
            f"data dir {data_dir} has no {FILE_NAME} but is not empty ({', '.join(leftovers[:5])}"
            f"{', ...' if len(leftovers) > 5 else ''}); refusing to serve old data under a new "
            "identity: restore the identity file or empty the directory"
        )
    identity = _new_identity(name, cluster_id)
    _write_atomic(path, _encode(identity))
    return IdentityFile(path, identity)


def in_memory_identity(name: str, cluster_id: str | None = None) -> IdentityFile:
    """A fresh identity that is never written (for `--in-memory` agents and tests)."""
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"invalid agent name {name!r}")
    return IdentityFile(None, _new_identity(name, cluster_id))
