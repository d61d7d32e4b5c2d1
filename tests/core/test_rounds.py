"""The round barrier of the sync and fedavg baselines, driven by a fake clock (plain floats)."""

from __future__ import annotations

import pytest

from koala_async.core.rounds import RoundBarrier

TIMEOUT = 10.0


def play(steps: list[tuple]) -> RoundBarrier:
    """Run a script of (op, args...) against a barrier whose round 0 starts at t=0 with a, b, c."""
    barrier = RoundBarrier(TIMEOUT)
    barrier.start(0, 0.0, {"a", "b", "c"})
    for op, *args in steps:
        if op == "avail":
            barrier.update_available(args[0])
        elif op == "deliver":
            client, built_on, expected = args
            assert barrier.deliver(client, built_on).reason == expected, (client, built_on)
        elif op == "complete":
            now, expected = args
            assert barrier.complete(now) is expected, (now, barrier.summary())
        else:  # pragma: no cover - a typo in a table below
            raise AssertionError(op)
    return barrier


CASES = {
    "waits for every selected client": [
        ("deliver", "a", 0, "accepted"), ("deliver", "b", 0, "accepted"), ("complete", 5.0, False),
        ("deliver", "c", 0, "accepted"), ("complete", 5.0, True)],
    "no delivery never completes, even after the timeout": [
        ("complete", 1.0, False), ("complete", 1000.0, False)],
    "timeout completes a round that has deliveries": [
        ("deliver", "a", 0, "accepted"), ("complete", 9.9, False), ("complete", 10.0, True)],
    "a selected client that goes offline is no longer waited for": [
        ("deliver", "a", 0, "accepted"), ("deliver", "b", 0, "accepted"), ("avail", {"a", "b"}),
        ("complete", 1.0, True)],
    "coming back in the same round does not make it awaited again": [
        ("deliver", "a", 0, "accepted"), ("avail", {"a"}), ("avail", {"a", "b", "c"}),
        ("complete", 1.0, True)],
    "before the first delivery the selection follows availability": [
        ("avail", {"a", "b", "c", "d"}), ("deliver", "a", 0, "accepted"), ("deliver", "b", 0, "accepted"),
        ("deliver", "c", 0, "accepted"), ("complete", 1.0, False), ("deliver", "d", 0, "accepted"),
        ("complete", 1.0, True)],
    "after the first delivery a newcomer is not waited for but may deliver": [
        ("deliver", "a", 0, "accepted"), ("avail", {"a", "b", "c", "e"}), ("deliver", "b", 0, "accepted"),
        ("deliver", "c", 0, "accepted"), ("complete", 1.0, True)],
    "a late joiner's delivery counts": [
        ("deliver", "a", 0, "accepted"), ("deliver", "e", 0, "accepted"), ("avail", {"a", "e"}),
        ("complete", 1.0, True)],
    "older round is stale, newer is future, twice is a duplicate": [
        ("deliver", "a", 0, "accepted"), ("deliver", "a", 0, "duplicate_round"),
        ("deliver", "b", 1, "future_version")],
    "a completed round is closed: late deliveries are stale, it completes once": [
        ("deliver", "a", 0, "accepted"), ("deliver", "b", 0, "accepted"), ("deliver", "c", 0, "accepted"),
        ("complete", 1.0, True), ("complete", 2.0, False), ("deliver", "d", 0, "stale")],
    "everyone selected leaves after one delivery: complete with what arrived": [
        ("deliver", "a", 0, "accepted"), ("avail", set()), ("complete", 0.5, True)],
}


@pytest.mark.parametrize("steps", CASES.values(), ids=CASES.keys())
def test_round_barrier(steps: list[tuple]) -> None:
    play(steps)


def test_next_round_selects_who_is_available_then() -> None:
    barrier = play([("deliver", "a", 0, "accepted"), ("avail", {"a", "b"}), ("deliver", "b", 0, "accepted"),
                    ("complete", 3.0, True)])
    barrier.start(1, 4.0)
    assert barrier.round is not None and barrier.round.selected == {"a", "b"}
    assert barrier.deliver("a", 0).reason == "stale"  # built on the round before
    assert barrier.deliver("a", 1).accepted
    assert barrier.awaited() == {"b"}
    assert not barrier.complete(13.9)  # the timeout runs from the round's own start (4.0)
    assert barrier.complete(14.0)
    assert barrier.timed_out_rounds == 1
    assert barrier.rejected == {"stale": 1}


def test_rounds_only_move_forward_and_timeout_must_be_positive() -> None:
    barrier = RoundBarrier(5.0)
    barrier.start(3, 0.0, {"a"})
    with pytest.raises(ValueError):
        barrier.start(3, 1.0)
    with pytest.raises(ValueError):
        RoundBarrier(0)
    with pytest.raises(RuntimeError):
        RoundBarrier(1.0).deliver("a", 0)


def test_summary_names_selected_delivered_and_awaited() -> None:
    barrier = play([("deliver", "b", 0, "accepted")])
    summary = barrier.summary()
    assert summary["round"] == 0
    assert summary["selected"] == ["a", "b", "c"]
    assert summary["delivered"] == ["b"]
    assert summary["awaited"] == ["a", "c"]
    assert barrier.deadline() == TIMEOUT


@pytest.mark.parametrize(("deliveries", "min_clients", "too_small"), [
    (["a"], 2, True), (["a", "b"], 2, False), (["a"], 1, False), (["a", "b"], 3, True)])
def test_a_round_below_min_clients_closes_without_aggregation(deliveries: list[str], min_clients: int,
                                                                too_small: bool) -> None:
    barrier = RoundBarrier(TIMEOUT, min_clients=min_clients)
    barrier.start(0, 0.0, set(deliveries))  # only these clients are left: nobody else is awaited
    for client in deliveries:
        assert barrier.deliver(client, 0).accepted
    assert barrier.complete(0.1)
    assert barrier.round is not None and barrier.round.too_small is too_small
    assert barrier.summary()["too_small_rounds"] == int(too_small)
    assert barrier.summary()["discarded"] == (len(deliveries) if too_small else 0)


def test_min_clients_does_not_stop_waiting_for_the_selected() -> None:
    barrier = RoundBarrier(TIMEOUT, min_clients=2)
    barrier.start(0, 0.0, {"a", "b"})
    barrier.deliver("a", 0)
    assert not barrier.complete(1.0)  # b is still awaited
    assert barrier.complete(TIMEOUT)  # it never came: closed, too small to aggregate
    assert barrier.round is not None and barrier.round.too_small
    with pytest.raises(ValueError):
        RoundBarrier(1.0, min_clients=0)
