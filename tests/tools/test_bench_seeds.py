"""``koala bench`` over seeds and on a fixed cadence: spreads, per-seed ratios, the grid's time to target."""

from __future__ import annotations

import math

import pytest

from koala_async.errors import ConfigError
from koala_async.tools.bench.cli import parse_seeds
from koala_async.tools.bench.seeds import combine, paired, spread
from koala_async.tools.bench.stats import apply_target, mode_row


def row(final: float, grid: list[list[float]], timeline: list[list[float]] | None = None, up: float = 2.0):
    report = {"completed": True, "wall_seconds": 60.0,
              "large_model": {"test_accuracy": final, "first_report_at": up, "grid": grid,
                              "timeline": timeline or [[p[0], p[1], p[2]] for p in grid]},
              "bytes": {"up": 100, "down": 100}, "updates": {"sent": 1, "accepted": 1}, "clients": {}}
    return mode_row(report)


def test_time_to_target_is_read_from_the_grid_not_from_every_version() -> None:
    # a noisy version at 3.4 s crossed 0.9 and fell back before the 4 s sample: the grid never saw it
    r = row(0.92, grid=[[1.0, 0, 0.1], [2.0, 1, 0.5], [3.0, 2, 0.85], [4.0, 4, 0.86], [5.0, 5, 0.91]],
            timeline=[[0.5, 0, 0.1], [1.5, 1, 0.5], [2.5, 2, 0.85], [3.4, 3, 0.93], [3.9, 4, 0.86], [4.5, 5, 0.91]])
    apply_target(r, 0.9)
    assert r["time_to_target_seconds"] == 5.0 and r["time_to_target_source"] == "grid"
    assert r["time_to_target_from_up_seconds"] == 3.0
    old = row(0.92, grid=[], timeline=[[0.5, 0, 0.1], [3.4, 3, 0.93]])
    apply_target(old, 0.9)  # a report without a grid (older runner): read from the versions, and say so
    assert old["time_to_target_seconds"] == 3.4 and old["time_to_target_source"] == "versions"


def test_spread_counts_what_is_missing() -> None:
    s = spread([1.0, 3.0, None, float("nan")])
    assert (s["mean"], s["min"], s["max"], s["n"], s["missing"]) == (2.0, 1.0, 3.0, 2, 2)
    assert math.isclose(s["std"], math.sqrt(2))
    assert spread([None])["mean"] is None


def test_combine_means_every_figure_and_keeps_each_seed() -> None:
    rows = [row(0.90, [[1.0, 1, 0.95]]), row(0.94, [[1.0, 1, 0.5], [2.0, 2, 0.5]])]
    for r in rows:
        apply_target(r, 0.9)
    out = combine(rows, [0, 1])
    assert math.isclose(out["final_accuracy"], 0.92)
    assert out["spread"]["final_accuracy"]["values"] == [0.90, 0.94]
    # seed 1 never reached the target: the mean is seed 0's alone, and the reason says so
    assert out["time_to_target_seconds"] == 1.0
    assert "mean of 1 of 2 seeds" in out["reasons"]["time_to_target_seconds"]
    assert "seed 1: never reached" in out["reasons"]["time_to_target_seconds"]
    assert out["seeds"] == [0, 1] and len(out["per_seed"]) == 2 and len(out["grids"]) == 2
    with pytest.raises(ValueError):
        combine([], [])


def test_ratios_and_gaps_are_taken_within_each_seed() -> None:
    def mk(ttt: float, final: float) -> dict[str, float]:
        return {"time_to_target_from_up_seconds": ttt, "time_to_target_seconds": ttt + 2, "final_accuracy": final}

    per_seed = {0: {"async": mk(10, 0.93), "sync": mk(40, 0.93), "fedavg": mk(90, 0.95), "fedbuff": mk(20, 0.935)},
                1: {"async": mk(30, 0.92), "sync": mk(60, 0.93), "fedavg": mk(80, 0.94), "fedbuff": None}}
    out = paired(per_seed)  # type: ignore[arg-type]
    ratios = out["time_to_target_ratio_async_over_sync"]
    assert ratios["values"] == [0.25, 0.5] and ratios["mean"] == 0.375 and ratios["max"] == 0.5
    assert out["accuracy_gap_fedavg_minus_async"]["values"] == [0.02, 0.02]
    assert out["accuracy_gap_fedbuff_minus_async"]["values"] == [0.005, None]


@pytest.mark.parametrize("text, default, seeds", [(None, 3, (0, 1, 2)), ("2", 3, (0, 1)), ("4,7", 3, (4, 7)),
                                                  (None, 1, (0,))])
def test_seeds_argument(text: str | None, default: int, seeds: tuple[int, ...]) -> None:
    assert parse_seeds(text, default) == seeds


@pytest.mark.parametrize("text", ["x", "0", "1,1", "-1,2"])
def test_bad_seeds_argument_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--seeds"):
        parse_seeds(text, 3)
