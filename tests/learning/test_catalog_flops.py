"""Training FLOPs come from torch's FlopCounterMode, for any layer, and never load its compiler stack
into a client process: they are counted once in a child process and cached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from koala_async.learning import flops
from koala_async.learning.catalog import measure_many, tier_catalog
from koala_async.learning.models import InputSpec

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KOALA_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(flops, "_memory", {})
    tier_catalog.cache_clear()
    return tmp_path


def test_linear_flops_are_forward_plus_weight_gradient_per_sample() -> None:
    # (B, 20) @ (20, 7): forward 2*B*20*7; the weight gradient as many again; the input needs no gradient
    model = nn.Linear(20, 7)
    assert flops.count_train_flops(model, torch.randn(5, 20)) == 2 * (2 * 5 * 20 * 7)


def test_depthwise_convolutions_are_counted() -> None:
    # the hand counter this replaces refused grouped convolutions; FlopCounterMode counts them
    dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    per_pass = 2 * 2 * 6 * 6 * 8 * 9  # B * H * W * C_out * (C_in / groups) * k * k multiply-adds, x2
    assert flops.count_train_flops(dw, x) == 3 * per_pass  # forward, weight grad, input grad


def test_child_process_and_in_process_counts_agree_and_are_cached(cache_dir: Path) -> None:
    spec = InputSpec("image", (1, 28, 28), 10)
    names = ["image-tiny", "image-mobile", "mobilenet_v2"]
    here = measure_many(names, spec, in_process=True)
    (cache_dir / "flops.json").unlink()
    flops._memory.clear()
    child = measure_many(names, spec, in_process=False)
    assert [t.train_flops_per_sample for t in child] == [t.train_flops_per_sample for t in here]
    assert all(t.train_flops_per_sample > 0 for t in here)
    assert len(json.loads((cache_dir / "flops.json").read_text())) == 3


def test_a_client_measuring_its_catalog_never_loads_the_compiler_stack(cache_dir: Path) -> None:
    code = ("import sys; from koala_async.learning.catalog import tier_catalog; "
            "from koala_async.learning.models import InputSpec; "
            "from koala_async.learning import flops; {patch}"
            "cat = tier_catalog(InputSpec('image', (3, 32, 32), 10)); "
            "print([t.train_flops_per_sample for t in cat]); "
            "assert 'sympy' not in sys.modules and 'torch._dynamo' not in sys.modules, 'compiler stack loaded'")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KOALA_CACHE_DIR": str(cache_dir)}
    first = subprocess.run([sys.executable, "-c", code.format(patch="")], env=env, capture_output=True,
                           text=True, timeout=120, check=False)
    assert first.returncode == 0, first.stderr
    # the second client finds the counts in the cache: counting in a child would now fail
    no_child = "flops._count_in_child = lambda *a: (_ for _ in ()).throw(AssertionError('counted again')); "
    second = subprocess.run([sys.executable, "-c", code.format(patch=no_child)], env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert second.returncode == 0, second.stderr
    assert first.stdout == second.stdout


def test_the_cache_key_follows_the_architecture() -> None:
    spec = InputSpec("image", (1, 8, 8), 10)
    a, b = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    assert flops.fingerprint(a, spec) == flops.fingerprint(b, spec)
    assert flops.fingerprint(a, spec) != flops.fingerprint(nn.Sequential(nn.Flatten(), nn.Linear(64, 11)), spec)
    assert flops.fingerprint(a, spec) != flops.fingerprint(a, InputSpec("image", (1, 8, 8), 11))
