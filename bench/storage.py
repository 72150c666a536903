"""Benchmark of the SQLite log store: group commit against one transaction per entry.

    .venv/bin/python bench/storage.py [--dir DIR] [--seconds S] [--keep]

Measured in one run, on a real disk (never tmpfs: fsync there is free):
- durable entries/s with 1, 10, 100, 1000 groups writing at once. Each group
  is a closed-loop writer, like a replica in the multi-raft loop: it has one
  small batch (one ~100-byte entry plus its hard state) in flight, and
  submits the next as soon as the previous one is durable (lock-step, the
  strictest case; a second run allows two batches in flight per group, as a
  pipelining leader or follower would). The driver submits one batch per
  ready group per turn without waiting; the store's writer merges whatever
  is queued into one commit.
- the same workload with one transaction per entry (`write()` per entry,
  the peer we compare against), and the ratio;
- commits (fsyncs) per second, p50/p99 commit duration and p50/p99 latency
  from submit to durable;
- the time to reopen a store of 10,000 groups x 100 entries (open with its
  integrity check + load every group), in a fresh process.

Human-readable lines go to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from raftfleet_agent.raft.types import Entry, EntryKind, HardState
from raftfleet_agent.storage import GroupWrite, SqliteLogStore, WriteBatch

PAYLOAD = b"p" * 100
GROUP_COUNTS = (1, 10, 100, 1000)
REOPEN_GROUPS, REOPEN_ENTRIES = 10_000, 100
MAX_BATCHES = 2_000_000  # a bound on every load loop, besides its time limit


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fs_type(path: Path) -> str:
    """The file system type holding `path` (longest matching mount point)."""
    best, kind = "", "unknown"
    real = os.path.realpath(path)
    with open("/proc/mounts", encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            mnt = parts[1]
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                best, kind = mnt, parts[2]
    return kind


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def one_entry(name: str, index: int) -> WriteBatch:
    return WriteBatch(
        (
            GroupWrite(
                group=name,
                entries=(Entry(1, index, EntryKind.NORMAL, PAYLOAD),),
                hard_state=HardState(1, None, index - 1),
            ),
        )
    )


def group_commit_run(d: Path, groups: int, seconds: float, depth: int) -> dict[str, float]:
    """Each group keeps up to `depth` one-entry batches in flight (1 = lock-step)."""
    names = [f"group-{g:05d}" for g in range(groups)]
    next_index = [1] * groups
    ready = list(range(groups)) * depth
    latencies: list[float] = []
    cond = threading.Condition()
    errors: list[BaseException] = []

    def durable(g: int, t0: float) -> Callable[[BaseException | None], None]:
        def cb(err: BaseException | None) -> None:
            now = time.perf_counter()
            with cond:
                if err is not None:
                    errors.append(err)
                ready.append(g)
                latencies.append(now - t0)
                cond.notify()

        return cb

    store = SqliteLogStore(d)
    try:
        start = time.perf_counter()
        submitted = 0
        while time.perf_counter() - start < seconds and submitted < MAX_BATCHES:
            with cond:
                cond.wait_for(lambda: ready or errors, timeout=5.0)
                if errors:
                    raise errors[0]
                turn, ready[:] = ready[:], []
            for g in turn:
                store.submit(one_entry(names[g], next_index[g]), durable(g, time.perf_counter()))
                next_index[g] += 1
            submitted += len(turn)
        with cond:  # drain: everything submitted is durable before the clock stops
            assert cond.wait_for(lambda: len(latencies) == submitted, timeout=60)
        elapsed = time.perf_counter() - start
        stats = store.statistics()
        commits = store.recent_commit_durations()
    finally:
        store.close()
    return {
        "entries_per_s": stats.entries / elapsed,
        "commits_per_s": stats.commits / elapsed,
        "entries_per_commit": stats.entries / max(1, stats.commits),
        "commit_p50_ms": 1000 * pct(commits, 0.50),
        "commit_p99_ms": 1000 * pct(commits, 0.99),
        "ack_p50_ms": 1000 * pct(latencies, 0.50),
        "ack_p99_ms": 1000 * pct(latencies, 0.99),
    }


def per_entry_run(d: Path, groups: int, seconds: float) -> dict[str, float]:
    """The peer: every entry in its own transaction (write() = submit + wait)."""
    names = [f"group-{g:05d}" for g in range(groups)]
    next_index = [1] * groups
    latencies = []
    store = SqliteLogStore(d)
    try:
        start = time.perf_counter()
        k = 0
        while time.perf_counter() - start < seconds and k < MAX_BATCHES:
            g = k % groups
            t0 = time.perf_counter()
            store.write(one_entry(names[g], next_index[g]))
            latencies.append(time.perf_counter() - t0)
            next_index[g] += 1
            k += 1
        elapsed = time.perf_counter() - start
        stats = store.statistics()
    finally:
        store.close()
    return {
        "entries_per_s": stats.entries / elapsed,
        "commits_per_s": stats.commits / elapsed,
        "ack_p50_ms": 1000 * pct(latencies, 0.50),
        "ack_p99_ms": 1000 * pct(latencies, 0.99),
    }


REOPEN_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
from raftfleet_agent.storage import SqliteLogStore
t1 = time.perf_counter()
s = SqliteLogStore(sys.argv[1])
t2 = time.perf_counter()
recs = s.load()
t3 = time.perf_counter()
lit = s.last_index_term()
t4 = time.perf_counter()
n = sum(len(r.entries) for r in recs)
s.close()
print(json.dumps({"open_s": t2 - t1, "load_s": t3 - t2, "last_index_term_s": t4 - t3,
                  "groups": len(recs), "entries": n}))
"""


