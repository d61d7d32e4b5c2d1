"""The runner's fixed-cadence grid: at every tick, the latest accuracy the server had reported."""

from __future__ import annotations

import time

from koala_async.core.topics import Topics
from koala_async.nodes.common import status_payload
from koala_async.tools.observer import Observer

TOPICS = Topics("grid")


def test_the_grid_samples_the_latest_report_at_every_tick_whatever_the_version_rate() -> None:
    observer = Observer(TOPICS, time.monotonic() - 2.5)  # 2.5 s into the run
    observer.sample(1.0)
    assert observer.grid == [(1.0, 0, None), (2.0, 0, None)]  # the server has not spoken yet
    for version, acc in ((1, 0.5), (2, 0.93), (3, 0.88)):  # three versions within one tick
        observer.feed(TOPICS.server_status, status_payload("server", version, "server", True, "serving",
                                                           {"version": version, "test_accuracy": acc}))
    observer.started -= 1.0  # one more second passes
    observer.sample(1.0)
    assert observer.grid[-1] == (3.0, 3, 0.88)  # the 0.93 between ticks is not what the grid saw
    assert [v for _, v, _ in observer.timeline] == [1, 2, 3]  # every version is still in the timeline
    observer.started -= 2.0
    observer.sample(1.0)
    assert [t for t, _, _ in observer.grid] == [1.0, 2.0, 3.0, 4.0, 5.0]
