"""CPU per command of the replication path alone: three hosts in one process.

    .venv/bin/python bench/host_loop.py [--seconds S] [--store memory|sqlite] [--dir DIR]
                                        [--groups 1,100]

Three `MultiRaftHost`s (one per "agent") run in one trio loop; every frame
between them goes through the real encoder, msgpack and the real decoder, as
between agents, but no socket, no control connection, no client process. A
driver keeps K commands in flight with `start_command` (the control server's
fast path) on the groups' leaders. Reported per scenario: commands/s and
the process CPU (all three hosts together) per command.

This bounds what the agents can do on this machine: with three agents on two
cores, `ops_per_s` here (one core, nothing else) is roughly the ceiling the
multi-process benchmark can approach. Measured for 1 group and 100 groups,
64 commands in flight (the `python -m bench` write scenarios). The process
uses the agent's collector settings (`raftfleet_agent.gc_policy`).

Human-readable lines go to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import trio

from raftfleet_agent import gc_policy
from raftfleet_agent.host import wire
from raftfleet_agent.host.loop import MultiRaftHost
from raftfleet_agent.host.replica import Waiter
from raftfleet_agent.raft.member import RaftOptions
from raftfleet_agent.raft.types import Config, ReplicaId
from raftfleet_agent.storage import LogStore, MemoryLogStore
from raftfleet_agent.storage.sqlite import SqliteLogStore

AGENTS = ("a1", "a2", "a3")
MAX_COMMANDS = 2_000_000  # per scenario, besides the time bound


class Wires:
    """Frames between the in-process hosts: packed on send, unpacked by a task per host."""

    def __init__(self) -> None:
        self.hosts: dict[str, MultiRaftHost] = {}
        self.inbox: dict[str, list[tuple[str, bytes]]] = {a: [] for a in AGENTS}
        self.arrived: dict[str, trio.Event] = {a: trio.Event() for a in AGENTS}

    def sender(self, frm: str):  # type: ignore[no-untyped-def]
        def send(to: str, frame: object) -> bool:
            self.inbox[to].append((frm, msgpack.packb(frame, use_bin_type=True)))
            self.arrived[to].set()
            return True

        return send

    async def deliver_to(self, agent: str) -> None:
        while True:
            await self.arrived[agent].wait()
            self.arrived[agent] = trio.Event()
            frames, self.inbox[agent] = self.inbox[agent], []
            for frm, data in frames:
                _kind, rest = wire.split(msgpack.unpackb(data, raw=False, strict_map_key=False))
                self.hosts[agent].deliver(frm, wire.decode_raft(rest[0]))


async def _scenario(n_groups: int, in_flight: int, seconds: float, store: str, root: Path) -> dict:
    wires = Wires()
    stores: list[LogStore] = []
    try:
        return await _measure(wires, stores, n_groups, in_flight, seconds, store, root)
    finally:
        for s in stores:  # inside the run: a commit finishing now still reaches its loop
            await trio.to_thread.run_sync(s.close)


async def _measure(
    wires: Wires,
    stores: list[LogStore],
    n_groups: int,
    in_flight: int,
    seconds: float,
    store: str,
    root: Path,
) -> dict:
    async with trio.open_nursery() as nursery:
        for i, a in enumerate(AGENTS):
            s: LogStore
            if store == "sqlite":
                (root / a).mkdir()
                s = SqliteLogStore(root / a)
            else:
                s = MemoryLogStore()
            stores.append(s)
            host = MultiRaftHost(
                agent=a,
                store=s,
                send_frame=wires.sender(a),
                options=RaftOptions(),
                tick_interval_s=0.1,
                rng=random.Random(i),
            )
            wires.hosts[a] = host
            await nursery.start(host.run)
            nursery.start_soon(wires.deliver_to, a)
        groups = [f"g{i}" for i in range(n_groups)]
        ids = [ReplicaId(a, 1) for a in AGENTS]
        for k, g in enumerate(groups):
            for r in ids:
                await wires.hosts[r.agent].create_replica(g, "counter", r, Config(frozenset(ids)))
            wires.hosts[AGENTS[k % 3]].campaign(g)  # leaders spread as the fleet spreads them
        leader = await _leaders(wires, groups)
        counted = {"on": False, "done": 0, "started": 0, "refused": 0}
        rng = random.Random(7)

        def start(_w: Waiter | None = None) -> None:
            if counted["on"]:
                counted["done"] += 1
            if counted["started"] >= MAX_COMMANDS:
                return
            counted["started"] += 1
            g = groups[rng.randrange(n_groups)]
            seq = counted["started"]
            if leader[g].start_command(g, "inc", "bench", seq, 5.0, start) is None:
                counted["refused"] += 1

        for _ in range(in_flight):
            start()
        await trio.sleep(1.0)  # warm up
        counted["on"] = True
        t0, c0 = time.perf_counter(), time.process_time()
        await trio.sleep(seconds)
        counted["on"] = False
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        nursery.cancel_scope.cancel()
    done = max(1, counted["done"])
    return {
        "groups": n_groups,
        "in_flight": in_flight,
        "store": store,
        "ops_per_s": round(done / wall),
        "cpu_us_per_op": round(cpu / done * 1e6, 1),
        "cpu_fraction": round(cpu / wall, 2),
        "refused": counted["refused"],
    }


async def _leaders(wires: Wires, groups: list[str]) -> dict[str, MultiRaftHost]:
    with trio.fail_after(30):
        while True:
            found = {
                g: h
                for g in groups
                for h in wires.hosts.values()
                if h.replicas[g].member.is_leader and h.replicas[g].member.commit >= 1
            }
            if len(found) == len(groups):
                return found
            await trio.sleep(0.05)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=3.0, help="measured time per scenario")
    p.add_argument("--store", choices=("memory", "sqlite"), default="memory")
    p.add_argument("--dir", default="bench/out", help="where the sqlite stores go (a real disk)")
    p.add_argument("--groups", default="1,100", help="comma-separated group counts to measure")
    a = p.parse_args()
    gc_policy.tune()
    results = {}
    for n_groups in (int(g) for g in a.groups.split(",")):
        Path(a.dir).mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(dir=a.dir, prefix="host-loop-"))
        try:
            r = trio.run(_scenario, n_groups, 64, a.seconds, a.store, root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        results[f"groups_{n_groups}"] = r
        print(json.dumps(r), file=sys.stderr)
    print(json.dumps({"host_loop": results, "python": sys.version.split()[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
