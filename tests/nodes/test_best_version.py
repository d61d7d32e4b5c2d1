"""Every version is scored on validation and test; the best on validation is reported beside the last
and its weights exported to the state directory, through the real server on the in-memory transport.

A teacher that knows the proxy labels makes the large model good; the same sender then turns to a
permuted labelling and the model gets worse. The run must say that its last version is below its best,
name the best version with its validation and test accuracy, and leave that version's weights in
``best_model.safetensors``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from probe import Probe, distill_learner
from safetensors import safe_open
from waiting import wait_for

from koala_async.io.memory import MemoryBroker
from koala_async.learning import data as D
from koala_async.learning.distill import accuracy
from koala_async.learning.models import build_model
from koala_async.nodes.server import ServerConfig, ServerNode

pytestmark = pytest.mark.timeout(90)


async def test_the_best_version_is_reported_beside_the_last_and_its_weights_exported(tmp_path: Path) -> None:
    config = ServerConfig(large_model="image-small", distill_steps=60, lr=3e-3, augment="none",
                          state_dir=str(tmp_path / "state"), report_path=str(tmp_path / "report.json"),
                          status_interval=60)
    proxy_y = D.derive("digits", 0, 0.2, 0.25, 0.1).proxy.y  # the same proxy set the server derives
    good = np.eye(10)[proxy_y] * 6.0
    bad = np.eye(10)[(proxy_y + 1) % 10] * 6.0  # every label moved by one
    broker = MemoryBroker()
    async with ServerNode(config, transport=broker.factory) as server, Probe(broker) as probe:
        learner = distill_learner(server)
        for version, logits in enumerate([good] * 2 + [bad] * 3):
            await probe.update("teacher", learner, version, logits)
            def published(v: int = version + 1) -> bool:
                return server.version == v

            await wait_for(published, 30, f"version {version + 1}")
        snapshot = server.snapshot()
        validation = learner.data.validation
    assert validation is not None and len(validation) == pytest.approx(180, abs=5)
    best = snapshot["best_version"]
    assert 1 <= best <= 2 and snapshot["best_validation_accuracy"] > 0.5, snapshot
    assert snapshot["validation_accuracy"] < snapshot["best_validation_accuracy"] and snapshot["last_below_best"]
    assert snapshot["test_accuracy"] < snapshot["best_test_accuracy"]  # test: reported, never chosen on
    report = json.loads(Path(config.report_path).read_text())  # type: ignore[arg-type]
    assert {k: report[k] for k in ("best_version", "best_validation_accuracy", "best_test_accuracy",
                                   "last_below_best")} == {k: snapshot[k] for k in ("best_version",
                                   "best_validation_accuracy", "best_test_accuracy", "last_below_best")}
    with safe_open(str(tmp_path / "state" / "best_model.safetensors"), framework="pt") as handle:
        meta = handle.metadata()
        weights = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    assert int(meta["version"]) == best and float(meta["validation_accuracy"]) == snapshot["best_validation_accuracy"]
    model = build_model("image-small", learner.spec, seed=0)
    model.load_state_dict(weights)
    assert accuracy(model, validation.x, validation.y) == snapshot["best_validation_accuracy"]
