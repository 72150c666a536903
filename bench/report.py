"""The report: targets and their verdicts, the table on stderr, and bench/RESULTS.md."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench.common import ROOT, get

TARGETS = [
    # (key, op, target, description)
    ("write_1group.clients_64.ratio_vs_pysyncobj", ">=", 2.0, "write 64 clients vs PySyncObj"),
    ("write_1group.clients_64.ratio_vs_etcd", ">=", 1.0, "write 64 clients vs etcd"),
    ("write_1group.clients_1.p99_s", "<=", 0.005, "write 1 client p99 (s)"),
    ("write_100groups.ops_per_s", ">=", 30000, "100 groups, 64 clients (ops/s)"),
    ("read_1group.clients_64.ratio_vs_writes", ">=", 3.0, "reads / writes, 64 clients"),
    ("idle.groups_10000.cpu_pct_per_agent", "<=", 5.0, "idle 10k groups CPU % per agent"),
    ("idle.groups_10000.rss_kib_per_replica", "<=", 10.0, "idle 10k groups KiB per replica"),
    ("failover.p50_s", "<=", 1.5, "failover p50 (s)"),
    ("failover.p99_s", "<=", 3.0, "failover p99 (s)"),
    ("drain.replicas_1000.seconds", "<=", 30.0, "drain 1,000 replicas (s)"),
    ("create.groups_per_s", ">=", 200.0, "create groups/s"),
    ("restart.replicas_10000.seconds", "<=", 10.0, "restart 10k replicas, serving (s)"),
]


def verdicts(res: dict) -> list[tuple[str, str, object, str, str]]:
    rows = []
    for key, op, target, desc in TARGETS:
        v = get(res, key)
        if not isinstance(v, (int, float)) or math.isnan(v):
            rows.append((desc, key, v, f"{op} {target}", "n/a"))
            continue
        ok = v >= target if op == ">=" else v <= target
        if ok:
            verdict = "meets"
        elif op == ">=":
            verdict = f"MISS ({v / target:.2f}x of target)"
        else:
            verdict = f"MISS ({v / target:.2f}x the limit)"
        rows.append((desc, key, v, f"{op} {target}", verdict))
    return rows


def table(res: dict) -> str:
    w1, r1 = res.get("write_1group", {}), res.get("read_1group", {})
    lines = ["| measure | raftfleet | PySyncObj | etcd |", "| --- | --- | --- | --- |"]
    for label, d, k in (
        ("write 1 client ops/s", w1.get("clients_1", {}), "ops_per_s"),
        ("write 1 client p50 s", w1.get("clients_1", {}), "p50_s"),
        ("write 1 client p99 s", w1.get("clients_1", {}), "p99_s"),
        ("write 1 client p999 s", w1.get("clients_1", {}), "p999_s"),
        ("write 64 clients ops/s", w1.get("clients_64", {}), "ops_per_s"),
        ("write 64 clients p50 s", w1.get("clients_64", {}), "p50_s"),
        ("write 64 clients p99 s", w1.get("clients_64", {}), "p99_s"),
        ("write 64 clients p999 s", w1.get("clients_64", {}), "p999_s"),
        (
            "write 64 clients via a follower ops/s",
            w1.get("clients_64_via_follower", {}),
            "ops_per_s",
        ),
        ("write 64 clients via a follower p99 s", w1.get("clients_64_via_follower", {}), "p99_s"),
        ("read 1 client ops/s", r1.get("clients_1", {}), "ops_per_s"),
        ("read 64 clients ops/s", r1.get("clients_64", {}), "ops_per_s"),
        ("read 64 clients p99 s", r1.get("clients_64", {}), "p99_s"),
    ):
        peers = d.get("peers", {})
        lines.append(
            f"| {label} | {d.get(k)} | {get(peers, 'pysyncobj.' + k)} | {get(peers, 'etcd.' + k)} |"
        )
    lines += ["", "| target | key | value | target | verdict |", "| --- | --- | --- | --- | --- |"]
    for desc, key, v, t, verdict in verdicts(res):
        lines.append(f"| {desc} | `{key}` | {v} | {t} | {verdict} |")
    return "\n".join(lines)


def write_results_md(res: dict, path: Path) -> None:
    m = res["meta"]
    w = res.get("write_1group", {})
    peers64 = get(w, "clients_64.peers") or {}
    prof = get(res, "write_1group.clients_64.profile")
    text = f"""# raftfleet benchmark results

Last full run of `python -m bench` ({m["seconds_total"]:.0f} s wall).

