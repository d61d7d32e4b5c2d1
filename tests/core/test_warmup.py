"""The cold-start rule of the asynchronous pacing: the first version waits for a share of the clients."""

from __future__ import annotations

import pytest

from koala_async.core.warmup import Warmup


@pytest.mark.parametrize("contributors, available, waited, ready", [
    (1, 8, 0.0, False),   # one non-IID client is not yet worth publishing as knowledge
    (3, 8, 2.0, False),
    (4, 8, 2.0, True),    # half of the eight online
    (1, 8, 10.0, True),   # the timeout: a slow federation still gets its first version
    (1, 1, 0.0, True),    # a single client is the whole federation
    (1, 0, 0.0, True),    # presence unknown (no status yet): the first arrival is enough
])
def test_first_version_waits_for_half_of_the_available_clients(contributors: int, available: int,
                                                                 waited: float, ready: bool) -> None:
    assert Warmup(share=0.5, timeout=10.0).ready(contributors, available, waited) is ready


def test_share_zero_publishes_on_the_first_arrival() -> None:
    assert Warmup(share=0.0).ready(1, 100, 0.0)
    assert Warmup(timeout=4.0).remaining(1.5) == 2.5 and Warmup(timeout=4.0).remaining(9.0) == 0.0


def test_min_clients_waits_for_clients_not_online_yet() -> None:
    rule = Warmup(share=0.75, timeout=10.0, min_clients=3)
    assert not rule.ready(1, 1, 0.0)  # the only client online so far: the share alone would publish
    assert not rule.ready(2, 2, 9.9)
    assert rule.ready(3, 3, 0.0) and rule.ready(1, 1, 10.0)  # three delivered, or the timeout
    assert not rule.ready(3, 8, 0.0)  # the share still counts once more are online


@pytest.mark.parametrize("kwargs", [{"share": 1.5}, {"share": -0.1}, {"timeout": -1.0}, {"min_clients": 0}])
def test_nonsense_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Warmup(**kwargs)
