"""Presence follows the clients that are around: a goodbye or a last will forgets the client and
queues its departure for the learner; coming back before the learner took it cancels it."""

from __future__ import annotations

from koala_async.core.envelope import Status
from koala_async.core.server_state import ServerState


def status(sender: str, online: bool, state: str) -> Status:
    return Status(sender=sender, seq=1, role="client", online=online, state=state)


def never(*_: object) -> None:
    return None


def test_departed_clients_leave_presence_and_are_handed_to_the_learner_once() -> None:
    state = ServerState(never)
    for i in range(3):
        state.on_status(status(f"c{i}", True, "idle"), f"c{i}", 0.0)
    assert state.online_count == 3
    assert state.on_status(status("c0", False, "left"), "c0", 1.0)  # goodbye
    assert state.on_status(status("c1", False, "lost"), "c1", 1.0)  # last will
    assert set(state.presence) == {"c2"} and state.online_count == 1
    assert state.take_departures() == ["c0", "c1"]
    assert state.take_departures() == []  # handed over once


def test_a_client_back_before_the_learner_took_its_departure_is_not_forgotten() -> None:
    state = ServerState(never)
    state.on_status(status("c0", True, "idle"), "c0", 0.0)
    state.on_status(status("c0", False, "lost"), "c0", 1.0)
    state.on_status(status("c0", True, "idle"), "c0", 2.0)  # reconnected
    assert state.take_departures() == [] and state.presence["c0"].online


def test_offline_without_leaving_is_kept_and_presence_is_bounded_by_clients_around() -> None:
    state = ServerState(never)
    state.on_status(status("c0", False, "done"), "c0", 0.0)  # finished, still there: not a departure
    assert "c0" in state.presence and state.take_departures() == []
    for i in range(1_000):  # a thousand clients come and go: nothing of them stays
        state.on_status(status(f"x{i}", True, "idle"), f"x{i}", 0.0)
        state.on_status(status(f"x{i}", False, "left"), f"x{i}", 0.0)
    assert set(state.presence) == {"c0"} and len(state.take_departures()) == 1_000
