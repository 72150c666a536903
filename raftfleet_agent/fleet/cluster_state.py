"""The cluster state: the data type of the built-in `__cluster__` group.

Every agent decides placement from this one replicated value, so it holds
exactly what placement and cleanup need and nothing derived (raft_fleet also
cached desired members per leader; we recompute them, see the helpers at the
end, so a cache can never disagree with the state it came from).

State (plain dicts, msgpack-ready; `new()` shows the shape):

    version      int, +1 for every command that changed something, so an
                 agent can tell cheaply that it must recompute placement
    generation   int, the last group generation handed out
    agents       name -> {"address", "zone", "state", "since_ms", "node_id"(, "speaks")}
                 state: inactive | active | draining | purged
                 speaks: the command level the agent's code applies (absent: 1)
    groups       name -> {"replicas", "type", "created_ms", "generation"}
    removed      name -> {"generation", "removed_ms", "pending": [agents]}

Generations come from one counter for all names, so a re-created name always
gets a larger generation than any earlier incarnation, and a replica left
over from an old incarnation can be recognised (and never joined to the new
one). A removed name stays blocked (`cleanup_ongoing`) until every agent in
`pending` has said it deleted its replica (`cleaned`) or has been purged.

Agent lifecycle (`*` = any state):

    (unknown) --register--> inactive --activate--> active --deactivate--> draining
    draining --drained--> inactive;  * --purge--> purged --register--> inactive

Levels: every replica of the cluster state must apply every command alike,
and in a rolling upgrade they run different code. So each agent registers
the command level it speaks, and a command form that came with level N is
proposed only once every agent not purged speaks N (`cluster_level`), as
etcd gates features on its cluster version. Applying never looks at levels:
entries already in the log must apply as they always did.

Errors are `InvalidArgument("<code>: <text>")`; the applier turns them into
error replies and the agent maps `<code>` (see `error_code`) to a control
protocol error code. Every command validates all of its argument and the
state it needs before it changes anything, so a refused command leaves the
state untouched (the data-type ownership contract, statemachine/protocol.py).

No I/O, no clocks: times come inside the commands (`now_ms`, the proposing
agent's clock), so every replica applies the same values.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgpack

from raftfleet_agent.fleet.placement import CLUSTER_VOTERS_MAX, cluster_voters, lrw_members
from raftfleet_agent.statemachine.loader import (
    LoadedType,
    register_internal_type,
    wrap_data_type,
)
from raftfleet_agent.statemachine.protocol import InvalidArgument, SnapshotError

# The data type's name, as stored with the `__cluster__` group.
DATA_TYPE_NAME: Final = "cluster"

# The command level this code speaks. 1: the commands before levels existed
# (deactivate and purge with 3 arguments, register with 5); agents without a
# recorded level count as 1. 2, the first level of a release: `keep_replicas`
# on deactivate and purge, and the level itself as register's 6th argument.
# A later level must keep applying every earlier form unchanged.
LEVEL: Final = 2
KEEP_REPLICAS_LEVEL: Final = 2
LEVEL_MAX: Final = 1_000_000  # a bound for validation only

# --------------------------------------------------------------------------
# Error codes: the prefix of every InvalidArgument message raised here.

ALREADY_EXISTS: Final = "already_exists"
NOT_FOUND: Final = "not_found"
CLEANUP_ONGOING: Final = "cleanup_ongoing"
NO_ACTIVE_AGENT: Final = "no_active_agent"
NOT_INACTIVE: Final = "not_inactive"
NOT_ACTIVE: Final = "not_active"
NOT_DRAINING: Final = "not_draining"
TOO_FEW_AGENTS: Final = "too_few_agents"
INVALID_NAME: Final = "invalid_name"
INVALID_TYPE: Final = "invalid_type"
# A malformed argument (wrong arity, type or range): a bug in the proposing
# agent, since users never write cluster-state commands directly.
INVALID_ARGUMENT: Final = "invalid_argument"

ERROR_CODES: Final = frozenset(
    {
        ALREADY_EXISTS,
        NOT_FOUND,
        CLEANUP_ONGOING,
        NO_ACTIVE_AGENT,
        NOT_INACTIVE,
        NOT_ACTIVE,
        NOT_DRAINING,
        TOO_FEW_AGENTS,
        INVALID_NAME,
        INVALID_TYPE,
        INVALID_ARGUMENT,
    }
)

# Agent states.
INACTIVE: Final = "inactive"
ACTIVE: Final = "active"
DRAINING: Final = "draining"
PURGED: Final = "purged"
AGENT_STATES: Final = (INACTIVE, ACTIVE, DRAINING, PURGED)

# Naming rules, repeated from control/protocol.py (GROUP_NAME_RE, AGENT_NAME_RE)
# because fleet/ sits below control/; a test keeps them equal.
GROUP_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
AGENT_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
REPLICAS_MAX: Final = 7
TYPE_NAME_CHARS_MAX: Final = 256
ADDRESS_CHARS_MAX: Final = 261  # control/protocol.py's bound for "host:port"
NODE_ID_CHARS_MAX: Final = 128
TIME_MS_MAX: Final = 2**63 - 1  # msgpack's signed 64-bit range

_STATE_KEYS: Final = frozenset({"version", "generation", "agents", "groups", "removed"})
_AGENT_KEYS: Final = frozenset({"address", "zone", "state", "since_ms", "node_id"})
_GROUP_KEYS: Final = frozenset({"replicas", "type", "created_ms", "generation"})
_REMOVED_KEYS: Final = frozenset({"generation", "removed_ms", "pending"})


def error_code(message: str) -> str | None:
    """The code at the start of an error message raised here, or None."""
    code, sep, _ = message.partition(":")
    return code if sep and code in ERROR_CODES else None


def _fail(code: str, text: str) -> InvalidArgument:
    # Plain InvalidArgument, not a subclass: the applier passes exactly
    # str(exc) through for that class, so the code stays at the front.
    return InvalidArgument(f"{code}: {text}")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------
# Argument checks (raise, never mutate)


def _now(value: object) -> int:
    if type(value) is not int or not 0 <= value <= TIME_MS_MAX:
        raise _fail(INVALID_ARGUMENT, f"now_ms must be a non-negative integer, got {_show(value)}")
    return value


def _agent_name(value: object) -> str:
    if type(value) is not str or not AGENT_NAME_RE.fullmatch(value):
        raise _fail(INVALID_NAME, f"{_show(value)} is not a valid agent name")
    return value


def _zone_name(value: object) -> str:
    if type(value) is not str or not AGENT_NAME_RE.fullmatch(value):
        raise _fail(INVALID_NAME, f"{_show(value)} is not a valid zone name")
    return value


def _group_name(value: object) -> str:
    # "__" is reserved for the agents' own groups (`__cluster__`); the regex
    # already refuses a leading '_', the check says so explicitly.
    if type(value) is not str or not GROUP_NAME_RE.fullmatch(value) or value.startswith("__"):
        raise _fail(INVALID_NAME, f"{_show(value)} is not a valid group name")
    return value


def _address(value: object) -> str:
    if type(value) is not str or not 0 < len(value) <= ADDRESS_CHARS_MAX:
        raise _fail(INVALID_ARGUMENT, f"address must be a 'host:port' string, got {_show(value)}")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit():
        raise _fail(INVALID_ARGUMENT, f"address must be 'host:port', got {_show(value)}")
    if not 1 <= int(port) <= 65535:
        raise _fail(INVALID_ARGUMENT, f"address port out of range in {_show(value)}")
    return value


def _node_id(value: object) -> str:
    if type(value) is not str or not 0 < len(value) <= NODE_ID_CHARS_MAX:
        raise _fail(INVALID_ARGUMENT, f"node_id must be a non-empty string, got {_show(value)}")
    return value


def _replicas(value: object) -> int:
    if type(value) is not int or not 1 <= value <= REPLICAS_MAX:
        raise _fail(INVALID_ARGUMENT, f"replicas must be 1 to {REPLICAS_MAX}, got {_show(value)}")
    return value


def _type_name(value: object) -> str:
    # Whether the type can be loaded is checked by the proposing agent; here
    # only that it is a bounded string, so the state stays small and valid.
    if type(value) is not str or not 0 < len(value) <= TYPE_NAME_CHARS_MAX:
        raise _fail(INVALID_TYPE, f"type must be a non-empty string, got {_show(value)}")
    if value == DATA_TYPE_NAME:
        # A user group running the cluster-state type would be mistaken for
        # (and could be fed commands meant for) the fleet's own state.
        raise _fail(INVALID_TYPE, f"type {value!r} is reserved for the cluster state")
    return value


def _arity(arg: list[Any], *counts: int) -> None:
    if len(arg) not in counts:
        expected = " or ".join(str(c - 1) for c in counts)
        raise _fail(
            INVALID_ARGUMENT, f"{arg[0]!r} takes {expected} argument(s), got {len(arg) - 1}"
        )


def _known_agent(state: dict[str, Any], value: object) -> tuple[str, dict[str, Any]]:
    name = _agent_name(value)
    agent = state["agents"].get(name)
    if agent is None:
        raise _fail(NOT_FOUND, f"no agent named {name!r}")
    return name, agent


# --------------------------------------------------------------------------
# Commands. Each validates, then mutates in place (nothing can raise after
# the first mutation), bumps `version` if it changed anything, and replies.


def _level(value: object) -> int:
    if type(value) is not int or not 1 <= value <= LEVEL_MAX:
        raise _fail(INVALID_ARGUMENT, f"a level must be an integer >= 1, got {_show(value)}")
    return value


def _register(state: dict[str, Any], arg: list[Any]) -> dict[str, Any]:
    _arity(arg, 5, 6)
    name, address, node_id, now = (
        _agent_name(arg[1]),
        _address(arg[2]),
        _node_id(arg[3]),
        _now(arg[4]),
    )
    level = _level(arg[5]) if len(arg) == 6 else None
    agents = state["agents"]
    agent = agents.get(name)
    if agent is None:
        agents[name] = {
            "address": address,
            "zone": None,
            "state": INACTIVE,
            "since_ms": now,
            "node_id": node_id,
        }
        if level is not None:
            agents[name]["speaks"] = level
        state["version"] += 1
        return {"new": True, "rejoined": False, "state": INACTIVE}
    # A different node id means a wiped data dir: the agent keeps its place
    # (and state) in the fleet, but the replicas it had are gone.
    rejoined = agent["node_id"] != node_id
    changed = rejoined or agent["address"] != address
    agent["address"] = address
    agent["node_id"] = node_id
    if level is not None and agent.get("speaks") != level:
        agent["speaks"] = level  # upgraded (or rolled back): the cluster level may move
        changed = True
    if agent["state"] == PURGED:
        # Back after being purged: it joins again as a new, inactive agent.
        agent["state"] = INACTIVE
        agent["since_ms"] = now
        changed = True
    if rejoined:
        # A fresh data dir holds no replica of a removed group: nothing left
        # for it to clean up.
        _drop_pending(state, name)
    if changed:
        state["version"] += 1
    return {"new": False, "rejoined": rejoined, "state": agent["state"]}


def _agent_in(state: dict[str, Any], value: object, source: str, code: str) -> dict[str, Any]:
    """The record of agent `value`, which must be in state `source` (else `code`)."""
    name, agent = _known_agent(state, value)
    if agent["state"] != source:
        raise _fail(code, f"agent {name!r} is {agent['state']}, not {source}")
    return agent


def _activate(state: dict[str, Any], arg: list[Any]) -> dict[str, Any]:
    _arity(arg, 4)
    zone, now = _zone_name(arg[2]), _now(arg[3])
    agent = _agent_in(state, arg[1], INACTIVE, NOT_INACTIVE)
    agent.update(state=ACTIVE, zone=zone, since_ms=now)
    state["version"] += 1
    return {"state": ACTIVE, "zone": zone}


def _keep_replicas(arg: list[Any]) -> bool:
    """The optional 4th argument of deactivate and purge (False when absent)."""
    keep_replicas = arg[3] if len(arg) == 4 else False
    if type(keep_replicas) is not bool:
        raise _fail(INVALID_ARGUMENT, f"keep_replicas must be a boolean, got {_show(arg[3])}")
    return keep_replicas


def _deactivate(state: dict[str, Any], arg: list[Any]) -> dict[str, Any]:
    # The 4th argument (`keep_replicas`) came later: entries written before it
    # (3 arguments) must apply as they always did, unchecked.
    _arity(arg, 3, 4)
    now = _now(arg[2])
    keep_replicas = _keep_replicas(arg)
    agent = _agent_in(state, arg[1], ACTIVE, NOT_ACTIVE)
    if keep_replicas:
        _refuse_if_groups_shrink(
            state,
            arg[1],
            f"taking {arg[1]!r} out",
            "activate another agent first, or force it and let those groups shrink",
        )
    # The zone is kept for the operator's view; placement ignores it now.
    agent.update(state=DRAINING, since_ms=now)
    state["version"] += 1
    return {"state": DRAINING}


def groups_short_without(state: dict[str, Any], leaving: str, left: int | None = None) -> list[str]:
    """The groups (sorted) that need more agents than are left without `leaving`.

    Placement puts each group on min(replicas, active agents) agents: with
    too few active agents left a group shrinks (3 voters to 2 tolerates no
    failure at all). `left` overrides the count of active agents left (an
    agent that also knows which of them it can reach passes that count).
    """
    if left is None:
        left = active_left_without(state, leaving)
    return sorted(g for g, rec in state["groups"].items() if rec["replicas"] > left)


def active_left_without(state: dict[str, Any], leaving: str) -> int:
    """How many active agents there are besides `leaving`."""
    return sum(1 for n, a in state["agents"].items() if a["state"] == ACTIVE and n != leaving)


def too_few_agents_text(what: str, left: int, short: list[str]) -> str:
    """The refusal's message: `what` ("taking 'a1' out") leaves `left` agents, `short` groups."""
    shown = ", ".join(short[:5]) + (f" and {len(short) - 5} more" if len(short) > 5 else "")
    return (
        f"{what} leaves {left} active agent(s), fewer than the replicas "
        f"of {len(short)} group(s) ({shown})"
    )


