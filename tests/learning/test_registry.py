"""Bring your own model: names resolve to built-ins, import strings or installed entry points, and
every failure is a ConfigError naming the key, the string and what was tried."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from koala_async.errors import ConfigError
from koala_async.learning.models import InputSpec, build_model
from koala_async.learning.registry import ModelError, UnknownModel, check_model, resolve_model

SPEC = InputSpec("image", (1, 28, 28), 10)
NODES = Path(__file__).resolve().parents[2] / "nodes"

MODULE = '''
import torch
from torch import nn

BUILT = []

def tiny(spec):
    BUILT.append(spec)
    return nn.Sequential(nn.Flatten(), nn.Linear(spec.features, spec.num_classes))

def not_a_module(spec):
    return {"weights": 1}

def broken(spec):
    raise RuntimeError("out of widgets")

class Nets:
    @staticmethod
    def wide(spec):
        return nn.Sequential(nn.Flatten(), nn.Linear(spec.features, 64), nn.Linear(64, spec.num_classes))
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A model module outside the package, importable because its directory is on the path."""
    name = f"user_models_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_an_import_string_from_outside_the_package_builds_a_model(user_module: str) -> None:
    model = build_model(f"{user_module}:tiny", SPEC, seed=0)
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    wide = build_model(f"{user_module}:Nets.wide", SPEC)  # a dotted attribute path
    assert sum(p.numel() for p in wide.parameters()) == 784 * 64 + 64 + 64 * 10 + 10


def test_check_model_resolves_without_building(user_module: str) -> None:
    check_model(f"{user_module}:tiny", key="server.large_model")
    assert sys.modules[user_module].BUILT == []


@pytest.mark.parametrize("name, fragments", [
    ("image-smal", ["unknown model 'image-smal'", "did you mean 'image-small'", "built-in names",
                    "'koala_async.models'", "package.module:factory"]),
    ("no_such_pkg.models:tiny", ["cannot import module 'no_such_pkg.models'", "ModuleNotFoundError",
                                 "PYTHONPATH"]),
    ("{mod}:tiy", ["has no attribute 'tiy'", "did you mean 'tiny'"]),
    ("{mod}:BUILT", ["is a list, not a callable"]),
    ("image-small@32", ["takes no @SIDE suffix", "mobilenet_v2"]),
    ("bad:name:x", ["not an import string"]),
])
def test_bad_names_are_config_errors_naming_key_and_what_was_tried(user_module: str, name: str,
                                                                   fragments: list[str]) -> None:
    name = name.format(mod=user_module)
    with pytest.raises(ConfigError) as info:
        check_model(name, key="server.large_model")
    message = str(info.value)
    assert message.startswith("[server.large_model]: ")
    for fragment in fragments:
        assert fragment in message
    assert info.value.key == "server.large_model"


@pytest.mark.parametrize("factory, fragment", [
    ("not_a_module", "the factory returned a dict, not a torch.nn.Module"),
    ("broken", "failed to build for image input (1, 28, 28), 10 classes: RuntimeError: out of widgets"),
])
def test_a_factory_that_fails_is_named(user_module: str, factory: str, fragment: str) -> None:
    with pytest.raises(ModelError, match="client.tier") as info:
        build_model(f"{user_module}:{factory}", SPEC, key="client.tier")
    assert fragment in str(info.value)


def test_old_callers_still_catch_key_and_value_errors() -> None:
    with pytest.raises(KeyError):
        build_model("image-huge", SPEC)
    with pytest.raises(ValueError, match="is for vector inputs"):
        build_model("vector-small", SPEC)
    assert isinstance(UnknownModel("x"), ConfigError) and str(UnknownModel("x", key="k")) == "[k]: x"


def test_names_from_the_network_may_be_refused_imports(user_module: str) -> None:
    with pytest.raises(UnknownModel, match="only built-in names"):
        build_model(f"{user_module}:tiny", SPEC, allow_imports=False)
    assert build_model("image-small", SPEC, allow_imports=False) is not None


def test_sized_builtins_resize_their_input() -> None:
    ref = resolve_model("mobilenet_v2@40")
    model = ref.build(SPEC)
    assert model.adapter.side == 40 and ref.kind == "image"
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_an_installed_entry_point_resolves_by_plain_name(user_module: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    dist = tmp_path / "acme_models-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-models\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[koala_async.models]\nacme-tiny = {user_module}:tiny\n"
                                           f"acme-broken = {user_module}:nope\n")
    ref = resolve_model("acme-tiny")
    assert "entry point" in ref.origin and "acme-models" in ref.origin
    assert build_model("acme-tiny", SPEC)(torch.rand(1, 1, 28, 28)).shape == (1, 10)
    with pytest.raises(ModelError, match=r"\[large_model\]: model 'acme-broken': cannot load entry point"):
        check_model("acme-broken", key="large_model")
    with pytest.raises(UnknownModel, match="entry points in group 'koala_async.models' \\(acme-broken, acme-tiny"):
        check_model("acme-tinny", key="large_model")


def test_the_shipped_example_module_builds_both_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(NODES))
    small = build_model("example_models:small_cnn", SPEC, seed=0)
    large = build_model("example_models:wide_cnn", InputSpec("image", (3, 32, 32), 10), seed=0)
    assert 4_000 < sum(p.numel() for p in small.parameters()) < 6_000
    assert 1_000_000 < sum(p.numel() for p in large.parameters()) < 1_300_000
    assert large(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ModelError, match="needs \\(C, H, W\\) images"):
        build_model("example_models:small_cnn", InputSpec("vector", (20,), 3))
