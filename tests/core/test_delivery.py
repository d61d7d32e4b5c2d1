"""The client's delivery ledger: pending until the verdict, republished when it is late, superseded by
a newer update, and every update counted exactly once whatever order the verdicts come in."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from koala_async.core.delivery import MAX_CARRIED, DeliveryLedger


def test_an_update_stays_pending_until_its_verdict() -> None:
    ledger = DeliveryLedger(ack_timeout=10)
    assert ledger.supersede() == ()
    ledger.published(1, b"u1", now=0.0)
    assert ledger.pending is not None and ledger.balanced()
    assert ledger.verdict(1, True, "accepted") == "accepted"
    assert ledger.pending is None and ledger.accepted == 1 and ledger.balanced()
    assert ledger.verdict(1, True, "duplicate") == "repeat"  # the answer to a copy: counted once
    assert ledger.accepted == 1


def test_a_late_verdict_means_republishing_the_same_update_with_a_growing_wait() -> None:
    ledger = DeliveryLedger(ack_timeout=10, max_backoff=30)
    ledger.published(7, b"u7", now=0.0)
    assert ledger.due(9.9) is None
    first = ledger.due(10.0)
    assert first is not None and (first.seq, first.payload, first.attempts) == (7, b"u7", 2)
    assert ledger.next_deadline() == 30.0  # waits 20 s now
    assert ledger.due(29.0) is None
    assert ledger.due(30.0) is not None and ledger.next_deadline() == 60.0  # capped at 30 s
    assert ledger.republished == 2 and ledger.sent == 1
    assert ledger.verdict(7, True, "duplicate") == "accepted"  # a copy the server had: accepted
    assert ledger.due(1e9) is None and ledger.balanced()


def test_a_new_update_supersedes_the_pending_one_and_carries_its_number_until_answered() -> None:
    ledger = DeliveryLedger(ack_timeout=10)
    ledger.published(1, b"u1", 0.0)
    assert ledger.supersede() == (1,)
    ledger.published(2, b"u2", 1.0)
    assert ledger.superseded == 1 and ledger.balanced()
    assert ledger.supersede() == (1, 2)  # neither answered yet: both ride on the next one
    ledger.published(3, b"u3", 2.0)
    assert ledger.verdict(1, False, "superseded") == "confirmed"
    assert ledger.superseded == 2 and ledger.unconfirmed == 1
    # the server had update 2 after all: it is counted under its verdict, no longer as superseded
    assert ledger.verdict(2, True, "duplicate") == "converted"
    assert (ledger.superseded, ledger.accepted, ledger.unconfirmed) == (1, 1, 0)
    assert ledger.verdict(3, False, "stale") == "rejected"
    assert ledger.rejected == {"stale": 1} and ledger.balanced()
    assert ledger.verdict(99, True, "accepted") == "unknown"


def test_the_carried_list_is_bounded() -> None:
    ledger = DeliveryLedger(ack_timeout=10)
    for seq in range(1, MAX_CARRIED + 11):
        ledger.supersede()
        ledger.published(seq, b"", float(seq))
    carried = ledger.supersede()
    assert len(carried) == MAX_CARRIED and carried[-1] == MAX_CARRIED + 10
    assert ledger.uncarried == 10 and ledger.balanced()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["publish", "verdict", "tick"]), st.integers(0, 30),
                          st.sampled_from([(True, "accepted"), (True, "duplicate"), (False, "stale"),
                                           (False, "superseded")])), max_size=60))
def test_every_update_is_counted_once_whatever_the_order_of_verdicts(script) -> None:
    ledger = DeliveryLedger(ack_timeout=1)
    seq, now = 0, 0.0
    for action, pick, (accepted, reason) in script:
        now += 0.5
        if action == "publish":
            ledger.supersede()
            seq += 1
            ledger.published(seq, b"", now)
        elif action == "verdict" and seq:
            ledger.verdict(1 + pick % seq, accepted, reason)
        else:
            ledger.due(now)
        assert ledger.balanced(), ledger.snapshot()
        assert ledger.superseded >= 0 and ledger.unconfirmed <= MAX_CARRIED
