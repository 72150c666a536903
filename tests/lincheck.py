"""Linearizability checker for histories recorded against raftfleet groups.

Algorithm: Wing & Gong's search with Lowe's memoization, as in porcupine and
knossos.  Operations are laid out as a doubly linked list of call/return
entries sorted by time; the search repeatedly picks a call entry that precedes
the first remaining return entry (i.e. an op that may be linearized *now*),
applies it to the model, and "lifts" its call and return out of the list.  When
the first remaining entry is a return whose op cannot be linearized, the search
backtracks.  A cache of (set of linearized ops, model state) prunes every
configuration already explored, which turns the exponential search into one
that is usually linear in practice.  The search is iterative (explicit stack),
so long histories never hit Python's recursion limit.

Outcome semantics (Jepsen):

* ``ok``   -- happened, between ``call_time`` and ``return_time``, with ``output``.
* ``fail`` -- definitely did not happen: dropped before the search.
* ``info`` -- unknown (e.g. a timeout): it may or may not have taken effect, at
  any point after its invoke.  Its return time is +infinity, so it never blocks
  the search; it is linearized only if the rest of the history needs it, and if
  the search ends with it unlinearized it simply "did not happen".

Efficient handling of info ops (they are what makes searches blow up):

* info ops the model declares effect-free (reads) are dropped up front: a read
  with an unknown reply constrains nothing.
* info ops live outside the linked list and are only tried after every regular
  candidate at a node (lazily), since delaying them is always possible.
* symmetry reduction: info ops with the same ``(f, value)`` are
  interchangeable once invoked (same effect, no return constraint), so within
  such a group only the earliest-invoked unlinearized one is ever a candidate.
  The linearized ops of a group are therefore always a prefix of it, and k
  pending identical timeouts cost k+1 cache variants instead of 2**k.  (This
  assumes, as purity requires anyway, that ``step`` looks only at
  ``f``/``value``/``output``/``status`` -- never at client, times or op_id.)

Models are pure: ``init() -> state``, ``step(state, op) -> (ok, new_state)``,
states hashable.  For info ops ``step`` must ignore ``op.output`` (check
``op.status == INFO``).  Models may also define a ``partition`` function; for
P-compositional models (the kv model: one register per key) each partition is
checked independently, which is exponentially cheaper than checking the whole.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, Literal

import attrs

OK: Literal["ok"] = "ok"
FAIL: Literal["fail"] = "fail"
INFO: Literal["info"] = "info"
Status = Literal["ok", "fail", "info"]
_STATUSES = (OK, FAIL, INFO)

DEFAULT_TIMEOUT = 60.0


def _freeze(value: Any) -> Any:
    """Make argument/reply values hashable: lists/tuples -> tuples, sets -> frozensets.

    Replies decoded from msgpack arrive as lists; the model states and the
    symmetry groups of info ops need hashable values.
    """
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, set | frozenset):
        return frozenset(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((_freeze(k), _freeze(v)) for k, v in value.items()))
    return value


@attrs.frozen(kw_only=True)
class Operation:
    """One client operation with its outcome.

    ``return_time`` is None for info ops (their return is at +infinity).
    ``output`` is meaningless for info ops and ignored by the models.
    """

    client: Hashable
    f: str
    value: Any = attrs.field(default=None, converter=_freeze)
    output: Any = attrs.field(default=None, converter=_freeze)
    call_time: float
    return_time: float | None = None
    status: Status = OK
    op_id: Hashable | None = None

    def __attrs_post_init__(self) -> None:
        # Validate eagerly: a malformed history would otherwise surface as a
        # misleading "not linearizable" verdict deep inside the search.
        if self.status not in _STATUSES:
            raise ValueError(f"bad status {self.status!r} (want ok|fail|info)")
        if self.status == OK:
            if self.return_time is None:
                raise ValueError(f"ok operation without return_time: {self}")
            if self.return_time < self.call_time:
                raise ValueError(f"operation returns before it is invoked: {self}")

    @property
    def command(self) -> tuple[Any, ...]:
        """The op as a raftfleet-style command tuple, e.g. ("put", "k", 1)."""
        if self.value is None:
            return (self.f,)
        if isinstance(self.value, tuple):
            return (self.f, *self.value)
        return (self.f, self.value)

    def __str__(self) -> str:
        cmd = " ".join(repr(c) if i else str(c) for i, c in enumerate(self.command))
        end = "inf" if self.return_time is None or self.status == INFO else f"{self.return_time:g}"
        reply = f" -> {self.output!r}" if self.status == OK else f" ({self.status})"
        ident = f"#{self.op_id} " if self.op_id is not None else ""
        return f"{ident}client {self.client!r}: {cmd}{reply} [{self.call_time:g}, {end}]"


def split_command(command: Any) -> tuple[str, Any]:
    """Split a command like "inc", ["set", 5], ["put", "k", 1] into (f, value).

    Single arguments stay unwrapped ("set", 5) / ("get", "k"); several become a
    tuple ("put", ("k", 1)).  This is the same shape Operation.command inverts.
    """
    if isinstance(command, str):
        return command, None
    f, *args = command
    if not args:
        return f, None
    if len(args) == 1:
        return f, args[0]
    return f, tuple(args)


@attrs.frozen
class Event:
    """A raw history event, Jepsen-style.

    ``type`` is invoke|ok|fail|info.  For invoke, ``f``/``value`` describe the
    op; for ok, ``value`` is the reply.  ``f`` may be omitted on completions.
    """

    type: Literal["invoke", "ok", "fail", "info"]
    client: Hashable
    f: str | None = None
    value: Any = None
    time: float | None = None


@attrs.define
class HistoryBuilder:
    """Records a history as invoke/complete events, like Jepsen or porcupine.

    Each client has at most one outstanding op (Jepsen's process model); a
    completion refers to the client's outstanding op.  Without explicit times
    a logical clock is used, so the order of the recording calls is the
    real-time order.  Ops still pending when ``history()`` is called become
    info ops (we never learned their outcome).
    """

    _ops: list[Operation | None] = attrs.field(factory=list, init=False)
    _pending: dict[Hashable, tuple[int, str, Any, float]] = attrs.field(factory=dict, init=False)
    _clock: float = attrs.field(default=0.0, init=False)

    def _now(self, t: float | None) -> float:
        if t is None:
            self._clock += 1.0
            return self._clock
        # Keep the logical clock ahead of explicit times, so mixing both stays ordered.
        self._clock = max(self._clock, t)
        return t

    def invoke(self, client: Hashable, f: Any, value: Any = None, time: float | None = None) -> int:
        """Start an op; ``f`` may also be a whole command like ["put", "k", 1]."""
        if client in self._pending:
            raise ValueError(f"client {client!r} already has an outstanding op")
        if not isinstance(f, str):
            if value is not None:
                raise ValueError("pass either a command list or f + value, not both")
            f, value = split_command(f)
        idx = len(self._ops)
        self._ops.append(None)
        self._pending[client] = (idx, f, value, self._now(time))
        return idx

    def _complete(self, client: Hashable, status: Status, output: Any, t: float | None) -> int:
        try:
            idx, f, value, call_time = self._pending.pop(client)
        except KeyError:
            raise ValueError(f"client {client!r} has no outstanding op") from None
        end = self._now(t)
        self._ops[idx] = Operation(
            client=client,
            f=f,
            value=value,
            output=output if status == OK else None,
            call_time=call_time,
            return_time=None if status == INFO else end,
            status=status,
            op_id=idx,
        )
        return idx

    def ok(self, client: Hashable, output: Any = None, time: float | None = None) -> int:
        return self._complete(client, OK, output, time)

    def fail(self, client: Hashable, time: float | None = None) -> int:
        return self._complete(client, FAIL, None, time)

    def info(self, client: Hashable, time: float | None = None) -> int:
        return self._complete(client, INFO, None, time)

    def record(self, event: Event) -> int:
        if event.type == "invoke":
            return self.invoke(event.client, event.f, event.value, event.time)
        if event.type == OK:
            return self.ok(event.client, event.value, event.time)
        if event.type == FAIL:
            return self.fail(event.client, event.time)
        if event.type == INFO:
            return self.info(event.client, event.time)
        raise ValueError(f"bad event type {event.type!r}")

    def history(self) -> list[Operation]:
        ops = list(self._ops)
        for client, (idx, f, value, call_time) in self._pending.items():
            ops[idx] = Operation(
                client=client, f=f, value=value, call_time=call_time, status=INFO, op_id=idx
            )
        return [op for op in ops if op is not None]


def from_events(events: Iterable[Event]) -> list[Operation]:
    """Build a history from Jepsen-style events (in real-time order)."""
    b = HistoryBuilder()
    for ev in events:
        b.record(ev)
    return b.history()


# --------------------------------------------------------------------------- models


def _never_noop(op: Operation) -> bool:
    return False


@attrs.frozen
class Model:
    """A pure sequential specification.

    ``info_is_noop(op)`` says an info op of this kind has no effect on the
    state (a read), so it can be dropped.  ``partition`` splits a history into
    independently checkable sub-histories (P-compositionality); ops it leaves
    out are not checked.
    """

    name: str
    init: Callable[[], Hashable]
    step: Callable[[Any, Operation], tuple[bool, Any]]
    info_is_noop: Callable[[Operation], bool] = _never_noop
    partition: Callable[[Sequence[Operation]], dict[Hashable, list[Operation]]] | None = None


def counter_model(initial: int = 0) -> Model:
    """raftfleet's counter: "inc" replies the OLD value; ("set", n) replies the
    old value and stores n; "get" replies the value."""

    def step(state: int, op: Operation) -> tuple[bool, int]:
        known = op.status != INFO
        if op.f == "inc":
            return (not known or op.output == state), state + 1
        if op.f == "set":
            return (not known or op.output == state), op.value
        if op.f == "get":
            return (not known or op.output == state), state
        raise ValueError(f"counter model: unknown op {op.f!r}")

    return Model(
        name="counter",
        init=lambda: initial,
        step=step,
        info_is_noop=lambda op: op.f == "get",
    )


def _kv_key(op: Operation) -> Hashable:
    # get/delete carry the bare key; put/cas carry (key, ...) tuples.
    return op.value if op.f in ("get", "delete") else op.value[0]


def _kv_lookup(state: frozenset[tuple[Hashable, Any]], key: Hashable) -> Any:
    for k, v in state:
        if k == key:
            return v
    return None


def _kv_assoc(state: frozenset[tuple[Hashable, Any]], key: Hashable, value: Any) -> frozenset:
    rest = frozenset(kv for kv in state if kv[0] != key)
    return rest if value is None else rest | {(key, value)}


def partition_by_key(history: Sequence[Operation]) -> dict[Hashable, list[Operation]]:
    """Split a kv history per key.  "keys" ops span every key, so a per-key
    check cannot place them: they are left out (check them unpartitioned with
    ``check(history, KV, partition=False)`` if needed -- slower)."""
    parts: dict[Hashable, list[Operation]] = {}
    for op in history:
        if op.f == "keys":
            continue
        parts.setdefault(_kv_key(op), []).append(op)
    return parts


def kv_model() -> Model:
    """raftfleet's kv: ("put", k, v) and ("delete", k) reply the previous value
    or None; ("cas", k, old, new) replies True/False (old None = absent, new
    None = delete); ("get", k) replies the value or None; "keys" replies the
    list of keys (only checkable unpartitioned).

    The state is a frozenset of (key, value) pairs; per-key partitions keep it
    at most one element, so the linear lookups are cheap.
    """

    def step(state: frozenset, op: Operation) -> tuple[bool, frozenset]:
        known = op.status != INFO
        f = op.f
        if f == "keys":
            return (not known or set(op.output or ()) == {k for k, _ in state}), state
        key = _kv_key(op)
        cur = _kv_lookup(state, key)
        if f == "get":
            return (not known or op.output == cur), state
        if f == "put":
            return (not known or op.output == cur), _kv_assoc(state, key, op.value[1])
        if f == "delete":
            return (not known or op.output == cur), _kv_assoc(state, key, None)
        if f == "cas":
            _, old, new = op.value
            swapped = cur == old
            if known and bool(op.output) != swapped:
                return False, state
            return True, (_kv_assoc(state, key, new) if swapped else state)
        raise ValueError(f"kv model: unknown op {f!r}")

    return Model(
        name="kv",
        init=frozenset,
        step=step,
        info_is_noop=lambda op: op.f in ("get", "keys"),
        partition=partition_by_key,
    )


COUNTER = counter_model()
KV = kv_model()


# --------------------------------------------------------------------------- results


@attrs.frozen
class CheckResult:
    """Verdict of a check.

    ``ok`` is True only for a proven-linearizable history; a timed-out check
    has ``ok=False, timed_out=True`` (verdict "unknown"), never a silent pass.
    On success ``linearization`` is a witness order (info ops in it took
    effect; the others did not).  On failure ``longest_prefix`` is the longest
    linearizable prefix found, ``state`` the model state after it, ``stuck``
    the op whose return was reached without being linearizable there and
    ``unlinearizable`` every op that could have come next (none worked).
    For partitioned checks ``partitions`` holds the per-key results.
    """

    ok: bool
    timed_out: bool = False
    model: str = ""
    key: Hashable | None = None
    linearization: tuple[Operation, ...] | None = None
    longest_prefix: tuple[Operation, ...] = ()
    state: Any = None
    stuck: Operation | None = None
    unlinearizable: tuple[Operation, ...] = ()
    partitions: dict[Hashable, CheckResult] = attrs.field(factory=dict)
    n_ops: int = 0
    explored: int = 0
    elapsed: float = 0.0

    @property
    def verdict(self) -> str:
        if self.ok:
            return "linearizable"
        return "unknown (time budget exhausted)" if self.timed_out else "NOT linearizable"

    @property
    def bad_keys(self) -> list[Hashable]:
        return [k for k, r in self.partitions.items() if not r.ok and not r.timed_out]

    def explain(self, context: int = 10) -> str:
        """Human-readable report; ``context`` = how many prefix ops to show."""
        where = f" [{self.model} key={self.key!r}]" if self.key is not None else f" [{self.model}]"
        head = (
            f"{self.verdict}{where}: {self.n_ops} ops, {self.explored} states explored, "
            f"{self.elapsed:.3f}s"
        )
        if self.partitions:
            lines = [head]
            for r in self.partitions.values():
                if not r.ok:
                    lines.append(r.explain(context))
            return "\n".join(lines)
        if self.ok:
            return head
        lines = [head, f"  longest linearizable prefix: {len(self.longest_prefix)} ops"]
        shown = self.longest_prefix[-context:] if context else ()
        if len(shown) < len(self.longest_prefix):
            lines.append("    ...")
        lines += [f"    {op}" for op in shown]
        lines.append(f"  model state after it: {self.state!r}")
        if self.stuck is not None:
            lines.append(f"  must be linearized next but cannot: {self.stuck}")
        if self.unlinearizable:
            lines.append("  candidates, none of which can be linearized here:")
            lines += [f"    {op}" for op in self.unlinearizable]
        return "\n".join(lines)


# --------------------------------------------------------------------------- search


class _Timeout(Exception):
    pass


def _group_key(op: Operation, fallback: int) -> Hashable:
    key = (op.f, op.value)
    try:
        hash(key)
    except TypeError:
        return ("__unique__", fallback)  # unhashable argument: no symmetry, own group
    return key


def _check_one(
    ops: Sequence[Operation], model: Model, deadline: float, key: Hashable | None
) -> CheckResult:
    started = time.monotonic()
    regular = [op for op in ops if op.status == OK]
    infos = [op for op in ops if op.status == INFO and not model.info_is_noop(op)]
    # ids = rank by call time, so list order of call entries == id order.
    regular.sort(key=lambda op: op.call_time)
    n = len(regular)
    common = {"model": model.name, "key": key, "n_ops": len(ops)}

    # Linked list: entry 0 = head, 1..n = calls, n+1..2n = returns, 2n+1 = tail.
    # Ties: calls sort before returns at the same time (treated as concurrent).
    order = sorted(
        [(op.call_time, 0, i) for i, op in enumerate(regular)]
        + [(op.return_time, 1, i) for i, op in enumerate(regular)]
    )
    tail = 2 * n + 1
    nxt = [0] * (2 * n + 2)
    prv = [0] * (2 * n + 2)
    prev_e = 0
    for _, is_ret, i in order:
        e = i + 1 + n * is_ret
        nxt[prev_e] = e
        prv[e] = prev_e
        prev_e = e
    nxt[prev_e] = tail
    prv[tail] = prev_e
    nxt[tail] = -1
    ret_time = [op.return_time for op in regular]

    # Info-op symmetry groups, each sorted by call time.
    groups_d: dict[Hashable, list[Operation]] = {}
    for j, op in enumerate(infos):
        groups_d.setdefault(_group_key(op, j), []).append(op)
    g_ops = [sorted(g, key=lambda op: op.call_time) for g in groups_d.values()]
    g_calls = [[op.call_time for op in g] for g in g_ops]
    n_groups = len(g_ops)

    step = model.step
    state = model.init()
    base = 0  # smallest id not linearized; ids below it are all linearized
    rel = 0  # bit j set <=> id base+j linearized (bit 0 always clear)
    counts: tuple[int, ...] = (0,) * n_groups  # linearized prefix length per info group
    remaining = n
    # Lowe's memo: (linearized regular ops, state) -> antichain of info-count
    # vectors already explored.  A configuration that consumed a superset of
    # the info ops of an explored one (same frontier, same state) is
    # subsumed: it has the same future with fewer optional ops left.
    cache: dict[tuple[int, int, Any], list[tuple[int, ...]]] = {}
    explored = 1

    def subsumed(seen: list[tuple[int, ...]], cnts: tuple[int, ...]) -> bool:
        """Slow path of the memo: is cnts subsumed by an explored vector?  If
        not, record it, keeping seen an antichain (entries cnts subsumes can
        never matter again)."""
        for old in seen:
            if all(a <= b for a, b in zip(old, cnts, strict=True)):
                return True
        seen[:] = [old for old in seen if not all(a <= b for a, b in zip(cnts, old, strict=True))]
        seen.append(cnts)
        return False

    try:
        cache[(base, rel, state)] = [counts]
    except TypeError as exc:
        raise TypeError(f"model {model.name!r}: states must be hashable") from exc

    def candidates() -> tuple[list[int], int]:
        """Calls before the first return entry, then one info op per group."""
        cands: list[int] = []
        e = nxt[0]
        while e <= n:  # call entries are 1..n; head's successor is never the tail here
            cands.append(e)
            e = nxt[e]
        blocking = e - 1 - n
        limit = ret_time[blocking]
        for g in range(n_groups):
            c = counts[g]
            if c < len(g_calls[g]) and g_calls[g][c] <= limit:
                cands.append(-g - 1)
        return cands, blocking

    def cand_op(c: int) -> Operation:
        if c > 0:
            return regular[c - 1]
        g = -c - 1
        return g_ops[g][counts[g]]

    if remaining == 0:
        return CheckResult(ok=True, linearization=(), elapsed=0.0, **common)

    # Frame: [cands, next index, move, op, prev state, prev base, prev rel, prev counts, blocking]
    cands0, blocking0 = candidates()
    frames: list[list[Any]] = [[cands0, 0, 0, None, None, 0, 0, (), blocking0]]
    best_depth = -1
    best: dict[str, Any] = {}
    iterations = 0
    try:
        while True:
            iterations += 1
            if not iterations & 1023 and time.monotonic() > deadline:
                raise _Timeout
            fr = frames[-1]
            cands = fr[0]
            advanced = False
            while fr[1] < len(cands):
                c = cands[fr[1]]
                fr[1] += 1
                op = cand_op(c)
                ok, new_state = step(state, op)
                if not ok:
                    continue
                if c > 0:
                    bit = c - 1 - base
                    new_rel = rel | (1 << bit)
                    new_base = base
                    if bit == 0:
                        ones = (~new_rel & (new_rel + 1)).bit_length() - 1
                        new_rel >>= ones
                        new_base += ones
                    new_counts = counts
                else:
                    g = -c - 1
                    new_base, new_rel = base, rel
                    new_counts = (*counts[:g], counts[g] + 1, *counts[g + 1 :])
                k3 = (new_base, new_rel, new_state)
                seen = cache.get(k3)
                if seen is None:
                    cache[k3] = [new_counts]
                elif not n_groups or subsumed(seen, new_counts):
                    continue
                explored += 1
                child = [None, 0, c, op, state, base, rel, counts, -1]
                state, base, rel, counts = new_state, new_base, new_rel, new_counts
                if c > 0:  # lift the call and return entries out of the list
                    r = c + n
                    nxt[prv[c]] = nxt[c]
                    prv[nxt[c]] = prv[c]
                    nxt[prv[r]] = nxt[r]
                    prv[nxt[r]] = prv[r]
                    remaining -= 1
                    if remaining == 0:
                        lin = (*(f[3] for f in frames[1:]), op)
                        return CheckResult(
                            ok=True,
                            linearization=lin,
                            explored=explored,
                            elapsed=time.monotonic() - started,
                            **common,
                        )
                child[0], child[8] = candidates()
                frames.append(child)
                advanced = True
                break
            if advanced:
                continue
            # Node exhausted: remember the deepest dead end, then backtrack.
            depth = len(frames) - 1
            if depth > best_depth:
                best_depth = depth
                best = {
                    "longest_prefix": tuple(f[3] for f in frames[1:]),
                    "state": state,
                    "stuck": regular[fr[8]],
                    "unlinearizable": tuple(cand_op(c) for c in cands),
                }
            if depth == 0:
                return CheckResult(
                    ok=False,
                    explored=explored,
                    elapsed=time.monotonic() - started,
                    **best,
                    **common,
                )
            frames.pop()
            c = fr[2]
            state, base, rel, counts = fr[4], fr[5], fr[6], fr[7]
            if c > 0:  # unlift in reverse order: return entry first, then call
                r = c + n
                nxt[prv[r]] = r
                prv[nxt[r]] = r
                nxt[prv[c]] = c
                prv[nxt[c]] = c
                remaining += 1
    except _Timeout:
        if best_depth < len(frames) - 1:
            best = {"longest_prefix": tuple(f[3] for f in frames[1:]), "state": state}
        return CheckResult(
            ok=False,
            timed_out=True,
            explored=explored,
            elapsed=time.monotonic() - started,
            longest_prefix=best.get("longest_prefix", ()),
            state=best.get("state"),
            **common,
        )


def check(
    history: Iterable[Operation],
    model: Model,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    partition: bool = True,
) -> CheckResult:
    """Check ``history`` against ``model`` within ``timeout`` seconds.

    fail ops are dropped; info ops may or may not have taken effect.  If the
    model has a partition function (and ``partition``), each partition is
    checked separately under one shared time budget; every partition is
    checked so that all bad keys are reported.
    """
    ops = [op for op in history if op.status != FAIL]
    deadline = time.monotonic() + timeout
    # The search allocates millions of small tuples/lists that are never
    # cyclic garbage; Python's cyclic GC would rescan them all again and
    # again (measured: ~2x slower), so pause it for the duration.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _check(ops, model, deadline, partition)
    finally:
        if gc_was_enabled:
            gc.enable()


def _check(ops: list[Operation], model: Model, deadline: float, partition: bool) -> CheckResult:
    if not partition or model.partition is None:
        return _check_one(ops, model, deadline, None)
    started = time.monotonic()
    results: dict[Hashable, CheckResult] = {}
    for key, part in model.partition(ops).items():
        results[key] = _check_one(part, model, deadline, key)
    failed = any(not r.ok and not r.timed_out for r in results.values())
    timed_out = not failed and any(r.timed_out for r in results.values())
    return CheckResult(
        ok=not failed and not timed_out,
        timed_out=timed_out,
        model=model.name,
        partitions=results,
        n_ops=len(ops),
        explored=sum(r.explored for r in results.values()),
        elapsed=time.monotonic() - started,
    )


def check_kv(history: Iterable[Operation], *, timeout: float = DEFAULT_TIMEOUT) -> CheckResult:
    """Check a kv history key by key (P-compositionality); "keys" ops are skipped."""
    return check(history, KV, timeout=timeout, partition=True)


def check_counter(
    history: Iterable[Operation], *, timeout: float = DEFAULT_TIMEOUT, initial: int = 0
) -> CheckResult:
    return check(history, COUNTER if initial == 0 else counter_model(initial), timeout=timeout)