def _refuse_if_groups_shrink(state: dict[str, Any], leaving: str, what: str, then: str) -> None:
    """Refuse to take `leaving` out of placement if a group would lose a replica.

    Checked here, in the replicated state, so two drains (or a drain and a
    purge) started at once cannot both pass.
    """
    short = groups_short_without(state, leaving)
    if short:
        left = active_left_without(state, leaving)
        raise _fail(TOO_FEW_AGENTS, f"{too_few_agents_text(what, left, short)}; {then}")


def _drained(state: dict[str, Any], arg: list[Any]) -> dict[str, Any]:
    _arity(arg, 3)
    now = _now(arg[2])
    _, agent = _known_agent(state, arg[1])
    if agent["state"] == INACTIVE:
        return {"state": INACTIVE}  # a retry after the drain completed
    agent = _agent_in(state, arg[1], DRAINING, NOT_DRAINING)
    agent.update(state=INACTIVE, since_ms=now)
    state["version"] += 1
    return {"state": INACTIVE}


def _drop_pending(state: dict[str, Any], agent: str) -> list[str]:
    """Remove `agent` from every pending cleanup; the names now released."""
    removed = state["removed"]
    released = []
    for group in sorted(removed):
        pending = removed[group]["pending"]
        if agent in pending:
            pending.remove(agent)
            if not pending:
                released.append(group)
    for group in released:
        del removed[group]
    return released


