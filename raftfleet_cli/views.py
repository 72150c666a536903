"""What the CLI prints: agent results mapped onto the documented JSON documents.

This is the one place that knows both what the agent answers and what
`raftfleet -o json` promises (the field names in raftfleet(1)). Each `*_view`
function takes an op's raw result, keeps the documented fields in a fixed
order, fills the ones the agent did not send with None (JSON null) and drops
the rest. Agents of different ages answer with more or fewer fields, or lists
where a newer one sends maps; the views absorb that, so scripts written
against the documented shape keep working.

Stdlib only, no I/O: importable by the fast path of the CLI and by tests.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "AGENT_STATES",
    "REPLICA_VIEW_FIELDS",
    "ROLES",
    "action_view",
    "drain_event_view",
    "dumps",
    "group_list_view",
    "group_status_view",
    "leader_view",
    "nodes_from_status",
    "nodes_view",
    "reply_view",
    "status_metrics_rows",
    "status_view",
]

AGENT_STATES = ("inactive", "activating", "active", "draining")
ROLES = ("leader", "follower", "learner")

STATUS_FIELDS = ("name", "zone", "state", "address", "replicas", "leaders", "cluster")
# New fields go last: `-o plain` scripts read columns by position.
NODE_FIELDS = (
    "name", "zone", "state", "address", "reachable", "replicas", "leaders", "down_s",
)  # fmt: skip
GROUP_FIELDS = ("name", "replicas", "type", "leader")
GROUP_STATUS_FIELDS = (
    "name", "type", "leader", "term", "commit_index", "members", "desired", "converged",
    "lost", "majority_lost", "replicas",
)  # fmt: skip
# What each replica of a leaderless group says of itself (`replicas` above).
REPLICA_VIEW_FIELDS = (
    "agent", "role", "term", "leader", "commit_index", "last_index", "last_term", "quiescent",
)  # fmt: skip
REPLICA_ROLES = ("leader", "follower", "learner", "candidate", "pre_candidate")
MEMBER_FIELDS = ("agent", "zone", "role", "match_index")  # the plain rows: a fixed format
# The table and JSON also say whether the agent reporting (the leader's, else
# the one asked) reaches the member's agent.
MEMBER_VIEW_FIELDS = (*MEMBER_FIELDS, "reachable")
DRAIN_FIELDS = ("replicas", "leaders", "moves_in_flight")


def _json_default(value: object) -> object:
    # msgpack may hand us bytes (a data type replying binary) or tuples.
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(value).decode()
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    return str(value)


def dumps(value: object, *, indent: int | None = None) -> str:
    """JSON text of any msgpack value (bytes become text, or `base64:`...)."""
    return json.dumps(value, default=_json_default, indent=indent, ensure_ascii=False)


def _get(raw: object, key: str) -> Any:
    return raw.get(key) if isinstance(raw, Mapping) else None


def _count(value: object) -> int | None:
    """Replica or leader counts: agents send a number, or the list itself."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, list | tuple | set | Mapping):
        return len(value)
    return None


