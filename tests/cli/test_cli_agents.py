"""Every CLI command against three real agents (127.0.0.61-63), and `raftfleet demo`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Ran, cli_env, run

from raftfleet_agent.fleet.cluster_state import LEVEL
from tests.procs import AgentProc, connected_to_all, free_port, wait_for

pytestmark = pytest.mark.slow

TOKEN = b"cli-test-token-0123456789abcdef"


class Cluster:
    def __init__(self, procs: list[AgentProc], tcp: str, token_file: Path) -> None:
        self.procs = procs
        self.tcp = tcp
        self.token_file = token_file

    def cli(self, *args: str, agent: int = 0, input: str | None = None) -> Ran:
        env = {"RAFTFLEET_ADDR": f"unix://{self.procs[agent].sock}"}
        return run(*args, env=env, input=input)

    def ok(self, *args: str, agent: int = 0) -> str:
        ran = self.cli(*args, agent=agent)
        assert ran.code == 0, ran
        return ran.stdout

    def json(self, *args: str, agent: int = 0) -> dict:
        return json.loads(self.ok("-o", "json", *args, agent=agent))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("cli-agents")
    token_file = base / "control-token"
    token_file.write_bytes(TOKEN + b"\n")
    tcp_host = "127.0.0.63"
    tcp = f"tcp://{tcp_host}:{free_port(tcp_host)}"
    procs: list[AgentProc] = []
    try:
        for i in range(3):
            a = AgentProc(f"a{i + 1}", f"127.0.0.{61 + i}", base, in_memory=True)
            if i:
                a.join = [procs[0].address]
            procs.append(a)
        procs[2].extra_args = [
            "--control-listen", tcp.removeprefix("tcp://"),
            "--control-token-file", str(token_file),
        ]  # fmt: skip
        for a in procs:
            a.start()
        wait_for(lambda: connected_to_all(procs), 20, "agents to connect")
        yield Cluster(procs, tcp, token_file)
    finally:
        for a in procs:
            a.stop(timeout=10)


def _activated(c: Cluster) -> None:
    """Activate every agent through the CLI (once), and wait until all are active."""
    for i in range(len(c.procs)):
        if c.json("status", agent=i)["state"] == "inactive":
            ran = c.cli("activate", f"zone{i % 2 + 1}", agent=i)
            if ran.code == 1 and "does not support" in ran.stderr:
                pytest.xfail("the agent does not implement activate yet")
            assert ran.code == 0, ran
            assert f"activated in zone zone{i % 2 + 1}" in ran.stdout

    def all_active() -> bool:
        return all(n["state"] == "active" for n in c.json("nodes")["nodes"])

    wait_for(all_active, 20, "every agent to be active")


def test_status_and_nodes(cluster: Cluster) -> None:
    _activated(cluster)
    st = cluster.json("status")
    assert list(st) == ["name", "zone", "state", "address", "replicas", "leaders", "cluster"]
    assert st["name"] == "a1" and st["state"] == "active" and st["zone"] == "zone1"
    assert st["address"] == cluster.procs[0].address
    assert set(st["cluster"]["peers"]) == {"a2", "a3"}
    assert st["cluster"]["level"] == LEVEL  # every agent registered what it speaks
    plain = cluster.ok("-o", "plain", "status", agent=1).rstrip("\n").split("\t")
    assert plain[:4] == ["a2", "zone2", "active", cluster.procs[1].address]
    table = cluster.ok("status")
    assert "a1" in table and "PEER" in table and "a3" in table and "command level" in table

    nodes = cluster.json("nodes")["nodes"]
    assert [n["name"] for n in nodes] == ["a1", "a2", "a3"]
    assert [n["zone"] for n in nodes] == ["zone1", "zone2", "zone1"]
    assert set(nodes[0]) == {
        "name",
        "zone",
        "state",
        "address",
        "reachable",
        "replicas",
        "leaders",
        "down_s",
    }
    rows = [line.split("\t") for line in cluster.ok("-o", "plain", "nodes").splitlines()]
    assert [r[0] for r in rows] == ["a1", "a2", "a3"] and all(len(r) == 8 for r in rows)
    assert "ZONE" in cluster.ok("nodes")


def test_groups_commands_and_queries(cluster: Cluster) -> None:
    _activated(cluster)
    assert "created group g1" in cluster.ok("group", "create", "g1")
    created = cluster.json("group", "create", "g2", "--replicas", "2", "--type", "kv")
    assert created["name"] == "g2" and created["type"] == "kv" and created["replicas"] == 2
    assert cluster.cli("group", "create", "g1").code == 1  # already exists

    groups = cluster.json("group", "list")["groups"]
    assert [(g["name"], g["type"], g["replicas"]) for g in groups] == [
        ("g1", "counter", 3), ("g2", "kv", 2),
    ]  # fmt: skip
    assert set(groups[0]) == {"name", "replicas", "type", "leader"}
    plain = cluster.ok("-o", "plain", "group", "list").splitlines()
    assert plain[0].split("\t")[:3] == ["g1", "counter", "3"]
    assert "LEADER" in cluster.ok("group", "list")

    # command / query: JSON or a plain string in; the reply as JSON out.
    assert cluster.ok("command", "g1", "inc", agent=1) == "0\n"
    assert cluster.ok("command", "g1", '["set", 5]', agent=2) == "1\n"
    assert cluster.ok("query", "g1", "get") == "5\n"
    assert cluster.ok("-o", "plain", "query", "g1", "get", "--stale", agent=1) in ("5\n", "1\n")
    doc = cluster.json("command", "g1", "inc", "--timeout", "2", "--retries", "1")
    assert doc["group"] == "g1" and doc["reply"] == 5 and doc["leader"] in ("a1", "a2", "a3")
    assert cluster.ok("command", "g2", '["put", "k", {"a": 1}]') == "null\n"
    assert cluster.ok("query", "g2", '["get", "k"]') == '{"a": 1}\n'
    assert cluster.json("query", "g1", "get", agent=2)["reply"] == 6

    # JSON-looking garbage is a usage error, and nothing changes.
    ran = cluster.cli("command", "g1", '["set", 99')
    assert ran.code == 2 and "looks like JSON" in ran.stderr
    assert cluster.ok("query", "g1", "get") == "6\n"
    ran = cluster.cli("command", "g1", "bogus")
    assert ran.code == 1 and "invalid_argument" in ran.stderr, ran

    # leader: just the name; plain and JSON carry the term.
    leader = cluster.ok("leader", "g1").strip()
    assert leader in ("a1", "a2", "a3")
    group, plain_leader, term = cluster.ok("-o", "plain", "leader", "g1").rstrip().split("\t")
    assert (group, plain_leader) == ("g1", leader) and int(term) >= 1
    assert cluster.json("leader", "g1") == {"group": "g1", "leader": leader, "term": int(term)}

    st = cluster.json("group", "status", "g1")
    assert list(st) == [
        "name", "type", "leader", "term", "commit_index", "members", "desired", "converged",
        "lost", "majority_lost", "replicas",
    ]  # fmt: skip
    assert st["leader"] == leader and st["type"] == "counter"
    assert (st["lost"], st["majority_lost"], st["replicas"]) == ([], False, [])
    assert sorted(m["agent"] for m in st["members"]) == ["a1", "a2", "a3"]
    assert all(m["reachable"] is True for m in st["members"])
    assert sorted(m["role"] for m in st["members"]) == ["follower", "follower", "leader"]
    rows = [r.split("\t") for r in cluster.ok("-o", "plain", "group", "status", "g1").splitlines()]
    assert sorted(r[2] for r in rows) == ["follower", "follower", "leader"]
    assert "MATCH INDEX" in cluster.ok("group", "status", "g1")

    # transfer-leader waits until the new leader leads.
    target = next(m["agent"] for m in st["members"] if m["role"] == "follower")
    ran = cluster.cli("group", "transfer-leader", "g1", target)
    assert ran.code == 0 and f"{target} now leads g1" in ran.stdout, ran
    assert cluster.ok("leader", "g1") == f"{target}\n"
    assert cluster.ok("command", "g1", "inc") == "6\n"


def test_unknown_group_fails_with_exit_1(cluster: Cluster) -> None:
    for args in (
        ["command", "nope", "inc", "--retries", "0", "--timeout", "0.5"],
        ["query", "nope", "get", "--timeout", "0.5"],
        ["group", "status", "nope"],
        ["leader", "nope"],
        ["group", "delete", "nope", "--yes"],
    ):
        ran = cluster.cli(*args)
        assert ran.code == 1, (args, ran)
        assert "nope" in ran.stderr and ran.stderr.startswith("raftfleet: "), ran
        assert ran.stdout == ""


def test_group_delete_needs_yes(cluster: Cluster) -> None:
    _activated(cluster)
    cluster.ok("group", "create", "gdel", "--replicas", "3")
    ran = cluster.cli("group", "delete", "gdel")
    assert ran.code == 2 and "pass --yes" in ran.stderr
    assert cluster.ok("query", "gdel", "get") == "0\n"  # still there
    assert cluster.json("group", "delete", "gdel", "--yes")["name"] == "gdel"
    wait_for(
        lambda: "gdel" not in {g["name"] for g in cluster.json("group", "list")["groups"]},
        10, "gdel to leave the group list",
    )  # fmt: skip


def test_tcp_token(cluster: Cluster, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"not-the-token-0123456789")
    ran = run("--addr", cluster.tcp, "--token-file", str(wrong), "status")
    assert ran.code == 3, ran
    assert f"the agent at {cluster.tcp} refused the token" in ran.stderr
    ran = run("--addr", cluster.tcp, "--token-file", str(cluster.token_file), "-o", "json",
              "status")  # fmt: skip
    assert ran.code == 0 and json.loads(ran.stdout)["name"] == "a3", ran
    ran = run("status", env={"RAFTFLEET_ADDR": cluster.tcp,
                             "RAFTFLEET_TOKEN_FILE": str(cluster.token_file)})  # fmt: skip
    assert ran.code == 0, ran


def test_join_is_answered(cluster: Cluster) -> None:
    ran = cluster.cli("-o", "json", "join", cluster.procs[0].address, agent=1)
    assert ran.code == 0, ran
    assert json.loads(ran.stdout) == {"joined": "a1", "address": cluster.procs[0].address}


def test_drain_real_agent(cluster: Cluster) -> None:
    """Last: it takes a3 out of placement."""
    _activated(cluster)
    # Three agents and groups of three: a drain would shrink them, so it is
    # refused, and nothing changes, until the operator says so.
    ran = cluster.cli("-o", "json", "drain", "--timeout", "40", agent=2)
    assert ran.code == 1 and "leaves 2 active agent(s)" in ran.stderr, ran
    assert "--force" in ran.stderr and ran.stdout == ""
    assert cluster.json("status", agent=2)["state"] == "active"
    ran = cluster.cli("-o", "json", "drain", "--force", "--timeout", "40", agent=2)
    assert ran.code == 0, ran
    events = [json.loads(line) for line in ran.stdout.splitlines()]
    assert events[-1]["event"] == "complete" and events[-1]["replicas"] == 0
    assert cluster.json("status", agent=2)["replicas"] == 0
    assert cluster.ok("query", "g1", "get") == "7\n"  # the data stayed


# --------------------------------------------------------------------------
# demo


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def test_demo_comes_up_serves_and_cleans_up(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "raftfleet_cli.main", "demo", "--agents", "3", "--groups", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    pids: list[int] = []
    err = ""
    try:
        assert proc.stdout is not None
        out_lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            out_lines.append(line)
            if line.startswith("export RAFTFLEET_ADDR="):
                break
        out = "".join(out_lines)
        assert out_lines and out_lines[-1].startswith("export RAFTFLEET_ADDR=unix://"), out
        addr = out_lines[-1].strip().split("=", 1)[1]
        pids = [int(p) for p in re.findall(r"\b(\d{2,})\s*$", out, re.M)]
        assert len(pids) == 3, out
        assert "demo-1" in out and "demo-2" in out
        env = {"RAFTFLEET_ADDR": addr}
        assert run("command", "demo-1", "inc", env=env).stdout == "0\n"
        assert run("query", "demo-1", "get", env=env).stdout == "1\n"
        assert len(json.loads(run("-o", "json", "nodes", env=env).stdout)["nodes"]) == 3
        demo_dir = Path(addr.removeprefix("unix://")).parents[1]
        assert demo_dir.name.startswith("raftfleet-demo-") and demo_dir.is_dir()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in pids:  # never leave an agent behind, whatever failed
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    assert not [p for p in pids if _alive(p)], "demo agents survived"
    assert not demo_dir.exists()
    assert "stopped 3 agents" in err