def _purge(state: dict[str, Any], arg: list[Any]) -> dict[str, Any]:
    # As with deactivate, the 4th argument (`keep_replicas`) came later: the
    # 3-argument form applies unchecked, as entries written before it did.
    _arity(arg, 3, 4)
    now = _now(arg[2])
    keep_replicas = _keep_replicas(arg)
    name, agent = _known_agent(state, arg[1])
    if agent["state"] == PURGED:
        return {"purged": False, "released": []}  # idempotent: several agents may purge
    if keep_replicas and agent["state"] == ACTIVE:
        # A dead agent's replicas stay members (under-replicated groups keep
        # their size) until there is somewhere to rebuild them: CockroachDB
        # keeps a dead node's ranges rather than shrink them to two replicas.
        _refuse_if_groups_shrink(
            state, name, f"purging {name!r}", "it stays in placement until another agent is active"
        )
    # The record stays (state "purged"), so a later register of the same
    # agent is recognised and its history kept for the operator.
    agent.update(state=PURGED, since_ms=now)
    released = _drop_pending(state, name)
    state["version"] += 1
    return {"purged": True, "released": released}


def _add_group(state: dict[str, Any], arg: list[Any]) -> dict[str, Any]:
    _arity(arg, 5)
    name, replicas, type_name, now = (
        _group_name(arg[1]),
        _replicas(arg[2]),
        _type_name(arg[3]),
        _now(arg[4]),
    )
    if name in state["groups"]:
        raise _fail(ALREADY_EXISTS, f"group {name!r} already exists")
    if name in state["removed"]:
        pending = state["removed"][name]["pending"]
        raise _fail(
            CLEANUP_ONGOING,
            f"group {name!r} was removed and {len(pending)} agent(s) still have to clean up "
            f"({', '.join(pending[:5])}{', ...' if len(pending) > 5 else ''})",
        )
    if not any(a["state"] == ACTIVE for a in state["agents"].values()):
        raise _fail(NO_ACTIVE_AGENT, "no agent is active, so there is nowhere to place replicas")
    generation = state["generation"] + 1
    state["generation"] = generation
    state["groups"][name] = {
        "replicas": replicas,
        "type": type_name,
        "created_ms": now,
        "generation": generation,
    }
    state["version"] += 1
    # The placement as of this very entry: the creator needs no second read.
    return {"generation": generation, "members": desired_members(state, name)}


