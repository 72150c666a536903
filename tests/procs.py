"""Real agent processes for tests: loopback "hosts" 127.0.0.11, .12, ..., temp dirs.

Every process a test starts is stopped by that test (the fixture's finally),
by pid. Waits poll with deadlines; nothing sleeps a fixed time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from raftfleet_cli.client import Client, parse_addr

SECRET = b"test-cluster-secret-0123456789abcdef"


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(
    cond: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> object:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = cond()
            if value:
                return value
        except ProcessExited:
            raise
        except Exception as e:  # the condition may fail until the system is up
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last!r})")


class ProcessExited(AssertionError):
    pass


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAFTFLEET_", "NOTIFY_SOCKET"))}
    env.update(extra)
    return env


class AgentProc:
    def __init__(
        self,
        name: str,
        host: str,
        base: Path,
        *,
        in_memory: bool = False,
        join: list[str] | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.port = free_port(host)
        self.dir = base / name
        self.data_dir = self.dir / "data"
        self.sock = str(self.dir / "agent.sock")
        self.secret_file = base / "secret"
        self.log_path = self.dir / "agent.log"
        self.in_memory = in_memory
        self.join = join or []
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.secret_file.exists():
            self.secret_file.write_bytes(SECRET)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def argv(self) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "raftfleet_agent.main",
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--listen",
            self.address,
            "--control-socket",
            self.sock,
            "--cluster-secret-file",
            str(self.secret_file),
            "--log-level",
            "info",
        ]
        for j in self.join:
            args += ["--join", j]
        if self.in_memory:
            args.append("--in-memory")
        return args + self.extra_args

    def start(self, env: dict[str, str] | None = None, wait: bool = True) -> AgentProc:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=log, env=env or clean_env())
        log.close()
        if wait:
            wait_for(self.ping, 20, f"agent {self.name} to answer on its control socket")
        return self

    def ping(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise ProcessExited(f"agent {self.name} exited {self.proc.returncode}:\n{self.log()}")
        with self.client(timeout=1.0) as c:
            return c.call("ping") == "pong"

    def client(self, timeout: float = 5.0) -> Client:
        return Client(parse_addr(f"unix://{self.sock}"), connect_timeout=timeout)

    def call(self, op: str, timeout: float = 10.0, **args: object) -> object:
        with self.client() as c:
            return c.call(op, timeout=timeout, **args)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """kill -9, and reap."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@contextlib.contextmanager
def agents(
    base: Path, n: int, *, first_octet: int = 11, in_memory: bool = False, start: bool = True
) -> Iterator[list[AgentProc]]:
    """n agents on 127.0.0.<first_octet>..; the others join the first. Always stopped."""
    procs: list[AgentProc] = []
    try:
        for i in range(n):
            a = AgentProc(f"a{i + 1}", f"127.0.0.{first_octet + i}", base, in_memory=in_memory)
            if i:
                a.join = [procs[0].address]
            procs.append(a)
        if start:
            for a in procs:
                a.start()
        yield procs
    finally:
        for a in procs:
            a.stop(timeout=10)


def connected_to_all(agents_: list[AgentProc]) -> bool:
    for a in agents_:
        peers = a.call("status")["cluster"]["peers"]  # type: ignore[index]
        others = {b.name for b in agents_ if b is not a}
        if not others <= {n for n, p in peers.items() if p["reachable"]}:
            return False
    return True
