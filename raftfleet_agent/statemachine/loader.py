"""Find a data type by name: a built-in ("counter", "kv") or "package.module:Class".

The name comes from a control request and ends up in the cluster state, so
it is checked against a strict pattern before anything is imported. Only
modules already installed on the agent can be named (the design requires a
user type to be importable on every agent); nothing is downloaded or
evaluated.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any, Final

import attrs
import msgpack

from raftfleet_agent.statemachine.builtin import BUILTINS
from raftfleet_agent.statemachine.protocol import DataTypeError

DATA_TYPE_NAME_CHARS_MAX: Final = 200

_IDENT: Final = r"[A-Za-z_][A-Za-z0-9_]*"
# "package.module:Class": dotted module, one attribute, no paths.
_USER_NAME_RE: Final = re.compile(rf"({_IDENT}(?:\.{_IDENT})*):({_IDENT})")


def _default_snapshot(state: Any) -> bytes:
    return msgpack.packb(state, use_bin_type=True)


def _default_restore(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


@attrs.frozen(slots=True)
class LoadedType:
    """A data type ready to use: its name and its five operations, defaults filled in.

    `builtin` types are trusted to reply with fresh msgpack values; a user
    type's replies are checked and copied by the applier.
    """

    name: str
    impl: Any = attrs.field(repr=False)
    new: Callable[[], Any] = attrs.field(repr=False)
    command: Callable[[Any, Any], Any] = attrs.field(repr=False)
    query: Callable[[Any, Any], Any] = attrs.field(repr=False)
    snapshot: Callable[[Any], bytes] = attrs.field(repr=False)
    restore: Callable[[bytes], Any] = attrs.field(repr=False)
    builtin: bool = False


def wrap_data_type(name: str, obj: Any, *, builtin: bool = False) -> LoadedType:
    """Check that `obj` follows the protocol and bind its operations.

    A class is instantiated once with no arguments; that also serves a class
    of static methods. Any other object (a module-level instance) is used as is.
    """
    impl = obj
    if isinstance(obj, type):
        try:
            impl = obj()
        except Exception as exc:
            raise DataTypeError(
                f"data type {name!r}: cannot instantiate {obj.__qualname__}() "
                f"({type(exc).__name__}: {exc})"
            ) from exc
    ops = {}
    for op in ("new", "command", "query"):
        fn = getattr(impl, op, None)
        if not callable(fn):
            raise DataTypeError(
                f"data type {name!r} is not a valid type: it has no {op}() method "
                "(a data type needs new(), command(state, arg) and query(state, arg))"
            )
        ops[op] = fn
    for op, default in (("snapshot", _default_snapshot), ("restore", _default_restore)):
        fn = getattr(impl, op, None)
        if fn is not None and not callable(fn):
            raise DataTypeError(f"data type {name!r}: {op} is not callable")
        ops[op] = default if fn is None else fn
    return LoadedType(name=name, impl=impl, builtin=builtin, **ops)


# Types the agent itself runs (the fleet's cluster state), registered by the
# layer that defines them so this layer never imports upward. Users cannot
# create groups of these types.
_INTERNAL: dict[str, type] = {}


_loaded_builtins: dict[str, LoadedType] = {}


def register_internal_type(name: str, cls: type) -> None:
    _INTERNAL[name] = cls
    _loaded_builtins.pop(name, None)


def is_internal_type(name: str) -> bool:
    return name in _INTERNAL


def load_data_type(name: str) -> LoadedType:
    """Load a built-in by name, or import "package.module:Class". Raises DataTypeError."""
    if not isinstance(name, str):
        raise DataTypeError(f"data type name must be a string, got {type(name).__name__}")
    if name in BUILTINS or name in _INTERNAL:
        # Shared by every replica of the type: built-ins keep no instance state.
        loaded = _loaded_builtins.get(name)
        if loaded is None:
            obj = BUILTINS[name] if name in BUILTINS else _INTERNAL[name]
            loaded = _loaded_builtins[name] = wrap_data_type(name, obj, builtin=True)
        return loaded
    match = _USER_NAME_RE.fullmatch(name) if len(name) <= DATA_TYPE_NAME_CHARS_MAX else None
    # No dunder segments: "__main__:x" or "pkg:__class__" is never a data type.
    if match is None or any(part.startswith("__") for part in re.split(r"[.:]", name)):
        builtins = ", ".join(f'"{b}"' for b in BUILTINS)
        raise DataTypeError(
            f"invalid data type name {name[:DATA_TYPE_NAME_CHARS_MAX]!r}: "
            f'expected {builtins} or "package.module:Class"'
        )
    module_name, attr = match.groups()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # exc.name tells a missing module apart from a missing dependency of it.
        missing = exc.name or module_name
        raise DataTypeError(
            f"data type {name!r}: module {missing!r} not found"
            + ("" if missing == module_name else f" (imported by {module_name!r})")
        ) from exc
    except Exception as exc:
        raise DataTypeError(
            f"data type {name!r}: importing {module_name!r} failed ({type(exc).__name__}: {exc})"
        ) from exc
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise DataTypeError(
            f"data type {name!r}: module {module_name!r} has no attribute {attr!r}"
        ) from None
    return wrap_data_type(name, obj)
