"""`raftfleet`: the operator's command line for a fleet of raftfleet agents.

    raftfleet [--addr ADDR] [--token-file F] [-o table|json|plain] [--no-color] COMMAND

Every command is one or a few requests over the agent's control socket (see
`raftfleet_cli.client`); exit codes are in `failures`, JSON shapes in
`views`, rendering in `output`. Shell completion runs this program on every
Tab, so it must start fast: only click is imported at start; the client,
rich and everything else are imported by the command that needs them, and
trio never (a test checks).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from raftfleet_cli.failures import FAILED, TIMED_OUT, Failure, describe
from raftfleet_cli.output import MODES, Output, color_wanted, note

if TYPE_CHECKING:
    from raftfleet_cli.client import Address, Client

PROG = "raftfleet"
COMPLETE_VAR = "_RAFTFLEET_COMPLETE"
SHELLS = ("bash", "zsh", "fish")
CALL_TIMEOUT_S = 30.0  # admin ops; command/query compute theirs from --timeout
TRANSFER_WAIT_S = 10.0
_HOST_PORT_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):\d{1,5}")
_JSON_START = ("[", "{", '"')


# --------------------------------------------------------------------------
# Shared state of one invocation


class State:
    """The global options of one invocation and the (lazily opened) agent connection."""

    def __init__(self, addr_text: str | None, token_file: str | None, output: Output) -> None:
        self.addr_text = addr_text
        self.token_file = token_file
        self.out = output
        self._addr: Address | None = None
        self._client: Client | None = None

    @property
    def addr(self) -> Address:
        if self._addr is None:
            from raftfleet_cli.client import default_addr, parse_addr

            try:
                text = self.addr_text
                self._addr = parse_addr(text) if text else default_addr(os.environ)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="'--addr' / RAFTFLEET_ADDR") from None
        return self._addr

    @property
    def client(self) -> Client:
        if self._client is None:
            from raftfleet_cli.client import Client, read_token_file

            token = None
            if self.token_file:
                try:
                    token = read_token_file(self.token_file)
                except (OSError, ValueError) as exc:
                    reason = getattr(exc, "strerror", None) or str(exc)
                    raise click.BadParameter(
                        f"cannot read {self.token_file!r}: {reason}",
                        param_hint="'--token-file' / RAFTFLEET_TOKEN_FILE",
                    ) from None
            self._client = Client(self.addr, token)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def override(self, name: str, value: Any) -> None:
        """A global option given again after the command: the later one wins."""
        if name == "output":
            self.out = Output(value, color=self.out.color)
        elif name == "no_color":
            self.out = Output(self.out.mode, color=False)
        elif name == "addr":
            self.addr_text, self._addr = value, None
        elif name == "token_file":
            self.token_file = value

    @contextmanager
    def failing(self, what: str) -> Iterator[None]:
        """Turn client and agent errors inside the block into a Failure about `what`."""
        try:
            yield
        except click.ClickException:
            raise
        except Exception as exc:
            failure = describe(exc, what, self._addr or self.addr_text)
            if failure is None:
                raise
            raise failure from None

    def check_args(self, op: str, args: dict[str, Any]) -> None:
        """Validate arguments with the agent's own rules; a bad one is a usage error."""
        from raftfleet_agent.control.protocol import RequestError, validate_args

        try:
            validate_args(op, args)
        except RequestError as exc:
            message = exc.message.removeprefix("args.")
            raise click.UsageError(message) from None

    def call(self, op: str, what: str, timeout: float = CALL_TIMEOUT_S, **args: Any) -> Any:
        """Run `op` on the agent; any failure becomes a Failure (exit 1, 3 or 4)."""
        self.check_args(op, args)
        with self.failing(what):
            return self.client.call(op, timeout=timeout, **args)

    def call_raw(self, op: str, timeout: float = CALL_TIMEOUT_S, **args: Any) -> Any:
        """Like `call`, but ControlError is left to the caller (to fall back or tolerate)."""
        from raftfleet_cli.client import ControlError

        self.check_args(op, args)
        try:
            return self.client.call(op, timeout=timeout, **args)
        except ControlError:
            raise
        except Exception as exc:
            failure = describe(exc, op, self._addr or self.addr_text)
            if failure is None:
                raise
            raise failure from None


