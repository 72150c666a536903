"""One suite for every LogStore: MemoryLogStore and SqliteLogStore must agree.

Each test runs against both implementations through the `env` fixture. For
SQLite, `env.reopen()` closes the store and opens the same file again, so
every round trip is also checked against what recovery reads from disk.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftfleet_agent.raft.types import (
    Config,
    Entry,
    EntryKind,
    HardState,
    ReplicaId,
    Snapshot,
    SnapshotMeta,
)
from raftfleet_agent.storage import (
    GroupRecord,
    GroupWrite,
    LogStore,
    MemoryLogStore,
    SqliteLogStore,
    StoreError,
    WriteBatch,
)

A1, B1, C2 = ReplicaId("a", 1), ReplicaId("b", 1), ReplicaId("c", 2)
CONFIG = Config(voters=frozenset({A1, B1}), learners=frozenset({C2}))


class Env:
    """A store under test, plus a way to reopen it (the memory store just stays)."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind = kind
        self.path = path
        self.store: LogStore = self._open()

    def _open(self) -> LogStore:
        return MemoryLogStore() if self.kind == "memory" else SqliteLogStore(self.path)

    def reopen(self) -> LogStore:
        if self.kind == "sqlite":
            self.store.close()
            self.store = self._open()
        return self.store

    def write(self, *writes: GroupWrite) -> None:
        self.store.write(WriteBatch(tuple(writes)))

    def records(self) -> dict[str, GroupRecord]:
        return {r.group: r for r in self.store.load()}


@pytest.fixture(params=["memory", "sqlite"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    e = Env(request.param, tmp_path)
    try:
        yield e
    finally:
        e.store.close()


def ents(lo: int, hi: int, term: int = 1, tag: object = "x") -> tuple[Entry, ...]:
    return tuple(Entry(term, i, EntryKind.NORMAL, [tag, i]) for i in range(lo, hi + 1))


def snap(index: int, term: int, data: bytes = b"state") -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, CONFIG), data)


def check_both(env: Env, check: Callable[[], None]) -> None:
    """Run `check` on the live store and again after a reopen."""
    check()
    env.reopen()
    check()


def test_empty_store(env: Env) -> None:
    def check() -> None:
        assert list(env.store.load()) == []
        assert env.store.last_index_term() == {}
        assert list(env.store.entries("nope", 0, 100)) == []

    check_both(env, check)


ODD_DATA: list[object] = [
    None,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    1.5,
    True,
    "héllo ✓",
    b"\x00\xffbytes",
    [1, [2, [3, None]], {"k": [b"v"]}],
    {"nested": {"map": 1}, "list": [], "": ""},
    {1: "int key"},
    "x" * 100_000,
]


def test_many_groups_round_trip(env: Env) -> None:
    groups = [f"g{i:03d}" for i in range(150)]
    writes = []
    for n, g in enumerate(groups):
        es = [Entry(1, 1, EntryKind.CONFIG, CONFIG), Entry(2, 2, EntryKind.NOOP, None)]
        es += [Entry(2, 3 + k, EntryKind.NORMAL, d) for k, d in enumerate(ODD_DATA[: n % 14])]
        writes.append(
            GroupWrite(
                group=g,
                entries=tuple(es),
                hard_state=HardState(term=2, vote=A1 if n % 2 else None, commit=n % 3),
                meta=f"meta-{g}".encode() if n % 5 else None,
            )
        )
    env.write(*writes)

    def check() -> None:
        recs = env.records()
        assert sorted(recs) == groups
        last = env.store.last_index_term()
        for w in writes:
            r = recs[w.group]
            assert r.entries == w.entries
            assert r.hard_state == w.hard_state
            assert r.meta == w.meta
            assert r.snapshot is None
            assert last[w.group] == (w.entries[-1].index, w.entries[-1].term)
            assert tuple(env.store.entries(w.group, 2, 5)) == w.entries[1:4]
        assert recs["g000"].entries[0].data == CONFIG

    check_both(env, check)


