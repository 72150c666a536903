"""`raftfleet demo`: a throw-away cluster of local agents, for trying the CLI.

Starts N agents (`python -m raftfleet_agent.main`, the same interpreter) as
child processes on loopback addresses 127.0.0.101, .102, ... with free
ports, each with its own directory under one temporary directory, sharing a
freshly generated cluster secret. The others join the first; they are
activated in zones zone1..zoneZ round robin; G counter groups demo-1.. are
created. Then it prints the cluster and the line

    export RAFTFLEET_ADDR=unix:///tmp/raftfleet-demo-XXXX/node1/agent.sock

for another shell, and waits. Ctrl-C or SIGTERM stops every agent (SIGTERM,
then SIGKILL after `STOP_TIMEOUT_S`) and removes the directory.

Agents run in their own session, so the terminal's Ctrl-C reaches only the
demo, which then stops them in order; on Linux they also get SIGTERM if the
demo itself dies (PR_SET_PDEATHSIG), so a killed demo leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raftfleet_cli.client import Client, ControlError, parse_addr
from raftfleet_cli.failures import Failure
from raftfleet_cli.output import Output, note

FIRST_OCTET = 101
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
CREATE_TIMEOUT_S = 30.0
_PR_SET_PDEATHSIG = 1


class DemoAgent:
    """One agent process of the demo."""

    def __init__(self, index: int, base: Path, zone: str, secret_file: Path) -> None:
        self.name = f"node{index + 1}"
        self.host = f"127.0.0.{FIRST_OCTET + index}"
        self.port = _free_port(self.host)
        self.zone = zone
        self.dir = base / self.name
        self.dir.mkdir()
        self.sock = str(self.dir / "agent.sock")
        self.secret_file = secret_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_reported = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def control(self) -> str:
        return f"unix://{self.sock}"

    def start(self, join: str | None) -> None:
        argv = [
            sys.executable, "-m", "raftfleet_agent.main",
            "--name", self.name,
            "--data-dir", str(self.dir / "data"),
            "--listen", self.address,
            "--control-socket", self.sock,
            "--cluster-secret-file", str(self.secret_file),
            "--zone", self.zone,
            "--log-level", "warning",
        ]  # fmt: skip
        if join:
            argv += ["--join", join]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAFTFLEET_")}
        env.pop("NOTIFY_SOCKET", None)
        with open(self.dir / "agent.log", "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent_fn(),  # noqa: PLW1509 - one prctl call
            )

    def call(self, op: str, timeout: float = 10.0, **args: Any) -> Any:
        with Client(parse_addr(self.control), connect_timeout=2.0) as client:
            return client.call(op, timeout=timeout, **args)

    def log_tail(self) -> str:
        try:
            return (self.dir / "agent.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def check_running(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise Failure(
                f"demo: agent {self.name} exited with code {self.proc.returncode}:\n"
                f"{self.log_tail()}"
            )


def run_demo(out: Output, *, agents: int, zones: int, groups: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="raftfleet-demo-"))
    fleet: list[DemoAgent] = []
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        note(f"demo: directory {base}")
        fleet = _start(base, agents, zones)
        fallback = _activate(fleet)
        created = _create_groups(fleet, groups, fallback)
        _show(out, fleet, created)
        note("demo: running; press Ctrl-C to stop every agent and remove the directory")
        _watch(fleet)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # cleanup must not be cut short
        _stop(fleet)
        shutil.rmtree(base, ignore_errors=True)
        note(f"demo: stopped {len(fleet)} agents and removed {base}")
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _start(base: Path, agents: int, zones: int) -> list[DemoAgent]:
    secret_file = base / "cluster-secret"
    fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    fleet: list[DemoAgent] = []
    try:
        for i in range(agents):
            agent = DemoAgent(i, base, f"zone{i % zones + 1}", secret_file)
            fleet.append(agent)
            agent.start(join=fleet[0].address if i else None)
            note(f"demo: started {agent.name} (pid {agent.proc.pid}) on {agent.address}, "  # type: ignore[union-attr]
                 f"zone {agent.zone}")  # fmt: skip
        for agent in fleet:
            _wait(lambda a=agent: a.call("ping", timeout=1.0) == "pong", fleet,
                  f"{agent.name} to answer on {agent.control}")  # fmt: skip
        names = {a.name for a in fleet}
        for agent in fleet:
            _wait(lambda a=agent: _reachable(a) >= names - {a.name}, fleet,
                  f"{agent.name} to connect to every other agent")  # fmt: skip
    except BaseException:
        fleet_copy = list(fleet)
        fleet.clear()
        _stop(fleet_copy)
        raise
    return fleet


def _reachable(agent: DemoAgent) -> set[str]:
    peers = agent.call("status", timeout=2.0)["cluster"]["peers"]
    return {name for name, p in peers.items() if p.get("reachable")}


def _activate(fleet: list[DemoAgent]) -> bool:
    """Make sure every agent is active in its zone; True if the agents cannot be activated.

    Each agent was started with --zone, so a recent agent activates itself
    once it is in the cluster state; the `activate` op covers the rest. A
    just-joined agent may not be known to the cluster state yet: retry.
    """
    deadline = time.monotonic() + START_TIMEOUT_S
    pending = list(fleet)
    while pending:
        agent = pending[0]
        if agent.call("status").get("state") in ("active", "activating"):
            pending.pop(0)
            continue
        try:
            agent.call("activate", zone=agent.zone)
            pending.pop(0)
        except ControlError as exc:
            if exc.code == "unknown_op":
                note(
                    "demo: these agents cannot be activated yet (no `activate` op); "
                    "creating groups with explicitly chosen agents instead"
                )
                return True
            if exc.code == "not_inactive":
                continue  # activating by itself right now; the status will say
            if exc.code not in _SETTLING or time.monotonic() > deadline:
                raise Failure(f"demo: activating {agent.name} in {agent.zone}: {exc}") from None
            time.sleep(0.2)
    return False


# Codes meaning "the cluster is still coming together": retry.
_SETTLING = frozenset({"not_found", "unavailable", "no_leader", "timeout", "no_active_agent"})


def _create_groups(fleet: list[DemoAgent], groups: int, fallback: bool) -> list[dict[str, Any]]:
    replicas = min(3, len(fleet))
    created = []
    for g in range(groups):
        args: dict[str, Any] = {"name": f"demo-{g + 1}", "type": "counter", "replicas": replicas}
        if fallback:  # spread the groups by hand: rotate through the agents
            args["agents"] = [fleet[(g + k) % len(fleet)].name for k in range(replicas)]
        deadline = time.monotonic() + CREATE_TIMEOUT_S
        while True:
            try:
                created.append(fleet[0].call("group_create", timeout=CREATE_TIMEOUT_S, **args))
                break
            except ControlError as exc:
                # Activation and placement take a moment to settle.
                if exc.code not in _SETTLING or time.monotonic() > deadline:
                    raise Failure(f"demo: creating group {args['name']}: {exc}") from None
                time.sleep(0.2)
    return created


def _show(out: Output, fleet: list[DemoAgent], created: list[dict[str, Any]]) -> None:
    from raftfleet_cli.views import group_create_view, status_view

    agents = []
    for a in fleet:
        st = status_view(a.call("status"))
        agents.append({**st, "control": a.control, "pid": a.proc.pid if a.proc else None})
    groups = [group_create_view(c, {}) for c in created]
    export = f"export RAFTFLEET_ADDR={fleet[0].control}"
    if out.json:
        cluster = [{k: v for k, v in a.items() if k != "cluster"} for a in agents]
        out.document({"agents": cluster, "groups": groups, "addr": fleet[0].control})
        return
    out.rows(
        ("NAME", "ZONE", "STATE", "PEER ADDRESS", "CONTROL", "PID"),
        [[a["name"], a["zone"], a["state"], a["address"], a["control"], a["pid"]] for a in agents],
    )
    if groups:
        out.rows(
            ("GROUP", "TYPE", "REPLICAS", "LEADER"),
            [[g["name"], g["type"], ", ".join(g["agents"] or []), g["leader"]] for g in groups],
        )
    out.text(export)


def _watch(fleet: list[DemoAgent]) -> None:
    """Wait for Ctrl-C/SIGTERM; say so once if an agent dies meanwhile."""
    while True:
        time.sleep(0.5)
        for a in fleet:
            if a.proc is not None and a.proc.poll() is not None and not a.exit_reported:
                a.exit_reported = True
                note(f"demo: {a.name} exited with code {a.proc.returncode} (log: {a.log_tail()})")


def _stop(fleet: list[DemoAgent]) -> None:
    """SIGTERM every agent, SIGKILL what is left after STOP_TIMEOUT_S; reap all."""
    running = [a.proc for a in fleet if a.proc is not None and a.proc.poll() is None]
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for proc in running:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait(cond: Callable[[], object], fleet: list[DemoAgent], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        for a in fleet:
            a.check_running()
        try:
            if cond():
                return
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.05)
    raise Failure(f"demo: timed out after {START_TIMEOUT_S:g} s waiting for {what} ({last})")


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent_fn() -> Callable[[], None] | None:
    """A pre-exec hook that makes the child get SIGTERM when the demo dies (Linux only).

    libc is loaded here, before fork: the hook itself only makes the call.
    """
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return hook
