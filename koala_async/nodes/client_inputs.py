"""A client's private inputs: the configured initial data, the samples a program feeds in while the
client runs, and the input spec (shape and class count) they imply.

The samples live in a bounded :class:`~koala_async.core.retention.SampleBuffer`. The spec comes from
the config where given, else from the first samples (shape) and the server's proxy set (shape and
class count); once known it is enforced on everything that follows.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from koala_async.core.holdout import holdout_seed, holdout_split
from koala_async.core.retention import AddResult, SampleBuffer
from koala_async.core.splits import SplitSpec
from koala_async.errors import DataError

if TYPE_CHECKING:
    from koala_async.learning.models import InputSpec
    from koala_async.nodes.client import ClientConfig


class ClientInputs:
    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.buffer = SampleBuffer(config.max_samples, config.retention,  # type: ignore[arg-type]
                                   seed=config.seed * 1_000_003 + config.shard,
                                   input_shape=config.input_shape, num_classes=config.num_classes)
        self._added = asyncio.Event()
        self._loop_thread: int | None = None
        # Derived from a dataset: the split it came from (core/splits.py) and its samples' dataset ids.
        self.split: SplitSpec | None = None
        self.dataset_ids: np.ndarray | None = None
        # initial samples kept out of training, to evaluate the small model on (core/holdout.py)
        self.holdout: tuple[np.ndarray, np.ndarray] | None = None

    def load_initial(self) -> tuple[np.ndarray, np.ndarray, int] | None:
        """The configured private data as (x, y, classes), or None for an empty start (blocking)."""
        cfg = self.config
        if not cfg.data_path and cfg.dataset in (None, "", "none"):
            return None
        from koala_async.learning import data as datasets

        if cfg.data_path:
            data = datasets.load_npz(cfg.data_path, num_classes=cfg.num_classes)
        else:
            assert cfg.dataset is not None
            fed = datasets.federate(cfg.dataset, cfg.seed, cfg.num_shards, cfg.alpha, cfg.test_fraction,
                                    cfg.proxy_fraction, cfg.validation_fraction or 0.0)
            self.split, self.dataset_ids = fed.splits.spec, fed.dataset_ids(cfg.shard)
            data = fed.client(cfg.shard)
        train, held = holdout_split(len(data.y), cfg.holdout, holdout_seed(cfg.seed, cfg.shard))
        if len(held):
            self.holdout = data.x[held], data.y[held]
        return data.x[train], data.y[train], data.spec.num_classes

    def start(self, initial: tuple[np.ndarray, np.ndarray, int] | None) -> None:
        """On the event loop: take the initial data; from now on ``add`` only from this thread."""
        self._loop_thread = threading.get_ident()
        if initial is not None:
            x, y, classes = initial
            if self.buffer.num_classes is None:
                self.buffer.set_num_classes(classes)
            self.buffer.add(x, y)

    def add(self, x: Any, y: Any) -> AddResult:
        if self._loop_thread is not None and threading.get_ident() != self._loop_thread:
            raise RuntimeError("add_samples must be called from the node's event loop thread "
                               "(use loop.call_soon_threadsafe from other threads)")
        result = self.buffer.add(x, y)
        if result.offered:
            self._added.set()
        return result

    def adopt_proxy(self, input_shape: tuple[int, ...], num_classes: int) -> str:
        """Take the input shape and class count of the server's proxy set (from its manifest) where not
        known yet; returns why one that contradicts the private samples is refused ("" when it fits)."""
        shape = tuple(int(d) for d in input_shape)
        if self.buffer.input_shape is not None and self.buffer.input_shape != shape:
            return f"proxy inputs {shape} vs private samples {self.buffer.input_shape}"
        try:
            self.buffer.set_num_classes(num_classes)
        except DataError as exc:
            return str(exc)
        self.buffer.input_shape = shape
        return ""

    def spec(self) -> InputSpec | None:
        """The input spec once shape and class count are both known."""
        from koala_async.learning.models import InputSpec

        shape, classes = self.buffer.input_shape, self.buffer.num_classes
        if shape is None or classes is None:
            return None
        if len(shape) not in (1, 3):
            raise DataError(f"cannot build a model for input shape {shape}: use (D,) vectors or (C, H, W) images")
        return InputSpec("image" if len(shape) == 3 else "vector", shape, classes)

    async def wait_for(self, count: int, waiting: Callable[[str], Awaitable[None]]) -> None:
        """Until ``count`` samples are held; ``waiting(state)`` is awaited whenever the count changes."""
        while len(self.buffer) < count:
            await waiting(f"waiting: {len(self.buffer)}/{count} samples")
            self._added.clear()
            await self._added.wait()
