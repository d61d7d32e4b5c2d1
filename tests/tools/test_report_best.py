"""The run report says which version was best on validation, its test accuracy, and whether the last
version is below it; a target accuracy is timed on validation, never chosen on test."""

from __future__ import annotations

from koala_async.core.topics import Topics
from koala_async.nodes.common import status_payload
from koala_async.tools.runner import Observer, build_report
from koala_async.tools.scenario import FederationSpec, Scenario

TOPICS = Topics("t")


def test_best_beside_last_and_the_target_reached_on_validation() -> None:
    observer = Observer(TOPICS, started=0.0)
    # (version, validation, test): test crosses 0.8 at version 2, validation only at version 3;
    # version 3 is the best on validation, the last (4) is below it
    for version, val, test in ((1, 0.5, 0.6), (2, 0.7, 0.85), (3, 0.9, 0.88), (4, 0.6, 0.86)):
        best = min(3, version)
        info = {"version": version, "test_accuracy": test, "validation_accuracy": val, "best_version": best,
                "best_validation_accuracy": max(v for v in (0.5, 0.7, 0.9)[:best]),
                "best_test_accuracy": (0.6, 0.85, 0.88)[best - 1], "last_below_best": version == 4}
        observer.feed(TOPICS.server_status, status_payload("server", version, "server", True, "serving", info))
    scenario = Scenario(federation=FederationSpec(name="t", target_accuracy=0.8))
    large = build_report(scenario, observer, {}, 10.0, True, "")["large_model"]
    assert (large["best_version"], large["best_validation_accuracy"], large["best_test_accuracy"]) == (3, 0.9, 0.88)
    assert large["last_below_best"] is True and large["test_accuracy"] == 0.86
    assert large["target_on"] == "validation"
    reached_at = {v: t for t, v, _ in large["validation_timeline"]}
    assert large["time_to_target"] == reached_at[3]  # validation crossed 0.8 at version 3, not test's 2
