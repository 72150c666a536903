"""`raftfleet drain`: deactivate the agent, then watch its replicas move away.

The agent does the work (the fleet's reconciler moves replicas and
leaderships, rate-limited); the CLI asks for it (`deactivate`) and follows
the `drain_watch` stream of progress events

    {"replicas": n, "leaders": n, "moves_in_flight": n, ...}

until an event says no replica and no leadership is left. How progress is
shown depends on where it goes:

- `-o json`: every event as one JSON object per line on stdout, then a final
  {"event": "complete"} (exit 0), {"event": "timeout"} (exit 4) or
  {"event": "interrupted"} (exit 130).
- stderr is a terminal: rich progress bars (replicas and leaders left, moves
  in flight, elapsed time).
- otherwise: one timestamped line on stderr per change (for logs and CI).

Stopping the watch (timeout, Ctrl-C) never stops the drain: the agent is
deactivated and keeps moving replicas away; run `raftfleet drain` again to
watch.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from raftfleet_cli.failures import INTERRUPTED, TIMED_OUT, Failure
from raftfleet_cli.output import Output, make_console, note
from raftfleet_cli.views import drain_event_view, status_view

if TYPE_CHECKING:
    from raftfleet_cli.main import State

STREAM_GRACE_S = 5.0  # the agent's own watch timeout answers first
GROUPS_SHOWN_MAX = 10  # groups named when a watch times out


def run_drain(state: State, *, timeout_s: float | None, detach: bool, force: bool) -> None:
    from raftfleet_cli.client import CallTimeout, ControlError

    status = status_view(state.call("status", "drain"))
    name = status["name"] or "the agent"
    if status["state"] != "draining":
        _deactivate(state, force)
    out = state.out
    if detach:
        if out.json:
            out.document({"event": "deactivated", "agent": status["name"]})
        else:
            note(f"{name} is draining; watch it with `raftfleet drain`")
        return
    display = _display(out, name)
    started = time.monotonic()
    last: dict[str, Any] = {}
    try:
        args = {} if timeout_s is None else {"timeout_s": timeout_s}
        state.check_args("drain_watch", args)
        wait = None if timeout_s is None else timeout_s + STREAM_GRACE_S
        with state.client.stream("drain_watch", wait, **args) as stream:
            for raw in stream:
                last = drain_event_view(raw, time.monotonic() - started)
                display.update(last)
                if last["replicas"] == 0 and last["leaders"] == 0:
                    break
                if timeout_s is not None and time.monotonic() - started > timeout_s:
                    raise CallTimeout("drain watch deadline")
            else:
                final = stream.result if isinstance(stream.result, dict) else {}
                last = {**last, **drain_event_view(final, time.monotonic() - started)}
                if not (last["replicas"] == 0 and last["leaders"] == 0):
                    raise CallTimeout("the agent ended the watch before the drain completed")
    except KeyboardInterrupt:
        display.finish("interrupted", last, time.monotonic() - started)
        raise Failure(
            f"interrupted: {name} keeps draining on the agent (watch again with "
            "`raftfleet drain`; re-activate with `raftfleet activate ZONE` to stop it)",
            INTERRUPTED,
        ) from None
    except (CallTimeout, ControlError) as exc:
        if isinstance(exc, ControlError) and exc.code == "unknown_op":
            display.close()
            raise Failure(
                f"drain: {name} is deactivated, but the agent at {state.addr} cannot report "
                "drain progress yet (an older agent); watch `raftfleet status` until its "
                "replicas and leaders are 0"
            ) from None
        if isinstance(exc, ControlError) and exc.code != "timeout":
            display.close()
            with state.failing("drain"):
                raise
        elapsed = time.monotonic() - started
        if isinstance(exc, ControlError):
            last = {**last, **_left_at_timeout(exc.details)}
        display.finish("timeout", last, elapsed)
        raise Failure(
            f"drain: {name} still has {_left(last)} after {elapsed:.0f} s; the drain "
            "continues on the agent (run `raftfleet drain` again to keep watching)",
            TIMED_OUT,
        ) from None
    except BaseException:
        display.close()
        with state.failing("drain"):
            raise
    display.finish("complete", last, time.monotonic() - started)


def _deactivate(state: State, force: bool) -> None:
    from raftfleet_cli.client import ControlError

    try:
        state.call_raw("deactivate", force=force)
    except ControlError as exc:
        if exc.code != "not_active":  # inactive already: watch whatever is left
            with state.failing("drain (deactivate)"):
                raise


def _left_at_timeout(details: dict[str, Any]) -> dict[str, Any]:
    """What the agent said was left when its watch timed out (shape-checked)."""
    left: dict[str, Any] = {}
    for key in ("replicas", "leaders"):
        value = details.get(key)
        if type(value) is int and value >= 0:
            left[key] = value
    groups = details.get("groups_left")
    if isinstance(groups, list) and all(isinstance(g, str) for g in groups):
        left["groups_left"] = groups[:GROUPS_SHOWN_MAX]
    return left


def _left(event: dict[str, Any]) -> str:
    def n(key: str) -> str:
        value = event.get(key)
        return "?" if value is None else str(value)

    text = f"{n('replicas')} replicas and {n('leaders')} leaderships"
    groups = event.get("groups_left")
    if groups:
        replicas = event.get("replicas")
        more = ", ..." if isinstance(replicas, int) and replicas > len(groups) else ""
        text += f" (groups {', '.join(groups)}{more})"
    return text


def _display(out: Output, name: str) -> _Display:
    if out.json:
        return _JsonEvents(out)
    if sys.stderr.isatty():
        return _Bars(name, color=out.color)
    return _Lines(name)


class _Display:
    def update(self, event: dict[str, Any]) -> None:
        raise NotImplementedError

    def finish(self, outcome: str, last: dict[str, Any], elapsed_s: float) -> None:
        """outcome: complete, timeout or interrupted."""
        self.close()

    def close(self) -> None:
        pass


class _JsonEvents(_Display):
    def __init__(self, out: Output) -> None:
        self.out = out

    def update(self, event: dict[str, Any]) -> None:
        self.out.document(event)

    def finish(self, outcome: str, last: dict[str, Any], elapsed_s: float) -> None:
        final = {**last, "event": outcome, "elapsed_s": round(elapsed_s, 1)}
        self.out.document(final)


class _Lines(_Display):
    """One timestamped line per change, for logs."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.shown: tuple[object, ...] | None = None

    def update(self, event: dict[str, Any]) -> None:
        key = (event["replicas"], event["leaders"], event["moves_in_flight"])
        if key == self.shown:
            return
        self.shown = key
        moves = event["moves_in_flight"]
        in_flight = "" if moves is None else f", {moves} moves in flight"
        self._line(f"{_left(event)} left{in_flight} ({event['elapsed_s']:.1f} s)")

    def finish(self, outcome: str, last: dict[str, Any], elapsed_s: float) -> None:
        if outcome == "complete":
            self._line(f"drained: no replicas or leaderships left ({elapsed_s:.1f} s)")
        else:
            self._line(f"{outcome}: {_left(last)} left; the drain continues on the agent")

    def _line(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        note(f"{stamp} drain {self.name}: {text}")


class _Bars(_Display):
    """rich progress bars on the terminal (stderr)."""

    def __init__(self, name: str, *, color: bool) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.name = name
        self.console = make_console(sys.stderr, color=color, stderr=True)
        self.progress = Progress(
            TextColumn("{task.description:<14}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self.tasks = {
            key: self.progress.add_task(f"{key} moved", total=None, info="")
            for key in ("replicas", "leaders")
        }
        self.totals: dict[str, int] = {}
        self.moves = self.progress.add_task("moves", total=None, info="")
        self.progress.start()
        self.started = True

    def update(self, event: dict[str, Any]) -> None:
        for key, task in self.tasks.items():
            left = event[key]
            if left is None:
                continue
            total = max(self.totals.get(key, 0), left)
            self.totals[key] = total
            info = f"{left} {key} left"
            self.progress.update(task, total=total, completed=total - left, info=info)
        moves = event["moves_in_flight"]
        info = "" if moves is None else f"{moves} in flight"
        self.progress.update(self.moves, info=info)

    def finish(self, outcome: str, last: dict[str, Any], elapsed_s: float) -> None:
        self.close()
        if outcome == "complete":
            self.console.print(f"{self.name} drained in {elapsed_s:.1f} s")
        else:
            self.console.print(f"{outcome}: {_left(last)} left; the drain continues on the agent")

    def close(self) -> None:
        if self.started:
            self.started = False
            self.progress.stop()