def reopen_run(d: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    with SqliteLogStore(d) as store:
        per_batch = 500
        for first in range(0, REOPEN_GROUPS, per_batch):
            store.write(
                WriteBatch(
                    tuple(
                        GroupWrite(
                            group=f"group-{g:05d}",
                            entries=tuple(
                                Entry(1, i, EntryKind.NORMAL, PAYLOAD)
                                for i in range(1, REOPEN_ENTRIES + 1)
                            ),
                            hard_state=HardState(1, None, REOPEN_ENTRIES),
                        )
                        for g in range(first, first + per_batch)
                    )
                )
            )
    build_s = time.perf_counter() - t0
    db_mb = (d / "raftfleet.db").stat().st_size / 1e6
    r = subprocess.run(
        [sys.executable, "-c", REOPEN_SCRIPT, str(d)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["groups"] == REOPEN_GROUPS and out["entries"] == REOPEN_GROUPS * REOPEN_ENTRIES, out
    return {"build_s": build_s, "db_mb": db_mb, **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_dir = Path(__file__).resolve().parent / "out"
    ap.add_argument("--dir", type=Path, default=default_dir, help="parent of the scratch dir")
    ap.add_argument("--seconds", type=float, default=3.0, help="per group-commit measurement")
    ap.add_argument("--peer-seconds", type=float, default=1.5, help="per one-txn-per-entry run")
    ap.add_argument("--keep", action="store_true", help="keep the scratch databases")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    kind = fs_type(args.dir)
    if kind in ("tmpfs", "ramfs"):
        sys.exit(f"{args.dir} is on {kind}: fsync costs nothing there; use --dir on a real disk")
    scratch = Path(tempfile.mkdtemp(prefix="storage-bench-", dir=args.dir))
    result: dict[str, object] = {"dir": str(scratch), "fs_type": kind}
    t_start = time.perf_counter()
    try:
        for n in GROUP_COUNTS:
            (scratch / f"gc{n}").mkdir()
            (scratch / f"pe{n}").mkdir()
            gc = group_commit_run(scratch / f"gc{n}", n, args.seconds, depth=1)
            pe = per_entry_run(scratch / f"pe{n}", n, args.peer_seconds)
            ratio = gc["entries_per_s"] / pe["entries_per_s"]
            say(
                f"{n:5d} groups: group commit {gc['entries_per_s']:9.0f} entries/s "
                f"({gc['commits_per_s']:.0f} commits/s, {gc['entries_per_commit']:.1f}/commit, "
                f"commit p50 {gc['commit_p50_ms']:.2f} ms p99 {gc['commit_p99_ms']:.2f} ms, "
                f"ack p50 {gc['ack_p50_ms']:.2f} ms p99 {gc['ack_p99_ms']:.2f} ms) | "
                f"txn per entry {pe['entries_per_s']:7.0f} entries/s | ratio {ratio:.1f}x"
            )
            result[f"entries_per_s_{n}_groups"] = round(gc["entries_per_s"])
            result[f"per_entry_txn_entries_per_s_{n}_groups"] = round(pe["entries_per_s"])
            result[f"group_commit_ratio_{n}_groups"] = round(ratio, 2)
            result[f"commits_per_s_{n}_groups"] = round(gc["commits_per_s"])
            result[f"entries_per_commit_{n}_groups"] = round(gc["entries_per_commit"], 1)
            for k in ("commit_p50_ms", "commit_p99_ms", "ack_p50_ms", "ack_p99_ms"):
                result[f"{k}_{n}_groups"] = round(gc[k], 3)
            result[f"per_entry_txn_ack_p50_ms_{n}_groups"] = round(pe["ack_p50_ms"], 3)
        for n in (100, 1000):  # replicas that pipeline: two batches in flight per group
            (scratch / f"gc{n}p").mkdir()
            gp = group_commit_run(scratch / f"gc{n}p", n, args.seconds, depth=2)
            say(
                f"{n:5d} groups, 2 batches in flight per group: {gp['entries_per_s']:9.0f} "
                f"entries/s ({gp['entries_per_commit']:.1f}/commit, commit p50 "
                f"{gp['commit_p50_ms']:.2f} ms p99 {gp['commit_p99_ms']:.2f} ms)"
            )
            result[f"entries_per_s_{n}_groups_depth2"] = round(gp["entries_per_s"])
            result[f"commit_p99_ms_{n}_groups_depth2"] = round(gp["commit_p99_ms"], 3)
        (scratch / "reopen").mkdir()
        ro = reopen_run(scratch / "reopen")
        say(
            f"reopen {REOPEN_GROUPS} groups x {REOPEN_ENTRIES} entries ({ro['db_mb']:.0f} MB, "
            f"built in {ro['build_s']:.1f} s): open+check {ro['open_s']:.2f} s, "
            f"load {ro['load_s']:.2f} s, last_index_term {ro['last_index_term_s']:.3f} s"
        )
        result["reopen_10000_groups_s"] = round(ro["open_s"] + ro["load_s"], 3)
        result["reopen_open_check_s"] = round(ro["open_s"], 3)
        result["reopen_load_s"] = round(ro["load_s"], 3)
        result["last_index_term_10000_groups_s"] = round(ro["last_index_term_s"], 4)
        result["reopen_db_mb"] = round(ro["db_mb"], 1)
        result["build_1m_entries_s"] = round(ro["build_s"], 2)
        result["bench_s"] = round(time.perf_counter() - t_start, 1)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
