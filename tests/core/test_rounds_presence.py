"""The round barrier under thousands of clients: one presence change costs O(1) and does what a full
update would; the summary in the server's status names clients only while the lists are short."""

from __future__ import annotations

import random

from koala_async.core.rounds import RoundBarrier


def test_one_client_at_a_time_matches_a_full_update_of_availability() -> None:
    rng = random.Random(4)
    clients = [f"c{i}" for i in range(30)]
    full, incremental = RoundBarrier(60.0), RoundBarrier(60.0)
    available: set[str] = set(rng.sample(clients, 10))
    for barrier in (full, incremental):
        barrier.start(0, 0.0, available)
    for step in range(400):
        client, up = rng.choice(clients), rng.random() < 0.5
        (available.add if up else available.discard)(client)
        full.update_available(available)
        incremental.set_available(client, up)
        if step % 50 == 10:  # someone delivers: the selection freezes
            sender = rng.choice(sorted(available) or clients)
            assert full.deliver(sender, full.round.number).accepted == incremental.deliver(
                sender, incremental.round.number).accepted
        if step % 100 == 99 and full.complete(1e9) and incremental.complete(1e9):
            number = full.round.number + 1
            full.start(number, 0.0, available)
            incremental.start(number, 0.0, available)
        assert (incremental.available, incremental.round.selected, incremental.round.dropped) == \
            (full.available, full.round.selected, full.round.dropped)
        assert incremental.awaited_count() == len(full.awaited())


def test_the_summary_of_a_round_of_ten_thousand_lists_counts_not_names() -> None:
    barrier = RoundBarrier(60.0)
    barrier.start(3, 0.0, {f"c{i:05d}" for i in range(10_000)})
    barrier.deliver("c00001", 3)
    summary = barrier.summary()
    assert summary["selected"] == [] and summary["awaited"] == []
    assert summary["delivered"] == ["c00001"]
    assert (summary["selected_count"], summary["delivered_count"], summary["awaited_count"]) == (10_000, 1, 9_999)
