"""admit(): the first failing check names the reason; an accepted update carries its staleness."""

from __future__ import annotations

import numpy as np
import pytest

from koala_async.core.admission import AdmissionContext, Decision, admit
from koala_async.core.dedupe import SeqWindow
from koala_async.core.envelope import Update
from koala_async.core.staleness import StalenessPolicy

N_PROXY, CLASSES = 20, 5


def ctx(**kw) -> AdmissionContext:
    base = {"version": 10, "proxy_id": "proxy-a", "n_proxy": N_PROXY, "num_classes": CLASSES,
            "policy": StalenessPolicy(max_staleness=4)}
    base.update(kw)
    return AdmissionContext(**base)


def update(**kw) -> Update:
    base = {"sender": "c1", "seq": 1, "base_version": 10, "tier": "image-small", "n_samples": 50,
            "proxy_id": "proxy-a", "logits": np.zeros((N_PROXY, CLASSES), dtype=np.float16)}
    base.update(kw)
    return Update(**base)


def test_accepts_a_fresh_update_with_zero_staleness() -> None:
    assert admit(update(), "c1", ctx(), SeqWindow()) == Decision(True, "accepted", 0)


def test_accepts_an_older_update_with_its_staleness() -> None:
    decision = admit(update(base_version=7), "c1", ctx(), SeqWindow())
    assert decision.accepted and decision.reason == "accepted" and decision.staleness == 3


def test_accepts_at_the_staleness_cutoff() -> None:
    decision = admit(update(base_version=6), "c1", ctx(), SeqWindow())
    assert decision.accepted and decision.staleness == 4


def test_stale() -> None:
    decision = admit(update(base_version=5), "c1", ctx(), SeqWindow())
    assert not decision.accepted and decision.reason == "stale" and decision.staleness == 5


def test_sender_mismatch() -> None:
    decision = admit(update(sender="c1"), "c2", ctx(), SeqWindow())
    assert decision == Decision(False, "sender_mismatch")


def test_no_topic_sender_skips_the_sender_check() -> None:
    assert admit(update(sender="c1"), None, ctx(), SeqWindow()).accepted


def test_duplicate_only_after_the_seq_was_recorded() -> None:
    seen = SeqWindow()
    msg = update(seq=42)
    assert admit(msg, "c1", ctx(), seen).accepted  # admit itself records nothing
    assert admit(msg, "c1", ctx(), seen).accepted
    seen.add("c1", 42)
    assert admit(msg, "c1", ctx(), seen).reason == "duplicate"
    assert admit(update(seq=43), "c1", ctx(), seen).accepted
    assert admit(update(sender="c2", seq=42), "c2", ctx(), seen).accepted  # per sender


def test_wrong_proxy() -> None:
    assert admit(update(proxy_id="proxy-b"), "c1", ctx(), SeqWindow()).reason == "wrong_proxy"


def test_class_count() -> None:
    msg = update(logits=np.zeros((N_PROXY, CLASSES + 1), dtype=np.float16))
    assert admit(msg, "c1", ctx(), SeqWindow()).reason == "class_count"


def test_shape_mismatch_without_sample_ids() -> None:
    msg = update(logits=np.zeros((N_PROXY - 1, CLASSES), dtype=np.float16))
    assert admit(msg, "c1", ctx(), SeqWindow()).reason == "shape_mismatch"


def test_a_subset_with_sample_ids_is_accepted() -> None:
    ids = np.array([0, 4, 19], dtype=np.uint32)
    msg = update(logits=np.zeros((3, CLASSES), dtype=np.float16), sample_ids=ids)
    assert admit(msg, "c1", ctx(), SeqWindow()).accepted


@pytest.mark.parametrize("ids", [[0, 4, N_PROXY], [1, 1, 2]], ids=["out_of_range", "repeated"])
def test_bad_sample_ids(ids) -> None:
    msg = update(logits=np.zeros((3, CLASSES), dtype=np.float16), sample_ids=np.array(ids, dtype=np.uint32))
    assert admit(msg, "c1", ctx(), SeqWindow()).reason == "bad_sample_ids"


def test_tier_not_accepted() -> None:
    context = ctx(accepted_tiers=("image-tiny", "image-medium"))
    assert admit(update(tier="image-small"), "c1", context, SeqWindow()).reason == "tier_not_accepted"
    assert admit(update(tier="image-tiny"), "c1", context, SeqWindow()).accepted


def test_future_version() -> None:
    assert admit(update(base_version=11), "c1", ctx(), SeqWindow()).reason == "future_version"


def test_checks_run_in_documented_order() -> None:
    # a message wrong in every way is filed under the first check: the sender
    seen = SeqWindow()
    seen.add("c1", 1)
    msg = update(seq=1, proxy_id="other", base_version=99, tier="x")
    assert admit(msg, "c9", ctx(accepted_tiers=("y",)), seen).reason == "sender_mismatch"
    assert admit(msg, "c1", ctx(accepted_tiers=("y",)), seen).reason == "duplicate"