pass_state = click.make_pass_decorator(State)


class RaftfleetGroup(click.Group):
    """The top-level group: program name `raftfleet` however it was started; Ctrl-C is 130."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("prog_name", PROG)
        kwargs.setdefault("complete_var", COMPLETE_VAR)
        return super().main(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            from raftfleet_cli.failures import INTERRUPTED

            raise Failure("interrupted", INTERRUPTED) from None


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(cls=RaftfleetGroup, context_settings=CONTEXT)
@click.option(
    "--addr",
    envvar="RAFTFLEET_ADDR",
    metavar="unix:///PATH|tcp://HOST:PORT",
    help="The agent's control address. Default: the local agent's socket.",
)
@click.option(
    "--token-file",
    envvar="RAFTFLEET_TOKEN_FILE",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="File holding the bearer token (needed for tcp:// addresses).",
)
@click.option(
    "-o",
    "--output",
    envvar="RAFTFLEET_OUTPUT",
    type=click.Choice(MODES),
    default="table",
    show_default=True,
    help="table for people, json for programs, plain for shell pipes.",
)
@click.option("--no-color", is_flag=True, help="No colour (also: NO_COLOR set).")
@click.version_option(package_name="raftfleet", prog_name=PROG)
@click.pass_context
def main(
    ctx: click.Context, addr: str | None, token_file: str | None, output: str, no_color: bool
) -> None:
    """Run many Raft groups across a fleet of raftfleet agents.

    The options below may also follow the command (`raftfleet group list -o
    json`). Environment: RAFTFLEET_ADDR, RAFTFLEET_TOKEN_FILE, RAFTFLEET_OUTPUT,
    NO_COLOR. Exit codes: 0 ok, 1 failed, 2 usage, 3 agent unreachable or
    unauthorized, 4 timed out (the operation continues), 130 interrupted.
    """
    state = State(addr, token_file, Output(output, color=color_wanted(no_color)))
    ctx.obj = state
    ctx.call_on_close(state.close)


# --------------------------------------------------------------------------
# Agents


def _host_port(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not _HOST_PORT_RE.fullmatch(value):
        raise click.BadParameter(f"{value!r} is not HOST:PORT (e.g. 10.0.0.5:7100)")
    return value


@main.command()
@click.argument("address", metavar="HOST:PORT", callback=_host_port)
@pass_state
def join(state: State, address: str) -> None:
    """Join this agent to the cluster of the agent at HOST:PORT (its peer address).

    Only an agent in no cluster yet can join one: an agent started without a
    join address founds its own at once (the agent then says how to move it).
    """
    from raftfleet_cli.views import action_view

    result = state.call("join", f"join {address}", address=address)
    view = action_view(("joined", "address"), result, address=address)
    _action(state, view, f"joined the cluster through {address} (agent {view['joined']})")


@main.command()
@click.argument("zone")
@pass_state
def activate(state: State, zone: str) -> None:
    """Make this agent take replicas, in ZONE (a failure domain: rack, AZ)."""
    from raftfleet_cli.views import action_view

    result = state.call("activate", f"activate {zone}", zone=zone)
    view = action_view(("name", "zone", "state"), result, zone=zone)
    who = f"agent {view['name']}" if view["name"] else "agent"
    _action(state, view, f"{who} activated in zone {view['zone']}")


_FORCE_HELP = (
    "Go ahead even if too few active agents would be left for every group to keep "
    "all its replicas (those groups shrink, and tolerate fewer failures)."
)
_FORGET_FORCE_HELP = (
    "Go ahead even if too few active agents would be left for every group to keep "
    "all its replicas (those groups shrink), or an agent could not say whether it "
    "still reaches AGENT. Never for an agent another agent reaches."
)


@main.command()
@click.option("--force", is_flag=True, help=_FORCE_HELP)
@pass_state
def deactivate(state: State, force: bool) -> None:
    """Stop placing replicas here and start moving them away (see drain to watch it)."""
    from raftfleet_cli.views import action_view

    result = state.call("deactivate", "deactivate", force=force)
    view = action_view(("name", "state"), result)
    _action(state, view, "deactivated: replicas are moving away (watch with `raftfleet drain`)")


@main.command()
@click.option(
    "--timeout",
    type=click.FloatRange(0, 86400, min_open=True),
    metavar="SECONDS",
    help="Give up watching after SECONDS (exit 4; the drain continues).",
)
@click.option("--detach", is_flag=True, help="Deactivate and return at once, without watching.")
@click.option("--force", is_flag=True, help=_FORCE_HELP)
@pass_state
def drain(state: State, timeout: float | None, detach: bool, force: bool) -> None:
    """Deactivate this agent and watch its replicas and leaderships move away.

    Exits 0 once none are left, so `raftfleet drain --timeout 600 && systemctl
    stop raftfleet-agent` stops an agent without losing a replica.
    """
    from raftfleet_cli.drain import run_drain

    run_drain(state, timeout_s=timeout, detach=detach, force=force)


@main.command()
@click.argument("agent")
@click.option("--force", is_flag=True, help=_FORGET_FORCE_HELP)
@pass_state
def forget(state: State, agent: str, force: bool) -> None:
    """Purge AGENT, which is gone for good, now instead of after the purge window.

    Its replicas are rebuilt on other agents. Refused for an agent this one,
    or any agent it reaches, can still reach (drain it instead), and, unless
    --force, when an agent could not be asked or too few reachable active
    agents would be left for every group to keep all its replicas.
    Run it on any other agent; if AGENT comes back it rejoins as inactive.
    """
    from raftfleet_cli.views import action_view

    result = state.call("forget", f"forget {agent}", agent=agent, force=force)
    view = action_view(("name", "state", "released"), result, name=agent)
    _action(state, view, f"forgot {view['name']}: its replicas are being rebuilt elsewhere")


@main.command()
@pass_state
def status(state: State) -> None:
    """This agent: name, zone, state, replica and leader counts, peers."""
    from raftfleet_cli.views import STATUS_FIELDS, status_metrics_rows, status_view

    raw = state.call("status", "status")
    view = status_view(raw)
    out = state.out
    if out.json:
        out.document(view)
        return
    row = [view[key] for key in STATUS_FIELDS[:-1]]
    if out.plain:
        out.rows(STATUS_FIELDS[:-1], [row])
        return
    cluster = view["cluster"]
    out.fields(
        [
            *zip(STATUS_FIELDS[:-1], row, strict=True),
            ("cluster", cluster.get("id")),
            *([("command level", cluster["level"])] if cluster.get("level") is not None else []),
            *([("cluster state", cluster["state_error"])] if cluster.get("state_error") else []),
            *_held_row(cluster.get("purges_held"), cluster.get("purges_held_why")),
            *status_metrics_rows(raw),
        ]
    )
    peers = cluster.get("peers")
    if isinstance(peers, dict) and peers:
        out.rows(
            ("PEER", "ADDRESS", "REACHABLE"),
            [(n, p.get("address"), p.get("reachable")) for n, p in sorted(peers.items())],
        )


def _held_row(held: object, why: object) -> list[tuple[str, object]]:
    """The `purges held` row of status: agents past the purge window kept, and why.

    Agents older than `purges_held_why` hold purges only for want of room.
    """
    if not isinstance(held, list) or not held:
        return []
    reasons = why if isinstance(why, dict) else {}
    text = "; ".join(
        f"{name} ({reasons.get(name, 'no room: activate another agent')})" for name in held
    )
    return [("purges held", text)]


def _note_state_error(state: State, view: dict) -> None:
    """Say on stderr that the answer comes from a copy of the cluster state (JSON carries it)."""
    if view.get("state_error") and not state.out.json:
        note(f"raftfleet: {view['state_error']}")


@main.command()
@pass_state
def nodes(state: State) -> None:
    """Every agent of the cluster: zone, state, reachability, replicas, leaders."""
    from raftfleet_cli.client import ControlError
    from raftfleet_cli.views import NODE_FIELDS, nodes_from_status, nodes_view

    try:
        view = nodes_view(state.call_raw("nodes"))
    except ControlError as exc:
        if exc.code != "unknown_op":
            with state.failing("nodes"):
                raise
        # An older agent: what its status knows (peers' zones and counts unknown).
        view = nodes_from_status(state.call("status", "nodes"))
    _note_state_error(state, view)
    rows = [[node[key] for key in NODE_FIELDS] for node in view["nodes"]]
    _listing(state, view, [key.upper() for key in NODE_FIELDS], rows)


# --------------------------------------------------------------------------
# Groups


@main.group("group")
def group_cmd() -> None:
    """Create, list, inspect, move and delete consensus groups."""


@group_cmd.command("create")
@click.argument("name")
@click.option("--replicas", type=click.IntRange(1, 7), help="Replica count (default 3).")
@click.option(
    "--type",
    "type_",
    default="counter",
    show_default=True,
    metavar="counter|kv|pkg.mod:Class",
    help="The data type; a class must be importable on every agent.",
)
@pass_state
def group_create(state: State, name: str, replicas: int | None, type_: str) -> None:
    """Create group NAME; the fleet places its replicas across zones."""
    from raftfleet_cli.views import group_create_view

    args: dict[str, Any] = {"name": name, "type": type_}
    if replicas is not None:
        args["replicas"] = replicas
    view = group_create_view(state.call("group_create", f"group create {name}", **args), args)
    where = ", ".join(view["agents"] or []) or "?"
    _action(
        state,
        view,
        f"created group {name}: {view['type']}, {view['replicas']} replicas on {where}; "
        f"leader {view['leader'] or '-'}",
    )


@group_cmd.command("delete")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask; required off a terminal.")
@pass_state
def group_delete(state: State, name: str, yes: bool) -> None:
    """Delete group NAME and all its data, on every agent."""
    from raftfleet_cli.views import action_view

    state.check_args("group_delete", {"name": name})
    _confirm(yes, f"delete group {name} and all its data", "--yes")
    result = state.call("group_delete", f"group delete {name}", name=name)
    view = action_view(("name", "deleted_on"), result, name=name)
    _action(state, view, f"deleted group {name}")


@group_cmd.command("list")
@pass_state
def group_list(state: State) -> None:
    """Every group: data type, replica count, leader."""
    from raftfleet_cli.views import GROUP_FIELDS, group_list_view

    view = group_list_view(state.call("group_list", "group list"))
    _note_state_error(state, view)
    columns = ("name", "type", "replicas", "leader")
    rows = [[g[key] for key in columns] for g in view["groups"]]
    assert set(columns) == set(GROUP_FIELDS)
    _listing(state, view, [c.upper() for c in columns], rows)


@group_cmd.command("status")
@click.argument("name")
@pass_state
def group_status(state: State, name: str) -> None:
    """Members of group NAME with their roles and progress, and whether placement is met."""
    from raftfleet_cli.views import (
        MEMBER_FIELDS,
        MEMBER_VIEW_FIELDS,
        REPLICA_VIEW_FIELDS,
        group_status_view,
    )

    view = group_status_view(state.call("group_status", f"group status {name}", name=name))
    out = state.out
    _note_state_error(state, view)
    if out.json:
        out.document(view)
        return
    if out.plain:
        out.rows(MEMBER_FIELDS, [[m[key] for key in MEMBER_FIELDS] for m in view["members"]])
        return
    keys = ("name", "type", "leader", "term", "commit_index", "desired", "converged")
    if view["leader"] is None:
        keys += ("lost", "majority_lost")
    elif view["lost"]:
        keys += ("lost",)
    out.fields([(k.replace("_", " "), view[k]) for k in keys])
    rows = [[m[key] for key in MEMBER_VIEW_FIELDS] for m in view["members"]]
    out.rows([k.upper().replace("_", " ") for k in MEMBER_VIEW_FIELDS], rows)
    if view["replicas"]:
        # No leader: what each reachable replica believes (terms, votes, quiet
        # replicas) tells a passing election from one that is stuck.
        out.rows(
            [k.upper().replace("_", " ") for k in REPLICA_VIEW_FIELDS],
            [[r[k] for k in REPLICA_VIEW_FIELDS] for r in view["replicas"]],
            title="each replica's own view (no leader)",
        )


@group_cmd.command("transfer-leader")
@click.argument("name")
@click.argument("agent")
@pass_state
def group_transfer_leader(state: State, name: str, agent: str) -> None:
    """Move the leadership of group NAME to AGENT (which must hold a replica)."""
    from raftfleet_cli.views import action_view, leader_view

    what = f"group transfer-leader {name} {agent}"
    result = state.call("group_transfer", what, name=name, agent=agent)
    view = action_view(("name", "from", "to"), result, name=name, to=agent)
    deadline = time.monotonic() + TRANSFER_WAIT_S
    while True:
        now = leader_view(name, state.call("leader", what, group=name))["leader"]
        if now == agent:
            break
        if time.monotonic() > deadline:
            raise Failure(
                f"{what}: {agent} is not the leader after {TRANSFER_WAIT_S:g} s (now: "
                f"{now or 'none'}); the transfer may still complete on the agent",
                TIMED_OUT,
            )
        time.sleep(0.1)
    _action(state, view, f"{agent} now leads {name} (was {view['from'] or '-'})")


@group_cmd.command("recover")
@click.argument("name")
@click.option("--force", is_flag=True, help="Required: recovery may lose acknowledged writes.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask; required off a terminal.")
@pass_state
def group_recover(state: State, name: str, force: bool, yes: bool) -> None:
    """Rebuild group NAME from its surviving replicas after it lost its majority.

    Writes acknowledged only by the lost replicas are gone for good. The
    agent refuses while a majority of the voters answers (an election is on)
    or while another agent still reaches a voter it cannot (a network cut
    around it): forcing then would fork the group from a live majority.
    """
    from raftfleet_cli.views import action_view

    if not force:
        raise click.UsageError(
            f"recovering {name} from a minority may lose acknowledged writes; "
            "pass --force if you accept that"
        )
    state.check_args("group_recover", {"name": name, "force": True})
    _confirm(yes, f"force-recover group {name}, possibly losing acknowledged writes", "--yes")
    result = state.call("group_recover", f"group recover {name}", name=name, force=True)
    view = action_view(("name", "leader", "members"), result, name=name)
    _action(state, view, f"recovered group {name}; leader {view['leader'] or '-'}")


# --------------------------------------------------------------------------
# Data


def parse_value(text: str) -> Any:
    """ARG as JSON when it is JSON, else the plain string; JSON-looking garbage is refused."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:
        if text.lstrip().startswith(_JSON_START):
            raise click.BadParameter(
                f"{text!r} looks like JSON but is not valid JSON ({exc}); fix it, or "
                f"send it as a string by quoting it as JSON: {json.dumps(text)!r}",
                param_hint="ARG",
            ) from None
        return text


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN/Infinity: take the word as a string


