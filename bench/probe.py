"""Where the CPU goes while the agents take a write load: one probe, JSON out.

    .venv/bin/python bench/probe.py [--groups 1|100] [--clients 1|64] [--seconds S] [--in-memory]

Starts 3 agents as `python -m bench` does, creates the groups, and runs the
write scenario's load (64 writers: 2 client processes x 4 connections x 8
deep; over 100 groups, spread as write_100groups spreads them), or with
`--clients 1` one writer with one request in flight (one group). Over the
middle of the window it samples, from /proc and each agent's status:
- CPU of each agent's loop thread (the main thread: trio, Raft, control,
  transport) and of its other threads (the store's writer), 100 = one core;
- CPU of the client processes, and how idle the machine was;
- per agent and second: loop turns, store batches, entries written, Raft
  messages sent and received; the store's commit time (p50 since start).
Not a target and not part of `python -m bench`: a tool for the next profile.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.agent import cpu_ticks, machine_ticks
from bench.cluster import fleet, leader_of, leaders_by_agent, spread_specs, wait_quiescent
from bench.common import HZ, running_children, stop_all_children
from bench.load import WRITE_ARGS, framed_specs, measure
from tests.procs import AgentProc

COUNTERS = ("turns", "store_batches", "entries_written", "messages_sent", "messages_received")


def thread_ticks(pid: int) -> tuple[int, int]:
    """(main thread, all other threads) CPU jiffies of process `pid`."""
    main = other = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended
        f = stat.rsplit(")", 1)[1].split()
        ticks = int(f[11]) + int(f[12])
        if int(tid) == pid:
            main += ticks
        else:
            other += ticks
    return main, other


def specs_for(procs: list[AgentProc], names: list[str], clients: int) -> list[dict]:
    if len(names) == 1:
        socks = [leader_of(procs, names[0]).sock]
        return framed_specs(socks, clients, "command", "inc", WRITE_ARGS)
    return spread_specs(procs, leaders_by_agent(procs, names))


def sample(procs: list[AgentProc]) -> dict:
    return {
        "t": time.monotonic(),
        "machine": machine_ticks(),
        "threads": {p.name: thread_ticks(p.proc.pid) for p in procs},  # type: ignore[union-attr]
        "loop": {p.name: p.call("status")["loop"] for p in procs},  # type: ignore[index]
        "clients": {c.pid: cpu_ticks(c.pid) for c in running_children()},
    }


def probe(groups: int, clients: int, seconds: float, in_memory: bool) -> dict:
    with fleet(3, 31, "probe", in_memory=in_memory) as procs:
        names = ["w"] if groups == 1 else [f"g{i}" for i in range(groups)]
        for g in names:
            procs[0].call("group_create", name=g, timeout=30)
        if groups > 1:
            wait_quiescent(procs, 20, 1.0)
        specs = specs_for(procs, names, clients)
        box: dict = {}

        def sampler() -> None:
            time.sleep(1.5 + seconds * 0.2)  # the clients start 1.5 s after measure() begins
            box["a"] = sample(procs)
            time.sleep(seconds * 0.6)
            box["b"] = sample(procs)

        th = threading.Thread(target=sampler)
        th.start()
        load = measure(specs, seconds)
        th.join()
        heads = {p.name: p.call("status")["metrics"] for p in procs}  # type: ignore[index]
    a, b = box["a"], box["b"]
    dt = b["t"] - a["t"]

    def pct(ticks: int) -> float:
        return round(100 * ticks / HZ / dt, 1)

    agents = {}
    for name, (main1, other1) in b["threads"].items():
        main0, other0 = a["threads"][name]
        per_s = {k: round((b["loop"][name][k] - a["loop"][name][k]) / dt) for k in COUNTERS}
        agents[name] = {
            "loop_thread_cpu_pct": pct(main1 - main0),
            "other_threads_cpu_pct": pct(other1 - other0),
            "per_s": per_s,
            "store_commit_p50_ms": heads[name].get("store_commit_p50_ms"),
        }
    (m_all0, m_idle0), (m_all1, m_idle1) = a["machine"], b["machine"]
    both = a["clients"].keys() & b["clients"].keys()
    ops = load["ops_per_s"]
    agent_cpu = sum(x["loop_thread_cpu_pct"] + x["other_threads_cpu_pct"] for x in agents.values())
    return {
        "groups": groups,
        "clients": clients,
        "in_memory": in_memory,
        "ops_per_s": round(ops, 1),
        "p50_s": load["p50_s"],
        "p99_s": load["p99_s"],
        "p999_s": load.get("p999_s"),
        "errors": load["errors"],
        "agents": agents,
        "clients_cpu_pct": sum(pct(b["clients"][c] - a["clients"][c]) for c in both),
        "machine_idle_pct_of_200": round(200 * (m_idle1 - m_idle0) / max(1, m_all1 - m_all0), 1),
        "agents_cpu_us_per_op": round(agent_cpu / 100 / ops * 1e6, 1) if ops else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--groups", type=int, default=1, help="1 or more groups (default 1)")
    ap.add_argument("--clients", type=int, default=64, choices=(1, 64), help="writers (default 64)")
    ap.add_argument("--seconds", type=float, default=6.0, help="load window (default 6)")
    ap.add_argument("--in-memory", action="store_true", help="agents run --in-memory")
    args = ap.parse_args()
    if args.groups < 1 or not 2 <= args.seconds <= 120:
        ap.error("--groups must be >= 1 and --seconds within 2..120")
    if args.clients == 1 and args.groups != 1:
        ap.error("--clients 1 needs --groups 1")
    try:
        out = probe(args.groups, args.clients, args.seconds, args.in_memory)
    finally:
        stop_all_children()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
