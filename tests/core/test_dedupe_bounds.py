"""SeqWindow under attack: one forged sequence number cannot lock a sender out, a poisoned window does
not survive a restore, and the number of senders tracked is capped."""

from __future__ import annotations

import numpy as np

from koala_async.core.admission import AdmissionContext, admit
from koala_async.core.dedupe import SeqBounds, SeqWindow, next_seq
from koala_async.core.envelope import Update
from koala_async.core.staleness import StalenessPolicy

NOW = 1_700_000_000_000  # the server's clock, ms
SLACK = SeqBounds().slack_ms
CTX = AdmissionContext(version=3, proxy_id="p", n_proxy=4, num_classes=2, policy=StalenessPolicy())


def _update(seq: int, sender: str = "c1") -> Update:
    return Update(sender=sender, seq=seq, base_version=3, tier="t", n_samples=5, proxy_id="p",
                  logits=np.zeros((4, 2), np.float16))


def test_a_forged_huge_seq_is_refused_and_honest_updates_go_on() -> None:
    # Finding 4: one accepted update with seq 2**53 made every later honest update a "duplicate".
    win = SeqWindow()
    honest = NOW - 60_000  # a client that started a minute ago
    assert admit(_update(honest), "c1", CTX, win, NOW).accepted
    win.add("c1", honest, NOW)
    forged = admit(_update(2**53), "c1", CTX, win, NOW)
    assert (forged.accepted, forged.reason) == (False, "seq_out_of_range")
    assert not win.add("c1", 2**53, NOW) and win.high("c1") == honest  # the window did not move
    assert admit(_update(honest + 1), "c1", CTX, win, NOW + 1).accepted


def test_one_forged_seq_within_range_does_not_lock_the_sender_out() -> None:
    win = SeqWindow()
    win.add("c1", NOW - 5, NOW)
    assert win.add("c1", NOW + SLACK, NOW)  # the furthest an attacker's message may reach
    for step in range(1, 200):  # the honest sender's next numbers fill in below it
        assert win.add("c1", NOW + step, NOW + step)


def test_a_flood_of_forged_seqs_delays_a_clock_numbered_sender_by_at_most_the_slack() -> None:
    win = SeqWindow(window=4)
    win.add("c1", NOW - 5, NOW)
    for i in range(5):  # a full window of forged numbers pushes the floor up to the first of them
        assert win.add("c1", NOW + SLACK - 10 + i, NOW)
    assert win.check("c1", NOW + 10, NOW + 10) == "duplicate"
    later = NOW + SLACK  # the honest sender's next_seq once its clock passed the floor
    assert win.check("c1", next_seq(NOW + 10, later), later) is None
    assert win.high("c1") <= NOW + SLACK


def test_a_restarted_sender_may_jump_ahead_by_the_time_it_was_away() -> None:
    win = SeqWindow()
    win.add("c1", NOW - 3_600_000, NOW - 3_600_000)  # an hour ago, then the client went away
    assert win.check("c1", NOW, NOW) is None
    assert win.check("c2", NOW + SLACK, NOW) is None  # a first message, clock a little ahead
    assert win.check("c2", NOW + SLACK + 1, NOW) == "seq_out_of_range"


def test_max_step_lets_a_sender_run_a_little_ahead_of_the_clock() -> None:
    bounds = SeqBounds(max_step=100, slack_ms=0)
    win = SeqWindow(bounds=bounds)
    assert win.add("c1", NOW, NOW)
    assert win.add("c1", NOW + 100, NOW)
    assert win.check("c1", NOW + 201, NOW) == "seq_out_of_range"
    assert win.check("c1", NOW + 200, NOW) is None


def test_a_poisoned_window_is_clamped_when_restored() -> None:
    # The checkpoint of a server that accepted 2**53 (the old format: sorted recent numbers + [high]).
    legacy = {"c1": [NOW - 10, NOW - 9, 2**53, 2**53], "c2": [NOW - 7, NOW - 7]}
    win = SeqWindow.from_state(legacy, now_ms=NOW)
    assert win.high("c1") <= NOW + SLACK and win.seen("c1", NOW - 10) and win.seen("c1", NOW - 9)
    assert win.check("c1", NOW + SLACK + 1, NOW + SLACK + 1) is None  # not locked out for good
    assert win.seen("c2", NOW - 7) and not win.seen("c2", NOW - 6)
    poisoned = {"c1": {"floor": 2**53, "recent": [2**53 + 1]}}
    assert SeqWindow.from_state(poisoned, now_ms=NOW).high("c1") == NOW + SLACK


def test_state_round_trip_keeps_floors_and_order() -> None:
    win = SeqWindow(window=3)
    for seq in (10, 12, 11, 15, 14):
        win.add("a", seq)
    win.add("b", 7)
    copy = SeqWindow.from_state(win.to_state(), window=3)
    assert copy.to_state() == win.to_state() == {"a": {"floor": 11, "recent": [12, 14, 15]},
                                                 "b": {"floor": 6, "recent": [7]}}
    assert copy.seen("a", 10) and copy.seen("a", 11) and not copy.seen("a", 13)
    smaller = SeqWindow.from_state(win.to_state(), window=2)
    assert smaller.seen("a", 12) and not smaller.seen("a", 13) and smaller.high("a") == 15


def test_senders_past_the_cap_are_forgotten_least_recently_accepted_first() -> None:
    win = SeqWindow(bounds=SeqBounds(max_senders=3))
    for i, sender in enumerate(("a", "b", "c")):
        win.add(sender, 100 + i)
    win.add("a", 200)  # a is now the most recent
    win.add("d", 300)
    assert len(win) == 3 and win.forgotten == 1 and win.high("b") == -1 and win.high("a") == 200


def test_a_forgotten_sender_has_one_older_message_accepted_at_most() -> None:
    win = SeqWindow(bounds=SeqBounds(max_senders=1))
    for seq in (100, 101, 102):
        win.add("a", seq)
    win.add("b", 5)  # a forgotten
    assert win.add("a", 101)  # a replay, accepted: its floor is now 100
    assert not win.add("a", 100) and win.check("a", 99, None) == "duplicate"
    assert win.add("a", 103)  # the sender's own next message


def test_memory_per_sender_is_bounded_by_the_window() -> None:
    win = SeqWindow(window=8)
    for seq in range(10_000):
        win.add("a", seq)
    state = win.to_state()["a"]
    assert len(state["recent"]) == 8 and state["floor"] == 9_991
    assert all(win.seen("a", s) for s in (0, 5_000, 9_999)) and not win.seen("a", 10_000)


def test_admission_refuses_an_empty_update_built_in_process() -> None:
    empty = Update(sender="c1", seq=1, base_version=3, tier="t", n_samples=0, proxy_id="p",
                   logits=np.zeros((4, 2), np.float16))
    assert admit(empty, "c1", CTX, SeqWindow(), NOW).reason == "empty_update"
