"""The built-in data types: `counter` (the seed's JustAnInt) and `kv`.

Both validate an argument completely before touching the state, so an invalid
command raises `InvalidArgument` with the state untouched (the protocol's
ownership contract, see protocol.py). `kv` then mutates its dict in place:
after validation nothing can raise, and copying the whole dict per command
would make every write O(size).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any, Final

import msgpack

from raftfleet_agent.statemachine.protocol import InvalidArgument, SnapshotError

# msgpack carries 64-bit integers; keeping the counter signed 64-bit keeps
# every state it can reach encodable in a snapshot.
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1


def _is_int(value: object) -> bool:
    # bool is an int subclass, but `["set", true]` is a client mistake.
    return type(value) is int


def _show(value: object) -> str:
    """A short, JSON-looking rendering of a client's argument for messages."""
    text = '"' + value + '"' if isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class Counter:
    """An integer: `inc` and `["set", n]` reply the old value; query `get`."""

    name: Final = "counter"

    @staticmethod
    def new() -> int:
        return 0

    @staticmethod
    def command(state: int, arg: Any) -> tuple[int, int]:
        if arg == "inc":
            if state >= INT64_MAX:
                raise InvalidArgument("counter: inc would overflow a 64-bit integer")
            return state, state + 1
        if type(arg) is list and len(arg) == 2 and arg[0] == "set":
            n = arg[1]
            if not _is_int(n) or not INT64_MIN <= n <= INT64_MAX:
                raise InvalidArgument(
                    f'counter: ["set", n] needs a 64-bit integer n, got {_show(n)}'
                )
            return state, n
        raise InvalidArgument(
            f'counter: unknown command {_show(arg)} (expected "inc" or ["set", n])'
        )

    @staticmethod
    def query(state: int, arg: Any) -> int:
        if arg == "get":
            return state
        raise InvalidArgument(f'counter: unknown query {_show(arg)} (expected "get")')

    @staticmethod
    def snapshot(state: int) -> bytes:
        return msgpack.packb(state)

    @staticmethod
    def restore(data: bytes) -> int:
        state = msgpack.unpackb(data)
        if not _is_int(state):
            raise SnapshotError(f"counter: snapshot holds {type(state).__name__}, not int")
        return state


_KV_COMMANDS: Final = '["put", k, v], ["delete", k] or ["cas", k, old, new]'
_KV_QUERIES: Final = '["get", k] or "keys"'


def _same_value(a: Any, b: Any) -> bool:
    """Equality of msgpack values that keeps their types apart.

    Python says 1 == 1.0 == True; msgpack (and a client comparing JSON) does
    not, so a compare-and-swap must not either.
    """
    if type(a) is not type(b):
        return False
    if type(a) is list:
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is dict:
        return a.keys() == b.keys() and all(_same_value(v, b[k]) for k, v in a.items())
    return bool(a == b)


def _kv_key(op: str, key: Any) -> str:
    if type(key) is not str:
        raise InvalidArgument(f"kv: {op} needs a string key, got {_show(key)}")
    return key


class KV:
    """A map of string keys to msgpack values.

    Commands: `["put", k, v]` -> previous value or None; `["delete", k]` ->
    previous value or None; `["cas", k, old, new]` -> True/False, where an
    `old` of None means "k is absent" and a `new` of None deletes k.
    Queries: `["get", k]` -> value or None; `"keys"` -> sorted keys.
    A value cannot be None: None is how `get` says "absent".
    """

    name: Final = "kv"

    @staticmethod
    def new() -> dict[str, Any]:
        return {}

    @staticmethod
    def command(state: dict[str, Any], arg: Any) -> tuple[Any, dict[str, Any]]:
        if type(arg) is not list or not arg:
            raise InvalidArgument(f"kv: unknown command {_show(arg)} (expected {_KV_COMMANDS})")
        op = arg[0]
        # Every branch validates first; the mutation is its last statement
        # and cannot raise (str keys hash fine).
        if op == "put" and len(arg) == 3:
            key, value = _kv_key(op, arg[1]), arg[2]
            if value is None:
                raise InvalidArgument('kv: put needs a non-null value (use ["delete", k])')
            previous = state.get(key)
            state[key] = value
            return previous, state
        if op == "delete" and len(arg) == 2:
            return state.pop(_kv_key(op, arg[1]), None), state
        if op == "cas" and len(arg) == 4:
            key, old, new = _kv_key(op, arg[1]), arg[2], arg[3]
            current = state.get(key)
            if not (current is None if old is None else _same_value(current, old)):
                return False, state
            if new is None:
                state.pop(key, None)
            else:
                state[key] = new
            return True, state
        raise InvalidArgument(f"kv: unknown command {_show(arg)} (expected {_KV_COMMANDS})")

    @staticmethod
    def query(state: dict[str, Any], arg: Any) -> Any:
        if arg == "keys":
            return sorted(state)
        if type(arg) is list and len(arg) == 2 and arg[0] == "get":
            return state.get(_kv_key("get", arg[1]))
        raise InvalidArgument(f"kv: unknown query {_show(arg)} (expected {_KV_QUERIES})")

    @staticmethod
    def snapshot(state: dict[str, Any]) -> bytes:
        # In the map's own (insertion) order, which every replica shares:
        # each applies the same commands to the same start, and a map
        # restored from a snapshot keeps the snapshot's order. So replicas
        # that reached one map by different paths still write the same bytes,
        # without a sort: sorting and rebuilding the map took 8x as long as
        # packing it (134 against 17 ms for 250,000 keys), and the loop of
        # every group on the agent waits for a snapshot.
        return msgpack.packb(state, use_bin_type=True)

    @staticmethod
    def snapshot_parts(state: dict[str, Any]) -> Iterator[bytes]:
        """`snapshot(state)` in slices whose concatenation is the same bytes.

        The map is copied now (a shallow copy: ~22 ms for a million keys,
        where packing them takes 100-600 ms), so commands applied while the
        slices are packed do not change what is written; values are never
        changed in place (a command replaces them). Each slice packs up to
        `KV_SLICE_KEYS` keys, so a host can pack one per loop turn.
        """
        return _map_slices(state.copy())

    @staticmethod
    def restore(data: bytes) -> dict[str, Any]:
        state = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if type(state) is not dict:
            raise SnapshotError(f"kv: snapshot holds {type(state).__name__}, not a map")
        for key, value in state.items():
            if type(key) is not str or value is None:
                raise SnapshotError(f"kv: snapshot has an invalid entry for key {_show(key)}")
        return state


KV_SLICE_KEYS = 10_000  # keys per slice of a kv snapshot: ~3 ms of packing here


def _map_header_bytes(n: int) -> int:
    """How long msgpack's header of an n-item map is (fixmap, map 16, map 32)."""
    return 1 if n < 16 else 3 if n < 65_536 else 5


def _map_slices(m: dict[str, Any]) -> Iterator[bytes]:
    yield msgpack.Packer(use_bin_type=True).pack_map_header(len(m))
    items = iter(m.items())
    while True:
        part = dict(itertools.islice(items, KV_SLICE_KEYS))
        if not part:
            return
        # A slice packed as a map of its own, less that map's header: its
        # items' bytes are exactly what they are inside the whole map.
        yield msgpack.packb(part, use_bin_type=True)[_map_header_bytes(len(part)) :]


BUILTINS: Final[dict[str, type]] = {"counter": Counter, "kv": KV}
