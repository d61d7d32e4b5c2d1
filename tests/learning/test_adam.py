"""The client's lean Adam takes the same steps as torch.optim.Adam and keeps torch._dynamo unloaded."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from koala_async.learning.adam import Adam


@pytest.mark.parametrize("lr", [1e-3, 3e-2])
def test_same_trajectory_as_torch_adam(lr: float) -> None:
    torch.manual_seed(0)
    ours_model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    ref_model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    ref_model.load_state_dict(ours_model.state_dict())
    ours, ref = Adam(ours_model.parameters(), lr=lr), torch.optim.Adam(ref_model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(1)
    for _ in range(60):
        x, y = torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen)
        for model, opt in ((ours_model, ours), (ref_model, ref)):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for a, b in zip(ours_model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(ours_model[0].weight, torch.nn.Linear(6, 8).weight)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        Adam(torch.nn.Linear(2, 2).parameters(), lr=0)


def test_client_training_does_not_load_the_compiler_stack() -> None:
    code = ("import sys, numpy as np, torch\n"
            "from koala_async.learning.distill import LocalTrainer, TrainConfig\n"
            "from koala_async.learning.models import InputSpec, build_model\n"
            "t = LocalTrainer(build_model('image-tiny', InputSpec('image', (1, 8, 8), 10)), TrainConfig(epochs=1))\n"
            "t.train(np.random.rand(64, 1, 8, 8).astype('f4'), np.arange(64) % 10)\n"
            "print(sorted(m for m in ('torch._dynamo', 'sympy', 'torch._inductor') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
