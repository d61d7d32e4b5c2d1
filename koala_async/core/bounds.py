"""Bounds the server puts on one contribution, so that no single valid client outweighs its share.

Everything a client sends is a claim: its logits claim a confidence, its ``n_samples`` claims a data
size. A weighted mean believes claims, so one client can take the fused target over with a message
that passes every validity check (attacks seen: one-hot logits of +-65504 from one client of ten
took test accuracy from 0.96 to 0.10; ``n_samples = 2**40`` gave one client a size factor of 2**20
against the others' 17). Two bounds, both computed by the server:

- **Probabilities** (:func:`bound_probs`): each row is mixed with the uniform distribution just enough
  that no class exceeds ``p_max = 1/C + m (1 - 1/C)``, for a *certainty* ``m`` in (0, 1] that means
  the same at every class count (0 = uniform, 1 = one-hot allowed; a one-hot row bounded to ``m``
  puts exactly ``m`` more on its class than on any other; with 10 classes m = 0.4 gives 0.46)::

      p' = (1 - e) p + e / C,   e = max(0, (max_c p_c - p_max) / (max_c p_c - 1 / C))

  Rows already below ``p_max`` are untouched and the argmax never changes. Because a client's vote
  is weighted by its confidence ``max_c p'_c``, this also caps the confidence weighting: a one-hot
  row counts as ``p_max``, not 1.
- **Size** (:class:`SizeWindow`): a contribution's size factor ``f(n_samples)`` is capped at
  ``max_weight_ratio`` times the median size factor of the latest arrival of each of the last
  ``window`` distinct senders (one entry per sender, so one client repeating a huge claim moves the
  median by one entry only). The server may also pass a size it knows (``known_size``), and
  ``n_samples`` is then clipped to it first.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

SAMPLE_WEIGHTING = ("none", "sqrt", "linear")


def size_factor(n_samples: int, rule: str) -> float:
    """``f(n)``: 1, ``sqrt(n)`` or ``n`` (``n`` at least 1)."""
    if rule == "none":
        return 1.0
    if rule == "sqrt":
        return math.sqrt(max(n_samples, 1))
    if rule == "linear":
        return float(max(n_samples, 1))
    raise ValueError(f"sample weighting {rule!r} is not one of {SAMPLE_WEIGHTING}")


def p_max(certainty: float, num_classes: int) -> float:
    """The cap on one probability for ``certainty`` m: ``1/C + m (1 - 1/C)``."""
    if not 0 < certainty <= 1:
        raise ValueError(f"max_certainty {certainty} must be in (0, 1]")
    return 1.0 / num_classes + certainty * (1.0 - 1.0 / num_classes)


def bound_probs(probs: np.ndarray, certainty: float) -> np.ndarray:
    """Rows of ``probs`` (n, C) mixed with uniform so that none exceeds :func:`p_max` (float32 out).

    ``certainty`` 1 leaves every row as it is.
    """
    c = probs.shape[1]
    cap = p_max(certainty, c)
    p = probs.astype(np.float64)
    top = p.max(axis=1, keepdims=True)
    over = top > cap
    # top > cap > 1/C wherever ``over`` holds, so the denominator is positive there
    eps = np.divide(top - cap, top - 1.0 / c, out=np.zeros_like(top), where=over)
    return ((1.0 - eps) * p + eps / c).astype(np.float32)


class SizeWindow:
    """Recent size factors, one per sender, and the cap they set: ``ratio * median``.

    Work per arrival is O(window); memory O(window). ``ratio = inf`` disables the cap.
    """

    def __init__(self, window: int, ratio: float) -> None:
        if window < 1:
            raise ValueError("size window must hold at least one sender")
        if not ratio >= 1:
            raise ValueError(f"max_weight_ratio {ratio} must be >= 1")
        self.window = window
        self.ratio = ratio
        self._recent: OrderedDict[str, float] = OrderedDict()
        self._cap = math.inf

    def observe(self, sender: str, factor: float) -> float:
        """Record ``sender``'s newest size factor and return the cap that now holds."""
        self._recent.pop(sender, None)
        self._recent[sender] = factor
        if len(self._recent) > self.window:
            self._recent.popitem(last=False)
        self._cap = self.ratio * float(np.median(np.fromiter(self._recent.values(), dtype=np.float64)))
        return self._cap

    @property
    def cap(self) -> float:
        """The cap on a size factor now (``inf`` before any arrival)."""
        return self._cap

    def to_state(self) -> dict[str, np.ndarray | float | int | str]:
        state: dict[str, np.ndarray | float | int | str] = {
            "size/count": len(self._recent),
            "size/factors": np.fromiter(self._recent.values(), dtype=np.float64, count=len(self._recent))}
        for j, sender in enumerate(self._recent):
            state[f"size/{j}/sender"] = sender
        return state

    def load_state(self, state: Mapping[str, object]) -> None:
        """Restore what :meth:`to_state` wrote (senders in arrival order)."""
        factors = np.asarray(state["size/factors"], dtype=np.float64)
        count = int(state["size/count"])  # type: ignore[call-overload]
        if len(factors) != count:
            raise ValueError(f"size/factors holds {len(factors)} values, size/count says {count}")
        self._recent = OrderedDict((str(state[f"size/{j}/sender"]), float(factors[j])) for j in range(count))
        self._cap = (self.ratio * float(np.median(factors))) if count else math.inf
