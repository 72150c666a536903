"""One fault-injection run, and campaigns of several.

A run: 5 agents (own processes, durable data dirs) in 3 zones on 127.0.0.x,
each advertising a `FaultProxy` address so every peer byte crosses the proxy;
two counter groups and one kv group; client threads (plus one using the
`raftfleet` CLI) record every operation; a nemesis chosen by a seeded RNG
injects faults on three lanes while they run:

- process lane: kill -9 (any agent, or a group's leader) and restart from its
  data dir; SIGSTOP/SIGCONT (a paused leader gets a stale-read probe: a write
  acknowledged by the new leader, then a read sent to the paused one); wipe
  one agent's data dir and restart it (once per run).
- network lane (proxy): symmetric and one-way partitions, an isolated leader,
  slow links, connection resets, hard cuts.
- fleet lane: drain (deactivate) an agent and activate it again.

Then heal (resume, restart, unpartition, re-activate), let clients run on
for a while, read every group (each must have a leader within a bound), and
check: every history linearizable (tests.lincheck, kv per key), each
counter's final value within [acked incs, acked + unknown incs], every agent
still running, no agent logging a traceback.

Timings are not reproducible (real processes), the fault schedule is: each
lane draws from its own RNG seeded from the run's seed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import attrs

from raftfleet_cli.client import (
    Client,
    ClientError,
    ConnectError,
    ControlError,
    parse_addr,
)
from tests import lincheck
from tests.faults.history import Record, Recorder, to_operations
from tests.faults.proxy import FaultProxy
from tests.procs import AgentProc, ProcessExited, clean_env

# Refusals that prove the command was never proposed.
REFUSED = frozenset(
    {"unknown_group", "invalid_argument", "data_type_error", "bad_request", "invalid_name"}
)
CALL_TIMEOUT_S = 8.0  # longer than any pause: a read sent to a paused leader is answered after
COMMAND_TIMEOUT_S = 1.0
ZONES = ("z1", "z2", "z3", "z1", "z2")
COUNTERS = ("fc0", "fc1")
KV_GROUP = "fkv"
KV_KEYS = ("k0", "k1", "k2")
NOT_FAULTS = frozenset({"stale_read_probe", "reactivate"})  # noted, but not injected faults
# Entries between a group's snapshots. The agents' default (10,000) is more
# than a run writes to any group: nothing would ever compact, trim or install
# a snapshot under faults.
SNAPSHOT_EVERY = 250
AGENT_ENV = {
    "RAFTFLEET_RECONCILE_INTERVAL_S": "1",
    "RAFTFLEET_PURGE_WINDOW_S": "12",
}


@attrs.define(kw_only=True)
class RunConfig:
    seed: int
    fault_s: float = 35.0  # how long the nemesis runs
    recover_s: float = 5.0  # clients keep running after healing
    clients: int = 5
    cli_client: bool = True
    first_octet: int = 211
    leader_bound_s: float = 30.0
    check_timeout_s: float = 60.0
    max_ops_per_client: int = 5000
    snapshot_every: int | None = SNAPSHOT_EVERY  # None: the agents' default


@attrs.define
class Anomaly:
    kind: str
    detail: str
    group: str | None = None

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


# ---------------------------------------------------------------- the fleet


class Fleet:
    """The agents of one run, their proxy, and what the nemesis did to them."""

    def __init__(
        self, base: Path, cfg: RunConfig, proxy: FaultProxy, zones: tuple[str, ...] = ZONES
    ) -> None:
        self.base = base
        self.proxy = proxy
        self.procs: list[AgentProc] = []
        self.advertised: dict[str, str] = {}
        self.paused: set[str] = set()
        self.lock = threading.Lock()  # serializes process-level changes
        for i, zone in enumerate(zones):
            a = AgentProc(f"a{i + 1}", f"127.0.0.{cfg.first_octet + i}", base)
            a.env = dict(AGENT_ENV)
            if cfg.snapshot_every is not None:
                a.env["RAFTFLEET_SNAPSHOT_EVERY_ENTRIES"] = str(cfg.snapshot_every)
            host, port = proxy.add_agent(a.name, a.host, a.port)
            self.advertised[a.name] = f"{host}:{port}"
            a.extra_args = ["--advertise", self.advertised[a.name]]
            a.zone = zone  # type: ignore[attr-defined]
            self.procs.append(a)
        for a in self.procs[1:]:
            a.join = [self.advertised["a1"]]

    def by_name(self, name: str) -> AgentProc:
        return next(a for a in self.procs if a.name == name)

    def serving(self) -> list[AgentProc]:
        """Agents running and not paused (safe to ask with short timeouts)."""
        return [a for a in self.procs if a.alive and a.name not in self.paused]

    def call_any(self, op: str, timeout: float = 3.0, **args: object) -> object:
        last: BaseException | None = None
        agents = self.serving()
        random.shuffle(agents)
        for a in agents:
            try:
                return a.call(op, timeout=timeout, **args)
            except (ControlError, ClientError, OSError) as e:
                last = e
        raise RuntimeError(f"{op}: no agent answered ({last!r})")

    def leader_of(self, group: str) -> str | None:
        try:
            res = self.call_any("leader", group=group)
        except RuntimeError:
            return None
        return res.get("leader") if isinstance(res, dict) else None  # type: ignore[return-value]

    def stop_all(self) -> None:
        for a in self.procs:
            with contextlib.suppress(Exception):
                if a.alive:
                    a.signal(signal.SIGCONT)
                a.stop(timeout=10)


def _wait(cond: Any, timeout: float, interval: float = 0.2) -> Any:
    """Poll `cond` until truthy or `timeout`; exceptions count as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = cond()
            if v:
                return v
        except ProcessExited:
            raise
        except Exception:
            pass
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def _connected(fleet: Fleet) -> bool:
    for a in fleet.procs:
        peers = a.call("status", timeout=3)["cluster"]["peers"]  # type: ignore[index]
        others = {b.name for b in fleet.procs if b is not a}
        if not others <= {n for n, p in peers.items() if p["reachable"]}:
            return False
    return True