def _seconds(value: object) -> float | None:
    """A duration in seconds; anything else (a bool, text, a negative number) is unknown."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return value


def _agent_of(value: object) -> str | None:
    """An agent name from "a1", a replica id "a1/3", ["a1", 3] or {"agent": "a1"}."""
    if isinstance(value, str):
        return value.split("/", 1)[0] if value else None
    if isinstance(value, list | tuple) and value and isinstance(value[0], str):
        return value[0]
    if isinstance(value, Mapping):
        return _agent_of(value.get("agent") or value.get("name"))
    return None


def _state(value: object) -> str | None:
    return value if isinstance(value, str) else None


# --------------------------------------------------------------------------
# Agents


def status_view(raw: object) -> dict[str, Any]:
    """`status`: this agent and what it knows of the cluster."""
    view = {key: _get(raw, key) for key in STATUS_FIELDS}
    view["state"] = _state(view["state"])
    view["replicas"] = _count(view["replicas"])
    view["leaders"] = _count(view["leaders"])
    cluster = view["cluster"]
    view["cluster"] = dict(cluster) if isinstance(cluster, Mapping) else {}
    return view


def _ms_pair(m: Mapping, p50: str, p99: str) -> str | None:
    lo, hi = m.get(p50), m.get(p99)
    if not isinstance(lo, int | float) or not isinstance(hi, int | float):
        return None
    return f"{lo:g} / {hi:g} ms (p50 / p99)"


def status_metrics_rows(raw: object) -> list[tuple[str, object]]:
    """Headline figures of `status` for table output; [] from an agent without them.

    Not part of the `-o json` document (its fields are documented); the agent's
    raw status carries them under "metrics".
    """
    m = _get(raw, "metrics")
    if not isinstance(m, Mapping):
        return []
    commit = _ms_pair(m, "commit_p50_ms", "commit_p99_ms")
    if commit is not None and isinstance(m.get("commits"), int):
        commit += f", {m['commits']} commits"
    return [
        ("commit latency", commit),
        ("store commit", _ms_pair(m, "store_commit_p50_ms", "store_commit_p99_ms")),
        ("messages/s", m.get("messages_per_s")),
        ("snapshots", _snapshots(m)),
    ]


def _snapshots(m: Mapping) -> str | None:
    taken, installed = m.get("snapshots_taken"), m.get("snapshots_installed")
    if not isinstance(taken, int) or not isinstance(installed, int):
        return None  # an agent from before these were counted
    return f"{taken} taken, {installed} installed from a leader"


def _node(name: object, raw: object) -> dict[str, Any]:
    node = {key: _get(raw, key) for key in NODE_FIELDS}
    if node["name"] is None:
        node["name"] = name
    node["state"] = _state(node["state"])
    node["replicas"] = _count(node["replicas"])
    node["leaders"] = _count(node["leaders"])
    if node["reachable"] is not None:
        node["reachable"] = bool(node["reachable"])
    node["down_s"] = _seconds(node["down_s"])
    return node


def nodes_view(raw: object) -> dict[str, Any]:
    """`nodes`: every agent of the cluster. Accepts {"nodes": [...]}, a list or a map by name."""
    items = raw.get("nodes", raw) if isinstance(raw, Mapping) else raw
    nodes: list[dict[str, Any]] = []
    if isinstance(items, Mapping):
        nodes = [_node(name, info) for name, info in items.items()]
    elif isinstance(items, list | tuple):
        nodes = [_node(None, info) for info in items]
    nodes.sort(key=lambda n: str(n["name"]))
    return _with_state_error({"nodes": nodes}, raw)


def _with_state_error(view: dict[str, Any], raw: object) -> dict[str, Any]:
    """`view`, and the agent's `state_error` if it gave one: the answer came
    from its last copy of the cluster state, not through the leader."""
    error = raw.get("state_error") if isinstance(raw, Mapping) else None
    if isinstance(error, str):
        view["state_error"] = error
    return view


def nodes_from_status(raw: object) -> dict[str, Any]:
    """`nodes` for an agent without the op: this agent plus the peers its status lists.

    Peers' zone, state and counts are unknown then (null).
    """
    me = status_view(raw)
    nodes = [{**{key: me.get(key) for key in NODE_FIELDS}, "reachable": True}]
    peers = me["cluster"].get("peers")
    down = me["cluster"].get("unreachable_s")
    if isinstance(peers, Mapping):
        for name, info in peers.items():
            node = _node(name, {})
            node["address"] = _get(info, "address")
            reachable = _get(info, "reachable")
            node["reachable"] = None if reachable is None else bool(reachable)
            if node["reachable"] is False:
                node["down_s"] = _seconds(_get(down, name))
            nodes.append(node)
    nodes.sort(key=lambda n: str(n["name"]))
    return {"nodes": nodes}


# --------------------------------------------------------------------------
# Groups


def _group(name: object, raw: object) -> dict[str, Any]:
    group = {key: _get(raw, key) for key in GROUP_FIELDS}
    if group["name"] is None:
        group["name"] = name if name is not None else (raw if isinstance(raw, str) else None)
    group["replicas"] = _count(group["replicas"])
    group["leader"] = _agent_of(group["leader"])
    return group


def group_list_view(raw: object) -> dict[str, Any]:
    """`group list`. Accepts {"groups": [...]}, a list (of maps or names) or a map by name."""
    items = raw.get("groups", raw) if isinstance(raw, Mapping) else raw
    groups: list[dict[str, Any]] = []
    if isinstance(items, Mapping):
        groups = [_group(name, info) for name, info in items.items()]
    elif isinstance(items, list | tuple):
        groups = [_group(None, info) for info in items]
    groups.sort(key=lambda g: str(g["name"]))
    return _with_state_error({"groups": groups}, raw)


def _member(raw: object) -> dict[str, Any]:
    member = {key: _get(raw, key) for key in MEMBER_VIEW_FIELDS}
    member["agent"] = _agent_of(member["agent"] or _get(raw, "replica"))
    if member["role"] not in ROLES:
        member["role"] = None
    if not isinstance(member["reachable"], bool):
        member["reachable"] = None  # an older agent does not say
    return member


def _agents(raw: object) -> list[str] | None:
    if not isinstance(raw, list | tuple):
        return None
    return [a for a in (_agent_of(item) for item in raw) if a is not None]


def group_status_view(raw: object) -> dict[str, Any]:
    """`group status`: the leader's view of one group, and whether placement is met.

    `lost` lists the members whose agents cannot be reached: from the
    leader's agent, or without a leader from the agent asked, which then also
    says whether that is a majority and gives each reachable replica's own
    view (`replicas`): who is waiting for whom in a stuck election. With a
    leader `majority_lost` is false and `replicas` [].
    """
    view = {key: _get(raw, key) for key in GROUP_STATUS_FIELDS}
    view["leader"] = _agent_of(view["leader"])
    members = view["members"]
    view["members"] = [_member(m) for m in members] if isinstance(members, list | tuple) else []
    view["desired"] = _agents(view["desired"])
    if not isinstance(view["converged"], bool):
        view["converged"] = _converged(view["members"], view["desired"])
    led = view["leader"] is not None
    lost = _agents(view["lost"])
    view["lost"] = lost if lost is not None else ([] if led else None)
    if not isinstance(view["majority_lost"], bool):
        view["majority_lost"] = False if led else None
    replicas = view["replicas"]
    view["replicas"] = (
        sorted((_replica_view(r) for r in replicas), key=lambda r: str(r["agent"]))
        if isinstance(replicas, list | tuple)
        else []
    )
    return _with_state_error(view, raw)  # desired and zones from a copy, if so


def _replica_view(raw: object) -> dict[str, Any]:
    replica = {key: _get(raw, key) for key in REPLICA_VIEW_FIELDS}
    replica["agent"] = _agent_of(_get(raw, "reported_by") or replica["agent"])
    replica["leader"] = _agent_of(replica["leader"])
    if replica["role"] not in REPLICA_ROLES:
        replica["role"] = None
    for key in ("term", "commit_index", "last_index", "last_term"):
        if not _is_int(replica[key]):
            replica[key] = None
    if not isinstance(replica["quiescent"], bool):
        replica["quiescent"] = None
    return replica


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _converged(members: list[dict[str, Any]], desired: list[str] | None) -> bool | None:
    """Placement is met when the voters are exactly the desired agents, with no learner."""
    if desired is None:
        return None
    voters = {m["agent"] for m in members if m["role"] in ("leader", "follower")}
    learners = [m for m in members if m["role"] == "learner"]
    return voters == set(desired) and not learners


def leader_view(group: str, raw: object) -> dict[str, Any]:
    term = _get(raw, "term")
    return {
        "group": _get(raw, "group") or group,
        "leader": _agent_of(_get(raw, "leader")),
        "term": term if isinstance(term, int) and not isinstance(term, bool) else None,
    }


def reply_view(group: str, raw: object) -> dict[str, Any]:
    """`command` / `query`: the data type's reply and who served it."""
    if isinstance(raw, Mapping) and "reply" in raw:
        return {
            "group": raw.get("group") or group,
            "reply": raw["reply"],
            "leader": _agent_of(raw.get("leader")),
        }
    return {"group": group, "reply": raw, "leader": None}


