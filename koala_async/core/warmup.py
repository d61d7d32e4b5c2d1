"""When the server publishes its first knowledge: a pure rule of the asynchronous pacing.

Every later version builds on the knowledge before it, and the fusion keeps every client's latest
contribution, so fusing each arrival at once is right from then on. The *first* version is different:
it is all the federation knows. Fused from the first one or two non-IID clients it covers a few
classes; the large model distilled on it is near chance on the rest, and every client then distils
that as knowledge (measured on digits: targets from one client agreed with the labels on 32% of the
proxy set, from 8 clients' first updates on 78-94%; the large model published after one arrival was
at 0.10-0.17 held-out accuracy, after eight at 0.74-0.82).

So the first version waits until ``share`` of the clients available (online, not done) have
contributed, or ``timeout`` seconds after the first arrival, whichever comes first (FedBuff's buffer,
for the cold start only). ``share = 0`` publishes on the first arrival, as before.

``min_clients`` (Flower's ``min_available_clients``) also waits for that many distinct contributors
whoever is online yet: the share counts only clients whose status has arrived, so when the devices
come up one after the other (slow boards measuring their tier) it can be one client's, and the first
versions were then distilled from one non-IID shard. The timeout still bounds the wait.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Warmup:
    share: float = 0.75  # of the available clients whose updates the first version waits for
    timeout: float = 10.0  # seconds after the first arrival it waits at most
    min_clients: int = 1  # distinct contributors it waits for, however few are online yet

    def __post_init__(self) -> None:
        if not 0 <= self.share <= 1:
            raise ValueError(f"warmup share {self.share} must be in [0, 1]")
        if self.timeout < 0:
            raise ValueError(f"warmup timeout {self.timeout} must be >= 0")
        if self.min_clients < 1:
            raise ValueError(f"warmup min_clients {self.min_clients} must be >= 1")

    def quorum(self, available: int) -> int:
        """Distinct contributors the first version waits for among ``available`` clients (>= 1)."""
        return max(self.min_clients, math.ceil(self.share * available))

    def ready(self, contributors: int, available: int, waited: float) -> bool:
        """Whether the first version may be fused now: ``contributors`` distinct clients delivered, the
        first ``waited`` seconds ago, while ``available`` clients are online."""
        return contributors >= self.quorum(available) or waited >= self.timeout

    def remaining(self, waited: float) -> float:
        """Seconds left until the timeout (0 once it passed)."""
        return max(0.0, self.timeout - waited)
