"""The plumbing floor: write_100groups' load on the agent's I/O path with no Raft in it.

    .venv/bin/python bench/floor.py [--seconds 3] [--reps 3] [--groups 100] [--store sqlite|memory]

What it measures. Three node processes (bench/floor_node.py) on 127.0.0.21-23
do, per command, the least a 3-replica Raft log must: the leader takes the
control-protocol request from its Unix socket, appends an entry, persists it
and sends an `Append` to both followers; each follower persists it and
answers `AppendResp` once durable; the leader answers the client once the
entry is durable on a majority. It uses the agent's real pieces: trio, the
frame codec, msgpack, the Raft message codec with its validation
(`host.wire`), one frame per peer per loop turn, and the real store
(`SqliteLogStore`, or `MemoryLogStore` with --store memory) with one batch
per loop turn. The load is `python -m bench --only write_100groups`'s
(bench/loadgen.py via bench.load.measure: 2 processes x 4 connections x 8
deep, each connection to the node leading its groups), then write_1group's
64 clients on a single group.

What it leaves out, deliberately: RaftMember, Ready, ticks, heartbeats,
elections, leases, the state machine and its sessions, request validation,
routing, the fleet layer, metrics. Leadership is fixed (group "g<k>" is led
by node k % 3). So ops/s here is an upper bound for any Raft on this
plumbing; the gap to the real scenario is what the Raft and host layers cost.

Prints one JSON object on stdout (the last line); progress goes to stderr.
Per scenario: medians over reps of ops/s, p50, p99; errors summed; the CPU
of each node (100 = one core) and of the machine over the load window.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.agent import cpu_ticks, machine_ticks  # noqa: E402
from bench.common import HZ, OUT, PY, free_port, log, stop_proc  # noqa: E402
from bench.load import framed_specs, measure  # noqa: E402

NODE = str(ROOT / "bench" / "floor_node.py")
HOSTS = ["127.0.0.21", "127.0.0.22", "127.0.0.23"]
READY_TIMEOUT_S = 30.0
CMD_ARGS = {"timeout_s": 5, "retries": 3}  # as sc_write_100groups; the nodes ignore them


def start_nodes(d: Path, store: str, procs: list[subprocess.Popen]) -> list[str]:
    """Start the 3 nodes (into `procs`, so the caller stops them whatever happens);
    their control sockets once every node is connected to both others, else []."""
    ports = [free_port(h) for h in HOSTS]
    socks = [str(d / f"n{i}.sock") for i in range(3)]
    readies = [d / f"n{i}.ready" for i in range(3)]
    for i in range(3):
        (d / f"n{i}").mkdir()
        cfg = {"me": i, "hosts": HOSTS, "ports": ports, "sock": socks[i], "store": store}
        cfg |= {"data": str(d / f"n{i}"), "ready": str(readies[i])}
        with open(d / f"n{i}.log", "ab") as out:
            procs.append(subprocess.Popen([PY, NODE, json.dumps(cfg)], stdout=out, stderr=out))
    return socks if wait_ready(procs, readies) else []


def wait_ready(procs: list[subprocess.Popen], readies: list[Path]) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if all(p.exists() for p in readies):
            return True
        if any(p.poll() is not None for p in procs):
            break  # a node died: no point waiting for it
        time.sleep(0.02)
    return False


def windowed(pids: list[int], seconds: float, specs: list[dict]) -> dict:
    """measure(), plus the CPU of each node and of the machine over its load window."""
    # measure() starts the load at its own monotonic() + 1.5 s: sample at the same instants.
    start_at = time.monotonic() + 1.5
    cpu: dict = {}

    def sample() -> None:
        time.sleep(max(0.0, start_at - time.monotonic()))
        n0, m0, t0 = [cpu_ticks(p) for p in pids], machine_ticks(), time.monotonic()
        time.sleep(max(0.0, start_at + seconds - time.monotonic()))
        n1, m1, dt = [cpu_ticks(p) for p in pids], machine_ticks(), time.monotonic() - t0
        cpu["node_cpu_pct"] = [
            round(100 * (b - a) / HZ / dt, 1) for a, b in zip(n0, n1, strict=True)
        ]
        total, idle = m1[0] - m0[0], m1[1] - m0[1]
        cpu["machine_idle_pct"] = round(100 * idle / total, 1) if total else None

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    m = measure(specs, seconds)
    t.join(seconds + 5)
    return {**m, **cpu}


def scenario(name: str, pids: list[int], specs: list[dict], a: argparse.Namespace) -> dict:
    runs = []
    for rep in range(a.reps):
        runs.append(windowed(pids, a.seconds, specs))
        x = runs[-1]
        log(
            f"{name} rep {rep + 1}: {x['ops_per_s']:.0f} ops/s p50={x['p50_s'] * 1e3:.2f} ms "
            f"p99={x['p99_s'] * 1e3:.2f} ms errors={x['errors']} nodes%={x.get('node_cpu_pct')} "
            f"idle%={x.get('machine_idle_pct')}"
        )

    def med(key: str, nd: int = 6) -> float | None:
        xs = [x[key] for x in runs if x.get(key) is not None]
        return round(statistics.median(xs), nd) if xs else None

    per_node = [[x["node_cpu_pct"][i] for x in runs if "node_cpu_pct" in x] for i in range(3)]
    return {
        "ops_per_s": med("ops_per_s", 1),
        "p50_s": med("p50_s"),
        "p99_s": med("p99_s"),
        "errors": sum(x["errors"] for x in runs),
        "error_kinds": dict(sum((Counter(x["error_kinds"]) for x in runs), Counter())),
        "node_cpu_pct": {
            f"n{i}": round(statistics.median(c), 1) if c else None for i, c in enumerate(per_node)
        },
        "machine_idle_pct": med("machine_idle_pct", 1),
        "reps_ops_per_s": [round(x["ops_per_s"], 1) for x in runs],
    }


def specs_100(socks: list[str], groups: int) -> list[dict]:
    """As sc_write_100groups: connections spread over the leaders, each to its own groups."""
    pairs = [(socks[n], [f"g{i}" for i in range(groups) if i % 3 == n]) for n in range(3)]
    pairs = [p for p in pairs if p[1]]
    specs = []
    for k in range(2):  # 2 processes x 4 connections x 8 deep = 64 outstanding
        conns = [pairs[(k * 4 + i) % len(pairs)] for i in range(4)]
        spec = {"proto": "framed", "op": "command", "arg": "inc", "args": CMD_ARGS}
        spec |= {"conns": 4, "depth": 8, "targets": [[s] for s, _ in conns]}
        specs.append({**spec, "groups_per_conn": [gs for _, gs in conns]})
    return specs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="load window per rep")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--groups", type=int, default=100)
    ap.add_argument("--store", choices=("sqlite", "memory"), default="sqlite")
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(dir=OUT, prefix="floor-"))  # real disk, as the bench's stores
    load0 = [round(x, 2) for x in os.getloadavg()]
    procs: list[subprocess.Popen] = []
    res: dict = {}
    ok = False
    try:
        socks = start_nodes(d, a.store, procs)
        if not socks:
            raise SystemExit("the nodes did not become ready")
        pids = [p.pid for p in procs]
        res[f"groups_{a.groups}"] = scenario("groups", pids, specs_100(socks, a.groups), a)
        one = [
            {**s, "group": "g0"} for s in framed_specs([socks[0]], 64, "command", "inc", CMD_ARGS)
        ]
        res["groups_1"] = scenario("1 group", pids, one, a)
        dead = [i for i, p in enumerate(procs) if p.poll() is not None]
        if dead:
            raise SystemExit(f"nodes {dead} died during the run")
        ok = True
    finally:
        for p in procs:
            stop_proc(p, 5)  # SIGTERM, then SIGKILL, by pid
        for log_file in sorted(d.glob("*.log")) if not ok else ():
            log(f"{log_file.name}: {log_file.read_text()[-2000:]}")
        shutil.rmtree(d, ignore_errors=True)
    meta = {"seconds": a.seconds, "reps": a.reps, "groups": a.groups, "cpus": os.cpu_count()}
    meta |= {"loadavg_start": load0, "loadavg_end": [round(x, 2) for x in os.getloadavg()]}
    meta["load"] = "2 loadgen processes x 4 conns x 8 deep (64 outstanding)"
    print(json.dumps({"floor": res, "store": a.store, "meta": meta}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