# ---------------------------------------------------------------- clients


class Worker(threading.Thread):
    """One client: random ops on random agents, one outstanding op at a time."""

    def __init__(self, name: str, fleet: Fleet, rec: Recorder, rng: random.Random, cfg: RunConfig):
        super().__init__(name=name, daemon=True)
        self.fleet, self.rec, self.rng, self.cfg = fleet, rec, rng, cfg
        self.stop_event = threading.Event()
        self.seq = 0
        self.ops = 0
        self.last_seen: dict[str, Any] = {}
        self._clients: dict[str, Client] = {}

    def _client(self, a: AgentProc) -> Client:
        c = self._clients.get(a.name)
        if c is None:
            c = self._clients[a.name] = Client(parse_addr(f"unix://{a.sock}"), connect_timeout=1.0)
        return c

    def run(self) -> None:
        try:
            while not self.stop_event.is_set() and self.ops < self.cfg.max_ops_per_client:
                self.ops += 1
                self.one_op()
        finally:
            for c in self._clients.values():
                c.close()

    def one_op(self) -> None:
        r = self.rng.random()
        if r < 0.55:
            g = self.rng.choice(COUNTERS)
            if self.rng.random() < 0.65:
                self.command(g, "counter", "inc", None, "inc")
            else:
                self.query(g, "counter", "get", None, "get")
        else:
            k = self.rng.choice(KV_KEYS)
            r = self.rng.random()
            self.seq += 1
            new = f"{self.name}-{self.seq}"
            if r < 0.4:
                self.command(KV_GROUP, "kv", "put", [k, new], ["put", k, new])
            elif r < 0.65:
                old = self.last_seen.get(k)
                self.command(KV_GROUP, "kv", "cas", [k, old, new], ["cas", k, old, new])
            else:
                self.query(KV_GROUP, "kv", "get", k, ["get", k])

    def _agents(self) -> list[AgentProc]:
        agents = list(self.fleet.procs)
        self.rng.shuffle(agents)
        return agents

    def command(self, group: str, model: str, f: str, value: Any, arg: Any) -> None:
        self.seq += 1
        rid = [self.name, self.seq]
        agents = self._agents()
        rec = self.rec.invoke(
            client=self.name, group=group, model=model, f=f, value=value,
            kind="command", request_id=rid, via=agents[0].name,
        )  # fmt: skip
        unknown, error = False, None
        for attempt, a in enumerate(agents[:3]):
            rec.attempts = attempt + 1
            if attempt:
                time.sleep(0.1)
            try:
                res = self._client(a).call(
                    "command", timeout=CALL_TIMEOUT_S, group=group, arg=arg,
                    request_id=rid, timeout_s=COMMAND_TIMEOUT_S, retries=2,
                )  # fmt: skip
            except ConnectError as e:  # never sent
                error = f"{a.name}: {e}"
                continue
            except ControlError as e:
                error = f"{a.name}: {e.code}: {e}"
                if e.code in REFUSED and not unknown:
                    self.rec.complete(rec, lincheck.FAIL, error=error)
                    return
                unknown = True
                continue
            except (ClientError, OSError) as e:
                error = f"{a.name}: {type(e).__name__}: {e}"
                unknown = True
                continue
            reply = res["reply"]  # type: ignore[index]
            self.rec.complete(rec, lincheck.OK, reply)
            self._saw(f, value, reply)
            return
        self.rec.complete(rec, lincheck.INFO if unknown else lincheck.FAIL, error=error)

    def query(self, group: str, model: str, f: str, value: Any, arg: Any) -> None:
        a = self._agents()[0]
        rec = self.rec.invoke(
            client=self.name, group=group, model=model, f=f, value=value,
            kind="query", request_id=None, via=a.name,
        )  # fmt: skip
        try:
            res = self._client(a).call(
                "query", timeout=CALL_TIMEOUT_S, group=group, arg=arg, timeout_s=COMMAND_TIMEOUT_S
            )
        except (ControlError, ClientError, OSError) as e:
            self.rec.complete(rec, lincheck.FAIL, error=f"{a.name}: {type(e).__name__}: {e}")
            return
        reply = res["reply"]  # type: ignore[index]
        self.rec.complete(rec, lincheck.OK, reply)
        if model == "kv":
            self.last_seen[value] = reply

    def _saw(self, f: str, value: Any, reply: Any) -> None:
        if f == "put":
            self.last_seen[value[0]] = value[1]
        elif f == "cas" and reply:
            self.last_seen[value[0]] = value[2]


