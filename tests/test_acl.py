"""The authorizer's decisions: what a rule set allows (roles included), asked once
or many times, and never an answer left over from rules that changed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edge.acl import ANY, ROLE, Authorizer, Operation, Rule, check_rule

PRINCIPALS = ["ada", "bob", "site-north", ANY, f"{ROLE}ops"]
RESOURCES = ["topic:t", "topic:tele*", "topic:telemetry", "group:g", "cluster", "*"]
ASKED = ["topic:t", "topic:telemetry", "group:g", "cluster"]


def rule(principal: str, operation: Operation, resource: str) -> Rule:
    return check_rule(principal, operation.value, resource)


rules = st.lists(st.one_of(
    st.builds(rule, st.sampled_from(PRINCIPALS),
              st.sampled_from([op for op in Operation if op is not Operation.MEMBER]),
              st.sampled_from(RESOURCES)),
    st.builds(lambda p: rule(p, Operation.MEMBER, f"{ROLE}ops"),
              st.sampled_from(["ada", "bob", ANY]))), max_size=8)
questions = st.lists(st.tuples(st.sampled_from(["ada", "bob", "site-north", f"{ROLE}ops"]),
                               st.sampled_from([op for op in Operation
                                                if op is not Operation.MEMBER]),
                               st.sampled_from(ASKED)), min_size=1, max_size=12)


def fresh(rules: list[Rule], principal: str, op: Operation, resource: str) -> bool:
    return Authorizer(enabled=True, rules=rules, superusers=["root"]).allows(
        principal, op, resource)


@settings(max_examples=300, deadline=None)
@given(first=rules, second=rules, asked=questions)
def test_asking_again_and_changing_the_rules_give_what_a_fresh_authorizer_says(
        first: list[Rule], second: list[Rule], asked: list[tuple[str, Operation, str]]) -> None:
    auth = Authorizer(enabled=True, rules=first, superusers=["root"])
    for _ in range(2):  # the second round is answered from the decisions made
        for q in asked:
            assert auth.allows(*q) == fresh(first, *q)
    auth.update(enabled=True, rules=second)
    for q in asked:
        assert auth.allows(*q) == fresh(second, *q)
    auth.update(enabled=True, rules=second, superusers=["ada"])
    assert all(auth.allows("ada", op, res) for _, op, res in asked)
    auth.update(enabled=False, rules=[])
    assert all(auth.allows(*q) for q in asked)


def test_a_role_grants_its_members_and_the_decision_follows_a_removed_membership() -> None:
    grant = rule(f"{ROLE}ops", Operation.PRODUCE, "topic:tele*")
    member = rule("ada", Operation.MEMBER, f"{ROLE}ops")
    auth = Authorizer(enabled=True, rules=[grant, member])
    assert auth.allows("ada", Operation.PRODUCE, "topic:telemetry")
    assert not auth.allows("bob", Operation.PRODUCE, "topic:telemetry")
    assert not auth.allows(f"{ROLE}ops", Operation.PRODUCE, "topic:telemetry")
    auth.update(enabled=True, rules=[grant])
    assert not auth.allows("ada", Operation.PRODUCE, "topic:telemetry")
