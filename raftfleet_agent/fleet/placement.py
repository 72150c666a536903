"""Where a group's replicas should live: zone-aware rendezvous hashing.

This is raft_fleet's `lrw_members` (lowest random weight). For one group,
every agent of a zone gets a weight `placement_hash(agent, group)`; within
its zone the agents are ranked by weight (0 = lowest). The (rank, weight,
agent) triples of all zones are pooled and sorted, and the first n agents
are the group's desired members. Consequences, all wanted:

- Replicas fill one per zone before any zone gets a second (every rank-0
  agent sorts before every rank-1 agent), so losing a zone loses at most
  ceil(n / zones) replicas.
- The first member is the desired leader. It is the agent with the lowest
  weight overall (that agent is necessarily rank 0 in its zone), so leaders
  spread evenly over all agents whatever the zone layout.
- Adding or removing an agent moves only the groups whose choice involved
  that agent (rendezvous hashing): roughly n / agents of them, not all.

The weight must be identical in every process of every agent, forever: it is
what lets each agent compute the same placement from the same cluster state
without talking. So it is blake2b over a length-prefixed encoding of
(agent, group), never Python's `hash()` (salted per process). Changing the
encoding moves every replica of every group: the tests pin exact orders.

Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Final

# The built-in cluster-state group and how many voters it has at most
# (raft_fleet keeps a replica on every active node; five voters tolerate two
# failures, and more would only slow every cluster-state commit).
CLUSTER_GROUP: Final = "__cluster__"
CLUSTER_VOTERS_MAX: Final = 5


def _length_prefixed(text: str) -> bytes:
    data = text.encode("utf-8")
    # Without the length, ("ab", "c") and ("a", "bc") would hash alike.
    return len(data).to_bytes(4, "big") + data


def placement_hash(agent: str, group: str) -> int:
    """The rendezvous weight of `agent` for `group`: a stable unsigned 64-bit int."""
    digest = hashlib.blake2b(
        _length_prefixed(agent) + _length_prefixed(group), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big")


def lrw_members(agents_per_zone: Mapping[str, Iterable[str]], group: str, n: int) -> list[str]:
    """The desired members of `group`, best first (the first is the desired leader).

    `agents_per_zone` maps a zone to its agents (the active agents only:
    the caller decides who is eligible). At most `n` names are returned;
    fewer when there are fewer agents. The result does not depend on the
    order of zones or agents in the input. An agent listed twice (even in
    two zones, which the cluster state never produces) is returned once.
    """
    if type(n) is not int:
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n <= 0:
        return []
    pooled: list[tuple[int, int, str]] = []
    for agents in agents_per_zone.values():
        # set(): a duplicate inside one zone must not take two ranks.
        weighted = sorted((placement_hash(agent, group), agent) for agent in set(agents))
        pooled.extend((rank, weight, agent) for rank, (weight, agent) in enumerate(weighted))
    # The agent name breaks a (practically impossible) weight tie, so the
    # order is total and identical everywhere.
    pooled.sort()
    chosen: list[str] = []
    seen: set[str] = set()
    for _rank, _weight, agent in pooled:
        if agent not in seen:
            seen.add(agent)
            chosen.append(agent)
            if len(chosen) == n:
                break
    return chosen


def desired_leader(agents_per_zone: Mapping[str, Iterable[str]], group: str) -> str | None:
    """The agent that should lead `group`, or None when there is no agent."""
    members = lrw_members(agents_per_zone, group, 1)
    return members[0] if members else None


def cluster_voters(
    agents_per_zone: Mapping[str, Iterable[str]], n: int = CLUSTER_VOTERS_MAX
) -> list[str]:
    """The desired voters of the cluster-state group: the same algorithm, up to n (default 5)."""
    return lrw_members(agents_per_zone, CLUSTER_GROUP, n)
