"""Scenario write_1group / read_1group: raftfleet, PySyncObj and etcd side by side."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from bench.cluster import fleet, leader_of
from bench.common import OUT, PY, ROOT, log, r, spawn, stop_proc
from bench.load import (
    WRITE_ARGS,
    Measures,
    brief,
    framed_specs,
    interleave,
    measure,
    paired_ratios,
    summarize,
    window,
)
from bench.peers import etcd_cluster, etcd_version, pso_cluster, pso_version
from tests.procs import AgentProc


@contextlib.contextmanager
def rf_1group(cfg: dict) -> Iterator[tuple[AgentProc, Measures]]:
    """3 agents, one `counter` group "w"; the loads on its leader's agent (and a follower's)."""
    with fleet(3, 11, "w1") as procs:
        procs[0].call("group_create", name="w", timeout=30)
        ldr = leader_of(procs, "w")
        follower = next(p for p in procs if p is not ldr)
        read = {"timeout_s": 5}
        yield (
            ldr,
            {
                "write_1": window([ldr.sock], 1, "command", "inc", WRITE_ARGS, cfg),
                "write_64": window([ldr.sock], 64, "command", "inc", WRITE_ARGS, cfg),
                # The same 64 clients on a follower's agent, which forwards to the leader.
                "write_64_via_follower": window(
                    [follower.sock], 64, "command", "inc", WRITE_ARGS, cfg
                ),
                "read_1": window([ldr.sock], 1, "query", "get", read, cfg),
                "read_64": window([ldr.sock], 64, "query", "get", read, cfg),
            },
        )


@contextlib.contextmanager
def rf_1group_in_memory(cfg: dict) -> Iterator[Measures]:
    """The same 64 writers on agents run --in-memory: what the disk costs (not a target)."""
    with fleet(3, 51, "w1m", in_memory=True) as procs:
        procs[0].call("group_create", name="w", timeout=30)
        ldr = leader_of(procs, "w")
        yield {"write_64": window([ldr.sock], 64, "command", "inc", WRITE_ARGS, cfg)}


def sc_1group(cfg: dict) -> tuple[dict, dict, dict]:
    """raftfleet, PySyncObj (both batch settings) and etcd up together, their windows interleaved.

    Returns (raftfleet, pysyncobj, etcd) results, each load a `summarize`d
    block. A peer that cannot start or fails a window is reported with its
    error and the others are measured all the same.
    """
    rf: dict = {}
    pso, etc = pso_version(), etcd_version()
    with contextlib.ExitStack() as stack:
        ldr, loads = stack.enter_context(rf_1group(cfg))
        systems: dict[str, Measures] = {"raftfleet": loads}

        def start(name: str, cluster: contextlib.AbstractContextManager) -> str | None:
            """Start one more system; its error if it cannot (the others go on)."""
            try:
                systems[name] = stack.enter_context(cluster)
            except Exception as e:
                log(f"{name} did not start: {e!r}")
                return repr(e)[:500]
            return None

        # --in-memory is a figure, not a target: it never costs the others.
        if not cfg["quick"] and (err := start("raftfleet --in-memory", rf_1group_in_memory(cfg))):
            rf["write_64_in_memory"] = {"error": err}
        if "skipped" not in pso:
            for batch in (True, False):
                key = f"batch_{str(batch).lower()}"
                if err := start(f"pysyncobj {key}", pso_cluster(batch, cfg, pso)):
                    pso[key] = {"error": err}
        if "skipped" not in etc and (err := start("etcd", etcd_cluster(cfg))):
            etc["error"] = err
        runs, failed = interleave(systems, cfg["reps"])
        for name, per_key in runs.items():
            block = {k: summarize(v) for k, v in per_key.items() if v}
            if name in failed:
                block["error"] = failed[name]
            for k, m in block.items():
                if k != "error":
                    log(f"{name} {k}: {brief(m)}")
            if name == "raftfleet":
                rf.update(block)
            elif name == "raftfleet --in-memory":
                rf["write_64_in_memory"] = {
                    **block.get("write_64", {}),
                    **({"error": block["error"]} if "error" in block else {}),
                }
            elif name == "etcd":
                etc.update(block)
            else:
                pso[name.removeprefix("pysyncobj ")] = block
        if cfg.get("profile"):
            rf["profile"] = profile_window(ldr, [ldr.sock], WRITE_ARGS, cfg)
    return rf, pso, etc


def profile_window(ldr: AgentProc, socks: list[str], cmd: dict, cfg: dict) -> dict:
    """py-spy the leader's agent during a 64-client write window; top functions by self time."""
    pyspy = Path(PY).parent / "py-spy"
    if not pyspy.exists():
        return {"skipped": "py-spy not installed (.venv/bin/pip install py-spy)"}
    raw = OUT / "profile_write64.txt"
    secs = max(4, int(cfg["window"]) + 2)
    prof = spawn(
        [
            str(pyspy),
            "record",
            "--pid",
            str(ldr.proc.pid),
            "--duration",
            str(secs),  # type: ignore[union-attr]
            "--format",
            "raw",
            "--rate",
            "200",
            "--output",
            str(raw),
            "--nonblocking",
        ],
        OUT / "py-spy.log",
    )
    try:
        m = measure(framed_specs(socks, 64, "command", "inc", cmd), secs - 1)
        prof.wait(secs + 30)
    finally:
        stop_proc(prof)
    self_t: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    if raw.exists():
        for line in raw.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if not n.isdigit():
                continue
            frames = stack.split(";")
            total += int(n)
            leaf = frames[-1]
            self_t[leaf] = self_t.get(leaf, 0) + int(n)
            for f in set(frames):
                incl[f] = incl.get(f, 0) + int(n)
    top_self = sorted(self_t.items(), key=lambda kv: -kv[1])[:15]
    top_incl = sorted(incl.items(), key=lambda kv: -kv[1])[:40]
    return {
        "ops_per_s_while_profiled": round(m["ops_per_s"], 1),
        "samples": total,
        "raw": str(raw.relative_to(ROOT)),
        "top_self": [[f, round(100 * n / max(total, 1), 1)] for f, n in top_self],
        "top_inclusive": [[f, round(100 * n / max(total, 1), 1)] for f, n in top_incl],
    }