def drain_event_view(raw: Mapping[str, Any], elapsed_s: float) -> dict[str, Any]:
    """One drain progress event: the documented counters first, the agent's extras after."""
    event: dict[str, Any] = {"event": str(raw.get("event") or "progress")}
    for key in DRAIN_FIELDS:
        event[key] = _count(raw.get(key))
    for key, value in raw.items():
        if key not in event and isinstance(key, str):
            event[key] = value
    event["elapsed_s"] = round(elapsed_s, 1)
    return event


def action_view(fields: Iterable[str], raw: object, **known: object) -> dict[str, Any]:
    """A small result (create, delete, join, ...): `fields` in order, `known` filling gaps."""
    view: dict[str, Any] = {}
    for key in fields:
        value = _get(raw, key)
        view[key] = known.get(key) if value is None else value
    return view


def group_create_view(raw: object, args: Mapping[str, Any]) -> dict[str, Any]:
    """`group create`: {"name", "type", "replicas" (count), "agents", "leader"}."""
    placed = _get(raw, "agents") or _get(raw, "replicas")
    agents = _agents(placed)
    replicas = _count(placed) if placed is not None else args.get("replicas")
    return {
        "name": _get(raw, "name") or args.get("name"),
        "type": _get(raw, "type") or args.get("type"),
        "replicas": replicas,
        "agents": agents,
        "leader": _agent_of(_get(raw, "leader")),
    }
