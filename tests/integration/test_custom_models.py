"""Bring your own model, in a real federation: a module outside the package (written here, importable
only through PYTHONPATH) provides the server's large model and the clients' tier, and a broker, a
server and two clients run as separate processes through the scenario runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from koala_async.learning.models import InputSpec, build_model, parameter_count
from koala_async.tools.runner import run_scenario
from koala_async.tools.scenario import load_scenario

REPO = Path(__file__).resolve().parents[2]

MODULE = '''
"""Models of a user's own, outside koala_async."""
from torch import nn


class Big(nn.Module):
    def __init__(self, spec):
        super().__init__()
        c = spec.shape[0]
        self.features = nn.Sequential(nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(256, spec.num_classes)

    def forward(self, x):
        return self.head(self.features(x))


def big(spec):
    return Big(spec)


def small(spec):
    return nn.Sequential(nn.Flatten(), nn.Linear(spec.shape[0] * spec.shape[1] * spec.shape[2], 24), nn.ReLU(),
                         nn.Linear(24, spec.num_classes))
'''

SCENARIO = """
[federation]
name = "byo"
dataset = "digits"
seed = 3
duration = 150
settle = 1.0

[server]
large_model = "byo_models_t:big"
accepted_tiers = ["byo_models_t:small"]
distill_steps = 40
lr = 3e-3

[[clients]]
count = 2
[clients.config]
tier = "byo_models_t:small"
max_updates = 3
interval = 0.3
[clients.config.train]
epochs = 15

[broker]
kind = "embedded"
"""


@pytest.mark.slow
async def test_a_model_from_outside_the_package_is_the_large_model_and_the_tier_of_a_real_federation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real processes (embedded broker, server, two clients); about 30 s on two loaded cores."""
    (tmp_path / "byo_models_t.py").write_text(MODULE)
    # the node processes find the module (and this checkout) on PYTHONPATH; this process on sys.path
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), str(REPO),
                                                                   os.environ.get("PYTHONPATH")])))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("KOALA_CACHE_DIR", str(tmp_path / "cache"))  # FLOPs of these models: counted afresh
    path = tmp_path / "byo.toml"
    path.write_text(SCENARIO)
    report, code = await run_scenario(load_scenario(path), quiet=True, workdir=str(tmp_path / "run"),
                                      local_reference=False)
    assert code == 0, (report["failure"], (tmp_path / "run" / "server.log").read_text()[-2000:])
    spec = InputSpec("image", (1, 8, 8), 10)
    large = report["large_model"]
    assert large["name"] == "byo_models_t:big"
    assert large["params"] == parameter_count(build_model("byo_models_t:big", spec))  # built by the server
    assert {c["tier"] for c in report["clients"].values()} == {"byo_models_t:small"}
    assert report["updates"]["accepted"] == 6 == report["updates"]["sent"] and report["updates"]["rejected"] == {}
    assert large["test_accuracy"] > large["timeline"][0][2] + 0.15, large["timeline"]  # it learned
    tier = report["savings"]["tiers"]["byo_models_t:small"]
    assert tier["params"] == parameter_count(build_model("byo_models_t:small", spec))
    assert 0 < tier["flops_reduction"] < 1 and 0 < tier["storage_reduction"] < 1
    assert report["savings"]["large_model"]["name"] == "byo_models_t:big"
