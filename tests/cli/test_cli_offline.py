"""The CLI without real agents: parsing, views, exit codes, and every op against a fake agent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import trio
from conftest import FakeAgent, cli_env, run, run_process

from raftfleet_agent.control.protocol import ControlError
from raftfleet_cli import views
from raftfleet_cli.main import parse_value

# --------------------------------------------------------------------------
# Arguments and views


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("inc", "inc"),
        ('["set", 5]', ["set", 5]),
        ("5", 5),
        ("-1.5", -1.5),
        ('"x"', "x"),
        ('{"a": 1}', {"a": 1}),
        ("true", True),
        ("null", None),
        ("NaN", "NaN"),
        ("hello world", "hello world"),
        ("", ""),
    ],
)
def test_parse_value(text: str, value: object) -> None:
    assert parse_value(text) == value


@pytest.mark.parametrize("text", ["[1,", "{a: 1}", '"open', "  [", '{"a": }'])
def test_json_looking_garbage_is_refused(text: str) -> None:
    with pytest.raises(click.BadParameter, match="looks like JSON but is not valid JSON"):
        parse_value(text)


def test_group_status_view_fills_missing_fields() -> None:
    raw = {
        "name": "g1",
        "type": "counter",
        "leader": "a1",
        "term": 2,
        "commit_index": 7,
        "applied_index": 7,
        "members": [
            {"agent": "a1", "replica": "a1/1", "role": "leader", "match_index": 7},
            {"replica": "a2/4", "role": "learner", "match_index": None},
        ],
    }
    view = views.group_status_view(raw)
    assert list(view) == list(views.GROUP_STATUS_FIELDS)
    assert view["members"] == [
        {"agent": "a1", "zone": None, "role": "leader", "match_index": 7, "reachable": None},
        {"agent": "a2", "zone": None, "role": "learner", "match_index": None, "reachable": None},
    ]  # an agent that does not say whether it reaches them: unknown
    assert view["desired"] is None and view["converged"] is None
    assert view["lost"] == [] and view["majority_lost"] is False and view["replicas"] == []
    view = views.group_status_view({**raw, "desired": ["a1", "a2"]})
    assert view["converged"] is False  # a2 is still a learner


def test_group_status_view_of_a_leaderless_group() -> None:
    raw = {
        "name": "g1",
        "leader": None,
        "members": [{"agent": "a1", "role": "follower"}, {"agent": "a2", "role": "follower"}],
        "lost": ["a2"],
        "majority_lost": True,
        "replicas": [
            {
                "reported_by": "a1",
                "role": "pre_candidate",
                "term": 4,
                "leader": None,
                "quiescent": False,
                "last_term": 3,
                "last_index": "9",  # malformed: becomes null
                "commit_index": 8,
                "extra": "dropped",
            }
        ],
    }
    view = views.group_status_view(raw)
    assert view["lost"] == ["a2"] and view["majority_lost"] is True
    assert view["replicas"] == [
        {
            "agent": "a1",
            "role": "pre_candidate",
            "term": 4,
            "leader": None,
            "commit_index": 8,
            "last_index": None,
            "last_term": 3,
            "quiescent": False,
        }
    ]
    # An agent that does not say: unknown, not "fine".
    bare = views.group_status_view({"name": "g1", "leader": None})
    assert bare["lost"] is None and bare["majority_lost"] is None and bare["replicas"] == []


def test_nodes_and_groups_views_accept_lists_and_maps() -> None:
    by_name = {"b": {"zone": "z1", "state": "active", "replicas": [1, 2]}, "a": {}}
    nodes = views.nodes_view(by_name)["nodes"]
    assert [n["name"] for n in nodes] == ["a", "b"]
    assert nodes[1] == {
        "name": "b", "zone": "z1", "state": "active", "address": None,
        "reachable": None, "replicas": 2, "leaders": None, "down_s": None,
    }  # fmt: skip
    # A duration or nothing: never a bool, text or a negative number.
    odd = [{"name": n, "down_s": v} for n, v in (("a", True), ("b", "1"), ("c", -1), ("d", 7.5))]
    assert [n["down_s"] for n in views.nodes_view(odd)["nodes"]] == [None, None, None, 7.5]
    groups = views.group_list_view(["g2", {"name": "g1", "leader": "a1/3", "replicas": 3}])
    assert groups == {
        "groups": [
            {"name": "g1", "replicas": 3, "type": None, "leader": "a1"},
            {"name": "g2", "replicas": None, "type": None, "leader": None},
        ]
    }
    assert views.dumps({"b": b"\xff", "t": (1,)}) == '{"b": "base64:/w==", "t": [1]}'


# --------------------------------------------------------------------------
# Usage errors and unreachable agents (nothing is sent)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["frobnicate"], "No such command"),
        (["group", "create"], "Missing argument 'NAME'"),
        (["-o", "xml", "status"], "'xml' is not one of"),
        (["--addr", "agent1:7000", "status"], "did you mean tcp://agent1:7000"),
        (["--addr", "http://x", "status"], "unsupported address scheme"),
        (["group", "create", "bad name!"], "name"),
        (["group", "create", "g1", "--replicas", "9"], "9 is not in the range"),
        (["group", "create", "g1", "--type", "no such type!"], "type"),
        (["join", "nowhere"], "is not HOST:PORT"),
        (["command", "g1", "[1,"], "looks like JSON"),
        (["command", "g1", "inc", "--timeout", "0"], "--timeout"),
        (["group", "recover", "g1"], "pass --force"),
        (["group", "recover", "g1", "--force"], "pass --yes"),
        (["group", "delete", "g1"], "pass --yes"),
        (["completion", "tcsh"], "'tcsh' is not one of"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    # The socket does not exist: a usage error must be found before connecting.
    ran = run("--addr", f"unix://{tmp_path}/agent.sock", *args)
    assert ran.code == 2, ran
    assert message in ran.stderr, ran
    assert ran.stdout == ""


def test_missing_agent_exits_3_and_says_what_to_do(tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    ran = run("--addr", f"unix://{sock}", "status")
    assert ran.code == 3, ran
    assert ran.stderr.strip() == (
        f"raftfleet: cannot reach agent at unix://{sock}: no such file "
        "(is raftfleet-agent running? set --addr or RAFTFLEET_ADDR)"
    )
    # The environment and the per-user default socket are used the same way.
    assert run("status", env={"RAFTFLEET_ADDR": f"unix://{sock}"}).stderr == ran.stderr
    default = run("status", env={"XDG_RUNTIME_DIR": str(tmp_path)})
    if os.geteuid() != 0:  # root looks in /run/raftfleet
        assert f"unix://{tmp_path}/raftfleet/agent.sock" in default.stderr
    assert default.code == 3


def test_tcp_without_token_exits_3() -> None:
    ran = run("--addr", "tcp://127.0.0.1:9", "status")
    assert ran.code == 3, ran
    assert "requires a token (set --token-file or RAFTFLEET_TOKEN_FILE)" in ran.stderr


def test_unreadable_token_file_is_a_usage_error(tmp_path: Path) -> None:
    ran = run("--addr", "tcp://127.0.0.1:9", "--token-file", str(tmp_path / "nope"), "status")
    assert ran.code == 2, ran
    assert "--token-file" in ran.stderr and "nope" in ran.stderr


# --------------------------------------------------------------------------
# Ops against a fake agent (including those the real agent may not have yet)

NODES = {
    "nodes": [
        {"name": "a2", "zone": "z2", "state": "draining", "address": "10.0.0.2:7100",
         "reachable": False, "replicas": 1, "leaders": 0, "down_s": 95.5, "extra": 1},
        {"name": "a1", "zone": "z1", "state": "active", "address": "10.0.0.1:7100",
         "reachable": True, "replicas": 3, "leaders": 2, "down_s": None},
    ]
}  # fmt: skip


def test_nodes_in_every_mode(fake_agent: FakeAgent) -> None:
    fake_agent.answers["nodes"] = NODES
    a = ("--addr", fake_agent.addr)
    doc = json.loads(run(*a, "-o", "json", "nodes").stdout)
    expected = [{k: v for k, v in n.items() if k != "extra"} for n in NODES["nodes"][::-1]]
    assert doc == {"nodes": expected}
    plain = run(*a, "-o", "plain", "nodes").stdout.splitlines()
    assert plain == [
        "a1\tz1\tactive\t10.0.0.1:7100\ttrue\t3\t2\t",
        "a2\tz2\tdraining\t10.0.0.2:7100\tfalse\t1\t0\t95.5",
    ]
    table = run(*a, "nodes").stdout
    assert "NAME" in table and "REACHABLE" in table and "draining" in table and "\x1b" not in table


def test_nodes_from_a_last_copy_say_so(fake_agent: FakeAgent) -> None:
    why = "cluster state unreachable: no answer in 1 s; agents as last seen here"
    fake_agent.answers["nodes"] = {
        "nodes": [{"name": "a1", "zone": "z1", "state": "active", "address": "10.0.0.1:7100",
                   "reachable": True, "replicas": 3, "leaders": 2}],
        "state_error": why,
    }  # fmt: skip
    a = ("--addr", fake_agent.addr)
    ran = run(*a, "nodes")
    assert ran.code == 0 and "a1" in ran.stdout and why in ran.stderr, ran
    doc = json.loads(run(*a, "-o", "json", "nodes").stdout)
    assert doc["state_error"] == why and doc["nodes"][0]["name"] == "a1"


def test_group_list_from_a_last_copy_says_so(fake_agent: FakeAgent) -> None:
    why = "cluster state unreachable: agent a1 is not connected; groups as last seen here"
    fake_agent.answers["group_list"] = {
        "groups": [{"name": "g1", "replicas": 3, "type": "kv", "leader": None}],
        "state_error": why,
    }
    a = ("--addr", fake_agent.addr)
    ran = run(*a, "group", "list")
    assert ran.code == 0 and "g1" in ran.stdout and why in ran.stderr, ran
    doc = json.loads(run(*a, "-o", "json", "group", "list").stdout)
    assert doc["state_error"] == why and doc["groups"][0]["name"] == "g1"
    plain = run(*a, "-o", "plain", "group", "list")
    assert plain.stdout == "g1\tkv\t3\t\n" and why in plain.stderr  # rows stay machine-readable


def test_group_status_from_a_last_copy_says_so(fake_agent: FakeAgent) -> None:
    why = "cluster state unreachable: no answer in 1 s; placement and zones as last seen here"
    fake_agent.answers["group_status"] = {
        "name": "g1", "type": "kv", "leader": "a2", "term": 3, "commit_index": 9,
        "members": [{"agent": "a2", "role": "leader", "match_index": 9, "reachable": True},
                    {"agent": "a3", "role": "follower", "match_index": 4, "reachable": False}],
        "desired": None, "converged": None, "lost": ["a3"], "majority_lost": False,
        "replicas": [], "state_error": why,
    }  # fmt: skip
    a = ("--addr", fake_agent.addr)
    ran = run(*a, "group", "status", "g1")
    assert ran.code == 0 and why in ran.stderr, ran
    assert "lost" in ran.stdout and "REACHABLE" in ran.stdout
    doc = json.loads(run(*a, "-o", "json", "group", "status", "g1").stdout)
    assert doc["state_error"] == why and doc["converged"] is None
    assert [m["reachable"] for m in doc["members"]] == [True, False]


def test_nodes_falls_back_to_status_on_an_older_agent(fake_agent: FakeAgent) -> None:
    fake_agent.answers["status"] = {
        "name": "a1", "zone": None, "state": "inactive", "address": "10.0.0.1:7100",
        "replicas": 0, "leaders": 0,
        "cluster": {
            "peers": {
                "a2": {"address": "10.0.0.2:7100", "reachable": True},
                "a3": {"address": "10.0.0.3:7100", "reachable": False},
            },
            "unreachable_s": {"a3": 42.0},
        },
    }  # fmt: skip
    doc = json.loads(run("--addr", fake_agent.addr, "-o", "json", "nodes").stdout)
    assert [n["name"] for n in doc["nodes"]] == ["a1", "a2", "a3"]
    assert doc["nodes"][1]["reachable"] is True and doc["nodes"][1]["zone"] is None
    assert [n["down_s"] for n in doc["nodes"]] == [None, None, 42.0]
    assert fake_agent.ops() == ["nodes", "status"]


def test_activate_deactivate_group_list(fake_agent: FakeAgent) -> None:
    a = ("--addr", fake_agent.addr)
    fake_agent.answers["activate"] = lambda args, ev: {"name": "a1", "zone": args["zone"]}
    fake_agent.answers["deactivate"] = {"name": "a1", "state": "draining"}
    fake_agent.answers["group_list"] = {
        "groups": [{"name": "g1", "replicas": 3, "type": "counter", "leader": "a1", "x": 1}]
    }
    ran = run(*a, "activate", "zone-b")
    assert ran.code == 0 and "activated in zone zone-b" in ran.stdout, ran
    assert json.loads(run(*a, "-o", "json", "activate", "z").stdout) == {
        "name": "a1", "zone": "z", "state": None,
    }  # fmt: skip
    assert run(*a, "-o", "plain", "deactivate").stdout == "a1\tdraining\n"
    assert json.loads(run(*a, "-o", "json", "group", "list").stdout) == {
        "groups": [{"name": "g1", "replicas": 3, "type": "counter", "leader": "a1"}]
    }
    assert run(*a, "-o", "plain", "group", "list").stdout == "g1\tcounter\t3\ta1\n"
    assert run(*a, "activate", "bad zone!").code == 2  # checked before sending
    assert ("activate", {"zone": "bad zone!"}) not in fake_agent.calls


def test_group_recover_needs_force_and_yes(fake_agent: FakeAgent) -> None:
    a = ("--addr", fake_agent.addr)
    fake_agent.answers["group_recover"] = {"name": "g1", "leader": "a2", "members": ["a2"]}
    assert run(*a, "group", "recover", "g1").code == 2
    assert run(*a, "group", "recover", "g1", "--force").code == 2
    assert fake_agent.calls == []
    ran = run(*a, "-o", "json", "group", "recover", "g1", "--force", "--yes")
    assert ran.code == 0, ran
    assert json.loads(ran.stdout) == {"name": "g1", "leader": "a2", "members": ["a2"]}
    assert fake_agent.calls == [("group_recover", {"name": "g1", "force": True})]


def test_agent_errors_map_to_exit_codes(fake_agent: FakeAgent) -> None:
    a = ("--addr", fake_agent.addr)
    ran = run(*a, "group", "list")  # the fake does not know group_list
    assert ran.code == 1 and "does not support this yet" in ran.stderr, ran
    fake_agent.answers["command"] = ControlError("timeout", "command on g1 timed out")
    ran = run(*a, "command", "g1", "inc")
    assert ran.code == 4, ran
    assert "may still complete on the agent" in ran.stderr
    fake_agent.answers["query"] = ControlError("unknown_group", "no group named g9")
    ran = run(*a, "query", "g9", "get")
    assert ran.code == 1 and "no group named g9" in ran.stderr and "group list" in ran.stderr


def test_replies_print_as_json(fake_agent: FakeAgent) -> None:
    a = ("--addr", fake_agent.addr)
    fake_agent.answers["command"] = lambda args, ev: {
        "group": args["group"], "reply": {"got": args["arg"]}, "leader": "a1",
    }  # fmt: skip
    assert run(*a, "command", "g1", '["set", 5]').stdout == '{"got": ["set", 5]}\n'
    assert run(*a, "-o", "plain", "command", "g1", "inc").stdout == '{"got": "inc"}\n'
    doc = json.loads(run(*a, "-o", "json", "command", "g1", "5").stdout)
    assert doc == {"group": "g1", "reply": {"got": 5}, "leader": "a1"}
    _, args = fake_agent.calls[-1]
    assert args["timeout_s"] == 5.0 and args["retries"] == 3


# --------------------------------------------------------------------------
# Drain


def drain_agent(fake: FakeAgent, counts: list[tuple[int, int]], *, pause_s: float = 0.0) -> None:
    state = {"now": "active"}

    def deactivate(args: dict, ev: Any) -> dict:
        state["now"] = "draining"
        return {"name": "a1", "state": "draining"}

    async def watch(args: dict, events: Any) -> dict:
        for replicas, leaders in counts:
            await events.send({"replicas": replicas, "leaders": leaders, "moves_in_flight": 1})
            await trio.sleep(pause_s)
        if counts[-1] == (0, 0):
            return {"event": "complete"}
        await trio.sleep(args["timeout_s"] or 60)
        replicas, leaders = counts[-1]
        left = {"replicas": replicas, "leaders": leaders, "groups_left": ["g1", "g7"]}
        raise ControlError("timeout", "drain not finished", left)

    fake.answers["status"] = lambda args, ev: {"name": "a1", "state": state["now"]}
    fake.answers["deactivate"] = deactivate
    fake.answers["drain_watch"] = watch


def test_drain_json_events_end_in_complete(fake_agent: FakeAgent) -> None:
    drain_agent(fake_agent, [(3, 1), (2, 1), (1, 0), (0, 0)])
    ran = run("--addr", fake_agent.addr, "-o", "json", "drain")
    assert ran.code == 0, ran
    events = [json.loads(line) for line in ran.stdout.splitlines()]
    assert [(e["event"], e["replicas"], e["leaders"]) for e in events] == [
        ("progress", 3, 1), ("progress", 2, 1), ("progress", 1, 0), ("progress", 0, 0),
        ("complete", 0, 0),
    ]  # fmt: skip
    assert all("elapsed_s" in e and e["moves_in_flight"] == 1 for e in events)
    assert fake_agent.ops() == ["status", "deactivate", "drain_watch"]
    # Already draining: no second deactivate.
    ran = run("--addr", fake_agent.addr, "-o", "json", "drain")
    assert ran.code == 0 and fake_agent.ops()[3:] == ["status", "drain_watch"]


def test_drain_off_a_terminal_prints_timestamped_lines(fake_agent: FakeAgent) -> None:
    drain_agent(fake_agent, [(2, 1), (2, 1), (0, 0)])
    ran = run("--addr", fake_agent.addr, "drain")
    assert ran.code == 0, ran
    lines = ran.stderr.splitlines()
    assert len(lines) == 3, ran  # the repeated (2, 1) is shown once
    assert lines[0].startswith("20") and "drain a1: 2 replicas and 1 leaderships left" in lines[0]
    assert "drained" in lines[-1]
    assert ran.stdout == ""


def test_drain_timeout_exits_4_and_says_it_continues(fake_agent: FakeAgent) -> None:
    drain_agent(fake_agent, [(2, 1)])
    ran = run("--addr", fake_agent.addr, "-o", "json", "drain", "--timeout", "0.5")
    assert ran.code == 4, ran
    last = json.loads(ran.stdout.splitlines()[-1])
    assert last["event"] == "timeout" and last["replicas"] == 2
    assert last["groups_left"] == ["g1", "g7"]  # what is left is named
    assert "continues on the agent" in ran.stderr
    assert "2 replicas and 1 leaderships (groups g1, g7)" in ran.stderr


def test_drain_refused_for_too_few_agents_says_how_to_go_on(fake_agent: FakeAgent) -> None:
    from raftfleet_agent.control.protocol import ControlError

    drain_agent(fake_agent, [(2, 1), (0, 0)])

    def deactivate(args: dict, ev: Any) -> dict:
        if not args["force"]:
            raise ControlError("too_few_agents", "taking 'a1' out leaves 2 active agent(s)")
        fake_agent.answers["status"] = {"name": "a1", "state": "draining"}
        return {"name": "a1", "state": "draining"}

    fake_agent.answers["deactivate"] = deactivate
    ran = run("--addr", fake_agent.addr, "-o", "json", "drain")
    assert ran.code == 1 and ran.stdout == "", ran
    assert "leaves 2 active agent(s)" in ran.stderr and "--force" in ran.stderr
    assert fake_agent.ops() == ["status", "deactivate"]  # nothing watched
    ran = run("--addr", fake_agent.addr, "-o", "json", "drain", "--force")
    assert ran.code == 0, ran
    assert fake_agent.calls[3] == ("deactivate", {"force": True})
    assert json.loads(ran.stdout.splitlines()[-1])["event"] == "complete"


def test_drain_detach_returns_after_deactivate(fake_agent: FakeAgent) -> None:
    drain_agent(fake_agent, [(2, 1)])
    ran = run("--addr", fake_agent.addr, "-o", "json", "drain", "--detach")
    assert ran.code == 0, ran
    assert json.loads(ran.stdout) == {"event": "deactivated", "agent": "a1"}
    assert fake_agent.ops() == ["status", "deactivate"]


def test_drain_ctrl_c_exits_130_and_the_drain_continues(fake_agent: FakeAgent) -> None:
    drain_agent(fake_agent, [(2, 1)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "raftfleet_cli.main", "--addr", fake_agent.addr, "-o", "json",
         "drain"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["replicas"] == 2
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert json.loads(out.splitlines()[-1])["event"] == "interrupted"
    assert "keeps draining on the agent" in err


def test_drain_on_a_terminal_shows_progress_bars(fake_agent: FakeAgent) -> None:
    import pty

    drain_agent(fake_agent, [(4, 2), (3, 2), (2, 1), (1, 0), (0, 0)], pause_s=0.15)
    master, slave = pty.openpty()
    env = cli_env(TERM="xterm-256color", COLUMNS="100")
    proc = subprocess.Popen(
        [sys.executable, "-m", "raftfleet_cli.main", "--addr", fake_agent.addr, "drain"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=env,
    )  # fmt: skip
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        proc.wait(20)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    screen = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, screen
    assert "replicas moved" in screen and "leaders moved" in screen
    assert "━" in screen  # a bar
    assert "4/4" in screen and "0 replicas left" in screen
    assert "a1 drained in" in screen


# --------------------------------------------------------------------------
# Start-up: never trio, rich only for tables


def _modules_after(args: list[str], env: dict[str, str]) -> set[str]:
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['raftfleet', *{args!r}]\n"
        "try:\n"
        "    runpy.run_module('raftfleet_cli.main', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "sys.stderr.write(repr(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    return set(eval(proc.stderr.strip().splitlines()[-1]))


def test_help_completion_and_json_import_neither_trio_nor_rich(tmp_path: Path) -> None:
    env = cli_env(RAFTFLEET_ADDR=f"unix://{tmp_path}/none.sock")
    for args in (["--help"], ["completion", "bash"], ["-o", "json", "status"], ["group", "list"]):
        loaded = _modules_after(args, env)
        assert "trio" not in loaded, args
        assert "rich" not in loaded, args
    completing = cli_env(
        _RAFTFLEET_COMPLETE="bash_complete", COMP_WORDS="raftfleet gr", COMP_CWORD="1"
    )
    assert not {"trio", "rich"} & _modules_after([], completing)


def test_help_starts_fast() -> None:
    ran = run_process("--help")
    assert ran.code == 0 and "Usage: raftfleet" in ran.stdout
    for command in ("join", "activate", "deactivate", "drain", "status", "nodes", "group",
                    "command", "query", "leader", "completion", "demo"):  # fmt: skip
        assert f"  {command} " in ran.stdout


def test_forget_in_every_mode_and_its_refusals(fake_agent: FakeAgent) -> None:
    from raftfleet_agent.control.protocol import ControlError

    def forget(args: dict, ev: Any) -> dict:
        if args["agent"] == "a2":
            raise ControlError("invalid_argument", "a2 is reachable from this agent: drain it")
        if not args["force"]:
            raise ControlError("too_few_agents", "purging 'a3' leaves 2 active agent(s)")
        return {"name": "a3", "state": "purged", "released": ["old"]}

    fake_agent.answers["forget"] = forget
    a = ("--addr", fake_agent.addr)
    ran = run(*a, "forget", "a2")
    assert ran.code == 1 and "drain it" in ran.stderr, ran
    ran = run(*a, "forget", "a3")
    assert ran.code == 1 and "--force" in ran.stderr, ran
    ran = run(*a, "-o", "json", "forget", "a3", "--force")
    assert ran.code == 0, ran
    assert json.loads(ran.stdout) == {"name": "a3", "state": "purged", "released": ["old"]}
    assert fake_agent.calls[-1] == ("forget", {"agent": "a3", "force": True})
    assert run(*a, "-o", "plain", "forget", "a3", "--force").stdout == 'a3\tpurged\t["old"]\n'
    assert "forgot a3" in run(*a, "forget", "a3", "--force").stdout
    ran = run(*a, "forget", "bad/name")  # checked before anything is sent
    assert ran.code == 2 and "agent" in ran.stderr and len(fake_agent.calls) == 5, ran


def test_status_table_names_held_purges_and_the_command_level(fake_agent: FakeAgent) -> None:
    status = {
        "name": "a1", "zone": "z1", "state": "active", "address": "10.0.0.1:7100",
        "replicas": 3, "leaders": 1,
        "cluster": {"id": "c1", "level": 2, "purges_held": ["a3"], "peers": {}},
    }  # fmt: skip
    fake_agent.answers["status"] = status
    table = run("--addr", fake_agent.addr, "status").stdout
    assert "purges held" in table and "a3 (no room" in table and "command level" in table
    # Agents that say why: one held for room, one that others still reach.
    status["cluster"] = {
        "id": "c1", "level": 2, "purges_held": ["a3", "a4"], "peers": {},
        "purges_held_why": {"a3": "no room: activate another agent",
                            "a4": "a2 still reach it: a network cut, not a death"},
    }  # fmt: skip
    table = run("--addr", fake_agent.addr, "status", env={"COLUMNS": "200"}).stdout
    assert "a3 (no room: activate another agent); a4 (a2 still reach it: a network cut" in table
    status["cluster"] = {"id": "c1", "level": 2, "purges_held": [], "peers": {}}
    assert "purges held" not in run("--addr", fake_agent.addr, "status").stdout


def test_global_options_also_follow_the_command(fake_agent: FakeAgent) -> None:
    fake_agent.answers["group_list"] = {
        "groups": [{"name": "g1", "replicas": 3, "type": "counter", "leader": "a1"}]
    }
    fake_agent.answers["nodes"] = NODES
    a = fake_agent.addr
    doc = json.loads(run("group", "list", "-o", "json", "--addr", a).stdout)
    assert doc == {"groups": [{"name": "g1", "replicas": 3, "type": "counter", "leader": "a1"}]}
    # The later one wins: after the command over before it, and over the environment.
    assert run("-o", "json", "--addr", a, "group", "list", "-o", "plain").stdout == (
        "g1\tcounter\t3\ta1\n"
    )
    ran = run("nodes", "--output", "plain", env={"RAFTFLEET_OUTPUT": "json", "RAFTFLEET_ADDR": a})
    assert ran.code == 0 and ran.stdout.startswith("a1\tz1\tactive\t"), ran
    ran = run("--addr", "unix:///nonexistent/agent.sock", "nodes", "--addr", a, "--no-color")
    assert ran.code == 0 and "REACHABLE" in ran.stdout and "\x1b" not in ran.stdout, ran
    ran = run("nodes", "--addr", "unix:///nonexistent/agent.sock")
    assert ran.code == 3, ran
    assert run("completion", "bash", "-o", "json").code == 2  # prints a script: no such option
