"""Staleness damps through the real server path: a stale update moves the large model less than a
fresh one, even as the only contributor, by the documented rule (each arrival buys
``distill_steps * w(s)`` steps; core/staleness.py).

Two servers on the in-memory transport are brought to the same version 3 by the same fresh updates
(the same weights, checked), then each gets one more update with the same logits from the same
sender: fresh (built on version 3) on one, stale (built on version 0, s = 3) on the other. The fused
targets are the same (one contributor, normalised), so only the damping can tell them apart. With
``w(s) = 1/(1+s)``, w(3) = 0.25: the stale arrival must move the published knowledge about a quarter
as far. Without damping (the code before) it moved as far (ratio 1); a weight applied twice (w^2 =
1/16) would move it about 1/16 as far. The learning rate is small (1e-4) so that 40 steps do not
converge: the movement then grows with the steps, about linearly.
"""

from __future__ import annotations

import numpy as np
import pytest
from probe import Probe, distill_learner
from waiting import wait_for

from koala_async.core.staleness import StalenessPolicy
from koala_async.io.memory import MemoryBroker
from koala_async.nodes.server import ServerConfig, ServerNode

pytestmark = pytest.mark.timeout(60)
STALENESS = 3
CONFIG = ServerConfig(large_model="image-small", distill_steps=40, augment="none", lr=1e-4,
                      staleness=StalenessPolicy("polynomial", a=1.0), status_interval=60)


async def knowledge_movement(last_base: int) -> tuple[np.ndarray, float, int]:
    """(knowledge at version 3, how far version 4 moved from it, steps version 4 distilled)."""
    broker = MemoryBroker()
    async with ServerNode(CONFIG, transport=broker.factory) as server, Probe(broker) as probe:
        learner = distill_learner(server)
        logits = np.random.default_rng(7).normal(0, 3, (len(learner.proxy_x), 10))
        for version in range(STALENESS):  # warm-up: fresh updates, one version each
            await probe.update("c0", learner, version, logits)
            def published(v: int = version + 1) -> bool:
                return v in probe.knowledge

            await wait_for(published, 20, f"version {version + 1}")
        before = learner.distiller.steps_done
        await probe.update("c0", learner, last_base, logits)  # the only contributor, as before
        await wait_for(lambda: STALENESS + 1 in probe.knowledge, 20, "the measured version")
        assert list(learner.fusion.contributions) == ["c0"]
        k3, k4 = (probe.knowledge[v].logits.astype(np.float32) for v in (STALENESS, STALENESS + 1))  # type: ignore[union-attr]
        return k3, float(np.linalg.norm(k4 - k3)), learner.distiller.steps_done - before


async def test_a_stale_only_contributor_moves_the_large_model_by_w_s_of_a_fresh_one() -> None:
    k3_fresh, fresh, fresh_steps = await knowledge_movement(last_base=STALENESS)
    k3_stale, stale, stale_steps = await knowledge_movement(last_base=0)
    np.testing.assert_array_equal(k3_fresh, k3_stale)  # the same model before the measured arrival
    w = CONFIG.staleness.weight(STALENESS)
    ratio = stale / fresh
    print(f"\nmovement fresh {fresh:.3f}, stale {stale:.3f}: ratio {ratio:.3f} (w(s) = {w:.3f})")
    # measured 0.244 for w(s) = 0.25; undamped 1.0, damped twice (w^2) 0.049
    assert w / 2 < ratio < 2 * w, ratio
    assert (fresh_steps, stale_steps) == (40, round(40 * w))
