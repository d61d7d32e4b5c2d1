"""The server's learning side, as one small interface the server node calls.

A :class:`Learner` owns the large model and everything it learns from. The node never touches the
model: it asks the learner whether to take a message (:meth:`Learner.admit`), hands it batches of
accepted arrivals (:meth:`Learner.advance`, blocking, in a worker thread), and publishes the messages
the learner says describe its current version (:meth:`Learner.retained`). Two learners ship:

- :class:`~koala_async.learning.distill_learner.DistillLearner` (KOALA): fuses client logits on the
  proxy set into soft targets and distills the large model on them; publishes the proxy set (a signed
  manifest and content-addressed chunks, core/proxy_manifest.py) and its own logits (knowledge).
- :class:`~koala_async.learning.averaging_learner.AveragingLearner` (FedAvg): averages client weights
  of the large model; publishes the global weights.

Which learner a mode uses is decided in one place, ``koala_async.nodes.modes``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from koala_async.core.admission import Decision
from koala_async.core.dedupe import SeqWindow
from koala_async.core.envelope import Message

if TYPE_CHECKING:
    from koala_async.core.server_state import Arrival
    from koala_async.core.splits import SplitSpec
    from koala_async.learning.data import Dataset
    from koala_async.learning.models import InputSpec
    from koala_async.learning.standardize import Standardizer
    from koala_async.nodes.config import ServerConfig


class Learner(Protocol):
    model_name: str

    @property
    def test_accuracy(self) -> float:
        """The current version's accuracy on the test split (reported, never chosen on)."""

    def prepare(self) -> None:
        """Load data and build the model (blocking; the node runs it in a thread)."""

    def admit(self, message: Message, topic_sender: str | None, version: int, seen: SeqWindow,
              now_ms: int | None = None) -> Decision | None:
        """Whether to take ``message`` from an update topic; None if this learner takes no such kind."""

    def advance(self, batch: list[Arrival], version: int, steps: int, stop: threading.Event,
                departed: Sequence[str] = ()) -> None:
        """Learn from ``batch`` at server version ``version``; what results is published as version
        ``version + 1`` (blocking; the node runs it in a thread). Setting ``stop`` ends it early.
        ``departed``: clients that left or were lost since the last batch (their contributions go)."""

    def retained(self, version: int, full: bool) -> list[tuple[str, Message]]:
        """(topic, message) pairs that describe ``version``, to publish retained; ``full`` adds what
        is published only on (re)connect (the proxy set)."""

    def proxy_chunks(self) -> Iterable[tuple[str, Message]]:
        """(topic, chunk) of the proxy set, published retained on every connect before :meth:`retained`'s
        messages; built lazily, so the server never holds the encoded proxy set (none for FedAvg)."""

    def snapshot(self) -> dict[str, Any]:
        """What the learner adds to the server's status."""

    def identity(self) -> dict[str, str]:
        """What a checkpoint must match to be resumed by this learner (model, proxy set)."""

    def state(self) -> dict[str, Any]:
        """Everything to checkpoint (numpy arrays, tensors, plain values; nothing that needs pickle)."""

    def restore(self, state: dict[str, Any]) -> None:
        """Undo :meth:`state` (after :meth:`prepare`)."""


@dataclass(frozen=True)
class ServerData:
    """What a server learns and is judged on: the unlabeled proxy inputs, the validation split every
    choice is taken on, and the held-out test split that is only reported.

    ``proxy_x`` is what is published (raw); ``proxy_inputs``, ``validation`` and ``test`` are what
    the model sees (vector inputs standardized with the proxy set's statistics,
    :mod:`koala_async.learning.standardize`). ``split`` names the derivation (None for files)."""

    proxy_x: np.ndarray  # in its own dtype: uint8 pixels where exact (learning/data.py compact), else float32
    proxy_inputs: np.ndarray  # what the model sees: proxy_x, or vectors standardized
    test: Dataset
    validation: Dataset | None = None
    split: SplitSpec | None = None
    standardizer: Standardizer | None = None

    @property
    def spec(self) -> InputSpec:
        return self.test.spec


def load_server_data(config: ServerConfig, standardize: bool = True) -> ServerData:
    """Proxy, validation and test splits: derived from ``dataset``, ``seed`` and the fractions as the
    clients derive their shards, or read from ``proxy_path`` / ``test_path`` (.npz) where given (then
    without validation). The proxy inputs keep their own dtype (uint8 pixels where exact: what is
    hashed, sent and distilled on). ``standardize``: vector inputs by the proxy set's statistics
    (blocking)."""
    from koala_async.learning import data as datasets
    from koala_async.learning.standardize import Standardizer, model_inputs

    validation, split = None, None
    if config.proxy_path and config.test_path:
        test = datasets.load_npz(config.test_path)
        proxy_x = datasets.load_proxy(config.proxy_path)
    else:
        splits = datasets.derive(config.dataset, config.seed, config.test_fraction, config.proxy_fraction,
                                 config.validation_fraction or 0.0)
        test, validation, split = splits.test, splits.validation, splits.spec
        proxy_x = datasets.compact(splits.proxy.x)
        if config.proxy_path:
            proxy_x, split = datasets.load_proxy(config.proxy_path), None
        if config.test_path:
            test, validation, split = datasets.load_npz(config.test_path), None, None
    if proxy_x.shape[1:] != test.x.shape[1:]:
        raise ValueError(f"proxy inputs {proxy_x.shape[1:]} and test inputs {test.x.shape[1:]} differ")
    scale = Standardizer.fit(proxy_x) if standardize else None

    def seen(data: Dataset) -> Dataset:
        return replace(data, x=model_inputs(data.x, scale))

    return ServerData(proxy_x, model_inputs(proxy_x, scale), seen(test),
                      None if validation is None else seen(validation), split, scale)
