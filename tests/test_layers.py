"""House rules that keep the layers honest (DESIGN.md): imports only go downward."""

from __future__ import annotations

import ast
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Modules a layer must never import, and why.
FORBIDDEN = {
    "raftfleet_agent/raft": {
        "trio",
        "sqlite3",
        "socket",
        "time",
        "threading",
        "asyncio",
        "raftfleet_agent.storage",
        "raftfleet_agent.host",
        "raftfleet_agent.transport",
        "raftfleet_agent.fleet",
    },
    "raftfleet_agent/statemachine": {
        "trio",
        "sqlite3",
        "socket",
        "raftfleet_agent.host",
        "raftfleet_agent.transport",
        "raftfleet_agent.fleet",
    },
    "raftfleet_agent/storage": {
        "trio",
        "raftfleet_agent.host",
        "raftfleet_agent.fleet",
        "raftfleet_agent.transport",
    },
    "raftfleet_agent/sim": {"trio", "socket", "time", "sqlite3"},
    "raftfleet_cli": {
        "trio",
        "raftfleet_agent.host",
        "raftfleet_agent.fleet",
        "raftfleet_agent.transport",
        "raftfleet_agent.storage",
    },
}


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_downward(layer: str) -> None:
    bad = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        if layer == "raftfleet_agent/sim" and path.name == "__main__.py":
            continue  # the command-line entry point may time its own run
        for name in _imports(path):
            for f in FORBIDDEN[layer]:
                if name == f or name.startswith(f + "."):
                    bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff", path=str(pathlib.Path(sys.executable).parent)) or shutil.which(
        "ruff"
    )
    if ruff is None:
        pytest.skip("ruff not installed")
    out = subprocess.run(
        [ruff, "check", "--quiet", str(ROOT)], check=False, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
