"""FedAvg's pure pieces: does a weights message fit the architecture, is it for this round, and the
sample-weighted average.

The expected layout of an architecture (parameter name -> shape) comes from whoever built the model
(the node, with torch); this module only compares and averages numpy arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from koala_async.core.admission import Decision
from koala_async.core.dedupe import SeqWindow
from koala_async.core.envelope import Weights

Layout = Mapping[str, tuple[int, ...]]


def check_weights(params: Mapping[str, np.ndarray], expected: Layout) -> str | None:
    """The reason ``params`` does not fit ``expected`` (``missing_parameter``, ``unknown_parameter``,
    ``shape_mismatch``), or None when every expected tensor is there with its shape and nothing else."""
    names, wanted = set(params), set(expected)
    if wanted - names:
        return "missing_parameter"
    if names - wanted:
        return "unknown_parameter"
    for name, shape in expected.items():
        if not _fits(params[name].shape, shape):
            return "shape_mismatch"
    return None


def _fits(got: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    # A 0-d tensor (BatchNorm's num_batches_tracked) travels as shape (1,): the wire carries 1 to 4 dims.
    return tuple(got) == tuple(shape) or (tuple(shape) == () and tuple(got) == (1,))


def conform(params: Mapping[str, np.ndarray], expected: Layout) -> dict[str, np.ndarray]:
    """``params`` (checked with :func:`check_weights`) in exactly the shapes of ``expected``, ready for
    ``load_state_dict``: what arrived as shape (1,) for a 0-d tensor becomes 0-d again."""
    return {name: np.asarray(params[name]).reshape(shape) for name, shape in expected.items()}


def weighted_average(models: Sequence[tuple[Mapping[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
    """FedAvg aggregation: ``sum_k w_k * theta_k / sum_k w_k`` per tensor (float64 sums, float32 out).

    Every model must hold the same names and shapes (check them first); weights must be > 0.
    """
    if not models:
        raise ValueError("nothing to average")
    total = float(sum(w for _, w in models))
    if any(w <= 0 for _, w in models) or total <= 0:
        raise ValueError("averaging weights must be > 0")
    first = models[0][0]
    out: dict[str, np.ndarray] = {}
    for name in first:
        acc = np.zeros(first[name].shape, dtype=np.float64)
        for params, w in models:
            acc += params[name].astype(np.float64) * (w / total)
        out[name] = acc.astype(np.float32)
    return out


def refuse_weights(weights: Weights, topic_sender: str | None, model: str, layout: Layout, seen: SeqWindow,
                   now_ms: int | None) -> Decision | None:
    """The checks every weights upload passes whatever the mode, in order: ``sender_mismatch``,
    ``duplicate`` or ``seq_out_of_range``, ``wrong_model``, ``no_samples``, the layout; None if it passes."""
    if topic_sender is not None and weights.sender != topic_sender:
        return Decision(False, "sender_mismatch")
    refused = seen.check(weights.sender, weights.seq, now_ms)
    if refused is not None:
        return Decision(False, refused)
    if weights.model != model:
        return Decision(False, "wrong_model")
    if weights.n_samples < 1:
        return Decision(False, "no_samples")
    reason = check_weights(weights.params, layout)
    if reason is not None:
        return Decision(False, reason)
    return None


def admit_weights(weights: Weights, topic_sender: str | None, version: int, model: str, layout: Layout,
                  seen: SeqWindow, now_ms: int | None = None) -> Decision:
    """Whether the FedAvg server takes a client's weights for round ``version``, checked in order:
    ``sender_mismatch``, ``duplicate`` or ``seq_out_of_range`` (core/dedupe.py; ``now_ms`` is the
    server's wall clock in ms, None skips the range check), ``wrong_model``, ``no_samples``, the
    layout (see :func:`check_weights`), ``future_version``, ``stale`` (built on an older round)."""
    refused = refuse_weights(weights, topic_sender, model, layout, seen, now_ms)
    if refused is not None:
        return refused
    if weights.base_version > version:
        return Decision(False, "future_version")
    if weights.base_version < version:
        return Decision(False, "stale", version - weights.base_version)
    return Decision(True)
