"""Errors the core raises to its caller (local misuse or a request it cannot serve now).

Each carries a machine-readable `code`; the host maps them to control-API errors.
"""

from __future__ import annotations

from raftfleet_agent.raft.types import ReplicaId


class RaftError(Exception):
    code = "raft_error"


class NotLeader(RaftError):
    """This replica cannot serve the request; `leader` is the best-known leader, if any."""

    code = "not_leader"

    def __init__(self, leader: ReplicaId | None) -> None:
        super().__init__(f"not the leader (leader: {leader if leader else 'unknown'})")
        self.leader = leader


class ProposalDropped(RaftError):
    """The leader refuses new proposals for now (e.g. a leadership transfer is under way)."""

    code = "proposal_dropped"


class MembershipError(RaftError):
    """A membership change was refused; `code` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class TransferError(RaftError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class SafetyViolation(AssertionError):
    """The core saw something Raft guarantees cannot happen (a bug or a corrupted store)."""
