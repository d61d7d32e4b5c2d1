"""Which small model a device trains, and whether it trains now: pure functions of a resource
snapshot, the tier catalog and a policy.

:func:`choose_tier` picks the *largest* tier that

- fits in memory: its peak training memory <= ``memory_share`` x available memory, and on disk; and
- fits in time: estimated seconds per local epoch, ``train_flops_per_sample x samples_per_epoch /
  FLOP/s``, <= ``epoch_budget_s``,

then steps one tier down for a low battery (unplugged, below ``low_battery``) and one for a busy CPU
(load per core above ``high_load``). Unknown values never exclude a tier (we cannot tell, so we do
not punish), but the reason says they were unknown.

:func:`readiness` says whether to train now ("when ready"): not on a critically low unplugged battery,
not on a saturated CPU. Otherwise a client keeps improving its model on the data and knowledge it
holds, as FedAsync and FedBuff clients do (they never idle waiting for a new global version): with
``max_wait_s = 0`` (the default) it trains again whenever its turn comes; a device that would rather
save energy sets ``max_wait_s`` and then trains only on something new (first training, new knowledge,
new data) or once that many seconds passed without.

:func:`next_tier` keeps a trained model unless the resources no longer afford it: a tier change is
only forced downwards; growing would throw away what the model has learned for a small gain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from koala_async.core.resources import MiB, ResourceSnapshot


@dataclass(frozen=True)
class TierSpec:
    """A measured client architecture (see ``koala_async.learning.catalog``)."""

    name: str
    kind: str
    params: int
    bytes_on_disk: int  # serialized state_dict
    train_flops_per_sample: float  # forward + backward
    peak_train_bytes: int  # weights + grads + Adam moments + activations of one batch


@dataclass(frozen=True)
class TierPolicy:
    memory_share: float = 0.5  # share of available memory one training may take
    epoch_budget_s: float = 1.0  # seconds one local epoch may take
    low_battery: float = 30.0  # percent, unplugged: one tier down
    critical_battery: float = 15.0  # percent, unplugged: defer training
    high_load: float = 1.5  # load per core: one tier down
    defer_load: float = 3.0  # load per core: defer training
    # 0: train again whenever ready (asynchronous clients never idle waiting for a new version);
    # > 0: wait for new knowledge or data, but train anyway after this many seconds without.
    max_wait_s: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.memory_share <= 1:
            raise ValueError("memory_share must be in (0, 1]")
        if self.epoch_budget_s <= 0:
            raise ValueError("epoch_budget_s must be > 0")
        if self.critical_battery > self.low_battery:
            raise ValueError("critical_battery must be <= low_battery")
        if self.defer_load < self.high_load:
            raise ValueError("defer_load must be >= high_load")
        if self.max_wait_s < 0:
            raise ValueError("max_wait_s must be >= 0")


@dataclass(frozen=True)
class TierChoice:
    tier: str
    reason: str
    epoch_seconds: float | None  # the estimate for the chosen tier (None: FLOP/s unknown)


def epoch_seconds(tier: TierSpec, samples_per_epoch: int, flops: float | None) -> float | None:
    if not flops:
        return None
    return tier.train_flops_per_sample * samples_per_epoch / flops


def _fits(tier: TierSpec, snap: ResourceSnapshot, policy: TierPolicy, samples_per_epoch: int) -> str | None:
    """None when ``tier`` fits, else why not."""
    if snap.memory_available is not None and tier.peak_train_bytes > policy.memory_share * snap.memory_available:
        return (f"{tier.name} needs {tier.peak_train_bytes / MiB:.1f} MiB > {policy.memory_share:.0%} of "
                f"{snap.memory_available / MiB:.0f} MiB available")
    if snap.disk_free is not None and tier.bytes_on_disk > snap.disk_free:
        return f"{tier.name} needs {tier.bytes_on_disk} B on disk, {snap.disk_free} B free"
    secs = epoch_seconds(tier, samples_per_epoch, snap.flops)
    if secs is not None and secs > policy.epoch_budget_s:
        return f"{tier.name} needs {secs:.3g} s/epoch > budget {policy.epoch_budget_s:g} s"
    return None


def choose_tier(snap: ResourceSnapshot, catalog: Sequence[TierSpec], policy: TierPolicy,
                samples_per_epoch: int) -> TierChoice:
    """The largest tier of ``catalog`` (ordered smallest first) that ``snap`` affords under ``policy``."""
    if not catalog:
        raise ValueError("empty tier catalog")
    index, blocker = -1, None
    for i, tier in enumerate(catalog):
        miss = _fits(tier, snap, policy, samples_per_epoch)
        if miss is not None:
            blocker = miss
            break  # tiers grow monotonically: if this one does not fit, no larger one does
        index = i
    if index < 0:
        index, reasons = 0, [f"nothing fits ({blocker}); smallest tier"]
    elif blocker is None:
        reasons = [f"{catalog[index].name}: the largest tier fits"]
    else:
        reasons = [f"{catalog[index].name} fits; {blocker}"]
    battery = snap.battery_percent
    if battery is not None and snap.battery_plugged is False and battery < policy.low_battery and index > 0:
        index -= 1
        reasons.append(f"battery {battery:.0f}% unplugged: one tier down")
    load = snap.load_per_core
    if load is not None and load > policy.high_load and index > 0:
        index -= 1
        reasons.append(f"load {load:.2f}/core: one tier down")
    unknown = [n for n, v in (("memory", snap.memory_available), ("FLOP/s", snap.flops)) if v is None]
    if unknown:
        reasons.append(f"unknown {', '.join(unknown)}")
    chosen = catalog[index]
    return TierChoice(chosen.name, "; ".join(reasons), epoch_seconds(chosen, samples_per_epoch, snap.flops))


def next_tier(current: str, choice: TierChoice, catalog: Sequence[TierSpec]) -> str:
    """Keep ``current`` unless ``choice`` is smaller (the resources no longer afford ``current``)."""
    names = [t.name for t in catalog]
    if current not in names or choice.tier not in names:
        return choice.tier if current not in names else current
    return choice.tier if names.index(choice.tier) < names.index(current) else current


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str


def readiness(snap: ResourceSnapshot, policy: TierPolicy, *, trained_before: bool, new_knowledge: bool,
              new_data: bool, waited_s: float) -> Readiness:
    """Train now, or wait and say why (the reason goes into the client's status state)."""
    battery = snap.battery_percent
    if battery is not None and snap.battery_plugged is False and battery < policy.critical_battery:
        return Readiness(False, f"waiting: battery {battery:.0f}% unplugged")
    load = snap.load_per_core
    if load is not None and load > policy.defer_load:
        return Readiness(False, f"waiting: load {load:.2f}/core")
    if not trained_before:
        return Readiness(True, "ready: first training")
    if new_data:
        return Readiness(True, "ready: new data")
    if new_knowledge:
        return Readiness(True, "ready: new knowledge")
    if policy.max_wait_s == 0:
        return Readiness(True, "ready: training on (the data and knowledge it holds)")
    if waited_s >= policy.max_wait_s:
        return Readiness(True, f"ready: nothing new for {waited_s:.0f} s")
    return Readiness(False, "waiting: no new knowledge or data")


def samples_per_epoch(n_private: int, batch_size: int, distilling: bool) -> int:
    """Samples one local epoch pushes through the model: every private sample, plus (when distilling)
    one proxy batch of ``batch_size`` per private batch (see ``LocalTrainer.train``)."""
    batches = -(-n_private // batch_size)
    return n_private + (batches * batch_size if distilling else 0)
