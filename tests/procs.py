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
        self.env: dict[str, str] = {}  # extra RAFTFLEET_* settings for this agent
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
        self.proc = subprocess.Popen(
            self.argv(), stdout=log, stderr=log, env=env or clean_env(**self.env)
        )
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
    base: Path,
    n: int,
    *,
    first_octet: int = 11,
    in_memory: bool = False,
    start: bool = True,
    env: dict[str, str] | None = None,
) -> Iterator[list[AgentProc]]:
    """n agents on 127.0.0.<first_octet>..; the others join the first. Always stopped."""
    procs: list[AgentProc] = []
    try:
        for i in range(n):
            a = AgentProc(f"a{i + 1}", f"127.0.0.{first_octet + i}", base, in_memory=in_memory)
            if i:
                a.join = [procs[0].address]
            a.env = dict(env or {})
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


class CounterLoad:
    """Background clients incrementing counters, bounded in time and count.

    Records, per group, how many `inc` were acknowledged and how many had an
    unknown outcome, and the longest stretch during which a client's requests
    kept failing (the "error window").
    """

    def __init__(
        self,
        agent: AgentProc,
        groups: list[str],
        *,
        max_ops: int = 100_000,
        max_seconds: float = 300.0,
    ) -> None:
        import threading

        self.agent = agent
        self.groups = groups
        self.acked = dict.fromkeys(groups, 0)
        self.unknown = dict.fromkeys(groups, 0)
        self.errors: list[str] = []
        self.longest_error_s = 0.0
        self.max_ops = max_ops
        self.deadline = time.monotonic() + max_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> CounterLoad:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        from raftfleet_cli.client import ClientError, ControlError

        ops = 0
        failing_since: float | None = None
        client = self.agent.client()
        seq = 0
        try:
            while (
                not self._stop.is_set() and ops < self.max_ops and time.monotonic() < self.deadline
            ):
                g = self.groups[ops % len(self.groups)]
                ops += 1
                seq += 1
                rid = [f"load-{id(self)}", seq]
                try:
                    client.call(
                        "command",
                        timeout=10,
                        group=g,
                        arg="inc",
                        request_id=rid,
                        timeout_s=1.0,
                        retries=5,
                    )
                    self.acked[g] += 1
                    if failing_since is not None:
                        self.longest_error_s = max(
                            self.longest_error_s, time.monotonic() - failing_since
                        )
                        failing_since = None
                except (ControlError, ClientError) as e:
                    self.unknown[g] += 1
                    self.errors.append(f"{g}: {e}")
                    if failing_since is None:
                        failing_since = time.monotonic()
                    client.close()
                    client = self.agent.client()
        finally:
            client.close()

    def check_counters(self, reader: AgentProc) -> None:
        """Every acknowledged inc is there; at most the unknown ones on top."""
        for g in self.groups:
            (value,) = wait_for(  # a 1-tuple: a zero count is a real answer
                lambda g=g: (reader.call("query", group=g, arg="get", timeout_s=2)["reply"],),
                20,
                f"a read of {g}",
            )
            assert self.acked[g] <= value <= self.acked[g] + self.unknown[g], (
                g,
                value,
                self.acked[g],
                self.unknown[g],
            )