- date: {m["date"]}
- git commit: `{m["git_commit"]}`{" (working tree had uncommitted changes)" if m["git_dirty"] else ""}
- machine: {m["cpus"]} cores ({m["cpu_model"]}), {m["mem_gib"]} GiB RAM, Linux {m["kernel"]}, Python {m["python"]}
- **the machine has {m["cpus"]} cores, shared by everything**: the 3 agents (4 in drain), the client
  processes and, for the comparisons, the 3 PySyncObj / etcd processes. Every number is
  CPU-bound on this box and would change on a larger machine.
- load average at start / end of the run: {m.get("loadavg_start")} / {m.get("loadavg_end")}.
  {_load_note(m)}
- host speed at start / end (`python -m bench.host_loop --groups 1`: one process, no socket, no
  disk; this machine gives ~45,000 commands/s at its best): {m.get("host_speed_start")} /
  {m.get("host_speed_end")} commands/s. Compare two runs' figures only as far as these agree.
- storage: durable on the real disk under `bench/out/` (SQLite with group commit for raftfleet,
  etcd's WAL with fsync; PySyncObj {get(res, "meta.pysyncobj_note")}).
- medians of {m["reps"]} repetitions of {m["window_s"]} s windows (failover: {get(res, "failover.kills")} kills).

## Summary

{table(res)}

## How each number is measured

- **write_1group / read_1group**: one 3-replica `counter` group (placed by the fleet), clients
  in separate processes (`bench/loadgen.py`, one selectors loop per process) sending to the
  leader's agent over its Unix control socket: `command {{arg: "inc"}}` / `query {{arg: "get"}}`
  (linearizable read; no request_id). 1 client = one connection, one request in flight.
  64 clients = 64 requests always outstanding: 2 processes x 4 connections x 8 pipelined requests.
  Latency = send to reply, per request; throughput = replies within the window / window.
  "via a follower": the same 64 clients on a follower's agent, which forwards every command
  to the leader's agent (what a client that does not know the leader gets).
- **PySyncObj** ({get(peers64, "pysyncobj.version") or "pysyncobj"}): 3 processes on 127.0.0.31-33 with `bindAddress`, a `@replicated inc`
  counter, `journalFile` on disk; each node serves the same framing on a Unix socket
  (`bench/peer_pysyncobj.py`), so the same load generator drives it with the same
  concurrency; commands go to the leader and are answered from the commit callback.
  Tried with `appendEntriesUseBatch` True and False; the faster per concurrency is
  reported (both are in the JSON under `pysyncobj_runs`). All three systems (and in a full run
  the `--in-memory` agents) are up together
  (the idle ones cost ~1 % of a core each) and their windows are taken in turn: in each
  repetition every load runs once on every system, the systems' order rotating, so the
  i-th windows of a load fall within a minute or two of each other whatever the host's
  drift. `reps_ratio_vs_*` are those windows' ratios, one per repetition. Its reads are local (not
  linearizable). Its journal is mmap'ed and not fsynced before acknowledging.
- **etcd** ({get(peers64, "etcd.version") or "etcd"}): 3 members on 127.0.0.41-43, v3 HTTP/JSON gateway, `POST /v3/kv/put` of one
  key (and `/v3/kv/range`, linearizable, for reads) to the leader; 64 clients = 2 processes x
  32 keep-alive connections (HTTP/1.1 answers in order, so one request per connection).
- **write_100groups**: 100 groups placed by the fleet; 2 processes x 4 connections x 8
  pipelined = 64 outstanding; each connection goes to one agent and cycles over the groups
  that agent leads.
- **idle**: fresh 3-agent cluster; groups created with 32 concurrent creators; wait until no
  agent writes to its store for 3 s (status "loop" counters); then CPU of each agent from
  `/proc/<pid>/stat` (utime+stime) over {get(res, "idle.groups_10000.window_s")} s windows (10k: median of the windows).
  **RSS per replica = (agent VmRSS now - the same agent's VmRSS after start and activation, before
  any group) / replicas the agent hosts**; median over the agents. Last, after the restart,
  one agent is killed (kill -9) and the two others measured idle the same way, with every
  group sharing the dead agent: {get(res, "idle.groups_10000.one_agent_down.cpu_pct_per_agent")} % of a core per agent,
  replicas still awake {get(res, "idle.groups_10000.one_agent_down.awake_replicas")}
  (`idle.groups_10000.one_agent_down`; not a target).
- **create**: 1,000 `group_create` calls (fleet placement, each returns once the group has a
  leader and a committed entry on a majority) by 32 concurrent creators spread over the agents,
  on a fresh cluster per repetition; groups/s = 1,000 / wall time.
