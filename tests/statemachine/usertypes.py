"""User data types for the loader and applier tests, loaded by import path."""

from __future__ import annotations

from typing import Any

import msgpack

from raftfleet_agent.statemachine import InvalidArgument


class Stack:
    """A functional user type: every command returns a new list."""

    def new(self) -> list[Any]:
        return []

    def command(self, state: list[Any], arg: Any) -> Any:
        match arg:
            case ["push", value]:
                return len(state), [*state, value]
            case "pop":
                if not state:
                    raise InvalidArgument("stack: pop from an empty stack")
                return state[-1], state[:-1]
            case "boom":
                raise RuntimeError("kaboom")
            case "missing_key":
                return {}["nope"], state
            case "set_reply":
                return {1, 2}, [*state, "should not stay"]
            case "bad_shape":
                return 42
        raise ValueError(f"stack: unknown command {arg!r}")

    def query(self, state: list[Any], arg: Any) -> Any:
        if arg == "all":
            return state  # aliases the state; the applier must hand out a copy
        if arg == "len":
            return len(state)
        if arg == "boom":
            return 1 // 0
        raise InvalidArgument(f"stack: unknown query {arg!r}")


class StaticCounter:
    """A class of static methods, used without caring about instances."""

    @staticmethod
    def new() -> int:
        return 100

    @staticmethod
    def command(state: int, arg: Any) -> tuple[int, int]:
        return state, state + int(arg)

    @staticmethod
    def query(state: int, arg: Any) -> int:
        return state


class _Echo:
    def new(self) -> None:
        return None

    def command(self, state: Any, arg: Any) -> tuple[Any, Any]:
        return arg, arg

    def query(self, state: Any, arg: Any) -> Any:
        return state


ECHO = _Echo()  # a module-level instance, not a class


class CustomSnapshot(Stack):
    """Writes its own snapshot format and checks it on restore."""

    def snapshot(self, state: list[Any]) -> bytes:
        return b"STACK" + msgpack.packb(state)

    def restore(self, data: bytes) -> list[Any]:
        if not data.startswith(b"STACK"):
            raise ValueError("not a stack snapshot")
        return msgpack.unpackb(data[5:])


class BadSnapshot(Stack):
    def snapshot(self, state: list[Any]) -> bytes:
        return "not bytes"  # type: ignore[return-value]


class NoQuery:
    def new(self) -> int:
        return 0

    def command(self, state: int, arg: Any) -> tuple[int, int]:
        return state, state


class QueryNotCallable(NoQuery):
    query = 5


class NeedsArguments(Stack):
    def __init__(self, size: int) -> None:
        self.size = size


class NewFails(Stack):
    def new(self) -> list[Any]:
        raise RuntimeError("no state today")


NOT_A_TYPE = 42
