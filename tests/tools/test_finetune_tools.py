"""The fine-tuning scenario and its comparison tools: the shipped scenarios validate (and the custom
one says what it needs), ``--set``/``--unset`` change a scenario before validation, the report's savings
are the ratios against the large model, and the centralised and tuning tools choose on validation."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from koala_async.core.tiering import TierSpec
from koala_async.errors import ConfigError
from koala_async.tools.bench import centralized, tune_finetune
from koala_async.tools.overrides import apply_overrides
from koala_async.tools.savings import savings
from koala_async.tools.scenario import load_scenario

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = REPO / "scenarios"


def test_the_finetune_scenario_and_its_comparisons_validate() -> None:
    koala = load_scenario(SCENARIOS / "finetune.toml")
    assert koala.server["large_weights"] == "builtin:imagenet-mobilenet_v2" and koala.num_clients >= 8
    scratch = load_scenario(SCENARIOS / "finetune.toml", unsets=["server.large_weights"])
    assert "large_weights" not in scratch.server
    fedavg = load_scenario(SCENARIOS / "finetune.toml", mode="fedavg")
    assert fedavg.federation.mode == "fedavg"


def test_the_custom_models_scenario_needs_its_module_on_the_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "example_models", raising=False)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p or ".").resolve() != REPO / "nodes"])
    with pytest.raises(ConfigError) as info:
        load_scenario(SCENARIOS / "custom-models.toml")
    assert info.value.key == "server.large_model" and "cannot import module 'example_models'" in str(info.value)
    monkeypatch.syspath_prepend(str(REPO / "nodes"))
    scenario = load_scenario(SCENARIOS / "custom-models.toml")
    assert scenario.clients[0].config["tier"] == "example_models:small_cnn"


def test_overrides_set_and_unset_keys_with_toml_values() -> None:
    data = {"server": {"lr": 1e-3, "large_weights": "x"}, "clients": [{"config": {"max_updates": 10}}]}
    apply_overrides(data, ["server.lr=3e-4", "clients.0.config.max_updates=4", "server.finetune.train=[\"a\"]",
                           "server.large_model=mobilenet_v2@64"], ["server.large_weights"])
    assert data == {"server": {"lr": 3e-4, "finetune": {"train": ["a"]}, "large_model": "mobilenet_v2@64"},
                    "clients": [{"config": {"max_updates": 4}}]}
    with pytest.raises(ConfigError, match=r"index '3' is not in \[0, 1\)"):
        apply_overrides(data, ["clients.3.config.tier=x"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides(data, ["server.lr"])
    with pytest.raises(ConfigError, match="'server.nope' is not set"):
        apply_overrides(data, [], ["server.nope"])


def test_an_override_is_validated_like_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[clients\[0\].config.tier\]: unknown model 'image-smal'"):
        load_scenario(SCENARIOS / "finetune.toml", sets=["clients.0.config.tier=image-smal"])


def _spec(name: str, params: int, disk: int, flops: float) -> TierSpec:
    return TierSpec(name=name, kind="image", params=params, bytes_on_disk=disk, train_flops_per_sample=flops,
                    peak_train_bytes=0)


def test_savings_are_one_minus_the_ratio_to_the_large_model_for_each_tier_used() -> None:
    measured = {"big": _spec("big", 1000, 4000, 1e6), "a": _spec("a", 10, 80, 1e4), "b": _spec("b", 50, 200, 3e4),
                "unused": _spec("unused", 1, 1, 1)}
    out = savings(measured, "big", ["a", "b", "a", None])
    assert out is not None and set(out["tiers"]) == {"a", "b"}
    assert out["tiers"]["a"] == {"params": 10, "bytes_on_disk": 80, "train_flops_per_sample": 1e4,
                                 "storage_reduction": 0.98, "params_reduction": 0.99, "flops_reduction": 0.99}
    assert out["min_storage_reduction"] == 0.95 and out["min_flops_reduction"] == 0.97
    assert savings(measured, "missing", ["a"]) is None


SMALL = ["federation.dataset=\"digits\"", "server.large_model=\"image-small\"", "server.batch_size=32",
         "clients.0.config.max_updates=1", "clients.0.config.train.epochs=2",
         "clients.0.config.train.fedavg_epochs=1", "federation.proxy_fraction=0.25"]


def test_centralized_chooses_its_lr_on_validation_and_then_meets_the_test_split(capsys: pytest.CaptureFixture[str]) -> None:
    scenario = load_scenario(SCENARIOS / "finetune.toml", sets=SMALL, unsets=["server.large_weights"])
    result = centralized.run(scenario, pretrained=False, lrs=[1e-4, 3e-3], tune_steps=30, steps=40,
                             validation=0.2, eval_every=20)
    fed = centralized.federation_data(scenario)
    assert result["pool"] == len(fed.splits.private) and result["test"] == len(fed.splits.test)
    assert set(result["lr_validation_scores"]) == {"0.0001", "0.003"}
    assert result["lr"] == max((1e-4, 3e-3), key=lambda lr: result["lr_validation_scores"][str(lr)])
    assert [p["step"] for p in result["curve"]] == [20, 40] and all("test" in p for p in result["curve"])
    lines = capsys.readouterr().out.splitlines()
    tuning = [line for line in lines if '"validation"' in line]
    assert len(tuning) == 2 and not any('"test"' in line for line in tuning)  # no test score while choosing
    assert result["test_accuracy"] > 0.3  # ten classes: well above chance after 40 steps


def test_tuning_holds_out_validation_from_the_private_pool_only() -> None:
    scenario = load_scenario(SCENARIOS / "finetune.toml", sets=SMALL, unsets=["server.large_weights"])
    out = tune_finetune.tune(scenario, [3e-3], [1e-3], 5, [1e-3], 1, 0.2, {"pretrained"})
    fed = centralized.federation_data(scenario)
    assert out["validation"] + out["tuning_pool"] == len(fed.splits.private)
    assert sum(out["shard_sizes"]) == out["tuning_pool"] and len(out["shard_sizes"]) == scenario.num_clients
    assert set(out) >= {"client", "server_scratch", "fedavg"} and "server_pretrained" not in out
    assert 0 <= out["fedavg"]["curves"]["0.001"][0] <= 1


def test_the_dev_file_holds_everything_but_the_test_split(tmp_path: Path) -> None:
    import numpy as np

    scenario = load_scenario(SCENARIOS / "finetune.toml", sets=SMALL, unsets=["server.large_weights"])
    path = tmp_path / "dev.npz"
    n = tune_finetune.write_dev_npz(scenario, str(path))
    splits = centralized.federation_data(scenario).splits
    dev = np.load(path)
    assert n == len(dev["y"]) == len(splits.private) + len(splits.proxy)
    rows = {r.tobytes() for r in dev["x"]}
    test_rows = {r.tobytes() for r in splits.test.x}
    assert not rows & test_rows  # digits has no duplicate images across splits