- **restart**: on the 10,000-group cluster, agent a3 (hosting ~10,000 replicas) gets SIGTERM and
  is started again; seconds from the start until stale `query` of 20 random groups through
  its socket (its local replicas) all succeed; also when its status lists all replicas again.
- **failover**: a busy group (load: 8 outstanding `inc` through all agents); kill -9 the agent
  leading it; seconds from the kill until a `command` (timeout_s 0.2, no retries, repeated)
  through a surviving agent succeeds; the agent is restarted and caught up before the next kill.
- **drain**: 4 agents in 4 zones, groups created until the 4th hosts ~1,000 replicas; light load
  (100 inc/s through the other 3 agents over all groups); `deactivate` + `drain_watch` on the 4th;
  seconds until drain_watch reports complete; client errors = failed requests (after the
  agent's retries) during the whole window.
"""
    text += _floor_section(res)
    if isinstance(prof, dict) and prof.get("top_self"):
        text += "\n## Profile of the leader agent, write_1group 64 clients (py-spy)\n\n"
        text += "| self % | function |\n| --- | --- |\n"
        for f, p in prof["top_self"][:12]:
            text += f"| {p} | `{f}` |\n"
    misses = ROOT / "bench" / "MISSES.md"
    if misses.exists():
        text += "\n" + misses.read_text()
    text += "\n## JSON of the run\n\n```json\n" + json.dumps(res, indent=1) + "\n```\n"
    path.write_text(text)


def _floor_section(res: dict) -> str:
    f100, f1 = get(res, "floor.groups_100"), get(res, "floor.groups_1")
    if not isinstance(f100, dict) or not isinstance(f1, dict):
        return ""
    pso = get(res, "write_1group.clients_64.peers.pysyncobj.ops_per_s")
    need = f"{2 * pso:,.0f}" if isinstance(pso, int | float) else "n/a"

    def share(d: dict) -> str:
        v = d.get("real_share")
        return f"{v:.2f}" if isinstance(v, int | float) else "n/a"

    return f"""
## The floor: the same loads with no Raft at all (`bench/floor.py`, this run)

Three processes on the agent's own plumbing (trio, framing, msgpack, the Raft
message codec, one frame per peer per turn, the SQLite store with group commit)
doing only what a 3-replica log must: the leader persists and sends each entry,
the followers persist and acknowledge it, the leader answers once a majority has
it on disk. No RaftMember, Ready, ticks, state machine, sessions or routing. What
this does is an upper bound for any Raft built on this plumbing here.

| load | floor ops/s | p99 s | real agents / floor | needed for the target |
| --- | --- | --- | --- | --- |
| 100 groups, 64 outstanding | {f100.get("ops_per_s")} | {f100.get("p99_s")} | {share(f100)} | 30,000 |
| 1 group, 64 outstanding | {f1.get("ops_per_s")} | {f1.get("p99_s")} | {share(f1)} | {need} (2x PySyncObj) |

CPU of the three floor processes (100 = one core): {f100.get("node_cpu_pct")} over 100
groups, machine idle {f100.get("machine_idle_pct")} %.
{_in_memory_line(res)}"""


def _in_memory_line(res: dict) -> str:
    mem = get(res, "write_1group.clients_64_in_memory")
    if not isinstance(mem, dict) or not mem.get("ops_per_s"):
        return ""
    return (
        f"\nThe real agents with no disk at all (`--in-memory`, same 64 writers, this run): "
        f"{mem.get('ops_per_s')} ops/s, p99 {mem.get('p99_s')} s; the durable agents do "
        f"{mem.get('durable_share')} of it. Neither they nor PySyncObj fsync (PySyncObj's "
        f"mmap'ed journal outlives a crash of its process; an `--in-memory` agent keeps "
        f"nothing): {mem.get('ratio_vs_pysyncobj')}x PySyncObj's rate, window by window "
        f"{mem.get('reps_ratio_vs_pysyncobj')}. Not the target, which is durable.\n"
    )


def _load_note(meta: dict) -> str:
    # The 1-minute load average still counts what ran in the minute before the
    # run (a previous run's last scenario); what the cores did just before the
    # start says whether anything else was running.
    busy = meta.get("busy_pct_start")
    load = (meta.get("loadavg_start") or [0.0])[0]
    if busy is None:
        busy = round(100.0 * load, 1)
    if busy >= 20.0:
        return (
            f"Other jobs were running on the same cores when the run started ({busy} % of a\n"
            "  core busy), so absolute numbers are pessimistic and noisy; the peers ran under\n"
            "  the same conditions."
        )
    return (
        f"The machine was otherwise idle when the run started ({busy} % of a core busy over\n"
        f"  the 2 s before it; a 1-minute load of {load} counts the minute before)."
    )
