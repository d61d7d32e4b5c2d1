"""The timeline scheduler is pure: fed a fake ``now``, it hands out each due event once, in order."""

from __future__ import annotations

import pytest

from koala_async.tools.timeline import Event, Scheduler, availability_events, resolve_target

IDS = [f"client-{i}" for i in range(6)]
GROUPS = {"client": IDS}


def test_due_returns_each_event_once_in_time_order() -> None:
    events = (Event.expand(10, "straggle", ["client-1"], 5) + Event.expand(3, "crash", ["client-0"], 0)
              + Event.expand(12, "restart", ["server"], 2))
    scheduler = Scheduler(events)
    assert scheduler.next_at == 3
    assert scheduler.due(0.0) == []
    assert [(e.action, e.target) for e in scheduler.due(3.0)] == [("kill", "client-0")]
    assert scheduler.due(3.5) == []
    assert [(e.at, e.action) for e in scheduler.due(14.9)] == [(10, "pause"), (12, "kill"), (14, "start")]
    assert not scheduler.done
    assert [(e.at, e.action) for e in scheduler.due(100.0)] == [(15, "resume")]
    assert scheduler.done and scheduler.next_at is None
    assert [now for now, _ in scheduler.fired] == [3.0, 14.9, 14.9, 14.9, 100.0]


def test_same_time_keeps_file_order() -> None:
    scheduler = Scheduler(Event.expand(5, "crash", ["client-2", "client-0"], 0))
    assert [e.target for e in scheduler.due(5)] == ["client-2", "client-0"]


@pytest.mark.parametrize(("target", "expected"), [
    ("third of clients", ["client-0", "client-1"]),
    ("a quarter of clients", ["client-0", "client-1"]),
    ("half of client", ["client-0", "client-1", "client-2"]),
    ("1/3 of clients", ["client-0", "client-1"]),
    ("50% of clients", ["client-0", "client-1", "client-2"]),
    ("1 of clients", ["client-0"]),
    ("client-4", ["client-4"]),
    ("server", ["server"]),
    ("broker", ["broker"]),
    ("clients", IDS),
])
def test_targets(target: str, expected: list[str]) -> None:
    assert resolve_target(target, IDS, GROUPS) == expected


@pytest.mark.parametrize("target", ["client-9", "third of nobody", "lots of clients", "9 of clients"])
def test_bad_targets(target: str) -> None:
    with pytest.raises(ValueError):
        resolve_target(target, IDS, GROUPS)


def test_availability_to_events() -> None:
    events = availability_events({"a": [[30, 50], [0, 10]], "b": [[0, 500]]}, "leave", duration=100)
    assert [(e.at, e.action, e.target) for e in sorted(events, key=lambda e: e.at)] == [
        (10.0, "stop", "a"), (30.0, "start", "a"), (50.0, "stop", "a")]
    with pytest.raises(ValueError, match="overlap"):
        availability_events({"a": [[0, 10], [5, 20]]}, "leave", duration=100)
