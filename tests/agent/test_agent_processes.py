"""The agent daemon as real processes on loopback addresses (issue: the agent daemon)."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import struct
import time
from pathlib import Path

import msgpack
import pytest

from raftfleet_cli.client import ControlError
from tests.procs import AgentProc, agents, clean_env, connected_to_all, free_port, wait_for

pytestmark = pytest.mark.slow


def _create(a: AgentProc, group: str, names: list[str]) -> dict:
    return a.call("group_create", name=group, type="counter", agents=names, timeout=20)  # type: ignore[return-value]


def _cmd(a: AgentProc, group: str, arg: object, **kw: object) -> object:
    return a.call("command", group=group, arg=arg, timeout=15, **kw)["reply"]  # type: ignore[index]


def _get(a: AgentProc, group: str) -> object:
    return a.call("query", group=group, arg="get", timeout=15)["reply"]  # type: ignore[index]


def _leader(a: AgentProc, group: str) -> str:
    return wait_for(lambda: a.call("leader", group=group)["leader"], 10, f"a leader of {group}")  # type: ignore[index,return-value]


def test_seed_example_through_every_agent(tmp_path: Path) -> None:
    with agents(tmp_path, 3) as (a1, a2, a3):
        wait_for(lambda: connected_to_all([a1, a2, a3]), 15, "agents to connect")
        created = _create(a1, "g1", ["a1", "a2", "a3"])
        assert created["leader"] == "a1"
        assert _get(a1, "g1") == 0
        assert _cmd(a2, "g1", "inc") == 0
        assert _get(a3, "g1") == 1
        assert _cmd(a3, "g1", ["set", 5]) == 1
        assert _get(a2, "g1") == 5
        # A retried request id is applied once and answers the first reply.
        rid = ["client-x", 1]
        assert _cmd(a2, "g1", "inc", request_id=rid) == 5
        assert _cmd(a3, "g1", "inc", request_id=rid) == 5
        assert _get(a1, "g1") == 6
        # Errors are machine-readable and leave the agents serving.
        with pytest.raises(ControlError) as e:
            _cmd(a1, "g1", "bogus")
        assert e.value.code == "invalid_argument"
        # Forwarded by a follower's agent, the leader's verdict comes back as is.
        with pytest.raises(ControlError) as e:
            _cmd(a2, "g1", "bogus")
        assert e.value.code == "invalid_argument"
        answered = a3.call("command", group="g1", arg="inc", timeout=15)
        assert answered == {"group": "g1", "reply": 6, "leader": "a1"}
        assert a3.call("query", group="g1", arg="get")["reply"] == 7  # type: ignore[index]
        with pytest.raises(ControlError) as e:
            _cmd(a1, "nope", "inc", retries=0)
        assert e.value.code == "unknown_group"
        st = a2.call("group_status", name="g1")
        assert st["leader"] == "a1" and {m["agent"] for m in st["members"]} == {"a1", "a2", "a3"}  # type: ignore[index]


def test_leader_killed_then_restarted_catches_up(tmp_path: Path) -> None:
    with agents(tmp_path, 3) as procs:
        a1, a2, _a3 = procs
        wait_for(lambda: connected_to_all(procs), 15, "agents to connect")
        _create(a1, "g1", ["a1", "a2", "a3"])
        for _ in range(5):
            _cmd(a2, "g1", "inc")
        leader = next(p for p in procs if p.name == _leader(a2, "g1"))
        leader.kill()
        t0 = time.monotonic()
        survivor = next(p for p in procs if p is not leader)

        def inc_works() -> bool:
            return _cmd(survivor, "g1", "inc", retries=0, timeout_s=0.5) == 5

        wait_for(inc_works, 10, "a command to succeed after the leader died")
        failover_s = time.monotonic() - t0
        assert failover_s < 3.0, f"failover took {failover_s:.2f} s"
        leader.start()

        def local_value() -> object:
            # A stale query reads the restarted agent's own replica, not the leader's.
            return leader.call("query", group="g1", arg="get", stale=True)["reply"]

        wait_for(lambda: local_value() == 6, 10, "the restarted replica to catch up")


def test_acknowledged_commands_survive_full_restart(tmp_path: Path) -> None:
    with agents(tmp_path, 3) as procs:
        wait_for(lambda: connected_to_all(procs), 15, "agents to connect")
        _create(procs[0], "g1", ["a1", "a2", "a3"])
        acked = [_cmd(procs[i % 3], "g1", "inc") for i in range(20)]
        assert acked == list(range(20))
        for p in procs:
            p.kill()
        for p in procs:
            p.start()
        # Elections after a full restart take a few election timeouts.
        wait_for(lambda: _get(procs[1], "g1") == 20, 15, "the group to serve reads again")
        assert _cmd(procs[2], "g1", "inc") == 20


def test_hostile_peer_connections_do_not_disturb(tmp_path: Path) -> None:
    with agents(tmp_path, 3) as procs:
        a1 = procs[0]
        wait_for(lambda: connected_to_all(procs), 15, "agents to connect")
        _create(a1, "g1", ["a1", "a2", "a3"])
        silent = socket.create_connection((a1.host, a1.port))
        half = socket.create_connection((a1.host, a1.port))
        half.sendall(struct.pack(">I", 100) + b"\x81")  # a frame that never completes
        for payload in (
            b"GET / HTTP/1.0\r\n\r\n",
            struct.pack(">I", 0x7FFFFFFF) + b"x",
            os.urandom(512),
        ):
            with socket.create_connection((a1.host, a1.port)) as s:
                s.sendall(payload)
        wrong = AgentProc("intruder", "127.0.0.19", tmp_path)
        wrong.secret_file = tmp_path / "wrong-secret"
        wrong.secret_file.write_bytes(b"not-the-cluster-secret-at-all!!")
        wrong.join = [a1.address]
        wrong.in_memory = True
        try:
            wrong.start()
            hello = msgpack.packb({"t": "hello", "version": 1, "cluster": None, "name": "x"})
            with socket.create_connection((a1.host, a1.port)) as s:
                s.sendall(struct.pack(">I", len(hello)) + hello)
            for i in range(10):
                assert _cmd(procs[i % 3], "g1", "inc") == i
            peers = a1.call("status")["cluster"]["peers"]
            assert "intruder" not in peers
        finally:
            wrong.stop()
            silent.close()
            half.close()


def test_sigterm_notifies_systemd_and_removes_socket(tmp_path: Path) -> None:
    notify_path = str(tmp_path / "notify.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(notify_path)
    rx.settimeout(20)
    a = AgentProc("solo", "127.0.0.18", tmp_path)
    try:
        a.start(env=clean_env(NOTIFY_SOCKET=notify_path))
        assert stat.S_IMODE(os.stat(a.sock).st_mode) == 0o660
        messages = [rx.recv(4096).decode()]
        assert "READY=1" in messages[0]
        a.call("group_create", name="solo-g", agents=["solo"], replicas=1)
        assert _cmd(a, "solo-g", "inc") == 0
        assert a.stop() == 0
        while not any("STOPPING=1" in m for m in messages):
            messages.append(rx.recv(4096).decode())
        ready_at = next(i for i, m in enumerate(messages) if "READY=1" in m)
        stopping_at = next(i for i, m in enumerate(messages) if "STOPPING=1" in m)
        assert ready_at < stopping_at
        assert not os.path.exists(a.sock)
    finally:
        a.stop()
        rx.close()


def test_bad_configuration_stops_at_once(tmp_path: Path) -> None:
    a = AgentProc("cfg", "127.0.0.17", tmp_path)
    a.secret_file = tmp_path / "missing-secret"
    a.start(wait=False)
    assert a.proc is not None
    assert a.proc.wait(20) == 2
    err = a.log().strip().splitlines()
    assert len(err) == 1 and "secret" in err[0]
    # Address in use: a second agent on the same listen address.
    b = AgentProc("busy", "127.0.0.17", tmp_path, in_memory=True)
    holder = socket.socket()
    holder.bind((b.host, b.port))
    holder.listen()
    try:
        b.start(wait=False)
        assert b.proc is not None and b.proc.wait(20) == 1
        assert "in use" in b.log()
    finally:
        holder.close()
        b.stop()


def test_data_dir_of_another_agent_is_refused(tmp_path: Path) -> None:
    a = AgentProc("owner", "127.0.0.16", tmp_path)
    a.start()
    a.stop()
    b = AgentProc("thief", "127.0.0.16", tmp_path)
    b.data_dir = a.data_dir
    b.start(wait=False)
    assert b.proc is not None and b.proc.wait(20) == 1
    assert "owner" in b.log()


def test_corrupt_store_stops_the_agent_and_keeps_the_file(tmp_path: Path) -> None:
    a = AgentProc("crash-dummy", "127.0.0.15", tmp_path)
    a.start()
    a.call("group_create", name="g", agents=["crash-dummy"], replicas=1)
    for _ in range(50):
        _cmd(a, "g", "inc")
    assert a.stop() == 0
    db = a.data_dir / "raftfleet.db"
    raw = bytearray(db.read_bytes())
    assert len(raw) > 3 * 4096
    for off in range(4096 + 100, len(raw) - 100, 4096):  # scribble over every page
        raw[off : off + 64] = b"\xff" * 64
    db.write_bytes(bytes(raw))
    damaged = db.read_bytes()
    a.start(wait=False)
    assert a.proc is not None and a.proc.wait(20) == 1
    assert str(db) in a.log()
    assert db.read_bytes() == damaged  # left untouched for the operator


def test_sighup_rereads_the_log_level(tmp_path: Path) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text('log_level = "info"\n')
    a = AgentProc("hup", "127.0.0.14", tmp_path, in_memory=True, extra_args=["--config", str(conf)])
    a.argv = lambda orig=a.argv: [x for x in orig() if x not in ("--log-level", "info")]  # type: ignore[method-assign]
    try:
        a.start()
        conf.write_text('log_level = "debug"\n')
        a.signal(signal.SIGHUP)
        wait_for(lambda: "log level is now debug" in a.log(), 10, "the reload")
        conf.write_text('log_level = "loud"\n')  # a broken value keeps the old level
        a.signal(signal.SIGHUP)
        wait_for(lambda: "keeping log level" in a.log(), 10, "the refused reload")
        assert a.ping()
    finally:
        a.stop()


def test_a_founder_asked_to_join_another_cluster_says_how(tmp_path: Path) -> None:
    """Started without a join address, an agent founds its own cluster at once;
    `raftfleet join` then cannot move it, and must say what will."""
    a = AgentProc("first", "127.0.0.36", tmp_path / "a")
    b = AgentProc("second", "127.0.0.37", tmp_path / "b")  # a second founder, a second cluster
    try:
        a.start()
        b.start()
        before = b.call("status")["cluster"]["id"]  # type: ignore[index]
        with pytest.raises(ControlError) as info:
            b.call("join", address=a.address)
        assert info.value.code == "invalid_argument", info.value
        text = str(info.value)
        assert f"already in cluster {before}" in text and f"--join {a.address}" in text
        assert b.call("status")["cluster"]["id"] == before  # type: ignore[index]
    finally:
        b.stop()
        a.stop()


def test_agents_restarted_at_new_addresses_settle_on_them(tmp_path: Path) -> None:
    # Every agent restarts on a new port: each one's peers.json still holds
    # the others' old addresses, and gossips them. They must settle on the
    # new ones. Without epochs on addresses the old and the new were passed
    # around for ever, each change making every agent greet all the others:
    # the loops stalled for seconds and memory grew without bound.
    with agents(tmp_path, 4, first_octet=41) as procs:
        wait_for(lambda: connected_to_all(procs), 15, "agents to connect")
        for p in procs:
            p.stop(timeout=10)
        for p in procs:
            p.port = free_port(p.host)
        for p in procs[1:]:
            p.join = [procs[0].address]
        for p in procs:
            p.start(wait=False)
        for p in procs:
            wait_for(p.ping, 20, f"{p.name} to answer")
        wait_for(lambda: connected_to_all(procs), 20, "agents to connect at their new addresses")
        current = {p.name: p.address for p in procs}

        def directories() -> list[dict[str, str]]:
            out = []
            for p in procs:
                with open(p.data_dir / "peers.json", encoding="utf-8") as f:
                    out.append(json.load(f)["peers"])
            return out

        def settled() -> bool:
            return all(
                d == {n: a for n, a in current.items() if n != p.name}
                for p, d in zip(procs, directories(), strict=True)
            )

        wait_for(settled, 20, "every agent to know every other's new address")
        before = [os.stat(p.data_dir / "peers.json").st_mtime_ns for p in procs]
        time.sleep(2.0)  # twenty ticks: a storm would rewrite the files many times
        assert [os.stat(p.data_dir / "peers.json").st_mtime_ns for p in procs] == before
        assert settled()
        for p in procs:
            assert "missed" not in p.log(), p.log()