def _value_arg(ctx: click.Context, param: click.Parameter, value: str) -> Any:
    return parse_value(value)


_TIMEOUT = click.option(
    "--timeout",
    type=click.FloatRange(0, 60, min_open=True),
    default=5.0,
    show_default=True,
    metavar="S",
    help="Seconds each attempt may take on the agent.",
)


def _wait_s(timeout_s: float, retries: int) -> float:
    """How long the client waits: every attempt may look for a leader, then run."""
    return (retries + 1) * (2 * timeout_s + 0.5) + 2.0


@main.command()
@click.argument("group")
@click.argument("arg", callback=_value_arg)
@_TIMEOUT
@click.option(
    "--retries", type=click.IntRange(0, 20), default=3, show_default=True,
    help="Attempts after the first; a retry never applies the command twice.",
)  # fmt: skip
@pass_state
def command(state: State, group: str, arg: Any, timeout: float, retries: int) -> None:
    """Run command ARG (JSON, or a plain string) on GROUP; print the reply as JSON."""
    from raftfleet_cli.views import reply_view

    result = state.call(
        "command", f"command {group}", _wait_s(timeout, retries),
        group=group, arg=arg, timeout_s=timeout, retries=retries,
    )  # fmt: skip
    _reply(state, reply_view(group, result))


