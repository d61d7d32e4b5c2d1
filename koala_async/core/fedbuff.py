"""FedBuff (Nguyen et al., 2022): asynchronous FedAvg with a buffer. Pure pieces.

Clients train the server's large model from the latest global weights whenever they are ready and
upload their weights with the version they started from. The server keeps the global weights of its
last few versions, turns each arrival into a delta against the version it was built on, and once
``K`` arrivals are buffered applies::

    theta <- theta + lr * (1/K) * sum_i w(s_i) * (theta_i - theta_{b_i})

with ``w`` the staleness policy (``(1+s)^-0.5`` in the paper) and ``s_i`` how many versions passed
since ``b_i``: a stale delta moves the model less. No rounds: nobody waits for anybody.

:func:`admit_buffered` decides whether to take a weights message (the checks of FedAvg's admission,
except that any kept version within ``max_staleness`` is a valid base); :func:`apply_deltas` is the
update. The node keeps the history (:class:`~koala_async.learning.buffered_learner.BufferedLearner`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

from koala_async.core.admission import Decision
from koala_async.core.dedupe import SeqWindow
from koala_async.core.envelope import Weights
from koala_async.core.staleness import StalenessPolicy
from koala_async.core.weights import Layout, refuse_weights


def admit_buffered(weights: Weights, topic_sender: str | None, version: int, model: str, layout: Layout,
                   seen: SeqWindow, kept: Collection[int], policy: StalenessPolicy,
                   now_ms: int | None = None) -> Decision:
    """Whether FedBuff's server takes ``weights`` at global ``version``, checked in order:
    ``sender_mismatch``, ``duplicate`` / ``seq_out_of_range``, ``wrong_model``, ``no_samples``, the
    layout, ``future_version``, ``stale`` (past ``max_staleness``, or built on a version whose weights
    the server no longer keeps in ``kept``)."""
    refused = refuse_weights(weights, topic_sender, model, layout, seen, now_ms)
    if refused is not None:
        return refused
    staleness = version - weights.base_version
    if staleness < 0:
        return Decision(False, "future_version")
    if not policy.accepts(staleness) or weights.base_version not in kept:
        return Decision(False, "stale", staleness)
    return Decision(True, staleness=staleness)


def apply_deltas(current: Mapping[str, np.ndarray], arrivals: Sequence[tuple[Mapping[str, np.ndarray],
                                                                           Mapping[str, np.ndarray], float]],
                 lr: float = 1.0) -> dict[str, np.ndarray]:
    """``current + lr * mean_i(w_i * (client_i - base_i))`` per tensor, for ``(client, base, w)``
    arrivals (float64 sums, float32 out). Every mapping must hold the same names and shapes."""
    if not arrivals:
        raise ValueError("no arrivals to apply")
    if any(not np.isfinite(w) or w < 0 for _, _, w in arrivals):
        raise ValueError("staleness weights must be finite and >= 0")
    scale = lr / len(arrivals)
    out: dict[str, np.ndarray] = {}
    for name, value in current.items():
        step = np.zeros(value.shape, dtype=np.float64)
        for client, base, w in arrivals:
            step += w * (client[name].astype(np.float64) - base[name].astype(np.float64))
        out[name] = (value.astype(np.float64) + scale * step).astype(np.float32)
    return out
