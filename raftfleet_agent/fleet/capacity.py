"""Would groups shrink? The room checks behind drain, forget and the purge window.

Pure functions of a cluster state (as `cluster_state` keeps it) and of who
the cluster can reach (this agent, or an agent it reaches: the service asks
them); each returns why an agent may not leave placement now,
or None. The service asks them before it proposes a `deactivate` or a
`purge`. The replicated state machine repeats the check that needs no
reachability (`cluster_state.groups_short_without`, every active agent
counted) when it applies the command, so a check here that races another
change is caught there; what only this agent knows, which active agents are
down, is checked here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable

from raftfleet_agent.fleet import cluster_state as cs

Reachable = Callable[[str], bool]


def reachable_active_left(st: dict, leaving: str, reachable: Reachable) -> int:
    """Active agents other than `leaving` that can be reached."""
    return sum(
        1
        for n, a in st["agents"].items()
        if a["state"] == cs.ACTIVE and n != leaving and reachable(n)
    )


def shrink_on_leave(st: dict, name: str) -> str | None:
    """Why taking `name` out would leave groups short, counting every active agent."""
    short = cs.groups_short_without(st, name)
    if not short:
        return None
    left = cs.active_left_without(st, name)
    return cs.too_few_agents_text(f"taking {name!r} out", left, short)


def unreachable_room(st: dict, name: str, reachable: Reachable) -> str | None:
    """Why draining `name` counts on active agents that cannot be reached.

    The replicated check counts every active agent; one that is down but not
    yet purged would be the place this agent's replicas go, and once it is
    purged they would have nowhere (fault campaign, seed 7815).
    """
    down = sorted(
        n
        for n, a in st["agents"].items()
        if a["state"] == cs.ACTIVE and n != name and not reachable(n)
    )
    if not down:
        return None  # with everyone reachable, the replicated check says it all
    left = reachable_active_left(st, name, reachable)
    short = cs.groups_short_without(st, name, left)
    if not short:
        return None
    text = cs.too_few_agents_text(f"taking {name!r} out", left, short)
    where = "from here and from the agents this one reaches"
    return f"{text} that can be reached ({', '.join(down)} active but unreachable {where})"


def purge_held(st: dict, name: str, reachable: Reachable) -> str | None:
    """Why purging `name` now would shrink groups (None: it would not).

    Counted over the active agents that can be reached: purging one dead agent must
    not count another dead one as the place its replicas go. Only an active
    agent is held: a draining one's replicas are already being moved away.
    """
    if st["agents"][name]["state"] != cs.ACTIVE:
        return None
    left = reachable_active_left(st, name, reachable)
    short = cs.groups_short_without(st, name, left)
    if not short:
        return None
    return f"{cs.too_few_agents_text(f'purging {name!r}', left, short)} that can be reached"
