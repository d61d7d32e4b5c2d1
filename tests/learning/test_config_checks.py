"""Model names, pretrained weights and the device are checked when a config is loaded, before any node
starts: a typo or a module that does not import is a ConfigError naming the key, the string, the line
and what was tried. Loading a client config stays torch-free."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from koala_async.config import load_into
from koala_async.core.finetune import FineTune
from koala_async.errors import ConfigError
from koala_async.learning.config_checks import check_client
from koala_async.nodes.config import ClientConfig, ServerConfig
from koala_async.tools.scenario import load_scenario

SCENARIO = """\
[federation]
name = "t"
dataset = "digits"
duration = 60

[server]
{server}

[[clients]]
count = 2
[clients.config]
{client}
"""


def _scenario_error(tmp_path: Path, server: str = "", client: str = "") -> ConfigError:
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO.format(server=server, client=client))
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    return info.value


def test_a_large_model_typo_names_key_line_and_the_closest_name(tmp_path: Path) -> None:
    err = _scenario_error(tmp_path, server='large_model = "mobilenet_v3@64"')
    assert err.key == "server.large_model" and err.line == 7
    assert "'mobilenet_v3@64'" in str(err) and "Tried: built-in names" in str(err)


def test_a_client_tier_typo_fails_scenario_validation_with_its_group_key(tmp_path: Path) -> None:
    err = _scenario_error(tmp_path, client='tier = "image-smal"')
    assert err.key == "clients[0].config.tier" and err.line == 12
    assert "did you mean 'image-small'" in str(err)


def test_a_module_that_does_not_import_is_named(tmp_path: Path) -> None:
    err = _scenario_error(tmp_path, client='tier = "no_such_module_here:small"')
    assert err.key == "clients[0].config.tier"
    assert "cannot import module 'no_such_module_here'" in str(err) and "PYTHONPATH" in str(err)


def test_accepted_tiers_are_checked_one_by_one(tmp_path: Path) -> None:
    err = _scenario_error(tmp_path, server='accepted_tiers = ["image-small", "image-bigg"]')
    assert err.key == "server.accepted_tiers[1]" and "'image-bigg'" in str(err)


def test_a_model_for_the_wrong_input_kind_is_refused_where_the_dataset_tells(tmp_path: Path) -> None:
    err = _scenario_error(tmp_path, client='tier = "vector-small"')
    assert err.key == "clients[0].config.tier" and "vector inputs, the data is image" in str(err)


def test_builtin_weights_resolve_and_fit_only_their_architecture(tmp_path: Path) -> None:
    err = _scenario_error(tmp_path, server='large_model = "image-large"\nlarge_weights = "builtin:imagenet-mobilenet_v2"')
    assert err.key == "server.large_weights" and "weights of 'mobilenet_v2'" in str(err)
    err = _scenario_error(tmp_path, server='large_model = "mobilenet_v2"\nlarge_weights = "builtin:imagenet-mobilenet"')
    assert "did you mean 'builtin:imagenet-mobilenet_v2'" in str(err)
    err = _scenario_error(tmp_path, server='large_weights = "missing.safetensors"')
    assert err.key == "server.large_weights" and "no weights file 'missing.safetensors'" in str(err)
    ok = ServerConfig(large_model="mobilenet_v2@64", large_weights="builtin:imagenet-mobilenet_v2")
    assert ok.large_weights == "builtin:imagenet-mobilenet_v2"


def test_device_is_resolved_at_load(tmp_path: Path) -> None:
    err = _scenario_error(tmp_path, server='device = "tpu"')
    assert err.key == "server.device" and "use auto, cpu, cuda, cuda:N or mps" in str(err)
    assert ServerConfig(device="auto").device == "auto"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"\[device\].*no CUDA GPU is visible"):
            ServerConfig(device="cuda")


def test_finetune_table_loads_and_its_errors_name_it() -> None:
    cfg = load_into(ServerConfig, {"finetune": {"train": ["features.18", "classifier"], "weight_decay": 0.01,
                                                "schedule": "cosine", "steps": 200}}, prefix="server")
    assert cfg.finetune == FineTune(train=("features.18", "classifier"), weight_decay=0.01, schedule="cosine",
                                    steps=200)
    with pytest.raises(ConfigError, match=r"\[server.finetune\]: .*'cosine' needs finetune.steps"):
        load_into(ServerConfig, {"finetune": {"schedule": "cosine"}}, prefix="server")


def test_programmatic_configs_are_checked_too() -> None:
    with pytest.raises(ConfigError, match=r"\[large_model\]: unknown model 'image-huge'"):
        ServerConfig(large_model="image-huge")
    with pytest.raises(ConfigError, match=r"\[tier\]: unknown model 'image-huge'"):
        check_client(ClientConfig(tier="image-huge"))
    check_client(ClientConfig(tier="auto"))  # chosen later from measured resources


def test_loading_a_client_config_does_not_import_torch() -> None:
    code = ("import sys; from koala_async.config import load_into; from koala_async.nodes.client import "
            "ClientConfig; load_into(ClientConfig, {'tier': 'image-small', 'dataset': 'mnist5k'}); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


def test_koala_client_refuses_a_bad_tier_before_connecting(tmp_path: Path) -> None:
    config = tmp_path / "client.toml"
    config.write_text('[client]\nbroker = "mqtt://127.0.0.1:1"\ntier = "image-smal"\n')
    proc = subprocess.run([sys.executable, "-m", "koala_async", "client", "--config", str(config)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert f"{config}:3 [client.tier]: unknown model 'image-smal'" in proc.stderr
