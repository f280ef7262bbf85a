"""Where the ranks of a multi-node job meet.

The controller numbers a job's runs by node rank. The agent of node rank 0 reserves
a port on its advertise address and reports `host:port` with its run's first report;
the controller hands it to the siblings' agents in their assignments. Every node
then starts its ranks under torchrun's c10d rendezvous at that endpoint (node rank 0
hosts its store), so they meet whatever order they start in. A rank that waits past
the agent's `rendezvous_timeout` (for the endpoint, or in torchrun for the others)
fails with reason RendezvousTimeout, which says which peer never came.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from mlsm.agent.runtimes import StartError

__all__ = ["Meeting", "RendezvousTimeout", "advertise_address", "failed_to_meet", "reserve_port"]


class RendezvousTimeout(StartError):
    """The ranks did not all meet within the agent's rendezvous_timeout."""

    reason = "RendezvousTimeout"


@dataclass(frozen=True, slots=True)
class Meeting:
    """A multi-node run's part in its attempt's rendezvous."""

    endpoint: str
    """host:port of node rank 0's c10d store."""
    id: str
    """One rendezvous per attempt: `<job>-<attempt>`."""
    nodes: int
    rank: int
    """This node's rank; 0 hosts the store."""
    address: str
    """This node's advertise address (torchrun's --local-addr)."""
    timeout: float


def advertise_address(controller: str) -> str:
    """The address this server reaches the controller from: the kernel's choice of
    source address for that destination (a UDP socket's connect sends nothing)."""
    parts = urlsplit(controller)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        family, kind, proto, _, where = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.connect(where)
            return str(probe.getsockname()[0])
    except OSError:
        return socket.getfqdn()


def reserve_port(address: str) -> int:
    """A port free on `address` now, for torchrun to bind a moment later (as its
    --standalone mode picks one)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as held:
        try:
            held.bind((address, 0))
        except OSError:  # a name, or an address behind NAT: any free port here
            held.bind(("", 0))
        return int(held.getsockname()[1])


_MARKERS = ("RendezvousTimeoutError", "RendezvousConnectionError", "DistStoreError")
"""What torchrun's traceback names when the ranks did not all meet."""


def failed_to_meet(log: Path, *, tail: int = 64 * 1024) -> bool:
    """Whether a failed run's log ends in torchrun giving up on the rendezvous."""
    try:
        with log.open("rb") as handle:
            handle.seek(max(log.stat().st_size - tail, 0))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return False
    return any(marker in text for marker in _MARKERS)
