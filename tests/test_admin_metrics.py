"""The metric helpers that need no daemon: membership transitions counted from successive
member tables, operation labels."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from p2pfs.address import Address
from p2pfs.node.admin.metrics import EVENTS_KEPT, MembershipEvents, operation_name
from p2pfs.membership import MemberState
from p2pfs.membership.view import Member


def member(node_id: str, state: MemberState, incarnation: int = 1) -> Member:
    return Member(node_id=node_id, address=Address("127.0.0.1", 7000), zone="", capacity_bytes=1,
                  protocol_version=1, incarnation=incarnation, state=state, state_since_s=0.0)


def counts(registry: CollectorRegistry) -> dict[str, float]:
    found = {}
    for state in ("alive", "suspect", "dead", "left"):
        found[state] = registry.get_sample_value("p2pfs_membership_transitions_total", {"state": state}) or 0.0
    found["refutations"] = registry.get_sample_value("p2pfs_membership_refutations_total")
    return found


def test_transitions_suspicions_deaths_and_refutations_are_counted_once_each():
    registry = CollectorRegistry()
    events = MembershipEvents(registry)
    A, S, D, L = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT
    tables = [
        [member("a", A), member("b", A)],           # first sight: two joins
        [member("a", A), member("b", A)],           # nothing changed: nothing counted
        [member("a", A), member("b", S)],           # b suspected
        [member("a", A), member("b", A, 2)],        # b refuted with a higher incarnation
        [member("a", A), member("b", S, 2)],
        [member("a", A), member("b", D, 2)],        # b dead
        [member("a", A), member("b", A, 3)],        # b back: alive, not a refutation
        [member("a", L), member("b", A, 3)],        # a left
    ]
    for now_ms, table in enumerate(tables):
        events.update(table, now_ms)
    assert counts(registry) == {"alive": 4, "suspect": 2, "dead": 1, "left": 1, "refutations": 1}
    assert [(e.node_id, e.before, e.after) for e in events.recent][-3:] == [
        ("b", "suspect", "dead"), ("b", "dead", "alive"), ("a", "alive", "left")]


def test_recent_events_are_bounded():
    events = MembershipEvents(CollectorRegistry())
    for i in range(EVENTS_KEPT * 3):
        events.update([member("a", MemberState.SUSPECT if i % 2 else MemberState.ALIVE)], i)
    assert len(events.recent) == EVENTS_KEPT and events.recent[-1].at_ms == EVENTS_KEPT * 3 - 1


def test_operation_labels_are_snake_case_message_names():
    class PutFile: ...
    class StatusRequest: ...
    class HasChunks: ...
    class PutFileKnown: ...  # a resumable put is a put to whoever reads the metrics
    class GetFileFrom: ...
    assert [operation_name(t) for t in (PutFile, StatusRequest, HasChunks, PutFileKnown, GetFileFrom)] == \
        ["put_file", "status_request", "has_chunks", "put_file", "get_file"]
