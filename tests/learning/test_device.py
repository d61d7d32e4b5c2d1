"""Devices: names resolve or fail clearly; the server's Distiller, predict_logits and accuracy run on a
given device and hand back numpy on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from koala_async.errors import ConfigError
from koala_async.learning.device import resolve_device
from koala_async.learning.distill import Distiller, accuracy, predict_logits
from koala_async.learning.models import InputSpec, build_model

SPEC = InputSpec("image", (1, 8, 8), 10)


def test_names_resolve() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.parametrize("name, fragment", [("gpu", "unknown device 'gpu'"), ("cpu:1", "unknown device"),
                                            ("cuda:x", "unknown device")])
def test_bad_names_are_config_errors(name: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=rf"\[server.device\]: {fragment}"):
        resolve_device(name, key="server.device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_says_so() -> None:
    with pytest.raises(ConfigError, match="no CUDA GPU is visible"):
        resolve_device("cuda:1")


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((96, 1, 8, 8), dtype=np.float32)
    y = (x.reshape(96, -1).mean(1) > 0.5).astype(np.int64)
    targets = np.eye(10, dtype=np.float32)[y] * 0.9 + 0.01
    return x, y, targets, np.ones(96, dtype=bool)


def _run_on(device: str) -> tuple[float, np.ndarray, float]:
    x, y, targets, mask = _data()
    distiller = Distiller(build_model("image-mobile", SPEC, seed=0), lr=1e-2, device=device, seed=0)
    assert next(distiller.model.parameters()).device.type == torch.device(device).type
    loss = distiller.distill(x, targets, mask, steps=5)
    logits = predict_logits(distiller.model, x)
    assert isinstance(logits, np.ndarray) and logits.shape == (96, 10) and logits.dtype == np.float32
    return loss, logits, accuracy(distiller.model, x, y)


def test_the_server_side_runs_on_the_cpu_and_takes_uint8_pixels() -> None:
    loss, _, acc = _run_on("cpu")
    assert np.isfinite(loss) and 0 <= acc <= 1
    model = build_model("image-small", SPEC, seed=0)
    x = np.random.default_rng(1).integers(0, 256, size=(5, 1, 8, 8), dtype=np.uint8)
    np.testing.assert_allclose(predict_logits(model, x), predict_logits(model, x.astype(np.float32) / 255),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_the_server_side_runs_on_a_gpu_like_on_the_cpu() -> None:
    cpu_loss, cpu_logits, _ = _run_on("cpu")
    gpu_loss, gpu_logits, acc = _run_on("cuda")
    assert np.isfinite(gpu_loss) and 0 <= acc <= 1
    # the same seeds draw the same batches on both; kernels differ, so only close, not equal
    assert gpu_loss == pytest.approx(cpu_loss, rel=1e-2)
    np.testing.assert_allclose(gpu_logits, cpu_logits, rtol=1e-2, atol=1e-2)