class CliWorker(threading.Thread):
    """Counter ops through the `raftfleet` binary (no request id: failures are info)."""

    def __init__(self, fleet: Fleet, rec: Recorder, rng: random.Random, binary: str) -> None:
        super().__init__(name="cli", daemon=True)
        self.fleet, self.rec, self.rng, self.binary = fleet, rec, rng, binary
        self.stop_event = threading.Event()
        self.ops = 0

    def run(self) -> None:
        while not self.stop_event.is_set() and self.ops < 1000:
            self.ops += 1
            a = self.rng.choice(self.fleet.procs)
            g = self.rng.choice(COUNTERS)
            is_inc = self.rng.random() < 0.6
            argv = [self.binary, "--addr", f"unix://{a.sock}", "-o", "json"]
            argv += ["command", g, "inc", "--retries", "2"] if is_inc else ["query", g, "get"]
            argv += ["--timeout", "1"]
            rec = self.rec.invoke(
                client=f"cli-{self.ops}", group=g, model="counter", f="inc" if is_inc else "get",
                value=None, kind="command" if is_inc else "query", request_id=None,
                via=f"cli@{a.name}",
            )  # fmt: skip
            try:
                env = clean_env(NO_COLOR="1")
                p = subprocess.run(argv, check=False, capture_output=True, timeout=20, env=env)
                out = json.loads(p.stdout) if p.returncode == 0 else None
            except (subprocess.TimeoutExpired, ValueError) as e:
                p, out = None, None
                err = repr(e)
            if out is not None and "reply" in out:
                self.rec.complete(rec, lincheck.OK, out["reply"])
                continue
            if p is not None:
                err = f"exit {p.returncode}: {p.stderr.decode(errors='replace')[-200:]}"
            # A command's failure is an unknown outcome (the CLI shows no request id),
            # unless the CLI could not connect at all.
            sent = p is None or b"cannot reach agent" not in p.stderr
            status = lincheck.INFO if is_inc and sent else lincheck.FAIL
            self.rec.complete(rec, status, error=err)


# ---------------------------------------------------------------- the nemesis


