"""Real agents whose peer traffic all crosses one FaultProxy (the cut tests)."""

from __future__ import annotations

from tests.faults.proxy import FaultProxy
from tests.procs import AgentProc, connected_to_all, wait_for


def start_behind(proxy: FaultProxy, procs: list[AgentProc], zones: list[str]) -> None:
    """Start `procs` behind `proxy`, connected to each other and active in `zones`.

    Each agent advertises its proxy address, so every peer connection is
    dialed through the proxy; the others join the first.
    """
    advertised = {}
    for a in procs:
        host, port = proxy.add_agent(a.name, a.host, a.port)
        advertised[a.name] = f"{host}:{port}"
        a.extra_args = ["--advertise", advertised[a.name]]
    for a in procs[1:]:
        a.join = [advertised[procs[0].name]]
    for a in procs:
        a.start()
    wait_for(lambda: connected_to_all(procs), 30, "agents to connect")
    for a, zone in zip(procs, zones, strict=True):
        a.call("activate", zone=zone)
