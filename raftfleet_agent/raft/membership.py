"""Single-server membership changes: validate one change, build the next `Config`.

Copy, apply, check: a change builds a new configuration and checks it before
the caller replaces the live one. Health rules (is the learner caught up, would
a removal break quorum) need the leader's progress and live in the member.
"""

from __future__ import annotations

import enum

from raftfleet_agent.raft.errors import MembershipError
from raftfleet_agent.raft.types import Config, ReplicaId


class ConfOp(enum.Enum):
    ADD_LEARNER = "add_learner"
    PROMOTE = "promote"
    REMOVE = "remove"


def apply_change(config: Config, op: ConfOp, replica: ReplicaId) -> Config:
    """The configuration after `op`, or MembershipError if `op` makes no sense for `config`."""
    if op is ConfOp.ADD_LEARNER:
        if replica in config.members:
            raise MembershipError("already_member", f"{replica} is already a member")
        new = Config(config.voters, config.learners | {replica})
    elif op is ConfOp.PROMOTE:
        if replica not in config.learners:
            raise MembershipError("not_learner", f"{replica} is not a learner")
        new = Config(config.voters | {replica}, config.learners - {replica})
    else:
        if replica not in config.members:
            raise MembershipError("not_member", f"{replica} is not a member")
        new = Config(config.voters - {replica}, config.learners - {replica})
    if not new.voters:
        raise MembershipError("last_voter", "cannot remove the last voter of a group")
    return new
