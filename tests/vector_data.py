"""A synthetic sensor CSV whose features sit on very different scales (written by the tests).

Four informative features at a scale of 1e-3 (around 0.2), eight noise features at a scale of 1e3
(around 5e3): fed raw, the noise swamps a model's first layer and training learns next to nothing;
standardized, the classes separate."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_sensor_csv(path: Path, rows: int = 1200, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, rows)
    centers = rng.normal(0, 1, (4, 4))
    informative = (centers[y] + 0.5 * rng.normal(0, 1, (rows, 4))) * 1e-3 + 0.2
    noise = rng.normal(0, 1, (rows, 8)) * 1e3 + 5e3
    x = np.concatenate([informative, noise], axis=1)
    lines = [",".join([f"f{i}" for i in range(12)] + ["label"])]
    lines += [",".join(f"{v:.9g}" for v in row) + f",{label}" for row, label in zip(x, y, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path
