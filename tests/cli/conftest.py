"""Helpers for the CLI tests: run `raftfleet` in-process or as a process, and a fake agent.

The fake agent is the real `ControlServer` (trio, in a background thread)
with a scripted handler, for ops the agent does not implement yet and for
situations a real agent makes hard to reach (a drain that completes on cue).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from raftfleet_cli.main import main

WAIT_S = 5.0
Handler = Callable[[dict[str, Any]], Any]


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"exit {self.code}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAFTFLEET_", "NO_COLOR"))}
    env.update(extra)
    return env


def run(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Ran:
    """`raftfleet ARGS` in this process (fast); stdin and stdout are not terminals."""
    runner = CliRunner()
    clean = {k: None for k in os.environ if k.startswith("RAFTFLEET_") or k == "NO_COLOR"}
    result = runner.invoke(main, list(args), input=input, env={**clean, **(env or {})})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)


def run_process(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Ran:
    """`raftfleet ARGS` as a real process (exit codes, start-up, terminals)."""
    proc = subprocess.run(
        [sys.executable, "-m", "raftfleet_cli.main", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env or cli_env(),
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return Ran(proc.returncode, proc.stdout, proc.stderr)


@dataclass
class FakeAgent:
    """A ControlServer on a Unix socket in a thread; `answers[op]` scripts each op.

    An answer is a value, an exception to raise, or a callable(args, events)
    (an async function for streaming ops). Ops without an answer get
    `unknown_op`, like an older agent. `calls` records (op, args).
    """

    path: str
    answers: dict[str, Any] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def addr(self) -> str:
        return f"unix://{self.path}"

    def ops(self) -> list[str]:
        return [op for op, _ in self.calls]

    async def handle(self, op: str, args: dict[str, Any], events: Any) -> Any:
        from raftfleet_agent.control.protocol import ControlError

        self.calls.append((op, args))
        if op not in self.answers:
            raise ControlError("unknown_op", f"this agent does not support {op!r} yet")
        answer = self.answers[op]
        if isinstance(answer, BaseException):
            raise answer
        if callable(answer):
            result = answer(args, events)
            if hasattr(result, "__await__"):
                result = await result
            return result
        return answer


@pytest.fixture
def fake_agent(tmp_path: Path) -> Iterator[FakeAgent]:
    import trio

    from raftfleet_agent.control.server import ControlServer

    agent = FakeAgent(str(tmp_path / "fake.sock"))
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        box["token"] = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            box["scope"] = nursery.cancel_scope
            await nursery.start(ControlServer(agent).serve_unix, agent.path)
            ready.set()

    def thread_main() -> None:
        try:
            trio.run(serve)
        except BaseException as exc:
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=thread_main, daemon=True)
    thread.start()
    assert ready.wait(WAIT_S), "the fake agent did not start"
    if "error" in box:
        raise box["error"]
    try:
        yield agent
    finally:
        trio.from_thread.run_sync(box["scope"].cancel, trio_token=box["token"])
        thread.join(WAIT_S)
        assert not thread.is_alive()
