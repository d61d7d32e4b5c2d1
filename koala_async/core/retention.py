"""A client's private samples, fed in incrementally, kept within a fixed memory bound.

An embedded client (a gateway whose data grows over time) calls ``add`` with each new batch. At most
``max_samples`` samples are kept; what happens beyond that is the retention policy:

- ``"reservoir"`` (default): a uniform random sample of *everything ever added* (Vitter's algorithm
  R). Old and new data are equally likely to be kept, so the model does not forget the past; the
  choice is deterministic given ``seed`` and the sequence of batches.
- ``"newest"``: the most recent ``max_samples`` samples (a sliding window), for data that drifts.

Every batch is validated before anything changes: ``x`` must be a real numeric array of shape
``(n, *input_shape)`` with finite values, ``y`` a 1-D integer array of ``n`` labels in
``[0, num_classes)``. A bad batch raises :class:`~koala_async.errors.DataError` and leaves the buffer
as it was. The input shape may be fixed up front or inferred from the first batch; the number of
classes may be given later (``set_num_classes``), but must be known before labels can be checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from koala_async.errors import DataError

Retention = Literal["reservoir", "newest"]
RETENTIONS = ("reservoir", "newest")


@dataclass(frozen=True)
class AddResult:
    """What one ``add`` did: samples offered, how many of them were stored, how many stored samples
    they overwrote (``offered - kept`` were dropped without being stored)."""

    offered: int
    kept: int
    evicted: int


class SampleBuffer:
    """Bounded store of labelled samples with a retention policy (see the module docstring)."""

    def __init__(self, max_samples: int, retention: Retention = "reservoir", seed: int = 0, *,
                 input_shape: tuple[int, ...] | None = None, num_classes: int | None = None) -> None:
        if max_samples < 1:
            raise ValueError("max_samples must be >= 1")
        if retention not in RETENTIONS:
            raise ValueError(f"retention must be one of {list(RETENTIONS)}, got {retention!r}")
        if num_classes is not None and num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        self.max_samples = max_samples
        self.retention = retention
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.num_classes = num_classes
        self.seen = 0  # samples ever offered and accepted (valid), kept or not
        self._rng = np.random.default_rng(seed)
        self._x: np.ndarray | None = None  # (capacity, *input_shape) float32, allocated on first add
        self._y = np.zeros(max_samples, dtype=np.int64)
        self._size = 0
        self._next = 0  # "newest": the ring position the next sample overwrites

    def __len__(self) -> int:
        return self._size

    def set_num_classes(self, num_classes: int) -> None:
        """Fix the number of classes (e.g. from the server's proxy set); stored labels must fit."""
        if self.num_classes is not None and self.num_classes != num_classes:
            raise DataError(f"number of classes is {self.num_classes}, cannot change it to {num_classes}")
        if self._size and int(self._y[:self._size].max()) >= num_classes:
            raise DataError(f"stored label {int(self._y[:self._size].max())} >= num_classes {num_classes}")
        self.num_classes = num_classes

    def validate(self, x: object, y: object) -> tuple[np.ndarray, np.ndarray]:
        """Check a batch and return it as (float32, int64) arrays; raises ``DataError``."""
        xa, ya = np.asarray(x), np.asarray(y)
        if xa.dtype.kind not in "fiu":
            raise DataError(f"x must hold real numbers, got dtype {xa.dtype}")
        if ya.dtype.kind not in "iu":
            raise DataError(f"y must hold integer class ids, got dtype {ya.dtype}")
        if ya.ndim != 1:
            raise DataError(f"y must be 1-D (one label per sample), got shape {ya.shape}")
        if xa.ndim < 2:
            raise DataError(f"x must be a batch (n, *input_shape), got shape {xa.shape}")
        if len(xa) != len(ya):
            raise DataError(f"x has {len(xa)} samples but y has {len(ya)} labels")
        shape = tuple(int(d) for d in xa.shape[1:])
        if self.input_shape is not None and shape != self.input_shape:
            raise DataError(f"samples have shape {shape}, this client's input shape is {self.input_shape}")
        xf = xa.astype(np.float32)
        if not np.isfinite(xf).all():
            raise DataError("x holds NaN or inf")
        if self.num_classes is None:
            raise DataError("the number of classes is not known yet: set ClientConfig.num_classes, or wait "
                            "for the server's proxy set")
        if len(ya) and (int(ya.min()) < 0 or int(ya.max()) >= self.num_classes):
            raise DataError(f"labels must be in [0, {self.num_classes}), got [{int(ya.min())}, {int(ya.max())}]")
        return xf, ya.astype(np.int64)

    def add(self, x: object, y: object) -> AddResult:
        """Validate and store a batch under the retention policy; all or nothing."""
        xf, yi = self.validate(x, y)
        n = len(yi)
        if n == 0:
            return AddResult(0, 0, 0)
        if self._x is None:
            self.input_shape = tuple(int(d) for d in xf.shape[1:])
            self._x = np.zeros((self.max_samples, *self.input_shape), dtype=np.float32)
        if self.retention == "newest":
            result = self._add_newest(xf, yi)
        else:
            result = self._add_reservoir(xf, yi)
        self.seen += n
        return result

    def _add_newest(self, x: np.ndarray, y: np.ndarray) -> AddResult:
        assert self._x is not None
        cap, n = self.max_samples, len(y)
        if n >= cap:  # only the last `cap` of this batch survive
            x, y = x[-cap:], y[-cap:]
        slots = (self._next + np.arange(len(y))) % cap
        self._x[slots], self._y[slots] = x, y
        self._next = int((self._next + len(y)) % cap)
        before = self._size
        self._size = min(cap, self._size + len(y))
        return AddResult(n, len(y), before + len(y) - self._size)

    def _add_reservoir(self, x: np.ndarray, y: np.ndarray) -> AddResult:
        assert self._x is not None
        cap, kept, evicted = self.max_samples, 0, 0
        start = 0
        free = cap - self._size
        if free > 0:  # fill the reservoir first
            take = min(free, len(y))
            self._x[self._size:self._size + take], self._y[self._size:self._size + take] = x[:take], y[:take]
            self._size += take
            kept += take
            start = take
        if start < len(y):
            # Sample t (0-based over everything seen) replaces a uniform slot with probability cap/(t+1).
            t = self.seen + np.arange(start, len(y))
            slots = self._rng.integers(0, t + 1)
            for i, slot in zip(range(start, len(y)), slots, strict=True):  # in order: later ones win
                if slot < cap:
                    self._x[slot], self._y[slot] = x[i], y[i]
                    kept += 1
                    evicted += 1
        return AddResult(len(y), kept, evicted)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the stored samples (safe to hand to a training thread while ``add`` goes on)."""
        if self._x is None:
            return np.zeros((0,), dtype=np.float32), np.zeros(0, dtype=np.int64)
        return self._x[:self._size].copy(), self._y[:self._size].copy()

    def label_counts(self) -> np.ndarray:
        """Class histogram of the stored samples (length ``num_classes``)."""
        return np.bincount(self._y[:self._size], minlength=self.num_classes or 0).astype(np.uint32)

    @property
    def nbytes(self) -> int:
        """Memory the buffer holds (allocated once, up front, at the first ``add``)."""
        return (0 if self._x is None else self._x.nbytes) + self._y.nbytes
