"""Vector inputs standardized by the statistics of the public proxy set, the same on every node.

Sensor features come on very different scales (a temperature in kelvin beside an acceleration in g,
a pressure in pascal): fed raw, the widest feature swamps a model's first layer and the narrow ones
teach nothing. Every node of a federation holds the same unlabeled proxy inputs (identified by their
content hash), so every node can compute the same per-feature mean and standard deviation from them
(:meth:`Standardizer.fit`, in float64, deterministic) and apply them to everything its model sees:
the server to proxy, validation and test inputs, a client to its private samples and the proxy
inputs it distills on. Nothing about it travels: the proxy set travels as it always did, raw.

Images keep their own scaling ([0, 1] pixels): :meth:`Standardizer.fit` returns None for them, as
:func:`model_inputs` does nothing without a standardizer. A feature that is constant on the proxy
set is only centred (its deviation counts as 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Standardizer:
    mean: np.ndarray  # (D,) float32
    std: np.ndarray  # (D,) float32, > 0

    @classmethod
    def fit(cls, proxy_x: np.ndarray) -> Standardizer | None:
        """Per-feature statistics of ``proxy_x`` (N, D); None for images (N, C, H, W) or no rows."""
        if proxy_x.ndim != 2 or len(proxy_x) == 0:
            return None
        x = proxy_x.astype(np.float64)
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        std = np.where(std > 1e-12 * np.maximum(np.abs(mean), 1.0), std, 1.0)
        return cls(mean.astype(np.float32), std.astype(np.float32))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``(x - mean) / std`` as float32; ``x`` is (N, D) with this standardizer's D."""
        if x.ndim != 2 or x.shape[1] != len(self.mean):
            raise ValueError(f"inputs {x.shape} do not have {len(self.mean)} features")
        return ((x.astype(np.float32) - self.mean) / self.std).astype(np.float32)


def model_inputs(x: np.ndarray, standardizer: Standardizer | None) -> np.ndarray:
    """What a model is fed for inputs ``x``: standardized vectors, or ``x`` unchanged."""
    return x if standardizer is None else standardizer.apply(x)
