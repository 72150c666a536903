"""PeerDirectory: which address wins, what survives a restart, and that gossip settles."""

from __future__ import annotations

import json
from pathlib import Path

from raftfleet_agent.agent import Agent
from raftfleet_agent.config import load_config
from raftfleet_agent.peers import PeerDirectory

OLD, NEW = "127.0.0.13:7001", "127.0.0.13:7002"


def test_gossip_takes_only_a_later_epoch_and_the_agent_itself_always_wins(tmp_path: Path) -> None:
    d = PeerDirectory(str(tmp_path / "peers.json"))
    assert d.learn("a3", OLD, epoch=5)  # unknown: taken from anyone
    assert not d.learn("a3", NEW, epoch=5)  # the same epoch, second hand: no
    assert not d.learn("a3", NEW)  # no epoch (an agent from before epochs): no
    assert d.addresses["a3"] == OLD
    assert d.learn("a3", NEW, epoch=6)
    assert not d.learn("a3", OLD, epoch=5)  # the stale one never comes back
    assert d.learn("a3", OLD, epoch=1, first_hand=True)  # what a3 says of itself
    assert (d.addresses["a3"], d.epochs["a3"]) == (OLD, 1)
    assert d.learn("a3", NEW, first_hand=True)  # reached there: taken, epoch kept
    assert (d.addresses["a3"], d.epochs["a3"]) == (NEW, 1)
    assert not d.learn("a3", "no port here", epoch=99)


def test_the_directory_and_the_own_epoch_survive_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "peers.json")
    d = PeerDirectory(path)
    assert d.new_own_epoch(1_000) == 1_000
    d.learn("a2", OLD, epoch=7)
    again = PeerDirectory(path)
    assert (again.addresses, again.epochs) == ({"a2": OLD}, {"a2": 7})
    # A clock that went back must not make our address lose to our old one.
    assert again.new_own_epoch(500) == 1_001
    again.forget("a2")
    assert PeerDirectory(path).epochs == {}


def test_a_peers_file_from_before_epochs_is_read(tmp_path: Path) -> None:
    path = tmp_path / "peers.json"
    path.write_text(json.dumps({"peers": {"a2": OLD}}))
    d = PeerDirectory(str(path))
    assert d.addresses == {"a2": OLD} and d.epochs == {}
    assert d.learn("a2", NEW, epoch=1)  # any announced epoch beats an unknown one


def test_gossip_of_a_stale_and_a_fresh_address_settles_on_the_fresh_one() -> None:
    # a3 restarted at NEW; two of the others still hold OLD from before. Every
    # change makes its holder tell everyone (as the agent's hello does).
    dirs = {n: PeerDirectory(None) for n in ("a1", "a2", "a4", "a5")}
    for n in ("a1", "a2"):
        dirs[n].learn("a3", OLD, epoch=10)
    for n in ("a4", "a5"):
        dirs[n].learn("a3", NEW, epoch=20, first_hand=True)
    queue = [(n, m) for n in dirs for m in dirs if n != m]
    changes = 0
    while queue:
        frm, to = queue.pop(0)
        src = dirs[frm]
        if dirs[to].learn("a3", src.addresses["a3"], epoch=src.epochs["a3"]):
            changes += 1
            queue += [(to, m) for m in dirs if m != to]
        assert changes < 10, "the directories keep changing each other"
    assert {d.addresses["a3"] for d in dirs.values()} == {NEW}
    assert changes == 2


async def test_an_agent_dials_the_address_it_kept_not_a_refused_one(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"0123456789abcdef-cluster\n")
    cli = {"listen": "127.0.0.1:7000", "cluster_secret_file": str(secret), "name": "a1"}
    config = load_config(
        {**cli, "data_dir": str(tmp_path / "data")},
        {},
        None,
        default_config_path="/nonexistent/raftfleet/agent.toml",
        hostname="host1.example.com",
    )
    agent = Agent(config)
    try:
        agent.learn_peer("a3", NEW, epoch=20, first_hand=True)
        # Gossip of its old address, while a3 is not connected: refused, and
        # the transport keeps dialing the address we kept.
        agent.learn_peer("a3", OLD, epoch=10)
        assert agent.peers.addresses["a3"] == NEW
        assert agent.transport._peer("a3").address == ("127.0.0.13", 7002)
    finally:
        agent.store.close()
