"""Checks of a node config that need the model registry or torch, run before any node starts.

Every model name a config accepts (the server's ``large_model`` and ``accepted_tiers``, a client's
``tier``), the server's ``large_weights`` and its ``device`` are resolved here, so a typo, a module that
does not import or a GPU that is not there is a :class:`~koala_async.errors.ConfigError` naming the key,
the string and what was tried, instead of a crash after the processes are up.

- :func:`check_server` runs in ``ServerConfig.__post_init__`` (a server imports torch anyway).
- :func:`check_client` is NOT run by ``ClientConfig`` itself: loading a client config must stay
  torch-free (a client defers torch until its node starts). ``koala client``, ``koala run``'s scenario
  validation and the dry run call it.

Nothing is built and no weights are read: a built-in model name is a dictionary lookup, an import
string imports its module, and the data's input kind is checked where the dataset name tells it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from koala_async.nodes.config import ClientConfig, ServerConfig

# Input kind of the datasets whose name says it (npz: and csv: files decide at load time).
_IMAGE_DATASETS = ("digits", "mnist5k")
_IMAGE_PREFIXES = ("mnist:", "cifar10:")


def dataset_kind(dataset: str | None) -> str | None:
    """``image`` / ``vector`` when the dataset name alone tells, else None."""
    if dataset is None:
        return None
    if dataset in _IMAGE_DATASETS or dataset.startswith(_IMAGE_PREFIXES):
        return "image"
    if dataset.startswith("csv:"):
        return "vector"
    return None


def _data_kind(dataset: str | None, explicit_paths: bool) -> str | None:
    return None if explicit_paths else dataset_kind(dataset)


def check_server(config: ServerConfig) -> None:
    """Resolve ``large_model``, ``accepted_tiers``, ``large_weights`` and ``device`` (ConfigError on failure)."""
    from koala_async.learning.device import resolve_device
    from koala_async.learning.registry import check_model
    from koala_async.learning.weights import check_weights_fit, resolve_weights

    kind = _data_kind(config.dataset, bool(config.proxy_path or config.test_path))
    if config.large_model is not None:
        check_model(config.large_model, "large_model", kind)
    for i, tier in enumerate(config.accepted_tiers):
        check_model(tier, f"accepted_tiers[{i}]", kind)
    if config.large_weights is not None:
        resolve_weights(config.large_weights, "large_weights")
        check_weights_fit(config.large_weights, config.large_model, "large_weights")
    resolve_device(config.device, "device")


def check_client(config: ClientConfig) -> None:
    """Resolve the client's ``tier`` (unless unset or ``auto``), importing torch (see the module doc)."""
    from koala_async.learning.registry import check_model

    if config.tier is not None and config.tier != "auto":
        check_model(config.tier, "tier", _data_kind(config.dataset, bool(config.data_path)))