@main.command()
@click.argument("group")
@click.argument("arg", callback=_value_arg)
@_TIMEOUT
@click.option("--stale", is_flag=True, help="Answer from the nearest replica, maybe stale.")
@pass_state
def query(state: State, group: str, arg: Any, timeout: float, stale: bool) -> None:
    """Run query ARG on GROUP (linearizable unless --stale); print the reply as JSON."""
    from raftfleet_cli.views import reply_view

    result = state.call(
        "query", f"query {group}", _wait_s(timeout, 3),
        group=group, arg=arg, timeout_s=timeout, stale=stale,
    )  # fmt: skip
    _reply(state, reply_view(group, result))


@main.command()
@click.argument("group")
@pass_state
def leader(state: State, group: str) -> None:
    """The agent leading GROUP (table output: just its name)."""
    from raftfleet_cli.views import leader_view

    view = leader_view(group, state.call("leader", f"leader {group}", group=group))
    if view["leader"] is None:
        raise Failure(
            f"leader {group}: {group} has no leader right now (election in progress, or "
            f"majority lost: see `raftfleet group status {group}`)",
            FAILED,
        )
    out = state.out
    if out.json:
        out.document(view)
    elif out.plain:
        out.rows(("group", "leader", "term"), [[view["group"], view["leader"], view["term"]]])
    else:
        out.text(view["leader"])