class Nemesis:
    """Three fault lanes, each a thread with its own seeded RNG; every fault
    is undone by the lane that injected it (finally), and `heal` undoes the rest."""

    def __init__(self, fleet: Fleet, rec: Recorder, seed: int, fault_s: float) -> None:
        self.fleet, self.rec = fleet, rec
        self.seed = seed
        self.stop_event = threading.Event()
        self.deadline = time.monotonic() + fault_s
        self.events: list[dict[str, Any]] = []
        self.anomalies: list[Anomaly] = []
        self.wiped: dict[str, dict[str, list]] = {}  # agent -> group -> replica ids before
        self._events_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._lane, args=(self._process_fault, 1), daemon=True),
            threading.Thread(target=self._lane, args=(self._network_fault, 2), daemon=True),
            threading.Thread(target=self._lane, args=(self._fleet_fault, 3), daemon=True),
        ]
        self.probe_seq = 0
        self.wipe_at = self.rec.now() + random.Random(seed).uniform(0.2, 0.5) * fault_s

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def join(self) -> None:
        self.stop_event.set()
        for t in self._threads:
            t.join(60)

    def note(self, kind: str, **what: Any) -> None:
        with self._events_lock:
            self.events.append({"t": round(self.rec.now(), 2), "fault": kind, **what})

    def _sleep(self, s: float) -> bool:
        """Sleep unless stopping; False if the lane should stop."""
        return not self.stop_event.wait(s) and time.monotonic() < self.deadline

    def _lane(self, step: Any, k: int) -> None:
        rng = random.Random(self.seed * 1000 + k)
        try:
            while self._sleep(rng.uniform(0.5, 2.5)):
                step(rng)
        except Exception as e:  # a harness problem: report it, never hide it
            self.anomalies.append(Anomaly("harness_error", f"lane {k}: {e!r}"))

    # -- process lane

    def _process_fault(self, rng: random.Random) -> None:
        kinds = ["kill", "kill_leader", "pause", "pause_leader"]
        kind = rng.choices(kinds, [3, 3, 2, 3])[0]
        if not self.wiped and self.rec.now() >= self.wipe_at:
            kind = "wipe"  # once per run, at a seeded time
        f = self.fleet
        victim = rng.choice(f.procs)
        # A paused leader gets a stale-read probe on the counter it leads.
        g = rng.choice(COUNTERS if kind == "pause_leader" else [*COUNTERS, KV_GROUP, "__cluster__"])
        if kind.endswith("_leader"):
            name = f.leader_of(g)
            if name is not None:
                victim = f.by_name(name)
        if kind.startswith("kill"):
            down_s = 13.0 if rng.random() < 0.1 else rng.uniform(0.3, 4.0)
            self.note(kind, agent=victim.name, down_s=round(down_s, 2))
            victim.kill()
            self._sleep(down_s)
            self._restart(victim)
        elif kind.startswith("pause"):
            hold = rng.uniform(1.5, 5.0)
            self.note(kind, agent=victim.name, hold_s=round(hold, 2))
            f.paused.add(victim.name)
            victim.signal(signal.SIGSTOP)
            try:
                if kind == "pause_leader":
                    self._stale_read_probe(victim, g, hold, rng)
                else:
                    self._sleep(hold)
            finally:
                victim.signal(signal.SIGCONT)
                f.paused.discard(victim.name)
        else:
            self._wipe(victim)

    def _restart(self, a: AgentProc) -> None:
        try:
            a.start(wait=True)
        except Exception as e:  # it must come back from its own data dir
            self.anomalies.append(Anomaly("restart_failed", f"{a.name}: {e}"))

    def _stale_read_probe(self, paused: AgentProc, g: str, hold: float, rng: random.Random) -> None:
        """While `paused` (a leader) is stopped: get a write acknowledged by
        the others, then send reads to the paused agent; they are answered on
        SIGCONT and must not miss the write (its lease ended long ago)."""
        t_end = time.monotonic() + hold
        others = [a for a in self.fleet.serving() if a is not paused]
        threads = []
        self.probe_seq += 1
        deadline = min(t_end - 0.3, time.monotonic() + 4)
        writer = f"probe{self.probe_seq}-w"
        wrote = bool(others) and self._probe_op(others, g, "inc", writer, deadline)
        if wrote:
            for i in range(2):
                t = threading.Thread(
                    target=self._probe_op,
                    args=([paused], g, "get", f"probe{self.probe_seq}-r{i}", 0.0),
                    daemon=True,
                )
                t.start()
                threads.append(t)
            time.sleep(0.2)
        self.note("stale_read_probe", agent=paused.name, group=g, write_acked=wrote)
        remaining = t_end - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
        paused.signal(signal.SIGCONT)
        for t in threads:
            t.join(CALL_TIMEOUT_S + 2)

    def _probe_op(
        self, agents: list[AgentProc], g: str, f: str, client: str, deadline: float
    ) -> bool:
        """One probe op (one history record); a command is retried with its
        request id on random `agents` until it is acknowledged or `deadline`."""
        kind = "command" if f == "inc" else "query"
        rid = [client, 1] if kind == "command" else None
        rec = self.rec.invoke(
            client=client, group=g, model="counter", f=f, value=None, kind=kind,
            request_id=rid, via=agents[0].name,
        )  # fmt: skip
        args: dict[str, Any] = {"group": g, "arg": f, "timeout_s": COMMAND_TIMEOUT_S}
        if rid:
            args.update(request_id=rid, retries=2)
        error = None
        while True:
            try:
                res = random.choice(agents).call(kind, timeout=CALL_TIMEOUT_S, **args)
            except (ControlError, ClientError, OSError) as e:
                error = repr(e)
                if time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                self.rec.complete(rec, lincheck.INFO if rid else lincheck.FAIL, error=error)
                return False
            self.rec.complete(rec, lincheck.OK, res["reply"])  # type: ignore[index]
            return True

    def _wipe(self, victim: AgentProc) -> None:
        """kill -9, then note its replicas (ids and how far the leaders know
        they got: nothing it acknowledged can arrive later), wipe, restart."""
        victim.kill()
        self.fleet.proxy.reset(victim.name)  # drop its bytes the proxy may still hold
        time.sleep(0.5)  # acknowledgements already on their way land first
        before: dict[str, list] = {}
        for g in [*COUNTERS, KV_GROUP]:
            with contextlib.suppress(Exception):
                st = self.fleet.call_any("group_status", name=g)
                members = st["members"]  # type: ignore[index]
                before[g] = [
                    (m["replica_id"], m.get("match_index"))
                    for m in members
                    if m["agent"] == victim.name
                ]
        self.wiped[victim.name] = before
        self.note("wipe", agent=victim.name, replicas=before)
        shutil.rmtree(victim.data_dir, ignore_errors=True)
        # Its peer list is gone too: it joins through every other agent.
        victim.join = [addr for n, addr in self.fleet.advertised.items() if n != victim.name]
        self._restart(victim)

    # -- network lane

    def _network_fault(self, rng: random.Random) -> None:
        p, names = self.fleet.proxy, [a.name for a in self.fleet.procs]
        kinds = ["partition", "one_way", "isolate_leader", "slow", "reset", "reject"]
        kind = rng.choices(kinds, [3, 2, 2, 2, 2, 1])[0]
        hold = rng.uniform(1.0, 6.0)
        links: list[tuple[str, str]] = []
        if kind in ("partition", "isolate_leader", "reject"):
            if kind == "isolate_leader":
                g = rng.choice([*COUNTERS, KV_GROUP, "__cluster__"])
                side = [self.fleet.leader_of(g) or rng.choice(names)]
            else:
                side = rng.sample(names, rng.choice([1, 2]))
            rest = [n for n in names if n not in side]
            links = [(a, b) for a in side for b in rest] + [(b, a) for a in side for b in rest]
            self.note(kind, side=side, hold_s=round(hold, 2))
            for a, b in links:
                if kind == "reject":
                    p.reject(a, b)
                else:
                    p.blackhole(a, b)
        elif kind == "one_way":
            src = rng.choice(names)
            dsts = rng.sample([n for n in names if n != src], rng.choice([1, 2, 4]))
            links = [(src, d) for d in dsts] if rng.random() < 0.5 else [(d, src) for d in dsts]
            self.note(kind, links=links, hold_s=round(hold, 2))
            for a, b in links:
                p.blackhole(a, b)
        elif kind == "slow":
            a = rng.choice(names)
            delay = rng.uniform(0.02, 0.4)
            links = [(a, b) for b in names if b != a] + [(b, a) for b in names if b != a]
            self.note(kind, agent=a, delay_s=round(delay, 3), hold_s=round(hold, 2))
            for x, y in links:
                p.delay(x, y, delay, delay / 2)
        else:
            a = rng.choice(names)
            self.note(kind, agent=a)
            p.reset(a)
            return
        try:
            self._sleep(hold)
        finally:
            for a, b in links:
                p.heal(a, b)

    # -- fleet lane

    def _fleet_fault(self, rng: random.Random) -> None:
        if rng.random() < 0.7:
            return
        f = self.fleet
        victim = rng.choice(f.procs)
        try:
            victim.call("deactivate", timeout=3)
        except (ControlError, ClientError, OSError) as e:
            self.note("drain", agent=victim.name, refused=str(e))
            return
        self.note("drain", agent=victim.name)
        self._sleep(rng.uniform(3, 10))
        reactivate(f, victim, 25)
        self.note("reactivate", agent=victim.name)


