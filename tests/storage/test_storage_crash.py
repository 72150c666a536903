"""kill -9 a writing process at random moments; recovery must lose nothing acknowledged
and show no batch half-applied. See crash_child.py for the workload and the check."""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from raftfleet_agent.storage import SqliteLogStore, StoreError

CHILD = Path(__file__).with_name("crash_child.py")
ROUNDS = int(os.environ.get("RAFTFLEET_CRASH_ROUNDS", "30"))
START_DEADLINE_S = 20.0


def load_child_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("raftfleet_storage_crash_child", CHILD)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def start_child(data_dir: Path, seed: int, out: Path) -> subprocess.Popen:
    with out.open("wb") as f:
        return subprocess.Popen(
            [sys.executable, str(CHILD), str(data_dir), str(seed)],
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_ready(proc: subprocess.Popen, out: Path) -> None:
    deadline = time.monotonic() + START_DEADLINE_S
    while b"ready\n" not in out.read_bytes():
        assert proc.poll() is None, f"child exited early: {out.read_text(errors='replace')}"
        assert time.monotonic() < deadline, "child not ready in time"
        time.sleep(0.01)


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def acked_batches(out: Path) -> list[int]:
    """Batch numbers the child reported durable (complete lines only)."""
    text = out.read_bytes().decode(errors="replace")
    lines = text.split("\n")[:-1]  # the last piece may be a line cut by the kill
    assert not any(line.startswith("fatal") for line in lines), text[-500:]
    return [int(line) for line in lines if line.isdigit()]


@pytest.mark.slow
def test_kill_9_loses_nothing_acknowledged(tmp_path: Path) -> None:
    child_mod = load_child_module()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    model = child_mod.Workload(seed)
    total_acked = 0
    commits_seen = 0
    for rnd in range(ROUNDS):
        out = tmp_path / f"out{rnd}.txt"
        proc = start_child(data_dir, seed, out)
        try:
            if rnd > 0 and rng.random() < 0.15:
                time.sleep(rng.uniform(0.0, 0.3))  # kill while starting or recovering
            else:
                wait_ready(proc, out)
                time.sleep(rng.uniform(0.02, 0.35))  # the random moment of the kill
        finally:
            kill(proc)
        acked = acked_batches(out)
        assert acked == sorted(acked), "acknowledgements out of order"
        if not (data_dir / "raftfleet.db").exists():
            assert rnd == 0 and not acked  # killed before the store was created
            continue
        with SqliteLogStore(data_dir) as store:
            records = store.load()
        stored = next((r.hard_state.term for r in records if r.group == child_mod.MARKER), 0)
        context = f"seed {seed}, round {rnd}: store at batch {stored}, acked up to {acked[-1:]}"
        assert not acked or stored >= acked[-1], f"acknowledged batch lost; {context}"
        assert stored >= model.batch_id, f"store went back in time; {context}"
        for _ in range(stored - model.batch_id):
            model.next_batch()
        assert records == model.records(), f"store differs from the model; {context}"
        for r in records:  # logs are contiguous and follow their snapshot
            idx = [e.index for e in r.entries]
            assert idx == list(range(idx[0], idx[0] + len(idx))) if idx else True, context
            if r.snapshot and idx:
                assert idx[0] == r.snapshot.meta.index + 1, context
        total_acked += len(acked)
        commits_seen = stored
    # The test only means something if the child really got work done.
    assert total_acked >= ROUNDS, f"only {total_acked} batches acknowledged in {ROUNDS} rounds"
    assert commits_seen > 0


@pytest.mark.slow
def test_store_is_locked_by_its_process(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    proc = start_child(tmp_path, 1, out)
    try:
        wait_ready(proc, out)
        deadline = time.monotonic() + START_DEADLINE_S
        while not acked_batches(out):  # let it commit something
            assert time.monotonic() < deadline, "child acknowledged nothing"
            time.sleep(0.01)
        with pytest.raises(StoreError, match="in use by another process"):
            SqliteLogStore(tmp_path)
    finally:
        kill(proc)
    with SqliteLogStore(tmp_path) as s:  # the kernel dropped the lock with the process
        assert s.load()
