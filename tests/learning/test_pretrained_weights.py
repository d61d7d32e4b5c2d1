"""Pretrained weights: safetensors or tensor-only state dicts, unwrapped; a different class count
replaces exactly the head; everything else that does not fit is an error naming keys and shapes."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from koala_async.errors import DataError
from koala_async.learning.models import InputSpec, build_model
from koala_async.learning.weights import WeightsError, head_prefix, load_weights, read_state_dict

SPEC = InputSpec("image", (1, 8, 8), 10)


def _trained(classes: int = 10) -> dict[str, torch.Tensor]:
    return build_model("image-medium", InputSpec("image", (1, 8, 8), classes), seed=7).state_dict()


def _same(model: nn.Module, state: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> bool:
    mine = model.state_dict()
    return all(torch.equal(mine[k], v) for k, v in state.items() if k not in skip)


def test_a_safetensors_file_loads_strictly(tmp_path: Path) -> None:
    state = _trained()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    model = build_model("image-medium", SPEC, seed=0)
    report = load_weights(model, tmp_path / "w.safetensors")
    assert _same(model, state) and report.replaced == () and len(report.loaded) == len(state)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "module"])
def test_torch_state_dicts_are_unwrapped(tmp_path: Path, wrap: str) -> None:
    state = _trained()
    saved: object = {"plain": state, "state_dict": {"state_dict": state, "epoch": 3},
                     "module": collections.OrderedDict((f"module.{k}", v) for k, v in state.items())}[wrap]
    torch.save(saved, tmp_path / "w.pt")
    model = build_model("image-medium", SPEC, seed=0)
    load_weights(model, tmp_path / "w.pt")
    assert _same(model, state)


def test_a_different_class_count_replaces_exactly_the_head(tmp_path: Path) -> None:
    state = _trained(classes=100)
    torch.save(state, tmp_path / "w.pt")
    model = build_model("image-medium", SPEC, seed=0)
    assert head_prefix(model) == "classifier.3"
    report = load_weights(model, tmp_path / "w.pt")
    assert report.replaced == (("classifier.3.weight", (100, 64), (10, 64)), ("classifier.3.bias", (100,), (10,)))
    assert _same(model, state, skip=("classifier.3.weight", "classifier.3.bias"))
    with pytest.raises(WeightsError, match=r"shape mismatches: classifier.3.weight file \[100, 64\] vs model "
                                           r"\[10, 64\]"):
        load_weights(build_model("image-medium", SPEC), tmp_path / "w.pt", replace_head=False)


def test_mismatches_are_named_and_the_model_is_left_alone(tmp_path: Path) -> None:
    state = _trained()
    state["features.0.weight"] = torch.zeros(16, 3, 3, 3)  # a 3-channel stem for 1-channel data
    state["extra.weight"] = torch.zeros(2)
    del state["features.3.bias"]
    torch.save(state, tmp_path / "w.pt")
    model = build_model("image-medium", SPEC, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError) as info:
        load_weights(model, tmp_path / "w.pt")
    message = str(info.value)
    for fragment in ("w.pt: does not fit ConvNet", "1 missing keys (in the model, not the file): features.3.bias",
                     "1 unexpected keys (in the file, not the model): extra.weight",
                     "features.0.weight file [16, 3, 3, 3] vs model [16, 1, 3, 3]"):
        assert fragment in message
    assert _same(model, before)
    assert isinstance(info.value, DataError)


def test_long_key_lists_are_truncated(tmp_path: Path) -> None:
    torch.save({f"layer{i}.weight": torch.zeros(1) for i in range(50)}, tmp_path / "w.pt")
    with pytest.raises(WeightsError, match=r"50 unexpected keys .*layer5.weight \.\.\. and 44 more") as info:
        load_weights(build_model("image-small", SPEC), tmp_path / "w.pt")
    assert len(str(info.value)) < 1200


def test_non_strict_loading_reports_what_it_ignored(tmp_path: Path) -> None:
    state = _trained()
    del state["classifier.3.bias"]
    state["other"] = torch.zeros(1)
    torch.save(state, tmp_path / "w.pt")
    report = load_weights(build_model("image-medium", SPEC), tmp_path / "w.pt", strict=False)
    assert report.missing == ("classifier.3.bias",) and report.unexpected == ("other",)


class Payload:
    """Not a tensor: unpickling it would run code of the file's choosing."""


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    torch.save({"weight": torch.zeros(1), "payload": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match="cannot read weights.*only tensors"):
        read_state_dict(tmp_path / "evil.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pt: cannot read weights"):
        read_state_dict(tmp_path / "junk.pt")
    with pytest.raises(WeightsError, match="no such weights file"):
        read_state_dict(tmp_path / "absent.pt")
    torch.save({"weights": [1, 2]}, tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="1 entries are not tensors: weights"):
        read_state_dict(tmp_path / "list.pt")
