"""Loading data types by name."""

from __future__ import annotations

import sys

import pytest

from raftfleet_agent.statemachine import (
    KV,
    Applier,
    Counter,
    DataType,
    DataTypeError,
    load_data_type,
)
from tests.statemachine import usertypes

MOD = "tests.statemachine.usertypes"


@pytest.mark.parametrize(("name", "cls"), [("counter", Counter), ("kv", KV)])
def test_builtins_by_name(name: str, cls: type) -> None:
    dt = load_data_type(name)
    assert dt.name == name
    assert dt.builtin
    assert isinstance(dt.impl, cls)


def test_builtin_by_import_path_is_a_user_type() -> None:
    dt = load_data_type("raftfleet_agent.statemachine.builtin:Counter")
    assert not dt.builtin
    assert dt.command(dt.new(), "inc") == (0, 1)


def test_user_class_is_instantiated_once() -> None:
    dt = load_data_type(f"{MOD}:Stack")
    assert dt.name == f"{MOD}:Stack"
    assert isinstance(dt.impl, usertypes.Stack)
    assert isinstance(dt.impl, DataType)
    assert dt.command(dt.new(), ["push", 1]) == (0, [1])


def test_class_of_static_methods() -> None:
    dt = load_data_type(f"{MOD}:StaticCounter")
    assert dt.new() == 100
    assert dt.command(100, 5) == (100, 105)


def test_module_level_instance_is_used_as_is() -> None:
    dt = load_data_type(f"{MOD}:ECHO")
    assert dt.impl is usertypes.ECHO


def test_default_snapshot_is_msgpack() -> None:
    dt = load_data_type(f"{MOD}:Stack")
    assert dt.restore(dt.snapshot([1, "a", {2: b"x"}])) == [1, "a", {2: b"x"}]


def test_own_snapshot_methods_are_used() -> None:
    dt = load_data_type(f"{MOD}:CustomSnapshot")
    assert dt.snapshot([1]).startswith(b"STACK")


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "invalid data type name"),
        ("Counter", "invalid data type name"),
        ("foo", 'expected "counter", "kv" or "package.module:Class"'),
        ("os.path", "invalid data type name"),
        ("os.path:join:x", "invalid data type name"),
        ("os path:join", "invalid data type name"),
        ("../etc/passwd:x", "invalid data type name"),
        ("os.:x", "invalid data type name"),
        ("1pkg:x", "invalid data type name"),
        ("os:system()", "invalid data type name"),
        ("os:__class__", "invalid data type name"),
        ("__main__:x", "invalid data type name"),
        ("a" * 300 + ":T", "invalid data type name"),
        ("raftfleet_no_such_module_xyz:T", "module 'raftfleet_no_such_module_xyz' not found"),
        (f"{MOD}:Nope", f"module '{MOD}' has no attribute 'Nope'"),
        (f"{MOD}:NoQuery", "is not a valid type: it has no query() method"),
        (f"{MOD}:QueryNotCallable", "no query() method"),
        (f"{MOD}:NOT_A_TYPE", "no new() method"),
        (f"{MOD}:NeedsArguments", "cannot instantiate NeedsArguments()"),
        ("tests.statemachine.broken_types:T", "importing 'tests.statemachine.broken_types' failed"),
        (
            "tests.statemachine.missing_dep_types:T",
            "module 'raftfleet_no_such_dependency' not found "
            "(imported by 'tests.statemachine.missing_dep_types')",
        ),
    ],
)
def test_load_errors_are_clear(name: str, fragment: str) -> None:
    with pytest.raises(DataTypeError) as info:
        load_data_type(name)
    assert fragment in str(info.value)


def test_non_string_name() -> None:
    with pytest.raises(DataTypeError, match="must be a string"):
        load_data_type(b"counter")  # type: ignore[arg-type]


def test_invalid_names_import_nothing() -> None:
    module = "tests.statemachine.sentinel_types"
    assert module not in sys.modules
    for name in (f"{module}:T()", f"{module}:__T", f"{module}/x:T", f"{module}:T.x"):
        with pytest.raises(DataTypeError, match="invalid data type name"):
            load_data_type(name)
    assert module not in sys.modules


def test_applier_reports_failing_new() -> None:
    with pytest.raises(DataTypeError, match=r"new\(\) failed \(RuntimeError: no state today\)"):
        Applier(f"{MOD}:NewFails")