def assemble_1group(rf: dict, pso: dict, etcd: dict) -> tuple[dict, dict]:
    def pick_pso(k: str) -> dict | None:
        if "skipped" in pso or "error" in pso:
            return None
        cands = [pso[b][k] for b in ("batch_true", "batch_false") if k in pso.get(b, {})]
        if not cands:
            return None
        best = max(cands, key=lambda x: x["ops_per_s"] or 0)
        which = (
            "batch_true"
            if "batch_true" in pso and best is pso["batch_true"].get(k)
            else "batch_false"
        )
        return {
            **best,
            "appendEntriesUseBatch": which == "batch_true",
            "version": pso.get("version"),
        }

    def block(kind: str, clients: int) -> dict:
        mine = rf.get(f"{kind}_{clients}", {})
        d = dict(mine)
        peers: dict = {}
        k = f"{kind}_{clients}"
        for name, found, pick in (("pysyncobj", pso, pick_pso), ("etcd", etcd, etcd.get)):
            if "skipped" in found:
                peers[name] = {"skipped": found["skipped"]}
                continue
            p = pick(k)
            if p:
                peers[name] = p
                d[f"ratio_vs_{name}"] = (
                    r(mine["ops_per_s"] / p["ops_per_s"], 3) if p["ops_per_s"] else None
                )
                d[f"reps_ratio_vs_{name}"] = paired_ratios(mine, p)
        if peers:
            d["peers"] = peers
        return d

    write = {"clients_1": block("write", 1), "clients_64": block("write", 64)}
    read = {"clients_1": block("read", 1), "clients_64": block("read", 64)}
    if write["clients_64"].get("ops_per_s"):
        read["clients_64"]["ratio_vs_writes"] = r(
            read["clients_64"]["ops_per_s"] / write["clients_64"]["ops_per_s"], 3
        )
    via = rf.get("write_64_via_follower")
    if via:
        write["clients_64_via_follower"] = dict(via)
        if write["clients_64"].get("ops_per_s"):
            write["clients_64_via_follower"]["ratio_vs_leader"] = r(
                via["ops_per_s"] / write["clients_64"]["ops_per_s"], 3
            )
    mem = rf.get("write_64_in_memory")
    if mem and mem.get("ops_per_s"):
        write["clients_64_in_memory"] = dict(mem)
        if write["clients_64"].get("ops_per_s"):
            write["clients_64_in_memory"]["durable_share"] = r(
                write["clients_64"]["ops_per_s"] / mem["ops_per_s"], 3
            )
        p = pick_pso("write_64")
        if p and p["ops_per_s"]:
            # Neither fsyncs (PySyncObj's journal outlives a crash of its process,
            # an --in-memory agent keeps nothing): context, not the target.
            write["clients_64_in_memory"]["ratio_vs_pysyncobj"] = r(
                mem["ops_per_s"] / p["ops_per_s"], 3
            )
            write["clients_64_in_memory"]["reps_ratio_vs_pysyncobj"] = paired_ratios(mem, p)
    elif mem:
        write["clients_64_in_memory"] = dict(mem)
    if "profile" in rf:
        write["clients_64"]["profile"] = rf["profile"]
    return write, read
