"""raftfleet clusters for the scenarios: agents started, groups created, waits until they settle."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.agent import cpu_ticks
from bench.common import HZ, OUT, Budget
from bench.load import WRITE_ARGS
from raftfleet_cli.client import ClientError, ControlError
from tests.procs import AgentProc, agents, connected_to_all, wait_for


@contextlib.contextmanager
def fleet(
    n: int, octet: int, tag: str, zones: bool = True, in_memory: bool = False
) -> Iterator[list[AgentProc]]:
    OUT.mkdir(parents=True, exist_ok=True)
    d = tempfile.mkdtemp(dir=OUT, prefix=f"{tag}-")
    try:
        with agents(Path(d), n, first_octet=octet, in_memory=in_memory) as procs:
            wait_for(lambda: connected_to_all(procs), 30, "agents to connect")
            if zones:
                for i, p in enumerate(procs):
                    p.call("activate", zone=f"z{i + 1}")
            yield procs
    finally:
        shutil.rmtree(d, ignore_errors=True)


def by_name(procs: list[AgentProc], name: str) -> AgentProc:
    return next(p for p in procs if p.name == name)


def leader_of(procs: list[AgentProc], group: str) -> AgentProc:
    def ask() -> str | None:
        for p in procs:
            if p.alive:
                return p.call("leader", group=group, timeout=5)["leader"]  # type: ignore[index]
        return None

    return by_name(procs, wait_for(ask, 30, f"a leader of {group}"))  # type: ignore[arg-type]


def leaders_by_agent(procs: list[AgentProc], groups: list[str]) -> dict[str, list[str]]:
    led: dict[str, list[str]] = {}
    for g in groups:
        led.setdefault(leader_of(procs, g).name, []).append(g)
    return led


def create_groups(
    procs: list[AgentProc], names: list[str], budget: Budget, concurrency: int = 32
) -> dict:
    """Create groups through all agents with `concurrency` concurrent creators."""
    live = [p for p in procs if p.alive]
    errors: list[str] = []
    done = [0]
    lock = threading.Lock()
    it = iter(enumerate(names))

    def worker() -> None:
        clients = {p.name: p.client(timeout=5) for p in live}
        try:
            while budget.ok():
                with lock:
                    nxt = next(it, None)
                if nxt is None:
                    return
                i, name = nxt
                p = live[i % len(live)]
                for attempt in range(3):
                    try:
                        clients[p.name].call("group_create", timeout=60, name=name)
                        with lock:
                            done[0] += 1
                        break
                    except ControlError as e:
                        if e.code == "already_exists" and attempt:
                            with lock:
                                done[0] += 1
                            break
                        with lock:
                            errors.append(f"{name}: {e.code}")
                        time.sleep(0.2)
                    except ClientError as e:
                        with lock:
                            errors.append(f"{name}: {e}")
                        clients[p.name].close()
                        time.sleep(0.2)
        finally:
            for c in clients.values():
                c.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, budget.left() + 70))
    dt = time.monotonic() - t0
    return {
        "created": done[0],
        "seconds": dt,
        "groups_per_s": done[0] / dt if dt else 0.0,
        "errors": len(errors),
        "error_sample": errors[:3],
        "complete": done[0] == len(names),
    }


def loop_stats(p: AgentProc) -> tuple[int, int]:
    st = p.call("status", timeout=30)["loop"]  # type: ignore[index]
    return st["store_batches"], st["entries_written"]


def wait_quiescent(procs: list[AgentProc], timeout: float, quiet_s: float = 3.0) -> dict:
    """Until no agent wrote to its store for `quiet_s` (status "loop" counters)."""
    return _wait_unchanged(procs, loop_stats, timeout, quiet_s)


def wait_settled(procs: list[AgentProc], timeout: float, after_s: float = 20.0) -> dict:
    """As wait_quiescent, and no reconciler move either, and not before `after_s`
    (the reconciler leaves a new leadership alone for 15 s before moving it)."""

    def sample(p: AgentProc) -> tuple:
        s = p.call("status", timeout=30)
        return (s["loop"]["store_batches"], s["moves_done"], s["moves_in_flight"])  # type: ignore[index]

    return _wait_unchanged(procs, sample, timeout, 3.0, after_s)


def _wait_unchanged(
    procs: list[AgentProc],
    sample: Callable[[AgentProc], object],
    timeout: float,
    quiet_s: float,
    after_s: float = 0.0,
) -> dict:
    """Until every agent's `sample` stayed the same for `quiet_s`, and `after_s` passed."""
    t0 = time.monotonic()
    last = None
    since = t0
    while time.monotonic() - t0 < timeout:
        now = [sample(p) for p in procs]
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s and time.monotonic() - t0 >= after_s:
            return {"settled": True, "settle_s": round(time.monotonic() - t0, 1)}
        time.sleep(0.5)
    return {"settled": False, "settle_s": round(time.monotonic() - t0, 1)}


def wait_idle(procs: list[AgentProc], timeout: float) -> dict:
    """Until every agent's replicas are asleep again (at most 1 % awake) and no
    leadership move is in flight, for 3 s; `settled` False if `timeout` passed."""

    def quiet(p: AgentProc) -> bool:
        s = p.call("status", timeout=30)
        awake_max = max(5, s["replicas"] // 100)  # type: ignore[index]
        return s["loop"]["awake"] <= awake_max and s["moves_in_flight"] == 0  # type: ignore[index]

    t0 = time.monotonic()
    since: float | None = None
    while (now := time.monotonic()) - t0 < timeout:
        if not all(quiet(p) for p in procs):
            since = None
        elif since is None:
            since = now
        elif now - since >= 3.0:
            return {"settled": True, "settle_s": round(now - t0, 1)}
        time.sleep(0.5)
    return {"settled": False, "settle_s": round(time.monotonic() - t0, 1)}


def idle_window(procs: list[AgentProc], seconds: float) -> dict:
    before = {p.name: cpu_ticks(p.proc.pid) for p in procs}  # type: ignore[union-attr]
    time.sleep(seconds)
    cpu = {
        p.name: 100 * (cpu_ticks(p.proc.pid) - before[p.name]) / HZ / seconds  # type: ignore[union-attr]
        for p in procs
    }
    return cpu


def spread_specs(procs: list[AgentProc], led: dict[str, list[str]]) -> list[dict]:
    """64 writers over many groups: each connection to one leader's agent, on its groups.

    2 processes x 4 connections x 8 deep = 64 outstanding.
    """
    pairs = sorted(led.items())
    specs = []
    for k in range(2):
        conns = [pairs[(k * 4 + i) % len(pairs)] for i in range(4)]
        specs.append(
            {
                "proto": "framed",
                "op": "command",
                "arg": "inc",
                "args": WRITE_ARGS,
                "conns": 4,
                "depth": 8,
                "targets": [[by_name(procs, a).sock] for a, _ in conns],
                "groups_per_conn": [gs for _, gs in conns],
            }
        )
    return specs
