"""Quorum arithmetic. Pure functions over a group's voters; nothing else imported."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from raftfleet_agent.raft.types import ReplicaId


def quorum_size(n_voters: int) -> int:
    return n_voters // 2 + 1


def committed_index(voters: Iterable[ReplicaId], match: Mapping[ReplicaId, int]) -> int:
    """The highest index held by a majority of `voters` (0 if there are none).

    Sorting descending, the quorum-th value is held by at least a quorum.
    """
    return quorum_index([match.get(v, 0) for v in voters])


def quorum_index(matches: list[int]) -> int:
    """The highest index held by a majority, given each voter's match (0 if none).

    Sorts `matches` in place: callers build the list for this call only.
    """
    if not matches:
        return 0
    matches.sort(reverse=True)
    return matches[quorum_size(len(matches)) - 1]


def vote_result(voters: frozenset[ReplicaId], granted: Mapping[ReplicaId, bool]) -> bool | None:
    """True once a majority granted, False once a majority can no longer be reached, else None."""
    yes = sum(1 for v in voters if granted.get(v) is True)
    no = sum(1 for v in voters if granted.get(v) is False)
    q = quorum_size(len(voters))
    if yes >= q:
        return True
    if len(voters) - no < q:
        return False
    return None
