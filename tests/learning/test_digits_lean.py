"""Digits are read from the CSV scikit-learn ships, without importing scikit-learn (a client's memory)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np


def test_digits_match_scikit_learn_exactly() -> None:
    from sklearn.datasets import load_digits as reference

    from koala_async.learning.data import load_digits

    ours, theirs = load_digits(), reference()
    np.testing.assert_array_equal(ours.x[:, 0], (theirs.images / 16.0).astype(np.float32))
    np.testing.assert_array_equal(ours.y, theirs.target)


def test_loading_digits_does_not_import_scikit_learn() -> None:
    code = ("import sys; from koala_async.learning.data import load_digits; d = load_digits(); "
            "print(len(d), sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["1797", "[]"]