def reactivate(fleet: Fleet, a: AgentProc, timeout: float) -> bool:
    """Activate `a` again once its drain finished (activate needs inactive)."""

    def done() -> bool:
        if a.name in fleet.paused or not a.alive:
            return False
        st = a.call("status", timeout=3)
        if st["state"] == "active":  # type: ignore[index]
            return True
        if st["state"] == "inactive":  # type: ignore[index]
            a.call("activate", timeout=5, zone=a.zone)  # type: ignore[attr-defined]
        return False

    return bool(_wait(done, timeout, 0.5))


# ---------------------------------------------------------------- one run


def run_once(cfg: RunConfig, base: Path, log: Any = print) -> dict[str, Any]:
    """One run in `base` (kept by the caller on anomalies). Returns its summary."""
    base.mkdir(parents=True, exist_ok=True)
    rec = Recorder()
    anomalies: list[Anomaly] = []
    summary: dict[str, Any] = {"seed": cfg.seed, "dir": str(base)}
    started = time.monotonic()
    proxy = FaultProxy(cfg.seed)
    fleet = Fleet(base, cfg, proxy)
    nemesis: Nemesis | None = None
    workers: list[Any] = []
    crashed: list[AgentProc] = []
    proxy_stats: dict[str, int] = {}
    try:
        setup_fleet(fleet)
        log(f"seed {cfg.seed}: fleet up in {time.monotonic() - started:.1f} s")
        rng = random.Random(cfg.seed)
        workers = [
            Worker(f"c{i}", fleet, rec, random.Random(rng.random()), cfg)
            for i in range(cfg.clients)
        ]
        cli = shutil.which("raftfleet", path=os.path.dirname(sys.executable))
        if cfg.cli_client and cli:
            workers.append(CliWorker(fleet, rec, random.Random(rng.random()), cli))
        for w in workers:
            w.start()
        nemesis = Nemesis(fleet, rec, cfg.seed, cfg.fault_s)
        nemesis.start()
        time.sleep(cfg.fault_s)
        nemesis.join()
        anomalies += nemesis.anomalies
        log(f"seed {cfg.seed}: {len(nemesis.events)} fault events; healing")
        anomalies += _heal(fleet)
        time.sleep(cfg.recover_s)
        for w in workers:
            w.stop_event.set()
        for w in workers:
            w.join(CALL_TIMEOUT_S * 3 + 25)
        anomalies += _final_reads(fleet, rec, cfg)
        anomalies += _check_wiped(fleet, nemesis, cfg.leader_bound_s)
        summary["snapshots"] = _snapshot_counts(fleet)
    except Exception as e:
        anomalies.append(Anomaly("harness_error", repr(e)))
    finally:
        for w in workers:
            w.stop_event.set()
        if nemesis is not None:
            nemesis.join()
        crashed = [a for a in fleet.procs if a.proc is not None and a.proc.poll() is not None]
        fleet.stop_all()
        proxy_stats = dict(proxy.stats)
        proxy.close()
    for a in crashed:
        anomalies.append(Anomaly("agent_exited", f"{a.name} exited {a.proc.returncode}"))  # type: ignore[union-attr]
    anomalies += _check_logs(fleet)
    anomalies += check_history(rec, cfg.check_timeout_s)
    counts = rec.counts()
    summary.update(
        operations=sum(counts.values()),
        ok=counts["ok"],
        fail=counts["fail"],
        info=counts["info"],
        faults=sum(1 for e in (nemesis.events if nemesis else []) if e["fault"] not in NOT_FAULTS),
        fault_kinds=_kinds(nemesis.events if nemesis else []),
        proxy=proxy_stats,
        anomalies=[a.to_json() for a in anomalies],
        seconds=round(time.monotonic() - started, 1),
    )
    rec.dump(
        base / "history.json",
        {"summary": summary, "faults": nemesis.events if nemesis else []},
    )
    return summary


