"""Client load: loadgen processes started and measured, windows taken in turn and summed up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable

from bench.common import LOADGEN, PY, log, med, pct, r, stop_proc, track
from tests.procs import AgentProc

WRITE_ARGS = {"timeout_s": 5, "retries": 3}  # every benchmark write: `inc` with these

Measures = dict[str, Callable[[], dict]]  # "write_64", ... -> one window of that load


def start_loadgen(spec: dict) -> subprocess.Popen:
    """One loadgen process (bench/loadgen.py), tracked; its JSON result comes on stdout."""
    return track(
        subprocess.Popen([PY, LOADGEN, json.dumps(spec)], stdout=subprocess.PIPE, text=True)
    )


def measure(specs: list[dict], seconds: float) -> dict:
    """Run one loadgen process per spec, all starting together; merge their results."""
    start_at = time.monotonic() + 1.5  # every process imported and connected by then
    procs = []
    for spec in specs:
        spec = {**spec, "seconds": seconds, "start_at": start_at}  # noqa: PLW2901
        procs.append(start_loadgen(spec))
    lat: list[int] = []
    ops = errors = 0
    kinds: dict[str, int] = {}
    try:
        for p in procs:
            out, _ = p.communicate(timeout=seconds + 60)
            res = json.loads(out.strip().splitlines()[-1])
            lat += res["lat_us"]
            ops += res["ops"]
            errors += res["errors"]
            for k, v in res["error_kinds"].items():
                kinds[k] = kinds.get(k, 0) + v
    finally:
        for p in procs:
            stop_proc(p, 2)
    lat_s = [x / 1e6 for x in lat]
    return {
        "ops_per_s": ops / seconds,
        "p50_s": pct(lat_s, 0.5),
        "p99_s": pct(lat_s, 0.99),
        "p999_s": pct(lat_s, 0.999),
        "errors": errors,
        "error_kinds": kinds,
    }


def window(
    socks: list[str], clients: int, op: str, arg: str, extra: dict, cfg: dict
) -> Callable[[], dict]:
    """One window of `clients` framed clients (agent or PySyncObj) on `socks`."""
    return lambda: measure(framed_specs(socks, clients, op, arg, extra), cfg["window"])


def repeat(fn: Callable[[], dict], reps: int) -> dict:
    return summarize([fn() for _ in range(reps)])


def summarize(runs: list[dict]) -> dict:
    """Medians of `measure` results (one per window), errors summed."""
    outm: dict = {}
    for k in ("ops_per_s", "p50_s", "p99_s", "p999_s"):
        outm[k] = r(med([x[k] for x in runs]), 1 if k == "ops_per_s" else 5)
    outm["errors"] = sum(x["errors"] for x in runs)
    kinds: dict[str, int] = {}
    for x in runs:
        for k, v in x["error_kinds"].items():
            kinds[k] = kinds.get(k, 0) + v
    if kinds:
        outm["error_kinds"] = kinds
    outm["reps_ops_per_s"] = [round(x["ops_per_s"], 1) for x in runs]
    return outm


def brief(m: dict) -> str:
    return f"{m['ops_per_s']} ops/s p50={m['p50_s']} p99={m['p99_s']} errors={m['errors']}"


def interleave(systems: dict[str, Measures], reps: int) -> tuple[dict, dict[str, str]]:
    """Every system's windows taken in turn: per repetition, each load on every system.

    This host's speed drifts by a third within minutes, so a system measured
    minutes after another is compared on a different machine. Here each
    system's i-th window of a load comes within a few windows of the others',
    and the order of the systems rotates by one each repetition, so no system
    always goes first. A system whose window fails is left out from then on
    (its error is returned); the others go on.
    """
    runs: dict[str, dict[str, list[dict]]] = {s: {k: [] for k in ms} for s, ms in systems.items()}
    failed: dict[str, str] = {}
    keys = list(dict.fromkeys(k for ms in systems.values() for k in ms))
    names = list(systems)
    for rep in range(reps):
        shift = rep % max(1, len(names))
        order = names[shift:] + names[:shift]
        for key in keys:
            for name in order:
                if key not in systems[name] or name in failed:
                    continue
                try:
                    runs[name][key].append(systems[name][key]())
                except Exception as e:  # one broken peer must not hide the others
                    failed[name] = repr(e)[:500]
                    log(f"{name} {key} FAILED: {e!r}")
    return runs, failed


def paired_ratios(mine: dict, peer: dict) -> list[float | None]:
    """Ours over the peer's, window by window: the i-th windows ran minutes apart at most."""
    pairs = zip(mine.get("reps_ops_per_s", []), peer.get("reps_ops_per_s", []), strict=False)
    return [r(a / b, 3) if b else None for a, b in pairs]


def framed_specs(
    socks: list[str], clients: int, op: str, arg: str, extra: dict | None = None
) -> list[dict]:
    """`clients` outstanding requests: 1 -> one connection; 64 -> 2 processes x 4 conns x 8 deep."""
    base = {"proto": "framed", "op": op, "arg": arg, "args": extra or {}}
    if clients == 1:
        return [{**base, "targets": [socks], "conns": 1, "depth": 1, "group": "w"}]
    assert clients % 32 == 0
    return [
        {**base, "targets": [socks], "conns": 4, "depth": 8, "group": "w"}
        for _ in range(clients // 32)
    ]


def http_specs(host: str, port: int, clients: int, op: str) -> list[dict]:
    """etcd: one request in flight per HTTP/1.1 connection, so 64 clients = 64 connections."""
    base = {"proto": "http", "http": [host, port], "op": op, "key": "bench", "depth": 1}
    if clients == 1:
        return [{**base, "conns": 1}]
    return [{**base, "conns": 32} for _ in range(clients // 32)]


def spawn_load(
    procs: list[AgentProc],
    groups: str | list[str],
    rate: float,
    conns: int,
    depth: int,
    seconds: float,
) -> subprocess.Popen:
    gl = [groups] if isinstance(groups, str) else groups
    spec = {
        "proto": "framed",
        "op": "command",
        "arg": "inc",
        "args": {"timeout_s": 2, "retries": 3},
        "targets": [[p.sock for p in procs]],
        "conns": conns,
        "depth": depth,
        "groups_per_conn": [gl] * conns,
        "rate": rate,
        "seconds": seconds,
        "start_at": time.monotonic() + 1.0,
        "max_ops": 2_000_000,
    }
    return start_loadgen(spec)


def finish_load(p: subprocess.Popen) -> dict:
    """Stop the load early (SIGINT is not handled: SIGTERM) and read what it printed, if any."""
    try:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
        out, _ = p.communicate(timeout=10)
        return json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    except Exception:
        return {}
    finally:
        stop_proc(p, 2)
