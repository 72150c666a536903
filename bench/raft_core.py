"""The consensus core's own CPU cost: committed entries per second, no I/O.

3-replica groups driven in one process: messages are handed straight to the
receiving replica, "persisting" is acknowledging the Ready. For batch size B
the leader gets B proposals per turn. Prints one JSON object (last line).

    python bench/raft_core.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

from raftfleet_agent.raft.member import RaftMember, RaftOptions
from raftfleet_agent.raft.types import Config, ReplicaId


def make_groups(n: int) -> list[dict[ReplicaId, RaftMember]]:
    opts = RaftOptions(election_ticks=10, heartbeat_ticks=1, max_append_entries=4096)
    groups = []
    for g in range(n):
        ids = [ReplicaId(f"agent{i}", g) for i in range(3)]
        cfg = Config(frozenset(ids))
        members = {
            r: RaftMember.bootstrap(r, cfg, options=opts, rng=random.Random(g * 3 + k))
            for k, r in enumerate(ids)
        }
        members[ids[0]].campaign()
        groups.append(members)
    return groups


def pump(members: dict[ReplicaId, RaftMember]) -> int:
    """Handle Readys until quiet; returns entries the leader saw committed."""
    committed = 0
    busy = True
    while busy:
        busy = False
        for mem in members.values():
            if not mem.has_ready():
                continue
            busy = True
            rd = mem.ready()
            for msg in rd.early_messages:
                members[msg.to].step(msg)
            for msg in rd.messages:
                members[msg.to].step(msg)
            if mem.is_leader:
                committed += len(rd.committed)
            mem.advance(rd)
    return committed


def leader_of(members: dict[ReplicaId, RaftMember]) -> RaftMember:
    return next(m for m in members.values() if m.is_leader)


def run(n_groups: int, batch: int, seconds: float) -> dict:
    groups = make_groups(n_groups)
    for members in groups:
        pump(members)
    leaders = [leader_of(g) for g in groups]
    payload = ["client", 1, 0, "inc"]
    committed = 0
    turns = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while time.perf_counter() < deadline and turns < 1_000_000:
        for members, lead in zip(groups, leaders, strict=True):
            for _ in range(batch):
                lead.propose(payload)
            committed += pump(members)
        turns += 1
    elapsed = time.perf_counter() - t0
    return {
        "groups": n_groups,
        "batch": batch,
        "entries_per_s": round(committed / elapsed),
        "us_per_entry": round(elapsed / max(1, committed) * 1e6, 2),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=3.0, help="time per scenario")
    a = p.parse_args()
    results = {}
    for n_groups in (1, 1000):
        for batch in (1, 64):
            r = run(n_groups, batch, a.seconds)
            results[f"groups_{n_groups}_batch_{batch}"] = r
            print(json.dumps(r), file=sys.stderr)
    print(json.dumps({"raft_core": results, "python": sys.version.split()[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