def _remove_group(state: dict[str, Any], arg: list[Any]) -> dict[str, Any]:
    _arity(arg, 3)
    name, now = _group_name(arg[1]), _now(arg[2])
    group = state["groups"].get(name)
    if group is None:
        raise _fail(NOT_FOUND, f"no group named {name!r}")
    # Every agent that is not purged may hold a replica (or a stale one from
    # before a move), so every one of them must confirm the deletion before
    # the name can be used again.
    pending = sorted(n for n, a in state["agents"].items() if a["state"] != PURGED)
    del state["groups"][name]
    if pending:
        state["removed"][name] = {
            "generation": group["generation"],
            "removed_ms": now,
            "pending": pending,
        }
    state["version"] += 1
    return {"generation": group["generation"], "pending": list(pending)}


def _cleaned(state: dict[str, Any], arg: list[Any]) -> dict[str, Any]:
    # The optional generation guards against a late duplicate of a "cleaned"
    # sent for an earlier incarnation of the same name.
    _arity(arg, 4, 5)
    agent, name, _ = _agent_name(arg[1]), _group_name(arg[2]), _now(arg[3])
    generation = arg[4] if len(arg) == 5 else None
    if generation is not None and (type(generation) is not int or generation < 1):
        raise _fail(INVALID_ARGUMENT, f"generation must be a positive integer, got {generation!r}")
    entry = state["removed"].get(name)
    if (
        entry is None
        or agent not in entry["pending"]
        or (generation is not None and generation != entry["generation"])
    ):
        # Nothing to do: a retry, or the cleanup of a name already released.
        return {"done": False, "released": entry is None}
    entry["pending"].remove(agent)
    released = not entry["pending"]
    if released:
        del state["removed"][name]
    state["version"] += 1
    return {"done": True, "released": released}


