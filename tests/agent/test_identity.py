"""The agent's identity file: created once, checked on every start, written atomically."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from raftfleet_agent import identity as identity_mod
from raftfleet_agent.identity import (
    FILE_NAME,
    IdentityError,
    in_memory_identity,
    open_identity,
)


def tmp_files(data_dir) -> list[str]:
    return [n for n in os.listdir(data_dir) if ".tmp-" in n]


def test_first_start_creates_identity(tmp_path):
    data_dir = tmp_path / "data"
    before_us = time.time_ns() // 1000
    ident = open_identity(str(data_dir), "a1")
    assert (data_dir / FILE_NAME).exists()
    assert oct(data_dir.stat().st_mode & 0o777) == "0o700"
    assert oct((data_dir / FILE_NAME).stat().st_mode & 0o777) == "0o600"
    on_disk = json.loads((data_dir / FILE_NAME).read_text())
    assert on_disk["format_version"] == 1
    assert on_disk["agent_name"] == "a1"
    assert on_disk["cluster_id"] is None
    assert len(on_disk["node_id"]) == 32 and int(on_disk["node_id"], 16) >= 0
    assert on_disk["created_at"].endswith("+00:00")
    # The counter starts at the creation time in microseconds (see module doc).
    assert before_us <= on_disk["next_replica_n"] <= time.time_ns() // 1000
    assert ident.node_id == on_disk["node_id"]
    assert tmp_files(data_dir) == []


def test_restart_keeps_identity_and_counter(tmp_path):
    first = open_identity(str(tmp_path), "a1")
    n1 = first.next_replica_n()
    again = open_identity(str(tmp_path), "a1")
    assert again.identity.node_id == first.identity.node_id
    assert again.identity.created_at == first.identity.created_at
    n2 = again.next_replica_n()
    assert n2 == n1 + 1
    assert tmp_files(tmp_path) == []


def test_wiped_data_dir_gets_new_node_id_and_higher_numbers(tmp_path):
    old = open_identity(str(tmp_path / "d"), "a1")
    old_numbers = old.allocate_replica_ns(100)
    os.remove(tmp_path / "d" / FILE_NAME)
    new = open_identity(str(tmp_path / "d"), "a1")
    assert new.node_id != old.node_id
    assert new.next_replica_n() >= old_numbers.stop


def test_allocate_reserves_a_block_with_one_write(tmp_path, monkeypatch):
    ident = open_identity(str(tmp_path), "a1")
    writes = []
    real = identity_mod._write_atomic
    monkeypatch.setattr(identity_mod, "_write_atomic", lambda p, d: (writes.append(p), real(p, d)))
    block = ident.allocate_replica_ns(50)
    assert len(block) == 50 and len(writes) == 1
    assert open_identity(str(tmp_path), "a1").next_replica_n() == block.stop
    with pytest.raises(ValueError):
        ident.allocate_replica_ns(0)


def test_numbers_are_unique_across_threads(tmp_path):
    ident = open_identity(str(tmp_path), "a1")
    got: list[int] = []

    def worker():
        for _ in range(10):
            got.append(ident.next_replica_n())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 40


def test_wrong_name_is_refused(tmp_path):
    open_identity(str(tmp_path), "a1")
    with pytest.raises(IdentityError) as info:
        open_identity(str(tmp_path), "b2")
    assert str(info.value) == (
        f"data dir {tmp_path} belongs to agent 'a1', not 'b2'; "
        "start it with --name a1 or give 'b2' its own --data-dir"
    )


def test_cluster_id_is_recorded_once(tmp_path):
    ident = open_identity(str(tmp_path), "a1")
    ident.set_cluster_id("c-1")
    ident.set_cluster_id("c-1")  # same id again: fine
    with pytest.raises(IdentityError, match="belongs to cluster 'c-1', not 'c-2'"):
        ident.set_cluster_id("c-2")
    assert ident.cluster_id == "c-1"
    assert open_identity(str(tmp_path), "a1").cluster_id == "c-1"
    with pytest.raises(ValueError):
        ident.set_cluster_id("")


def test_wrong_cluster_is_refused(tmp_path):
    open_identity(str(tmp_path), "a1", cluster_id="c-1")
    before = (tmp_path / FILE_NAME).read_bytes()
    with pytest.raises(IdentityError) as info:
        open_identity(str(tmp_path), "a1", cluster_id="c-2")
    assert str(info.value).startswith(f"data dir {tmp_path} belongs to cluster 'c-1', not 'c-2'")
    assert (tmp_path / FILE_NAME).read_bytes() == before
    # Unknown cluster id (not yet joined): any recorded one is accepted.
    assert open_identity(str(tmp_path), "a1").cluster_id == "c-1"


def test_cluster_id_given_later_is_recorded(tmp_path):
    open_identity(str(tmp_path), "a1")
    assert open_identity(str(tmp_path), "a1", cluster_id="c-9").cluster_id == "c-9"
    assert json.loads((tmp_path / FILE_NAME).read_text())["cluster_id"] == "c-9"


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda raw: raw[: len(raw) // 2], "not JSON"),
        (lambda raw: b"\xff\xfe", "not JSON"),
        (lambda raw: b"[1, 2]", "not a JSON object"),
        (lambda raw: _edit(raw, node_id="xyz"), "bad node_id: 'xyz'"),
        (lambda raw: _edit(raw, next_replica_n=True), "bad next_replica_n: True"),
        (lambda raw: _edit(raw, agent_name=""), "bad agent_name: ''"),
        (lambda raw: _edit(raw, cluster_id=5), "bad cluster_id: 5"),
        (lambda raw: _edit(raw, extra=1), "unexpected keys ['extra']"),
        (lambda raw: _edit(raw, format_version=0), "bad format_version: 0"),
    ],
)
def test_corrupt_file_is_refused_and_left_untouched(tmp_path, mutate, why):
    open_identity(str(tmp_path), "a1")
    path = tmp_path / FILE_NAME
    damaged = mutate(path.read_bytes())
    path.write_bytes(damaged)
    with pytest.raises(IdentityError) as info:
        open_identity(str(tmp_path), "a1")
    message = str(info.value)
    assert message.startswith(f"identity file {path} is damaged (")
    assert why in message
    assert message.endswith("it was left unchanged")
    assert path.read_bytes() == damaged


def test_newer_format_asks_for_an_upgrade(tmp_path):
    open_identity(str(tmp_path), "a1")
    path = tmp_path / FILE_NAME
    path.write_bytes(_edit(path.read_bytes(), format_version=2))
    with pytest.raises(IdentityError, match="has format 2, newer than"):
        open_identity(str(tmp_path), "a1")


def test_non_empty_dir_without_identity_is_refused(tmp_path):
    (tmp_path / "log.sqlite").write_bytes(b"old data")
    (tmp_path / "lost+found").mkdir()
    with pytest.raises(
        IdentityError, match=r"has no identity.json but is not empty \(log.sqlite\)"
    ):
        open_identity(str(tmp_path), "a1")
    assert not (tmp_path / FILE_NAME).exists()


def test_stale_tmp_files_are_removed(tmp_path):
    open_identity(str(tmp_path), "a1")
    (tmp_path / f"{FILE_NAME}.tmp-123-abcd").write_bytes(b"half written")
    open_identity(str(tmp_path), "a1")
    assert tmp_files(tmp_path) == []


def test_failed_write_leaves_old_file_and_no_tmp(tmp_path, monkeypatch):
    ident = open_identity(str(tmp_path), "a1")
    before = (tmp_path / FILE_NAME).read_bytes()
    n_before = ident.identity.next_replica_n

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(identity_mod.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        ident.next_replica_n()
    monkeypatch.undo()
    assert (tmp_path / FILE_NAME).read_bytes() == before
    assert tmp_files(tmp_path) == []
    # Memory still matches disk, so the number was not handed out.
    assert ident.identity.next_replica_n == n_before


def test_in_memory_identity_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ident = in_memory_identity("a1")
    assert ident.path is None
    first = ident.next_replica_n()
    assert ident.next_replica_n() == first + 1
    ident.set_cluster_id("c")
    assert os.listdir(tmp_path) == []


def test_invalid_name_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError):
        open_identity(str(tmp_path), "a/b")


def _edit(raw: bytes, **changes) -> bytes:
    data = json.loads(raw)
    data.update(changes)
    return json.dumps(data).encode()
