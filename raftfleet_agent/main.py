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

from raftfleet_agent.config import ConfigError, load_config


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
@click.option("--metrics-listen", help="HOST:PORT to serve Prometheus metrics on.")
def main(config_path: str | None, **cli: object) -> None:
    """Host replicas of many Raft groups; talk to peers over TCP and to the CLI over a socket."""
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


if __name__ == "__main__":
    main()
