"""The sample buffer behind ClientNode.add_samples: bounded, retention policies, all-or-nothing checks."""

from __future__ import annotations

import numpy as np
import pytest

from koala_async.core.retention import SampleBuffer
from koala_async.errors import DataError


def batch(start: int, n: int, shape: tuple[int, ...] = (4,)) -> tuple[np.ndarray, np.ndarray]:
    """Samples whose first feature is their global index, so we can tell which survived."""
    x = np.zeros((n, *shape), dtype=np.float32)
    x.reshape(n, -1)[:, 0] = np.arange(start, start + n)
    return x, np.arange(start, start + n) % 3


def ids(buffer: SampleBuffer) -> np.ndarray:
    x, _ = buffer.arrays()
    return np.sort(x.reshape(len(x), -1)[:, 0].astype(int))


def test_newest_keeps_a_sliding_window() -> None:
    buf = SampleBuffer(10, "newest", num_classes=3)
    for start in range(0, 27, 9):
        result = buf.add(*batch(start, 9))
    assert len(buf) == 10 and buf.seen == 27
    assert ids(buf).tolist() == list(range(17, 27))
    assert result.offered == 9 and result.kept == 9 and result.evicted == 9
    buf.add(*batch(27, 25))  # a batch larger than the buffer: only its last 10 survive
    assert ids(buf).tolist() == list(range(42, 52))


def test_reservoir_is_bounded_uniform_and_deterministic() -> None:
    counts = np.zeros(1000)
    for seed in range(200):
        buf = SampleBuffer(50, "reservoir", seed=seed, num_classes=3)
        for start in range(0, 1000, 37):
            buf.add(*batch(start, min(37, 1000 - start)))
        assert len(buf) == 50 and buf.seen == 1000
        counts[ids(buf)] += 1
    # each of the 1000 samples is kept with probability 50/1000: expected 10 of 200 runs
    first, last = counts[:500].mean(), counts[500:].mean()
    assert 8.5 < first < 11.5 and 8.5 < last < 11.5  # old and new data alike
    again = [SampleBuffer(50, "reservoir", seed=7, num_classes=3) for _ in range(2)]
    for buf in again:
        for start in range(0, 300, 30):
            buf.add(*batch(start, 30))
    assert ids(again[0]).tolist() == ids(again[1]).tolist()


def test_input_shape_is_inferred_then_enforced() -> None:
    buf = SampleBuffer(5, num_classes=3)
    buf.add(*batch(0, 2, (1, 2, 2)))
    assert buf.input_shape == (1, 2, 2)
    with pytest.raises(DataError, match="shape"):
        buf.add(*batch(2, 2, (4,)))


@pytest.mark.parametrize(("x", "y", "match"), [
    (np.zeros((3, 4)), np.array([0, 1]), "3 samples but y has 2"),
    (np.zeros((3, 4)), np.array([0, 1, 3]), r"\[0, 3\)"),
    (np.zeros((3, 4)), np.array([0, -1, 2]), r"\[0, 3\)"),
    (np.zeros((3, 4)), np.array([0.0, 1.0, 2.0]), "integer"),
    (np.zeros((3, 4)), np.array([True, False, True]), "integer"),
    (np.zeros((3, 4)), np.zeros((3, 1), dtype=int), "1-D"),
    (np.zeros(4), np.array([0]), "batch"),
    (np.array([[1, 2, 3, np.inf]] * 3), np.array([0, 1, 2]), "NaN or inf"),
    (np.array([["a"] * 4] * 3), np.array([0, 1, 2]), "real numbers"),
    (np.zeros((3, 5)), np.array([0, 1, 2]), "shape"),
])
def test_bad_batches_raise_and_change_nothing(x: np.ndarray, y: np.ndarray, match: str) -> None:
    buf = SampleBuffer(5, num_classes=3, input_shape=(4,))
    buf.add(*batch(0, 4))
    before = buf.arrays()
    with pytest.raises(DataError, match=match):
        buf.add(x, y)
    after = buf.arrays()
    assert buf.seen == 4 and len(buf) == 4
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])


def test_labels_wait_for_the_class_count() -> None:
    buf = SampleBuffer(5, input_shape=(4,))
    with pytest.raises(DataError, match="number of classes"):
        buf.add(*batch(0, 2))
    buf.set_num_classes(3)
    buf.add(*batch(0, 3))
    with pytest.raises(DataError, match="cannot change"):
        buf.set_num_classes(4)
    assert buf.label_counts().tolist() == [1, 1, 1]


def test_memory_is_allocated_once_and_bounded() -> None:
    buf = SampleBuffer(100, num_classes=3)
    buf.add(*batch(0, 1, (1, 8, 8)))
    size = buf.nbytes
    for start in range(1, 5000, 250):
        buf.add(*batch(start, 250, (1, 8, 8)))
    assert buf.nbytes == size == 100 * 64 * 4 + 100 * 8