# --------------------------------------------------------------------------
# Tools


@main.command()
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL.

    \b
    bash: raftfleet completion bash > /etc/bash_completion.d/raftfleet
    zsh:  raftfleet completion zsh > "${fpath[1]}/_raftfleet"
    fish: raftfleet completion fish > ~/.config/fish/completions/raftfleet.fish
    """
    click.echo(completion_script(shell), nl=False)


def completion_script(shell: str) -> str:
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None, shell
    source = cls(main, {}, PROG, COMPLETE_VAR).source()
    return source if source.endswith("\n") else source + "\n"


@main.command()
@click.option("--agents", type=click.IntRange(1, 20), default=4, show_default=True)
@click.option("--zones", type=click.IntRange(1, 20), default=2, show_default=True)
@click.option("--groups", type=click.IntRange(0, 500), default=5, show_default=True)
@pass_state
def demo(state: State, agents: int, zones: int, groups: int) -> None:
    """Start a throw-away cluster of local agents until Ctrl-C.

    Agents listen on 127.0.0.101 and up, keep their data in a temporary
    directory, and are stopped and removed on Ctrl-C or SIGTERM.
    """
    from raftfleet_cli.demo import run_demo

    run_demo(state.out, agents=agents, zones=zones, groups=groups)


# --------------------------------------------------------------------------
# Helpers


def _action(state: State, view: dict[str, Any], sentence: str) -> None:
    """The result of a change: JSON object, one tab-separated row, or a sentence."""
    out = state.out
    if out.json:
        out.document(view)
    elif out.plain:
        out.rows(list(view), [list(view.values())])
    else:
        out.text(sentence)


def _listing(state: State, view: dict[str, Any], columns: list[str], rows: list[list]) -> None:
    if state.out.json:
        state.out.document(view)
    else:
        state.out.rows(columns, rows)


def _reply(state: State, view: dict[str, Any]) -> None:
    if state.out.json:
        state.out.document(view)
    else:
        state.out.value(view["reply"])


def _confirm(yes: bool, action: str, flag: str) -> None:
    """Ask on a terminal; off a terminal the flag is the only way to say yes."""
    if yes:
        return
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        raise click.UsageError(f"refusing to {action} without confirmation: pass {flag}")
    if not click.confirm(f"Really {action}?", default=False, err=True):
        raise Failure(f"not confirmed: did not {action}", FAILED)


# --------------------------------------------------------------------------
# The global options after the command, too


def _override(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    state = ctx.find_object(State)
    # No State while the shell completes a word: the group's callback has not run.
    if state is not None and value not in (None, False):
        assert param.name is not None
        state.override(param.name, value)


def _global_options_again() -> list[click.Option]:
    """Copies of the group's own options, for after the command (etcdctl, kubectl).

    No environment variable and no default here: the group's option reads
    those, and the copy only overrides it when it is given.
    """
    return [
        click.Option(
            p.opts,
            type=p.type,
            is_flag=p.is_flag,
            metavar=p.metavar,
            help=p.help,
            expose_value=False,
            callback=_override,
        )
        for p in main.params
        if isinstance(p, click.Option) and p.expose_value  # not --version
    ]


def _accept_global_options_after(group: click.Group) -> None:
    """Give every command that talks to an agent the global options as its own."""
    for cmd in group.commands.values():
        if isinstance(cmd, click.Group):
            _accept_global_options_after(cmd)
        elif cmd is not completion:  # prints a script: no agent, no output mode
            cmd.params.extend(_global_options_again())


_accept_global_options_after(main)

if __name__ == "__main__":
    main()
