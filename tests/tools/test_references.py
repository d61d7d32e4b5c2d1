"""The runner's references: local-only training matches the federated clients' epochs and samples, and
the clients' final small models are evaluated on the server's test split from the files they wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from koala_async.core.holdout import holdout_seed, holdout_split
from koala_async.learning import data as datasets
from koala_async.learning.distill import LocalTrainer, accuracy
from koala_async.learning.model_file import load_model, save_model
from koala_async.learning.models import build_model
from koala_async.tools.baselines import local_only, small_models

CLIENT = {"node_id": "client-3", "dataset": "digits", "seed": 0, "num_shards": 8, "shard": 3, "alpha": 0.5,
          "tier": "image-tiny", "max_updates": 0, "train": {"epochs": 10}}


def test_local_only_trains_as_many_epochs_as_the_client_reported_on_its_training_samples(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int]] = []

    def record(self: LocalTrainer, x: np.ndarray, y: np.ndarray, *args: Any, epochs: int | None = None,
               **kwargs: Any) -> float:
        seen.append((len(y), int(epochs or 0)))
        return 0.0

    monkeypatch.setattr(LocalTrainer, "train", record)
    local_only({}, [CLIENT], {"client-3": 370})  # a client of a 60 s run: 37 updates of 10 epochs
    local_only({}, [CLIENT])  # no report of its own: epochs x max(max_updates, 1)
    shard = datasets.federate("digits", 0, 8, 0.5).client(3)
    train, held = holdout_split(len(shard.y), 0.1, holdout_seed(0, 3))
    assert len(held) > 0 and seen == [(len(train), 370), (len(train), 10)]


def test_small_models_are_read_back_and_judged_on_the_test_split(tmp_path: Path) -> None:
    # the server's split: test_fraction 0.2 holds validation (half of it, by default) and test
    test = datasets.federate("digits", 0, 8, 0.5, 0.2, 0.25, 0.1).splits.test
    model = build_model("image-tiny", test.spec, seed=1)
    path = tmp_path / "client-3.small.safetensors"
    save_model(model, "image-tiny", path)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically
    loaded, tier = load_model(path, test.spec)
    assert tier == "image-tiny"
    result = small_models([{**CLIENT, "model_out": str(path)}, {**CLIENT, "node_id": "client-4", "shard": 4}])
    assert result == {"client-3": pytest.approx(accuracy(model, test.x, test.y))}  # client-4 wrote none
    assert accuracy(loaded, test.x, test.y) == result["client-3"]


def test_a_model_file_without_its_tier_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    test = datasets.federate("digits", 0, 8, 0.5).splits.test
    path = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in build_model("image-tiny", test.spec).state_dict().items()}, str(path))
    with pytest.raises(ValueError, match="bare.safetensors: no koala_tier"):
        load_model(path, test.spec)


@pytest.mark.parametrize("n, fraction, held", [(100, 0.1, 10), (9, 0.5, 0), (40, 0.0, 0), (12, 0.01, 1)])
def test_holdout_split(n: int, fraction: float, held: int) -> None:
    train, out = holdout_split(n, fraction, seed=5)
    assert len(out) == held and len(train) + len(out) == n and not set(train) & set(out)
    assert np.array_equal(out, holdout_split(n, fraction, seed=5)[1])  # the runner agrees with the client
    with pytest.raises(ValueError):
        holdout_split(n, 1.0, seed=5)
