"""Whether the server takes an update, and with what weight: a pure decision.

Checks run in order, and the first failure names the reason the update is counted under:
``sender_mismatch`` (payload sender differs from the topic), ``duplicate`` (sequence number already
accepted: a QoS 1 redelivery), ``seq_out_of_range`` (a number further ahead than the sender's last
one or the clock allows: core/dedupe.py), ``empty_update`` (no rows or no samples; decode refuses
these too), ``wrong_proxy``, ``class_count``, ``shape_mismatch``,
``bad_sample_ids``, ``tier_not_accepted``, ``future_version`` (built on a version the server never
published), ``stale`` (staleness past the cut-off), ``unscheduled_ids`` (with a proxy subset schedule,
core/proxy_schedule.py: no ``sample_ids``, or ids the server did not schedule for the base version).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from koala_async.core.dedupe import SeqWindow
from koala_async.core.envelope import Update
from koala_async.core.proxy_schedule import ProxySchedule
from koala_async.core.staleness import StalenessPolicy


@dataclass(frozen=True)
class AdmissionContext:
    version: int
    proxy_id: str
    n_proxy: int
    num_classes: int
    policy: StalenessPolicy
    accepted_tiers: tuple[str, ...] = ()  # empty = any tier
    schedule: ProxySchedule | None = None  # [server] proxy_subset: the samples each version's updates label


@dataclass(frozen=True)
class Decision:
    accepted: bool
    reason: str = "accepted"
    staleness: int = 0


def admit(update: Update, topic_sender: str | None, ctx: AdmissionContext, seen: SeqWindow,
          now_ms: int | None = None) -> Decision:
    """Decide on ``update``; does not record it (call ``seen.add(sender, seq, now_ms)`` once it is
    durable). ``now_ms`` is the server's wall clock in milliseconds, for the sequence range check;
    ``None`` skips that check."""
    if topic_sender is not None and update.sender != topic_sender:
        return Decision(False, "sender_mismatch")
    refused = seen.check(update.sender, update.seq, now_ms)
    if refused is not None:
        return Decision(False, refused)
    if update.logits.shape[0] == 0 or update.n_samples < 1:
        return Decision(False, "empty_update")
    if update.proxy_id != ctx.proxy_id:
        return Decision(False, "wrong_proxy")
    if update.logits.shape[1] != ctx.num_classes:
        return Decision(False, "class_count")
    if update.sample_ids is None:
        if update.logits.shape[0] != ctx.n_proxy:
            return Decision(False, "shape_mismatch")
    elif len(update.sample_ids) and (int(update.sample_ids.max()) >= ctx.n_proxy
                                     or len(np.unique(update.sample_ids)) != len(update.sample_ids)):
        return Decision(False, "bad_sample_ids")
    if ctx.accepted_tiers and update.tier not in ctx.accepted_tiers:
        return Decision(False, "tier_not_accepted")
    if update.base_version > ctx.version:
        return Decision(False, "future_version")
    staleness = ctx.version - update.base_version
    if not ctx.policy.accepts(staleness):
        return Decision(False, "stale", staleness)
    if ctx.schedule is not None and not ctx.schedule.admits(update.base_version, update.sample_ids):
        return Decision(False, "unscheduled_ids", staleness)
    return Decision(True, "accepted", staleness)
