"""Every version of the large model scored on validation and test; the best on validation kept.

The server evaluates each version it publishes on two labeled splits it holds
(:class:`~koala_async.learning.learner.ServerData`): *validation*, which every choice is taken on,
and *test*, which is only reported. The best version is the one with the highest validation accuracy
(the earliest on a tie); its weights are copied (on the CPU) when it is reached, so the server can
export them (``best_model.safetensors`` in its state directory) and report ``best_version``,
``best_validation_accuracy`` and that version's ``best_test_accuracy`` beside the last version's
scores: a run whose last version is worse than its best says so (``last_below_best``).

Cheap by design: one forward pass over each split (a few hundred samples on digits) per version.
Without a validation split (explicit test files) nothing is chosen: the best is unknown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from koala_async.learning.data import Dataset


@dataclass(frozen=True)
class Best:
    version: int
    validation_accuracy: float
    test_accuracy: float


class VersionScores:
    """Scores of the current version and the best one so far (see the module docstring)."""

    def __init__(self, validation: Dataset | None, test: Dataset, batch_size: int = 512) -> None:
        self.validation = validation
        self.batch_size = batch_size  # inference batch (a big network on a CPU is faster at small ones)
        self.test = test
        self.version = 0
        self.validation_accuracy = float("nan")
        self.test_accuracy = float("nan")
        self.best: Best | None = None
        self.best_weights: dict[str, Any] | None = None  # the best version's state dict, on the CPU

    def evaluate(self, model: nn.Module, version: int) -> bool:
        """Score ``model`` as version ``version``; True (and its weights kept) when it is the new best."""
        from koala_async.learning.distill import accuracy

        self.version = version
        self.test_accuracy = accuracy(model, self.test.x, self.test.y, batch_size=self.batch_size)
        if self.validation is None or len(self.validation) == 0:
            return False
        self.validation_accuracy = accuracy(model, self.validation.x, self.validation.y, batch_size=self.batch_size)
        if self.best is not None and not self.validation_accuracy > self.best.validation_accuracy:
            return False
        self.best = Best(version, self.validation_accuracy, self.test_accuracy)
        self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return True

    def snapshot(self) -> dict[str, Any]:
        """What the server's status and report carry."""
        best = self.best
        return {
            "test_accuracy": self.test_accuracy,
            "validation_accuracy": None if math.isnan(self.validation_accuracy) else self.validation_accuracy,
            "best_version": best.version if best else None,
            "best_validation_accuracy": best.validation_accuracy if best else None,
            "best_test_accuracy": best.test_accuracy if best else None,
            "last_below_best": bool(best and self.validation_accuracy < best.validation_accuracy),
        }

    def state(self) -> dict[str, Any]:
        """For a checkpoint: the scores and the best weights (tensors)."""
        best = self.best
        return {"version": self.version, "validation_accuracy": self.validation_accuracy,
                "test_accuracy": self.test_accuracy,
                "best": None if best is None else [best.version, best.validation_accuracy, best.test_accuracy],
                "best_weights": self.best_weights}

    def restore(self, state: dict[str, Any]) -> None:
        self.version = int(state["version"])
        self.validation_accuracy = float(state["validation_accuracy"])
        self.test_accuracy = float(state["test_accuracy"])
        best = state.get("best")
        self.best = None if best is None else Best(int(best[0]), float(best[1]), float(best[2]))
        self.best_weights = state.get("best_weights")