_COMMANDS: Final = {
    "register": _register,
    "activate": _activate,
    "deactivate": _deactivate,
    "drained": _drained,
    "purge": _purge,
    "add_group": _add_group,
    "remove_group": _remove_group,
    "cleaned": _cleaned,
}

_COMMAND_FORMS: Final = (
    '["register", agent, address, node_id, now_ms(, level)], ["activate", agent, zone, now_ms], '
    '["deactivate", agent, now_ms(, keep_replicas)], ["drained", agent, now_ms], '
    '["purge", agent, now_ms(, keep_replicas)], '
    '["add_group", name, replicas, type, now_ms], ["remove_group", name, now_ms], '
    '["cleaned", agent, name, now_ms(, generation)]'
)
_QUERY_FORMS: Final = (
    '"snapshot", "version", "agents", "groups", "removed", "active_per_zone", '
    '"cluster_voters", ["group", name], ["desired_members", name]'
)


# --------------------------------------------------------------------------
# Plain-data copies (replies must never alias the state: the applier does
# not copy a built-in type's replies, and the state is mutated in place).


def _copy_agents(state: dict[str, Any]) -> dict[str, Any]:
    agents = state["agents"]
    return {name: dict(agents[name]) for name in sorted(agents)}


def _copy_groups(state: dict[str, Any]) -> dict[str, Any]:
    groups = state["groups"]
    return {name: dict(groups[name]) for name in sorted(groups)}


