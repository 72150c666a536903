"""Child process of the crash tests, and the workload it shares with them.

Run as `python crash_child.py DATA_DIR SEED`: it opens the store, prints
`ready`, then writes batches as fast as group commit allows (up to WINDOW in
flight) and prints each batch's number on its own line ONLY after the store
reported that batch durable. The test SIGKILLs it at random moments.

The workload is deterministic: batch b depends only on (seed, b) and the
state the earlier batches built, so the test replays it on a model and can
demand that the recovered store equals the model after exactly some batch
B >= the last acknowledged one. Every batch also writes b into a marker
group, so B is read from the store itself; any partially applied batch, lost
acknowledged batch or hole in a log makes the equality fail.
"""

from __future__ import annotations

import os
import random
import sys
import threading
from typing import Any

from raftfleet_agent.raft.types import (
    Config,
    Entry,
    EntryKind,
    HardState,
    ReplicaId,
    Snapshot,
    SnapshotMeta,
)
from raftfleet_agent.storage import GroupRecord, GroupWrite, SqliteLogStore, WriteBatch

GROUPS = [f"g{i:02d}" for i in range(50)]
MARKER = "__marker__"
WINDOW = 8  # batches in flight: lets several batches share one commit
CONFIG = Config(voters=frozenset({ReplicaId("a", 1), ReplicaId("b", 1)}))


class Workload:
    """The model: per group {"hs", "snap", "meta", "log" (entries after snap)}."""

    def __init__(self, seed: int, records: list[GroupRecord] = ()) -> None:  # type: ignore[assignment]
        self.seed = seed
        self.groups: dict[str, dict[str, Any]] = {
            r.group: {
                "hs": None if r.hard_state == HardState() else r.hard_state,
                "snap": r.snapshot,
                "meta": r.meta,
                "log": list(r.entries),
            }
            for r in records
        }

    @property
    def batch_id(self) -> int:
        m = self.groups.get(MARKER)
        return m["hs"].term if m else 0

    def next_batch(self) -> WriteBatch:
        """Generate batch `batch_id + 1` and apply it to the model."""
        b = self.batch_id + 1
        rng = random.Random(f"{self.seed}:{b}")
        writes = [self._group_write(b, g, rng) for g in rng.sample(GROUPS, rng.randint(1, 50))]
        writes.append(GroupWrite(group=MARKER, hard_state=HardState(term=b)))
        for w in writes:
            self._apply(w)
        return WriteBatch(tuple(writes))

    def _group_write(self, b: int, name: str, rng: random.Random) -> GroupWrite:
        g = self.groups.get(name)
        snap_index = g["snap"].meta.index if g and g["snap"] else 0
        log = g["log"] if g else []
        last = log[-1].index if log else snap_index
        hs = HardState(term=b, vote=None, commit=max(0, last - 1))
        roll = rng.random()
        if g is not None and roll < 0.01:
            return GroupWrite(group=name, delete=True)
        if log and roll < 0.08:
            at = rng.choice(log)
            snap = Snapshot(SnapshotMeta(at.index, at.term, CONFIG), f"snap{b}".encode())
            return GroupWrite(group=name, snapshot=snap, hard_state=hs)
        start = last + 1
        if log and roll < 0.16:  # overwrite a suffix (a follower resolving a conflict)
            start = rng.randint(max(snap_index + 1, last - 2), last)
        n = rng.randint(1, 3)
        entries = tuple(
            Entry(b, i, EntryKind.NORMAL, [b, name, i]) for i in range(start, start + n)
        )
        meta = f"meta{b}".encode() if roll > 0.95 else None
        return GroupWrite(group=name, entries=entries, hard_state=hs, meta=meta)

    def _apply(self, w: GroupWrite) -> None:
        if w.delete:
            self.groups.pop(w.group, None)
            return
        g = self.groups.setdefault(w.group, {"hs": None, "snap": None, "meta": None, "log": []})
        if w.meta is not None:
            g["meta"] = w.meta
        if w.snapshot is not None:
            g["snap"] = w.snapshot
            g["log"] = [e for e in g["log"] if e.index > w.snapshot.meta.index]
        if w.entries:
            g["log"] = [e for e in g["log"] if e.index < w.entries[0].index] + list(w.entries)
        if w.hard_state is not None:
            g["hs"] = w.hard_state

    def records(self) -> list[GroupRecord]:
        return [
            GroupRecord(
                group=name,
                hard_state=g["hs"] or HardState(),
                snapshot=g["snap"],
                entries=tuple(g["log"]),
                meta=g["meta"],
            )
            for name, g in sorted(self.groups.items())
        ]


def main() -> None:
    data_dir, seed = sys.argv[1], int(sys.argv[2])
    store = SqliteLogStore(data_dir)
    work = Workload(seed, store.load())
    in_flight = threading.Semaphore(WINDOW)
    out = sys.stdout

    def acked(b: int) -> Any:
        def on_durable(err: BaseException | None) -> None:
            if err is not None:
                out.write(f"fatal {err}\n")
                out.flush()
                os._exit(3)
            out.write(f"{b}\n")
            out.flush()
            in_flight.release()

        return on_durable

    out.write("ready\n")
    out.flush()
    for _ in range(10_000_000):  # until killed; bounded all the same
        in_flight.acquire()
        b = work.batch_id + 1
        store.submit(work.next_batch(), acked(b))


if __name__ == "__main__":
    main()
