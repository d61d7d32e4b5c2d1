"""The server's large model as configured: pretrained weights with a new head, the fine-tuning
controls, the device (status and report say which), checkpoints that restore onto that device, and
FedAvg starting from the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from koala_async.core.finetune import FineTune
from koala_async.core.topics import Topics
from koala_async.io.checkpoint import load_state, save_state
from koala_async.io.memory import MemoryBroker
from koala_async.learning.averaging_learner import AveragingLearner
from koala_async.learning.distill_learner import DistillLearner
from koala_async.learning.models import InputSpec, build_model
from koala_async.nodes.config import ServerConfig
from koala_async.nodes.server import ServerNode

SPEC5 = InputSpec("image", (1, 8, 8), 5)  # "pretrained" on another task: 5 classes, digits have 10
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch here")


def _pretrained(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    model = build_model("image-mobile", SPEC5, seed=7)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / "pretrained.safetensors"
    save_file(state, str(path))
    return path, state


def _learner(cls: type, **cfg: object) -> DistillLearner:
    learner = cls(ServerConfig(large_model="image-mobile", **cfg), Topics("t"), iter(range(1, 10**6)).__next__)
    learner.prepare()
    return learner


def test_distill_learner_starts_from_the_weights_with_a_new_head_and_trains_what_finetune_says(
        tmp_path: Path) -> None:
    path, state = _pretrained(tmp_path)
    learner = _learner(DistillLearner, large_weights=str(path), finetune=FineTune(train="head"))
    own = learner.distiller.model.state_dict()
    for name, tensor in state.items():
        if not name.startswith("classifier."):
            assert torch.equal(own[name], tensor), name
    assert own["classifier.weight"].shape == (10, 256)
    snap = learner.snapshot()
    assert snap["device"] == "cpu" and snap["large_model"] == "image-mobile"
    weights = snap["large_weights"]
    assert weights["path"] == str(path) and weights["loaded"] == len(state) - 2
    assert sorted(weights["replaced"]) == ["classifier.bias: [5] -> [10]",
                                           "classifier.weight: [5, 256] -> [10, 256]"]
    assert snap["finetune"]["train"] == "head" and snap["finetune"]["trainable_params"] == 256 * 10 + 10
    assert learner.distiller.trainable == ["classifier.weight", "classifier.bias"]
    from koala_async.core.info import fit_info

    assert fit_info(snap) == snap  # within a status's bounds: nothing is cut on the way to the report


def _distill(learner: DistillLearner, steps: int) -> None:
    n = len(learner.proxy_x)
    targets = np.random.default_rng(1).dirichlet(np.ones(10), size=n).astype(np.float32)
    learner.distiller.distill(learner.proxy_x, targets, np.ones(n, dtype=bool), steps)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_a_checkpoint_restores_onto_the_device_and_training_goes_on_identically(tmp_path: Path,
                                                                               device: str) -> None:
    cfg = {"device": device, "finetune": FineTune(weight_decay=0.01, schedule="cosine", steps=50)}
    first = _learner(DistillLearner, **cfg)
    _distill(first, 3)
    save_state(tmp_path / "ckpt.safetensors", {"format": 2, "learner": first.state()})  # CPU tensors on disk
    second = _learner(DistillLearner, **cfg)
    second.restore(load_state(tmp_path / "ckpt.safetensors")["learner"])
    want = torch.device(device).type
    assert {p.device.type for p in second.distiller.model.parameters()} == {want}
    moments = [t for s in second.distiller.optimizer.state.values() for k, t in s.items() if k != "step"]
    assert moments and {t.device.type for t in moments} == {want}
    assert second.distiller.steps_done == 3 and second.distiller.current_lr() == first.distiller.current_lr()
    assert second.snapshot()["device"].startswith(want)
    _distill(first, 2)
    _distill(second, 2)
    for (name, a), b in zip(first.distiller.model.state_dict().items(), second.distiller.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name, rtol=1e-5, atol=1e-6)


def test_fedavg_publishes_the_pretrained_weights_as_its_first_global_model(tmp_path: Path) -> None:
    path, state = _pretrained(tmp_path)
    learner = _learner(AveragingLearner, large_weights=str(path), mode="fedavg")
    [(topic, weights)] = learner.retained(0, full=True)
    assert topic == Topics("t").model and weights.model == "image-mobile"
    for name, tensor in state.items():
        if not name.startswith("classifier."):
            np.testing.assert_array_equal(weights.params[name], tensor.numpy().astype(np.float32), err_msg=name)
    snap = learner.snapshot()
    assert snap["device"] == "cpu" and [r.split(":")[0] for r in sorted(snap["large_weights"]["replaced"])] == [
        "classifier.bias", "classifier.weight"]


async def test_the_server_status_and_report_state_the_device_and_the_weights(tmp_path: Path) -> None:
    path, _ = _pretrained(tmp_path)
    report = tmp_path / "report.json"
    config = ServerConfig(large_model="image-mobile", large_weights=str(path), device="auto",
                          report_path=str(report))
    async with ServerNode(config, transport=MemoryBroker().factory) as server:
        snap = server.snapshot()
    expected = "cuda:0" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert snap["device"] == expected
    written = json.loads(report.read_text())
    assert written["device"] == expected and written["large_weights"]["loaded"] == snap["large_weights"]["loaded"]
