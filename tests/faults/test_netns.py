"""Agents as separate hosts in network namespaces, partitioned by taking a link down.

Root only (and `ip netns` must work): three namespaces joined by a bridge that
this test creates and removes; every address is inside them. The control
sockets are files, so the test talks to the agents from the root namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftfleet_cli.client import ClientError, ControlError
from tests.procs import AgentProc, clean_env, wait_for

pytestmark = pytest.mark.slow

NET = "10.231.77"
BRIDGE = "rfbr77"
NAMES = ["n1", "n2", "n3"]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


def _netns_usable() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = "rfprobe77"
    ok = _ip("netns", "add", probe, check=False).returncode == 0
    _ip("netns", "del", probe, check=False)
    return ok


def _teardown() -> None:
    for i, _ in enumerate(NAMES):
        _ip("netns", "del", f"rf{i}", check=False)
        _ip("link", "del", f"rfv{i}", check=False)
    _ip("link", "del", BRIDGE, check=False)


@pytest.fixture
def hosts() -> Iterator[list[str]]:
    if not _netns_usable():
        pytest.skip("needs root and working `ip netns`")
    _teardown()
    try:
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("link", "set", BRIDGE, "up")
        for i, _ in enumerate(NAMES):
            ns = f"rf{i}"
            _ip("netns", "add", ns)
            _ip("link", "add", f"rfv{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", f"rfv{i}", "master", BRIDGE)
            _ip("link", "set", f"rfv{i}", "up")
            _ip("-n", ns, "addr", "add", f"{NET}.{i + 1}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield [f"rf{i}" for i, _ in enumerate(NAMES)]
    finally:
        _teardown()


class NsAgent(AgentProc):
    """An agent started inside a network namespace."""

    def __init__(self, ns: str, name: str, addr: str, base: Path, join: list[str]) -> None:
        super().__init__(name, "127.0.0.1", base, join=join)
        self.ns = ns
        self.host, self.port = addr, 7100

    def argv(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *super().argv()]

    def start(self, env: dict[str, str] | None = None, wait: bool = True) -> AgentProc:
        env = clean_env(RAFTFLEET_RECONCILE_INTERVAL_S="1", PATH=os.environ.get("PATH", ""))
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
        return super().start(env=env, wait=wait)


def _agents(base: Path, namespaces: list[str]) -> list[NsAgent]:
    procs: list[NsAgent] = []
    for i, (ns, name) in enumerate(zip(namespaces, NAMES, strict=True)):
        join = [f"{NET}.1:7100"] if i else []
        procs.append(NsAgent(ns, name, f"{NET}.{i + 1}", base, join))
    return procs


def test_link_down_partitions_a_leader_and_nothing_acknowledged_is_lost(
    tmp_path: Path, hosts: list[str]
) -> None:
    procs = _agents(tmp_path, hosts)
    try:
        for p in procs:
            p.start()
        wait_for(
            lambda: all(
                len([x for x in p.call("status")["cluster"]["peers"].values() if x["reachable"]])
                == 2
                for p in procs
            ),
            30,
            "the namespaces' agents to connect",
        )
        procs[0].call("group_create", name="ns", agents=NAMES, timeout=30)
        acked = 0
        for _ in range(20):
            procs[1].call("command", group="ns", arg="inc")
            acked += 1
        leader = procs[0]  # the creator's first agent leads a new group
        assert procs[2].call("leader", group="ns")["leader"] == leader.name
        _ip("-n", leader.ns, "link", "set", "eth0", "down")  # the leader's host drops off
        t0 = time.monotonic()

        def served() -> bool:
            nonlocal acked
            try:
                procs[1].call("command", group="ns", arg="inc", timeout=5, timeout_s=0.5, retries=0)
            except (ControlError, ClientError):
                return False
            acked += 1
            return True

        wait_for(served, 20, "the other two hosts to elect a leader")
        failover_s = time.monotonic() - t0
        new = procs[2].call("leader", group="ns")["leader"]
        assert new in ("n2", "n3"), new
        _ip("-n", leader.ns, "link", "set", "eth0", "up")
        wait_for(
            lambda: leader.call("query", group="ns", arg="get", stale=True)["reply"] >= acked,
            30,
            "the old leader's host to catch up after the link is back",
        )
        value = procs[2].call("query", group="ns", arg="get")["reply"]
        assert acked <= value <= acked + 20  # timed-out attempts may have applied
        print(f"netns failover after link down: {failover_s:.2f} s", file=sys.stderr)
    finally:
        for p in procs:
            p.stop(timeout=10)
