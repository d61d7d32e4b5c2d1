"""float16 arrays are checked for inf and NaN on their raw bits: every special value is caught, and
no finite value (the largest, the smallest subnormal) is mistaken for one."""

from __future__ import annotations

import numpy as np
import pytest

from koala_async.core.envelope import Limits, pack_array, unpack_array
from koala_async.errors import MessageError


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan, -np.nan])
def test_any_inf_or_nan_is_refused(bad: float) -> None:
    logits = np.zeros((5, 3), dtype=np.float16)
    logits[4, 2] = bad
    with pytest.raises(MessageError) as err:
        unpack_array(pack_array(logits), "logits", Limits())
    assert err.value.reason == "non_finite"


def test_extreme_finite_values_pass() -> None:
    finfo = np.finfo(np.float16)
    values = np.array([[finfo.max, -finfo.max, finfo.smallest_subnormal, 0.0, -0.0]], dtype=np.float16)
    assert np.array_equal(unpack_array(pack_array(values), "logits", Limits()), values)
    empty = np.zeros((0, 3), dtype=np.float16)
    assert unpack_array(pack_array(empty), "logits", Limits()).shape == (0, 3)


def test_every_float16_bit_pattern_agrees_with_isfinite() -> None:
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    finite = every[np.isfinite(every)].reshape(-1, 1)
    unpack_array(pack_array(finite), "x", Limits())  # none refused
    for i, special in enumerate(every[~np.isfinite(every)]):  # all 2,046, each somewhere in a row
        row = np.zeros((1, 7), dtype=np.float16)
        row[0, i % 7] = special
        with pytest.raises(MessageError):
            unpack_array(pack_array(row), "x", Limits())