def _copy_removed(state: dict[str, Any]) -> dict[str, Any]:
    removed = state["removed"]
    return {
        name: {**removed[name], "pending": list(removed[name]["pending"])}
        for name in sorted(removed)
    }


def _canonical(state: dict[str, Any]) -> dict[str, Any]:
    """A deep copy with every map in sorted key order (canonical snapshot bytes)."""
    return {
        "agents": _copy_agents(state),
        "generation": state["generation"],
        "groups": _copy_groups(state),
        "removed": _copy_removed(state),
        "version": state["version"],
    }


# --------------------------------------------------------------------------
# Helpers over a state value, for agents reading their local replica. Each
# takes one state, so one placement decision sees one consistent view
# (PITFALLS: read the cluster state from the replica that applied it).


def active_agents_per_zone(state: dict[str, Any]) -> dict[str, list[str]]:
    """zone -> sorted names of its ACTIVE agents: the only agents placement uses."""
    zones: dict[str, list[str]] = {}
    agents = state["agents"]
    for name in sorted(agents):
        agent = agents[name]
        if agent["state"] == ACTIVE:
            zones.setdefault(agent["zone"], []).append(name)
    return {zone: zones[zone] for zone in sorted(zones)}


def desired_members(state: dict[str, Any], group: str) -> list[str]:
    """The group's desired members, desired leader first; [] for an unknown group."""
    record = state["groups"].get(group)
    if record is None:
        return []
    return lrw_members(active_agents_per_zone(state), group, record["replicas"])


def cluster_level(state: dict[str, Any]) -> int:
    """The command level every agent not purged speaks: what may be proposed."""
    levels = [a.get("speaks", 1) for a in state["agents"].values() if a["state"] != PURGED]
    return min(levels, default=LEVEL)


def desired_cluster_voters(state: dict[str, Any], n: int = CLUSTER_VOTERS_MAX) -> list[str]:
    """The desired voters of `__cluster__` itself, from the active agents."""
    return cluster_voters(active_agents_per_zone(state), n)


# --------------------------------------------------------------------------
# Snapshot validation


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise SnapshotError(f"cluster: malformed snapshot: {what}")


def _is_count(value: object) -> bool:
    return type(value) is int and 0 <= value <= TIME_MS_MAX


def _check_state(state: object) -> dict[str, Any]:
    _check(type(state) is dict and state.keys() == _STATE_KEYS, "top-level keys")
    assert isinstance(state, dict)
    _check(_is_count(state["version"]), "version")
    _check(_is_count(state["generation"]), "generation")
    for key in ("agents", "groups", "removed"):
        _check(type(state[key]) is dict, f"{key} is not a map")
    for name, a in state["agents"].items():
        _check(
            type(name) is str
            and AGENT_NAME_RE.fullmatch(name) is not None
            and type(a) is dict
            and _AGENT_KEYS <= a.keys() <= _AGENT_KEYS | {"speaks"}
            and (type(a.get("speaks", 1)) is int and 1 <= a.get("speaks", 1) <= LEVEL_MAX)
            and type(a["address"]) is str
            and type(a["node_id"]) is str
            and a["state"] in AGENT_STATES
            and _is_count(a["since_ms"])
            and (a["zone"] is None or type(a["zone"]) is str)
            and (a["state"] != ACTIVE or a["zone"] is not None),
            f"agent {name!r}",
        )
    for name, g in state["groups"].items():
        _check(
            type(name) is str
            and type(g) is dict
            and g.keys() == _GROUP_KEYS
            and type(g["replicas"]) is int
            and 1 <= g["replicas"] <= REPLICAS_MAX
            and type(g["type"]) is str
            and _is_count(g["created_ms"])
            and type(g["generation"]) is int
            and 1 <= g["generation"] <= state["generation"],
            f"group {name!r}",
        )
    for name, r in state["removed"].items():
        _check(
            type(name) is str
            and name not in state["groups"]
            and type(r) is dict
            and r.keys() == _REMOVED_KEYS
            and type(r["generation"]) is int
            and 1 <= r["generation"] <= state["generation"]
            and _is_count(r["removed_ms"])
            and type(r["pending"]) is list
            and len(r["pending"]) > 0
            and all(type(p) is str for p in r["pending"]),
            f"removed group {name!r}",
        )
    return state


