"""The server's side of end-to-end delivery: a copy gets the answer the original got, a superseded
number is counted once and never fused late, and every update is counted once."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from koala_async.core.admission import AdmissionContext, admit
from koala_async.core.envelope import Update, decode, encode
from koala_async.core.server_state import ServerState
from koala_async.core.staleness import StalenessPolicy
from koala_async.core.verdicts import VerdictMemory

CTX = AdmissionContext(version=0, proxy_id="p", n_proxy=4, num_classes=3, policy=StalenessPolicy(max_staleness=2))


def admission(message, topic_sender, version, seen, now_ms):
    return admit(message, topic_sender, replace(CTX, version=version), seen, now_ms)


def update(seq: int, base: int = 0, supersedes: tuple[int, ...] = ()) -> Update:
    return Update(sender="c", seq=seq, base_version=base, tier="t", n_samples=5, proxy_id="p",
                  logits=np.zeros((4, 3), np.float16), supersedes=supersedes)


def take(state: ServerState, message: Update) -> list[tuple[int, bool, str, bool]]:
    """What the server node does with one update; returns (seq, accepted, reason, repeat) per answer."""
    answers = state.withdraw(message, "c")
    verdict = state.decide(message, "c", 10)
    assert verdict is not None
    if verdict.accepted and not verdict.repeat:
        state.accept(message, b"", verdict.staleness, 0.0)
    return [(v.seq, v.accepted, v.reason, v.repeat) for v in (*answers, verdict)]


def test_supersedes_travels_in_the_envelope_and_old_payloads_have_none() -> None:
    assert decode(encode(update(5, supersedes=(3, 4)))).supersedes == (3, 4)
    assert decode(encode(update(5))).supersedes == ()


def test_a_copy_of_an_accepted_update_is_answered_accepted_and_not_taken_again() -> None:
    state = ServerState(admission)
    assert take(state, update(1)) == [(1, True, "accepted", False)]
    assert take(state, update(1)) == [(1, True, "duplicate", True)]
    assert state.metrics.accepted == 1 and len(state.pending) == 1
    assert state.rejects.counts == {"duplicate": 1}  # a delivery counted, not an update


def test_a_copy_of_a_rejected_update_gets_the_same_refusal_counted_once() -> None:
    state = ServerState(admission)
    state.version = 5
    assert take(state, update(1, base=1)) == [(1, False, "stale", False)]
    state.version = 2  # whatever changed since, the answer stays the first one
    assert take(state, update(1, base=1)) == [(1, False, "stale", True)]
    assert state.rejects.counts == {"stale": 1, "duplicate": 1}


def test_superseded_numbers_are_counted_once_refused_later_and_answered() -> None:
    state = ServerState(admission)
    assert take(state, update(1)) == [(1, True, "accepted", False)]
    # 2 never arrived (a broker dropped it); 3 says it supersedes 1 (taken) and 2
    assert take(state, update(3, supersedes=(1, 2))) == [
        (1, True, "duplicate", True), (2, False, "superseded", True), (3, True, "accepted", False)]
    assert state.metrics.superseded == 1
    # 2 turns up late: refused, never fused over 3; a copy of 3 does not count 2 again
    assert take(state, update(2)) == [(2, False, "superseded", True)]
    assert take(state, update(3, supersedes=(1, 2))) == [(3, True, "duplicate", True)]
    assert state.metrics.superseded == 1 and state.metrics.accepted == 2
    assert [a.message.seq for a in state.pending] == [1, 3]


def test_a_new_sender_can_supersede_its_very_first_update() -> None:
    state = ServerState(admission)
    assert take(state, update(10, supersedes=(9,))) == [(9, False, "superseded", True),
                                                        (10, True, "accepted", False)]
    assert take(state, update(9)) == [(9, False, "superseded", True)]


def test_a_number_cannot_be_superseded_by_an_older_update_or_by_another_sender() -> None:
    state = ServerState(admission)
    assert take(state, update(5, supersedes=(7,))) == [(5, True, "accepted", False)]
    forged = update(8, supersedes=(6,))
    assert state.withdraw(forged, "someone-else") == []
    assert state.metrics.superseded == 0


def test_the_memory_is_bounded() -> None:
    memory = VerdictMemory(capacity=3)
    for seq in range(5):
        memory.remember("c", seq, True, "accepted")
    assert len(memory) == 3 and memory.forgotten == 2 and memory.recall("c", 0) is None
    memory.remember("c", 9, False, "sender_mismatch")  # says nothing true about "c": not kept
    assert memory.recall("c", 9) is None
