"""What the server answered, per update, so a republished or superseded update gets the same answer.

Clients keep an update until the server's verdict and republish it (same sequence number) when no
verdict came in time (core/delivery.py), and name the updates they superseded in their next one.
The server must then answer a copy as it answered the original, and count each update once:

- a copy of an **accepted** update is answered ``accepted=True, reason="duplicate"``, so the client
  can clear it (the copy is counted as a ``duplicate`` delivery, never fused twice);
- a copy of a **rejected** update gets the same refusal, without a second count under that reason;
- a **superseded** number the server never had is counted ``superseded`` once and marked seen, so a
  late copy is refused rather than fused over the client's newer contribution.

:class:`VerdictMemory` is a bounded LRU of ``(sender, seq) -> (accepted, reason)``. Past its
capacity the oldest answers are forgotten; the dedupe window (core/dedupe.py) still recognises a
forgotten accepted number, which is then answered as accepted. About 150 bytes an entry: the
default capacity of 262,144 is about 40 MiB at most.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

CAPACITY = 262_144
DUPLICATE = "duplicate"
SUPERSEDED = "superseded"
# Refusals that say nothing true about the sender's update (its sender field is not the topic's):
# never remembered under that sender.
UNREMEMBERED = frozenset({"sender_mismatch"})


class Answer(NamedTuple):
    accepted: bool
    reason: str


class VerdictMemory:
    def __init__(self, capacity: int = CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("a verdict memory holds at least one answer")
        self.capacity = capacity
        self._answers: OrderedDict[tuple[str, int], Answer] = OrderedDict()
        self.forgotten = 0

    def remember(self, sender: str, seq: int, accepted: bool, reason: str) -> None:
        if reason in UNREMEMBERED:
            return
        answers = self._answers
        answers[(sender, seq)] = Answer(accepted, reason)
        if len(answers) > self.capacity:
            answers.popitem(last=False)
            self.forgotten += 1

    def recall(self, sender: str, seq: int) -> Answer | None:
        return self._answers.get((sender, seq))

    def __len__(self) -> int:
        return len(self._answers)
