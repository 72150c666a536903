"""When a forced recovery must be refused: a pure check behind `group recover`.

Forcing a group onto one survivor (`force_sole_voter`) is right only when its
majority is gone for good. Seen from one agent, a group also looks leaderless
while an election is on, or while this agent alone is cut off from the rest:
forcing it then makes a second group under the same name beside one that
still elects, commits and answers clients (split brain), and the survivor's
history replaces theirs. "Refused while the group has a leader" is not enough,
since leaderless is only this agent's view. So, as a purge asks first
(`FleetService.reached_elsewhere`), recovery needs what the cluster sees too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from raftfleet_agent.raft.quorum import quorum_size

VOTING_ROLES = frozenset({"leader", "follower"})

# Per lost voter's agent: (agents we reach that reach it, agents we could not ask).
Views = Mapping[str, tuple[list[str], list[str]]]


def lost_voters(members: Iterable[Mapping], answered: set[str]) -> list[str]:
    """The voters whose replicas did not answer the survey (their agents' names)."""
    return sorted(
        m["agent"] for m in members if m["role"] in VOTING_ROLES and m["agent"] not in answered
    )


def refusal(group: str, members: Iterable[Mapping], answered: set[str], views: Views) -> str | None:
    """Why `group` must not be forced onto one survivor now, or None.

    `members` as the most up-to-date survivor lists them (agent, role),
    `answered` the agents whose replicas answered the survey, `views` what the
    agents we reach say of each lost voter's agent.
    """
    members = list(members)
    voters = sorted(m["agent"] for m in members if m["role"] in VOTING_ROLES)
    alive = [a for a in voters if a in answered]
    if voters and len(alive) >= quorum_size(len(voters)):
        return (
            f"{group}: {len(alive)} of its {len(voters)} voters answer ({', '.join(alive)}), "
            "a majority: it elects a leader by itself; wait for the election "
            "(`raftfleet group status` shows it)"
        )
    for agent in lost_voters(members, answered):
        reach, unasked = views.get(agent, ([], []))
        if reach:
            return (
                f"{group}: {agent} is reachable from {', '.join(reach)}: it is cut off from "
                "this agent only, and its replica may still serve with a majority; recover "
                "from an agent that reaches it, or mend the network"
            )
        if unasked:
            return (
                f"{group}: could not ask {', '.join(unasked)} whether they reach {agent}; "
                "retry once they answer"
            )
    return None