def test_hard_state_defaults_and_replaces(env: Env) -> None:
    env.write(GroupWrite(group="only-entries", entries=ents(1, 3)))
    env.write(GroupWrite(group="hs", hard_state=HardState(1, A1, 0)))
    env.write(GroupWrite(group="hs", hard_state=HardState(5, None, 7)))

    def check() -> None:
        recs = env.records()
        assert recs["only-entries"].hard_state == HardState()
        assert recs["hs"].hard_state == HardState(5, None, 7)
        assert recs["hs"].entries == ()
        assert env.store.last_index_term() == {"only-entries": (3, 1), "hs": (0, 0)}

    check_both(env, check)


def test_truncate_suffix(env: Env) -> None:
    env.write(GroupWrite(group="g", entries=ents(1, 10, term=1)))
    env.write(GroupWrite(group="g", entries=ents(6, 8, term=2, tag="new")))

    def check() -> None:
        assert env.records()["g"].entries == ents(1, 5, term=1) + ents(6, 8, term=2, tag="new")
        assert env.store.last_index_term()["g"] == (8, 2)
        assert tuple(env.store.entries("g", 5, 100)) == ents(5, 5) + ents(6, 8, 2, "new")
        assert list(env.store.entries("g", 9, 100)) == []

    check_both(env, check)


def test_snapshot_compacts_log(env: Env) -> None:
    env.write(GroupWrite(group="g", entries=ents(1, 20, term=3)))
    env.write(GroupWrite(group="g", snapshot=snap(10, 3, b"s10")))

    def check_mid() -> None:
        r = env.records()["g"]
        assert r.snapshot == snap(10, 3, b"s10")
        assert r.entries == ents(11, 20, term=3)
        assert tuple(env.store.entries("g", 1, 100)) == ents(11, 20, term=3)
        assert env.store.last_index_term()["g"] == (20, 3)

    check_both(env, check_mid)
    # A newer snapshot past the log (as installed from a leader) replaces the old one.
    env.write(GroupWrite(group="g", snapshot=snap(25, 4, b"s25"), hard_state=HardState(4, B1, 25)))

    def check_end() -> None:
        r = env.records()["g"]
        assert r.snapshot == snap(25, 4, b"s25")
        assert r.entries == ()
        assert r.hard_state == HardState(4, B1, 25)
        assert env.store.last_index_term()["g"] == (25, 4)

    check_both(env, check_end)
    # Snapshot and the entries that follow it in one write.
    env.write(GroupWrite(group="g", snapshot=snap(30, 5, b""), entries=ents(31, 33, term=5)))

    def check_follow() -> None:
        r = env.records()["g"]
        assert r.snapshot == snap(30, 5, b"")
        assert r.entries == ents(31, 33, term=5)
        assert env.store.last_index_term()["g"] == (33, 5)

    check_both(env, check_follow)


def test_meta_replaced(env: Env) -> None:
    env.write(GroupWrite(group="g", meta=b"v1"), GroupWrite(group="h", meta=b""))
    env.write(GroupWrite(group="g", meta=b"v2"))

    def check() -> None:
        recs = env.records()
        assert recs["g"].meta == b"v2"
        assert recs["h"].meta == b""
        assert recs["g"].hard_state == HardState()

    check_both(env, check)


def test_delete_and_recreate(env: Env) -> None:
    full = GroupWrite(
        group="g", entries=ents(1, 5), hard_state=HardState(1, A1, 3), snapshot=None, meta=b"m"
    )
    env.write(full, GroupWrite(group="keep", entries=ents(1, 2)))
    env.write(GroupWrite(group="g", snapshot=snap(3, 1)))
    env.write(GroupWrite(group="g", delete=True))

    def check_gone() -> None:
        assert sorted(env.records()) == ["keep"]
        assert env.store.last_index_term() == {"keep": (2, 1)}
        assert list(env.store.entries("g", 0, 100)) == []

    check_both(env, check_gone)
    # Deleted and re-created in one GroupWrite: only the new contents remain.
    env.write(GroupWrite(group="keep", delete=True, meta=b"new", entries=ents(1, 1, term=9)))
    # Re-created in a later batch.
    env.write(GroupWrite(group="g", entries=ents(1, 2, term=7)))

    def check_new() -> None:
        recs = env.records()
        assert recs["keep"] == GroupRecord(
            group="keep", hard_state=HardState(), snapshot=None, entries=ents(1, 1, 9), meta=b"new"
        )
        assert recs["g"] == GroupRecord(
            group="g", hard_state=HardState(), snapshot=None, entries=ents(1, 2, 7), meta=None
        )

    check_both(env, check_new)


