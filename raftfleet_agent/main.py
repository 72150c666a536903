"""`raftfleet-agent`: the daemon's command line.

Exit codes: 0 after a clean stop (SIGTERM/SIGINT), 2 for bad configuration,
1 for anything that stops the agent at start or later (a corrupt store, an
address in use, a failed fsync). Errors are one line on stderr.
"""

from __future__ import annotations

import errno
import logging
import os
import sys

import click

from raftfleet_agent.config import AgentConfig, ConfigError, explain_config, load_config


def _setup_logging(name: str, level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=level.upper(),
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
    )


def _fail(message: str, code: int) -> None:
    click.echo(f"raftfleet-agent: {message}", err=True)
    sys.exit(code)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--name", help="This agent's unique name (default: the host name).")
@click.option("--data-dir", help="Where the log store and identity live.")
@click.option("--listen", help="HOST:PORT for peer agents.")
@click.option("--advertise", help="HOST:PORT peers should dial (default: --listen).")
@click.option("--control-socket", help="Unix socket for the CLI.")
@click.option("--control-listen", help="Optional TCP HOST:PORT for the CLI (needs a token).")
@click.option("--control-token-file", help="File holding the TCP control bearer token.")
@click.option("--cluster-secret-file", help="File holding the cluster secret (>= 16 bytes).")
@click.option("--zone", help="Activate in this zone once joined.")
@click.option("--join", multiple=True, help="HOST:PORT of an agent of the cluster (repeatable).")
@click.option("--in-memory", is_flag=True, default=False, help="Keep everything in memory.")
@click.option("--config", "config_path", help="TOML configuration file.")
@click.option("--log-level", help="debug, info, warning or error.")
@click.option(
    "--metrics-listen",
    help="HOST:PORT to serve Prometheus metrics (/metrics) and a health check (/health) on.",
)
@click.option(
    "--check-config",
    is_flag=True,
    default=False,
    help="Validate the configuration, print every setting and where it came from, and exit.",
)
@click.version_option(package_name="raftfleet", prog_name="raftfleet-agent")
def main(config_path: str | None, check_config: bool, **cli: object) -> None:
    """Host replicas of many Raft groups; talk to peers over TCP and to the CLI over a socket."""
    if check_config:
        _check_config(cli, config_path)
        return
    try:
        config = load_config(cli, os.environ, config_path)
    except ConfigError as e:
        _fail(str(e), 2)
    _setup_logging(config.name, config.log_level)
    from raftfleet_agent.agent import serve
    from raftfleet_agent.identity import IdentityError
    from raftfleet_agent.storage import StoreError

    try:
        serve(config, reload=lambda: load_config(cli, os.environ, config_path))
    except (StoreError, IdentityError) as e:
        _fail(str(e), 1)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            _fail(f"address already in use: {e.strerror} ({e.filename or config.listen})", 1)
        _fail(f"{type(e).__name__}: {e}", 1)
    except BaseExceptionGroup as eg:  # an error from inside the agent's nursery
        first = eg.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        if isinstance(first, KeyboardInterrupt):
            return
        logging.getLogger("raftfleet.agent").critical("agent stopped", exc_info=first)
        _fail(f"{type(first).__name__}: {first}", 1)
    except KeyboardInterrupt:
        pass


def _check_config(cli: dict[str, object], config_path: str | None) -> None:
    """`--check-config`: what the agent would run with, without starting it (exit 0 or 2).

    Before a restart (`systemctl restart` after editing agent.toml), so a typo
    is found while the old agent still runs.
    """
    try:
        config, origins = explain_config(cli, os.environ, config_path)
    except ConfigError as e:
        _fail(str(e), 2)
    problems = _path_problems(config)
    for setting in sorted(origins):
        click.echo(f"{setting} = {_shown(config, setting)}  # {origins[setting]}")
    for problem in problems:
        click.echo(f"raftfleet-agent: {problem}", err=True)
    if problems:
        sys.exit(2)
    click.echo(f"configuration OK (config file: {config.config_file or 'none'})")


def _shown(config: AgentConfig, setting: str) -> str:
    """A setting's value for --check-config: secrets by their length only."""
    value = getattr(config, setting)
    if value is None or value == ():
        return "(not set)"
    if setting == "cluster_secret_file":
        return f"{value} ({len(config.cluster_secret)} bytes)"
    if setting == "control_token_file":
        token = config.control_token
        return f"{value} ({len(token)} bytes)" if token else f"{value} (unused: no control_listen)"
    if isinstance(value, tuple):
        return ", ".join(map(str, value))
    return str(value)


def _path_problems(config: AgentConfig) -> list[str]:
    """Directories the agent must create or write to, checked the way it will use them."""
    needed = [("control_socket", os.path.dirname(config.control_socket) or ".")]
    if not config.in_memory:
        needed.insert(0, ("data_dir", config.data_dir))
    problems = []
    for setting, path in needed:
        existing = path
        while not os.path.exists(existing):  # the agent creates what is missing
            existing = os.path.dirname(existing) or "."
        if not os.path.isdir(existing):
            problems.append(f"{setting}: {existing} is not a directory")
        elif not os.access(existing, os.W_OK | os.X_OK):
            problems.append(f"{setting}: {existing} is not writable by this user")
    return problems


if __name__ == "__main__":
    main()
