"""When `group recover` is refused: the pure check on its own."""

from __future__ import annotations

from raftfleet_agent.fleet import recovery

MEMBERS = [
    {"agent": "a1", "role": "follower"},
    {"agent": "a2", "role": "follower"},
    {"agent": "a3", "role": "follower"},
    {"agent": "a4", "role": "learner"},
]


def test_a_majority_that_answers_elects_by_itself() -> None:
    why = recovery.refusal("g", MEMBERS, {"a1", "a2"}, {})
    assert why is not None and "2 of its 3 voters answer (a1, a2)" in why
    assert "wait for the election" in why
    # Learners do not count toward the majority.
    assert recovery.refusal("g", MEMBERS, {"a1", "a4"}, {}) is None


def test_a_lost_voter_that_another_agent_reaches_is_a_cut_not_a_loss() -> None:
    views = {"a2": (["a5"], []), "a3": ([], [])}
    why = recovery.refusal("g", MEMBERS, {"a1"}, views)
    assert why is not None and "a2 is reachable from a5" in why and "mend the network" in why


def test_an_agent_that_could_not_be_asked_holds_the_recovery() -> None:
    views = {"a2": ([], []), "a3": ([], ["a5"])}
    why = recovery.refusal("g", MEMBERS, {"a1"}, views)
    assert why is not None and "could not ask a5 whether they reach a3" in why


def test_a_majority_gone_for_every_agent_may_be_recovered() -> None:
    views = {"a2": ([], []), "a3": ([], [])}
    assert recovery.refusal("g", MEMBERS, {"a1"}, views) is None
    assert recovery.lost_voters(MEMBERS, {"a1"}) == ["a2", "a3"]
    # Views not gathered for an agent: nobody said they reach it.
    assert recovery.refusal("g", MEMBERS, {"a1"}, {}) is None


def test_one_voter_groups_and_a_lone_survivor() -> None:
    solo = [{"agent": "a1", "role": "leader"}]
    why = recovery.refusal("g", solo, {"a1"}, {})
    assert why is not None and "1 of its 1 voters" in why
    assert recovery.refusal("g", solo, set(), {"a1": ([], [])}) is None
