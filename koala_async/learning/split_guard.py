"""A client's check that its shard belongs to the server's split, with the damage spelled out.

The pure comparison is :func:`koala_async.core.splits.mismatch` (fingerprints). When the fingerprints
differ and both sides derived from the same dataset, this module re-derives the server's split from
the keys its knowledge carries and counts how many of the client's samples are among the server's
test and validation samples, so the refusal says what training would have done (blocking: it loads
the dataset; a client calls it in a worker thread, once per server split).
"""

from __future__ import annotations

import numpy as np

from koala_async.core.splits import SplitSpec, mismatch
from koala_async.errors import DataError


def refusal(server: SplitSpec | None, own: SplitSpec | None, own_ids: np.ndarray | None) -> str:
    """Why a client whose shard was derived as ``own`` (``own_ids``: its samples' indices in the
    dataset) must not train against a server that derived ``server``; "" when it may."""
    reason = mismatch(server, own)
    if not reason or server is None or own is None:
        return reason
    reason = f"refusing to train: {reason}"
    if own.dataset == server.dataset and own_ids is not None:
        from koala_async.learning.data import derive

        try:
            theirs = derive(server.dataset, server.seed, server.test_fraction, server.proxy_fraction,
                            server.validation_fraction)
        except (DataError, ValueError) as exc:
            return f"{reason} (the server's split cannot be derived here: {exc})"
        assert theirs.parts is not None
        held = np.concatenate([theirs.parts["test"], theirs.parts["validation"]])
        inside = int(np.isin(own_ids, held).sum())
        reason += (f"; {inside} of this shard's {len(own_ids)} samples are among the server's {len(held)} "
                   "test and validation samples")
    return reason + ". Derive the shard with the server's keys (a scenario sets them once, in [federation])"
