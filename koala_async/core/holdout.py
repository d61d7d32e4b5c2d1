"""Which of a client's private samples it keeps out of training to evaluate its own small model.

A client can only judge its model on data it did not train on; it holds out ``fraction`` of its
initial private samples (seeded, so the scenario runner's local-only reference trains on exactly the
same samples), at least one when there are ten or more, none for smaller shards or ``fraction = 0``.
The held-out accuracy goes into the client's status (``holdout_accuracy``): its own, non-IID view.
The federation's test split never leaves the server and the runner.
"""

from __future__ import annotations

import numpy as np

MIN_SAMPLES = 10  # below this a shard keeps every sample for training


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (training, held-out) indices of ``n`` samples: about ``fraction`` of them held out."""
    if not 0 <= fraction < 1:
        raise ValueError(f"holdout fraction {fraction} must be in [0, 1)")
    count = 0 if n < MIN_SAMPLES or fraction == 0 else max(1, round(n * fraction))
    held = np.sort(np.random.default_rng(seed).permutation(n)[:count])
    train = np.setdiff1d(np.arange(n), held)
    return train, held


def holdout_seed(seed: int, shard: int) -> int:
    """The split's seed for a client's shard (the client and the runner's references agree on it)."""
    return seed * 1_000_003 + shard + 7
