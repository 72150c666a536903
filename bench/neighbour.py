"""What a growing kv group costs the groups beside it: one probe, JSON out.

    .venv/bin/python bench/neighbour.py [--seconds S] [--value-bytes N]

Starts 3 agents as `python -m bench` does, creates a `kv` group ("big") and a
`counter` group ("small"), then for S seconds at once:
- 64 writers (2 processes x 4 connections x 8 deep) put new keys into "big"
  on its leader's agent, so its state grows all the time (~N bytes a key);
- one client with one request in flight increments "small" on its leader.
Every agent hosts a replica of both. Whenever an agent takes a snapshot of
"big" its loop serialises the whole map, and every group on that agent
waits meanwhile: the lone client's latency shows it. Reported: the writers'
rate and key count, the lone client's p50/p99/p999/max latency and how many
of its requests took over 50 ms, and the snapshots each agent took (from its
status). Not a target and not part of `python -m bench`: a probe.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cluster import fleet, leader_of
from bench.common import pct, r, stop_proc
from bench.load import WRITE_ARGS, framed_specs, start_loadgen

SLOW_S = 0.05


def run_loads(big_sock: str, small_sock: str, seconds: float, value_bytes: int) -> list[dict]:
    start_at = time.monotonic() + 1.5
    common = {"seconds": seconds, "start_at": start_at, "max_ops": 5_000_000}
    specs = [
        {**s, **common, "group": "big", "kv_put_bytes": value_bytes}
        for s in framed_specs([big_sock], 64, "command", "unused", WRITE_ARGS)
    ]
    specs += [
        {**s, **common, "group": "small"}
        for s in framed_specs([small_sock], 1, "command", "inc", WRITE_ARGS)
    ]
    procs = [start_loadgen(s) for s in specs]
    results = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=seconds + 60)
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            stop_proc(p, 2)
    return results


def probe(seconds: float, value_bytes: int) -> dict:
    with fleet(3, 41, "neighbour") as procs:
        procs[0].call("group_create", name="big", type="kv", timeout=30)
        procs[0].call("group_create", name="small", timeout=30)
        big, small = leader_of(procs, "big"), leader_of(procs, "small")
        *writers, lone = run_loads(big.sock, small.sock, seconds, value_bytes)
        lat = [x / 1e6 for x in lone["lat_us"]]
        taken = {
            p.name: p.call("status")["metrics"]["snapshots_taken"]  # type: ignore[index]
            for p in procs
        }
        keys = sum(w["ops"] for w in writers)
        return {
            "seconds": seconds,
            "value_bytes": value_bytes,
            "big_leader": big.name,
            "small_leader": small.name,
            "big_puts_per_s": r(keys / seconds, 1),
            "big_keys": keys,
            "big_errors": sum(w["errors"] for w in writers),
            "small_ops_per_s": r(lone["ops"] / seconds, 1),
            "small_p50_s": r(pct(lat, 0.5), 6),
            "small_p99_s": r(pct(lat, 0.99), 6),
            "small_p999_s": r(pct(lat, 0.999), 6),
            "small_max_s": r(max(lat, default=float("nan")), 6),
            "small_over_50ms": sum(1 for x in lat if x > SLOW_S),
            "small_errors": lone["errors"],
            "snapshots_taken": taken,
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--value-bytes", type=int, default=32)
    a = ap.parse_args()
    out = probe(a.seconds, a.value_bytes)
    print(json.dumps(out, indent=1), file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
