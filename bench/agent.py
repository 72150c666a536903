"""Agent throughput, latency and idle cost, with real processes on loopback.

    python bench/agent.py [--seconds 5] [--idle-groups 1000] [--idle-seconds 20]

Three agents (durable store under bench/out/, on the real disk), one
3-replica counter group; clients run in a separate process (threads, one
control connection each) sending `inc` commands to the leader's agent. Then
the idle cost: N groups, no load, CPU of each agent from /proc over a window.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from raftfleet_cli.client import Client, parse_addr  # noqa: E402
from tests.procs import agents, connected_to_all, wait_for  # noqa: E402

OUT = ROOT / "bench" / "out"


def _percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else 0.0


def client_main(sock: str, group: str, clients: int, seconds: float, op: str) -> None:
    """Runs in its own process: `clients` threads, each with its own connection."""
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    stop_at = time.monotonic() + seconds

    def worker(i: int) -> None:
        with Client(parse_addr(f"unix://{sock}")) as c:
            n = 0
            while time.monotonic() < stop_at and n < 10_000_000:
                n += 1
                t0 = time.perf_counter()
                try:
                    if op == "command":
                        c.call("command", timeout=10, group=group, arg="inc", timeout_s=5)
                    else:
                        c.call("query", timeout=10, group=group, arg="get", timeout_s=5)
                except Exception:
                    errors[i] += 1
                    continue
                lat[i].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    all_lat = [x for xs in lat for x in xs]
    print(
        json.dumps(
            {
                "clients": clients,
                "ops": len(all_lat),
                "errors": sum(errors),
                "ops_per_s": round(len(all_lat) / elapsed, 1),
                "p50_s": round(_percentile(all_lat, 0.5), 5),
                "p99_s": round(_percentile(all_lat, 0.99), 5),
                "p999_s": round(_percentile(all_lat, 0.999), 5),
            }
        )
    )


def run_clients(sock: str, group: str, clients: int, seconds: float, op: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--client", sock, group, str(clients), str(seconds), op],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine_ticks() -> tuple[int, int]:
    """(all, idle + iowait) jiffies of the whole machine, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(f), f[3] + f[4]


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def create_groups(procs: list, n: int, prefix: str) -> float:
    names = [p.name for p in procs]
    t0 = time.monotonic()

    def create(i: int) -> None:
        a = procs[i % len(procs)]
        order = names[i % 3 :] + names[: i % 3]  # spread the first leaders
        a.call("group_create", timeout=60, name=f"{prefix}{i}", agents=order)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(create, range(n)))
    return time.monotonic() - t0


def bench(seconds: float, idle_groups: int, idle_seconds: float) -> dict:
    OUT.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": {"cpus": os.cpu_count()}}
    with tempfile.TemporaryDirectory(dir=OUT) as d, agents(Path(d), 3, first_octet=61) as procs:
        wait_for(lambda: connected_to_all(procs), 20, "agents to connect")
        procs[0].call("group_create", name="bench", agents=[p.name for p in procs])
        leader = procs[0]
        for clients in (1, 32):
            r = run_clients(leader.sock, "bench", clients, seconds, "command")
            result[f"write_clients_{clients}"] = r
            print(json.dumps(r), file=sys.stderr)
        r = run_clients(leader.sock, "bench", 32, seconds, "query")
        result["read_clients_32"] = r
        print(json.dumps(r), file=sys.stderr)
        created_s = create_groups(procs, idle_groups, "idle")
        result["idle"] = {"groups": idle_groups, "create_s": round(created_s, 1)}
        time.sleep(5)  # let elections and the creation traffic settle
        before = {p.name: cpu_ticks(p.proc.pid) for p in procs}
        time.sleep(idle_seconds)
        hz = os.sysconf("SC_CLK_TCK")
        cpu = {
            p.name: round(100 * (cpu_ticks(p.proc.pid) - before[p.name]) / hz / idle_seconds, 1)
            for p in procs
        }
        result["idle"]["cpu_pct_per_agent"] = cpu
        result["idle"]["rss_kib_per_agent"] = {p.name: rss_kib(p.proc.pid) for p in procs}
    return result


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        sock, group, clients, seconds, op = sys.argv[2:7]
        client_main(sock, group, int(clients), float(seconds), op)
        return 0
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--idle-groups", type=int, default=1000)
    p.add_argument("--idle-seconds", type=float, default=20.0)
    a = p.parse_args()
    print(json.dumps(bench(a.seconds, a.idle_groups, a.idle_seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