def test_same_group_twice_in_one_batch(env: Env) -> None:
    env.write(
        GroupWrite(group="g", entries=ents(1, 5), hard_state=HardState(1, None, 0)),
        GroupWrite(group="g", entries=ents(4, 6, term=2, tag="b")),
        GroupWrite(group="g", snapshot=snap(2, 1)),
        GroupWrite(group="other", meta=b"o"),
        GroupWrite(group="g", hard_state=HardState(2, B1, 4)),
    )

    def check() -> None:
        r = env.records()["g"]
        assert r.entries == ents(3, 3) + ents(4, 6, term=2, tag="b")
        assert r.snapshot == snap(2, 1)
        assert r.hard_state == HardState(2, B1, 4)

    check_both(env, check)


def test_submitted_batches_apply_in_order(env: Env) -> None:
    """Many batches queued without waiting: applied in order, callbacks in order."""
    done: list[int] = []
    lock = threading.Lock()
    all_done = threading.Event()
    count = 300

    def callback(n: int) -> Callable[[BaseException | None], None]:
        def cb(err: BaseException | None) -> None:
            assert err is None
            with lock:
                done.append(n)
                if len(done) == count:
                    all_done.set()

        return cb

    for n in range(count):
        # Every batch rewrites the tail of "g" and appends one entry to "h{n%7}".
        writes = [
            GroupWrite(group="g", entries=ents(max(1, n - 2), n + 1, term=n, tag=n)),
            GroupWrite(group=f"h{n % 7}", entries=ents(n // 7 + 1, n // 7 + 1, tag=n)),
        ]
        env.store.submit(WriteBatch(tuple(writes)), callback(n))
    assert all_done.wait(30), f"only {len(done)} of {count} batches reported durable"
    assert done == list(range(count))

    def check() -> None:
        recs = env.records()
        g = recs["g"].entries
        assert [e.index for e in g] == list(range(1, count + 1))
        # Batch n writes [n-2, n+1], so index i was last written by batch min(i+2, count-1).
        assert [e.term for e in g] == [min(i + 2, count - 1) for i in range(1, count + 1)]
        for k in range(7):
            assert [e.data[0] for e in recs[f"h{k}"].entries] == list(range(k, count, 7))

    check_both(env, check)
    stats = env.store.statistics()
    if env.kind == "memory":  # the SQLite stats start again after the reopen
        written = sum(n + 2 - max(1, n - 2) for n in range(count)) + count
        assert (stats.batches, stats.entries) == (count, written)


def test_statistics_count_writes(env: Env) -> None:
    before = env.store.statistics()
    env.write(GroupWrite(group="a", entries=ents(1, 3)), GroupWrite(group="b", entries=ents(1, 2)))
    env.write(GroupWrite(group="a", hard_state=HardState(1, None, 1)))
    s = env.store.statistics()
    assert s.batches - before.batches == 2
    assert s.entries - before.entries == 5
    assert s.commits - before.commits in (1, 2)
    assert s.queue_depth == 0


def test_unencodable_value_rejected_at_submit(env: Env) -> None:
    env.write(GroupWrite(group="g", entries=ents(1, 1)))
    for data in (object(), 2**64, {"set": {1, 2}}):
        bad = GroupWrite(group="g", entries=(Entry(1, 2, EntryKind.NORMAL, data),))
        with pytest.raises(ValueError, match="msgpack"):
            env.store.write(WriteBatch((GroupWrite(group="g2", meta=b"m"), bad)))
    with pytest.raises(ValueError):
        env.store.write(WriteBatch((GroupWrite(group="", meta=b""),)))
    env.write(GroupWrite(group="g", entries=ents(2, 2)))  # still usable, nothing half-applied
    assert env.records()["g"].entries == ents(1, 2)
    assert "g2" not in env.records()


def test_closed_store_refuses_writes(env: Env) -> None:
    env.store.close()
    with pytest.raises(StoreError):
        env.store.write(WriteBatch((GroupWrite(group="g", meta=b""),)))


# --- A model-based check: random operation sequences against a naive model. ---


class Model:
    """The GroupWrite semantics of api.py, written as plainly as possible."""

    def __init__(self) -> None:
        self.groups: dict[str, dict] = {}

    def apply(self, w: GroupWrite) -> None:
        if w.delete:
            self.groups.pop(w.group, None)
        g = self.groups.setdefault(w.group, {"hs": None, "snap": None, "meta": None, "log": {}})
        if w.meta is not None:
            g["meta"] = w.meta
        if w.snapshot is not None:
            g["snap"] = w.snapshot
            g["log"] = {i: e for i, e in g["log"].items() if i > w.snapshot.meta.index}
        if w.entries:
            g["log"] = {i: e for i, e in g["log"].items() if i < w.entries[0].index}
            g["log"].update((e.index, e) for e in w.entries)
        if w.hard_state is not None:
            g["hs"] = w.hard_state
        if g == {"hs": None, "snap": None, "meta": None, "log": {}}:
            del self.groups[w.group]

    def records(self) -> dict[str, GroupRecord]:
        out = {}
        for name, g in self.groups.items():
            after = g["snap"].meta.index if g["snap"] else 0
            out[name] = GroupRecord(
                group=name,
                hard_state=g["hs"] or HardState(),
                snapshot=g["snap"],
                entries=tuple(e for i, e in sorted(g["log"].items()) if i > after),
                meta=g["meta"],
            )
        return out


@st.composite
def group_writes(draw: st.DrawFn) -> GroupWrite:
    group = draw(st.sampled_from(["a", "b", "c"]))
    kw: dict = {"group": group, "delete": draw(st.integers(0, 9)) == 0}
    if draw(st.booleans()):
        lo, n, term = draw(st.integers(1, 12)), draw(st.integers(1, 4)), draw(st.integers(0, 5))
        kw["entries"] = tuple(
            Entry(
                term,
                i,
                draw(st.sampled_from([EntryKind.NORMAL, EntryKind.NOOP])),
                draw(st.one_of(st.none(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=5))),
            )
            for i in range(lo, lo + n)
        )
    if draw(st.integers(0, 4)) == 0:
        kw["snapshot"] = snap(draw(st.integers(1, 12)), draw(st.integers(0, 5)), b"s")
    if draw(st.booleans()):
        kw["hard_state"] = HardState(
            draw(st.integers(0, 5)), draw(st.sampled_from([None, A1])), draw(st.integers(0, 9))
        )
    if draw(st.integers(0, 3)) == 0:
        kw["meta"] = draw(st.binary(max_size=4))
    return GroupWrite(**kw)


def forward_snapshots(batches: list[list[GroupWrite]]) -> list[list[GroupWrite]]:
    """The drawn writes, with no snapshot below its group's last one (api.py, step 3)."""
    last: dict[str, int] = {}
    out = []
    for b in batches:
        fixed = []
        for drawn in b:
            w = drawn
            if w.delete:
                last.pop(w.group, None)
            if w.snapshot is not None:
                floor = last.get(w.group, 0)
                if w.snapshot.meta.index < floor:
                    meta = attrs.evolve(w.snapshot.meta, index=floor)
                    w = attrs.evolve(w, snapshot=attrs.evolve(w.snapshot, meta=meta))
                last[w.group] = w.snapshot.meta.index
            fixed.append(w)
        out.append(fixed)
    return out


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(group_writes(), min_size=1, max_size=4), max_size=8))
def test_matches_model(kind: str, batches: list[list[GroupWrite]]) -> None:
    batches = forward_snapshots(batches)
    model = Model()
    with tempfile.TemporaryDirectory() as d:
        env = Env(kind, Path(d))
        try:
            for b in batches:
                env.write(*b)
                for w in b:
                    model.apply(w)
                assert env.records() == model.records()
            expected = model.records()
            env.reopen()
            assert env.records() == expected
            last = env.store.last_index_term()
            for name, r in expected.items():
                want = (r.snapshot.meta.index, r.snapshot.meta.term) if r.snapshot else (0, 0)
                if r.entries and r.entries[-1].index > want[0]:
                    want = (r.entries[-1].index, r.entries[-1].term)
                assert last[name] == want
        finally:
            env.store.close()