# --------------------------------------------------------------------------
# The data type


class ClusterState:
    """The `cluster` built-in data type (statemachine protocol: new/command/query/...)."""

    name: Final = DATA_TYPE_NAME

    @staticmethod
    def new() -> dict[str, Any]:
        return {"version": 0, "generation": 0, "agents": {}, "groups": {}, "removed": {}}

    @staticmethod
    def command(state: dict[str, Any], arg: Any) -> tuple[Any, dict[str, Any]]:
        if type(arg) is not list or not arg or type(arg[0]) is not str:
            raise _fail(
                INVALID_ARGUMENT, f"unknown command {_show(arg)} (expected {_COMMAND_FORMS})"
            )
        handler = _COMMANDS.get(arg[0])
        if handler is None:
            raise _fail(
                INVALID_ARGUMENT, f"unknown command {_show(arg[0])} (expected {_COMMAND_FORMS})"
            )
        return handler(state, arg), state

    @staticmethod
    def query(state: dict[str, Any], arg: Any) -> Any:
        # A bare op is accepted as well as a one-element list ("groups" or ["groups"]).
        if type(arg) is list and len(arg) == 1:
            arg = arg[0]
        if arg == "snapshot":
            return _canonical(state)
        if arg == "version":
            return state["version"]
        if arg == "agents":
            return _copy_agents(state)
        if arg == "groups":
            return _copy_groups(state)
        if arg == "removed":
            return _copy_removed(state)
        if arg == "active_per_zone":
            return active_agents_per_zone(state)
        if arg == "cluster_voters":
            return desired_cluster_voters(state)
        if type(arg) is list and len(arg) == 2 and arg[0] in ("group", "desired_members"):
            name = arg[1]
            if type(name) is not str:
                raise _fail(INVALID_NAME, f"{_show(name)} is not a valid group name")
            if arg[0] == "desired_members":
                return desired_members(state, name)
            group = state["groups"].get(name)
            return None if group is None else dict(group)
        raise _fail(INVALID_ARGUMENT, f"unknown query {_show(arg)} (expected {_QUERY_FORMS})")

    @staticmethod
    def snapshot(state: dict[str, Any]) -> bytes:
        # Sorted maps: replicas that reached one state by different paths
        # (applying the log, installing a snapshot) write the same bytes.
        return msgpack.packb(_canonical(state), use_bin_type=True)

    @staticmethod
    def restore(data: bytes) -> dict[str, Any]:
        try:
            state = msgpack.unpackb(data, raw=False)
        except MemoryError:
            raise
        except Exception as exc:  # msgpack raises several unrelated classes
            raise SnapshotError(
                f"cluster: malformed snapshot ({type(exc).__name__}: {exc})"
            ) from exc
        return _check_state(state)


def load_cluster_type() -> LoadedType:
    """The `cluster` type ready for an Applier (what `load_data_type("cluster")` should return).

    Built-in: its replies are fresh plain data (every query copies), so the
    applier need not copy them.
    """
    return wrap_data_type(DATA_TYPE_NAME, ClusterState, builtin=True)


# statemachine/ sits below fleet/ and cannot import this module, so the type
# registers itself: `load_data_type("cluster")` works (and users cannot
# create groups of it) in any process that imported the fleet layer.
register_internal_type(DATA_TYPE_NAME, ClusterState)