def _snapshot_counts(fleet: Fleet) -> dict[str, int]:
    """Snapshots taken and installed by the agents serving now, each since its last start.

    A figure for the summary (did the run exercise snapshots?), not a check.
    """
    try:
        heads = [a.call("status", timeout=CALL_TIMEOUT_S)["metrics"] for a in fleet.serving()]  # type: ignore[index]
    except Exception:
        return {}
    return {k: sum(h[f"snapshots_{k}"] for h in heads) for k in ("taken", "installed")}


def _kinds(events: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in events:
        out[e["fault"]] = out.get(e["fault"], 0) + 1
    return out


GROUPS = (*((g, "counter") for g in COUNTERS), (KV_GROUP, "kv"))


def setup_fleet(fleet: Fleet, groups: tuple | list = GROUPS) -> None:
    """Start every agent at once, connect, activate in its zone, create `groups`."""
    for a in fleet.procs:
        a.start(wait=False)
    for a in fleet.procs:
        if not _wait(a.ping, 30):
            raise RuntimeError(f"{a.name} did not start:\n{a.log()}")
    if not _wait(lambda: _connected(fleet), 40):
        raise RuntimeError("agents did not connect through the proxy")
    for a in fleet.procs:
        if not _wait(lambda a=a: a.call("activate", zone=a.zone), 30):  # type: ignore[attr-defined]
            raise RuntimeError(f"{a.name} did not activate")
    for g, t in groups:

        def create(g: str = g, t: str = t) -> bool:
            try:
                fleet.procs[0].call("group_create", timeout=30, name=g, replicas=3, type=t)
            except ControlError as e:
                if e.code != "already_exists":
                    raise
            return True

        if not _wait(create, 40):
            raise RuntimeError(f"cannot create {g}")
    for g, _t in groups:
        if not _wait(lambda g=g: fleet.leader_of(g), 30):
            raise RuntimeError(f"{g} has no leader after creation")


def _views(a: AgentProc) -> str:
    """What `a` says of itself and of the cluster (for a stuck agent's report).

    (The cluster-state group itself is not addressable by name: `status`
    carries its leader and voters.)"""
    out = []
    for op, args in (("status", {}), ("nodes", {})):
        try:
            out.append(f"{op}: {json.dumps(a.call(op, timeout=5, **args), default=str)}")
        except Exception as e:
            out.append(f"{op}: {type(e).__name__}: {e}")
    return "; ".join(out)


def _heal(fleet: Fleet) -> list[Anomaly]:
    out: list[Anomaly] = []
    fleet.proxy.heal_all()
    for a in fleet.procs:
        if a.alive:
            a.signal(signal.SIGCONT)
        fleet.paused.discard(a.name)
    for a in fleet.procs:
        if not a.alive:
            try:
                a.start(wait=True)
            except Exception as e:
                out.append(Anomaly("restart_failed", f"{a.name} after healing: {e}"))
    if not _wait(lambda: _connected(fleet), 30):
        out.append(Anomaly("not_reconnected", "agents not all connected 30 s after healing"))
    for a in fleet.procs:
        if not reactivate(fleet, a, 40):
            out.append(
                Anomaly("not_reactivated", f"{a.name} not active 40 s after healing; {_views(a)}")
            )
    return out


def _final_reads(fleet: Fleet, rec: Recorder, cfg: RunConfig) -> list[Anomaly]:
    """Every group answers a linearizable read within the bound (recorded too)."""
    out = []
    reads = [(g, "counter", "get", None, "get") for g in COUNTERS]
    reads += [(KV_GROUP, "kv", "get", k, ["get", k]) for k in KV_KEYS]
    for g, model, f, value, arg in reads:
        deadline = time.monotonic() + cfg.leader_bound_s
        done = False
        while not done and time.monotonic() < deadline:
            for a in fleet.serving():
                r = rec.invoke(
                    client="final", group=g, model=model, f=f, value=value, kind="query",
                    request_id=None, via=a.name,
                )  # fmt: skip
                try:
                    res = a.call("query", timeout=5, group=g, arg=arg, timeout_s=1.0)
                except (ControlError, ClientError, OSError) as e:
                    rec.complete(r, lincheck.FAIL, error=repr(e))
                    continue
                rec.complete(r, lincheck.OK, res["reply"])  # type: ignore[index]
                done = True
                break
            else:
                time.sleep(0.3)
        if not done:
            out.append(
                Anomaly("no_leader", f"no read served within {cfg.leader_bound_s} s of healing", g)
            )
    return out


def _check_wiped(fleet: Fleet, nemesis: Nemesis | None, bound_s: float) -> list[Anomaly]:
    """A wiped agent's old replicas leave every group within `bound_s` (the
    fleet rebuilds them under new ids), and never replicate again meanwhile
    (an old id whose match index grew is the old identity voting again)."""
    out = []
    deadline = time.monotonic() + bound_s
    for name, before in (nemesis.wiped if nemesis else {}).items():
        for g, old in before.items():
            old_match = {tuple(rid): match for rid, match in old}

            def stale(g: str = g, old_match: dict = old_match) -> list:
                st = fleet.call_any("group_status", name=g)
                return [
                    (tuple(m["replica_id"]), m.get("match_index"))
                    for m in st["members"]  # type: ignore[index]
                    if tuple(m["replica_id"]) in old_match
                ]

            try:
                left = stale()
            except RuntimeError as e:
                out.append(Anomaly("no_leader", f"group_status after healing: {e}", g))
                continue
            for rid, match in left:
                was = old_match[rid]
                if match is not None and was is not None and match > was:
                    detail = f"{rid} (wiped) matched index {was} before, {match} now"
                    out.append(Anomaly("wiped_identity_reused", detail, g))
            remaining = max(1.0, deadline - time.monotonic())
            if left and _wait(lambda stale=stale: not stale(), remaining, 1.0) is None:
                detail = (
                    f"{name} was wiped; its old replica {sorted(r for r, _ in left)} is still a "
                    f"member {bound_s:g} s after healing (not rebuilt)"
                )
                out.append(Anomaly("wiped_replica_not_rebuilt", detail, g))
    return out


def _check_logs(fleet: Fleet) -> list[Anomaly]:
    out = []
    for a in fleet.procs:
        try:
            text = a.log_path.read_text(errors="replace")
        except OSError:
            continue
        n = text.count("Traceback (most recent call last)")
        if n:
            i = text.index("Traceback (most recent call last)")
            out.append(Anomaly("traceback_in_log", f"{a.name}: {n} tracebacks; first:\n"
                               + text[max(0, i - 300) : i + 2500]))  # fmt: skip
    return out


def check_history(rec: Recorder, timeout: float) -> list[Anomaly]:
    """Linearizability per group (kv per key) and the counters' final-value bounds."""
    records = rec.records()
    out = []
    for g in [*COUNTERS, KV_GROUP]:
        ops = to_operations(records, g)
        result = (
            lincheck.check_kv(ops, timeout=timeout)
            if g == KV_GROUP
            else lincheck.check_counter(ops, timeout=timeout)
        )
        if result.timed_out:
            out.append(Anomaly("check_inconclusive", result.explain(), g))
        elif not result.ok:
            out.append(Anomaly("not_linearizable", result.explain(20), g))
    for g in COUNTERS:
        out += _counter_bounds(records, g)
    return out


def _counter_bounds(records: list[Record], g: str) -> list[Anomaly]:
    incs = [r for r in records if r.group == g and r.f == "inc"]
    acked = sum(1 for r in incs if r.status == lincheck.OK)
    unknown = sum(1 for r in incs if r.status == lincheck.INFO)
    finals = [r for r in records if r.group == g and r.client == "final" and r.status == "ok"]
    if not finals:
        return []  # reported as no_leader
    value = finals[-1].output
    if not acked <= value <= acked + unknown:
        detail = f"final value {value}, acked incs {acked}, unknown {unknown}"
        return [Anomaly("counter_out_of_bounds", detail, g)]
    replies = [r.output for r in incs if r.status == lincheck.OK]
    if len(set(replies)) != len(replies):
        return [Anomaly("duplicate_inc_reply", "two acknowledged incs saw the same value", g)]
    return []


# ---------------------------------------------------------------- campaigns


def campaign(
    minutes: float,
    seed: int,
    keep_dir: Path,
    run_fault_s: float = 35.0,
    log: Any = print,
    max_runs: int | None = None,
    snapshot_every: int | None = SNAPSHOT_EVERY,
) -> dict[str, Any]:
    """Runs with seeds seed, seed+1, ... until `minutes` are used up (at least one run)."""
    keep_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + minutes * 60
    runs: list[dict[str, Any]] = []
    est_run_s = run_fault_s + 30
    while not runs or time.monotonic() + est_run_s <= deadline:
        if max_runs is not None and len(runs) >= max_runs:
            break
        s = seed + len(runs)
        base = _fresh_dir(keep_dir / f"run-{s}")
        t0 = time.monotonic()
        cfg = RunConfig(seed=s, fault_s=run_fault_s, snapshot_every=snapshot_every)
        summary = run_once(cfg, base, log)
        est_run_s = max(est_run_s, time.monotonic() - t0)
        runs.append(summary)
        n_anom = len(summary["anomalies"])
        log(
            f"seed {s}: {summary['operations']} ops ({summary['ok']} ok, {summary['info']} info), "
            f"{summary['faults']} faults, {n_anom} anomalies, {summary['seconds']} s; "
            f"snapshots {summary.get('snapshots')}"
        )
        for a in summary["anomalies"]:
            log(f"  ANOMALY {a['kind']} {a.get('group') or ''}: {a['detail'][:3000]}")
        if not n_anom:
            shutil.rmtree(base, ignore_errors=True)  # keep only failing runs
    anomalies = [dict(a, seed=r["seed"]) for r in runs for a in r["anomalies"]]
    return {
        "runs": len(runs),
        "operations": sum(r["operations"] for r in runs),
        "ok": sum(r["ok"] for r in runs),
        "info": sum(r["info"] for r in runs),
        "fail": sum(r["fail"] for r in runs),
        "faults": sum(r["faults"] for r in runs),
        "fault_kinds": _merge([r["fault_kinds"] for r in runs]),
        "snapshots": _merge([r.get("snapshots", {}) for r in runs]),
        "anomalies": len(anomalies),
        "anomaly_details": [_brief(a) for a in anomalies],
        "seeds": [r["seed"] for r in runs],
        "kept": str(keep_dir) if anomalies else None,
    }


def _fresh_dir(path: Path) -> Path:
    """`path`, or `path-2`, `path-3`... if a campaign before this one left it behind.

    A run must start from empty data directories: a stopped campaign keeps
    its last run's, and agents started on them would recover an old cluster.
    """
    n, fresh = 1, path
    while fresh.exists():
        n += 1
        fresh = path.with_name(f"{path.name}-{n}")
    return fresh


def _brief(a: dict[str, Any]) -> dict[str, Any]:
    return {
        "seed": a["seed"],
        "kind": a["kind"],
        "group": a.get("group"),
        "detail": a["detail"][:500],
    }


def _merge(dicts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out
