"""The lean Adam and AdamW take the same steps as torch.optim's and keep torch._dynamo unloaded."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from koala_async.learning.adam import Adam, AdamW


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


def _net() -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def _groups(model: torch.nn.Module, decay: float) -> list[dict[str, object]]:
    return [{"params": [p for p in model.parameters() if p.ndim >= 2], "weight_decay": decay},
            {"params": [p for p in model.parameters() if p.ndim < 2], "weight_decay": 0.0}]


@pytest.mark.parametrize("decay", [0.0, 0.05])
def test_adamw_takes_torch_adamw_steps_with_groups_and_a_schedule(decay: float) -> None:
    torch.manual_seed(0)
    ours_model, ref_model = _net(), _net()
    ref_model.load_state_dict(ours_model.state_dict())
    ours, ref = AdamW(_groups(ours_model, decay), lr=1e-2), torch.optim.AdamW(_groups(ref_model, decay), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    for step in range(40):
        x, y = torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen)
        for model, opt in ((ours_model, ours), (ref_model, ref)):
            for group in opt.param_groups:
                group["lr"] = 1e-2 * (1 - step / 50)  # as Distiller's schedule sets it
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for a, b in zip(ours_model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # torch's state_dict layout both ways: a checkpoint written with torch's optimizer resumes in ours
    mine, theirs = ours.state_dict(), ref.state_dict()
    assert mine["state"].keys() == theirs["state"].keys()
    assert [g["params"] for g in mine["param_groups"]] == [g["params"] for g in theirs["param_groups"]]
    resumed = AdamW(_groups(ours_model, decay), lr=1.0)
    resumed.load_state_dict(theirs)
    assert resumed.param_groups[0]["lr"] == pytest.approx(ref.param_groups[0]["lr"])
    for i, st in theirs["state"].items():
        got = resumed.state_dict()["state"][i]
        for key in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(got[key], st[key], rtol=1e-5, atol=1e-7)


def test_adamw_refuses_a_state_for_other_groups() -> None:
    model = _net()
    with pytest.raises(ValueError, match="parameter groups"):
        AdamW(list(model.parameters())).load_state_dict(AdamW(_groups(model, 0.1)).state_dict())


def test_server_distillation_does_not_load_the_compiler_stack() -> None:
    code = ("import sys, numpy as np, torch\n"
            "from koala_async.learning.distill import Distiller\n"
            "from koala_async.learning.models import InputSpec, build_model\n"
            "d = Distiller(build_model('image-large', InputSpec('image', (1, 8, 8), 10)), augment='shift')\n"
            "x = np.random.rand(64, 1, 8, 8).astype('f4'); t = np.full((64, 10), 0.1, 'f4')\n"
            "d.distill(x, t, np.ones(64, bool), steps=2)\n"
            "print(sorted(m for m in ('torch._dynamo', 'sympy', 'torch._inductor') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
