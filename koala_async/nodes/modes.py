"""The one place a federation mode becomes parts: the server's pacing and learner, the client's
local training task. Modes are data (:class:`~koala_async.core.modes.Mode`) and composition; no node
class is specialised per mode."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from koala_async.core.topics import Topics

if TYPE_CHECKING:
    from koala_async.learning.learner import Learner
    from koala_async.nodes.config import ClientConfig, ServerConfig
    from koala_async.nodes.local_training import LocalTask
    from koala_async.nodes.pacing import Pacing


def server_parts(config: ServerConfig, topics: Topics, next_seq: Any) -> tuple[Pacing, Learner]:
    """The pacing policy and learner of ``config.mode``."""
    from koala_async.learning.averaging_learner import AveragingLearner
    from koala_async.learning.buffered_learner import BufferedLearner
    from koala_async.learning.distill_learner import DistillLearner
    from koala_async.nodes.pacing import Continuous, Discard, Rounds

    mode = config.mode
    kind = (DistillLearner if not mode.exchanges_weights else AveragingLearner if mode.rounds
            else BufferedLearner)  # KOALA; FedAvg (rounds); FedBuff (no rounds)
    learner: Learner = kind(config, topics, next_seq)
    # The cold-start wait is KOALA's (its first knowledge teaches every client); FedBuff has its buffer.
    pacing: Pacing = (Discard(config) if config.ingest_only else Rounds(config) if mode.rounds
                      else Continuous(config, warmup=not mode.exchanges_weights))
    return pacing, learner


def client_task(config: ClientConfig, topics: Topics) -> LocalTask:
    """The local training task of ``config.mode``: a small model distilling knowledge (KOALA) or the
    server's large model trained from the global weights (FedAvg, FedBuff)."""
    from koala_async.nodes.local_training import AveragingTask, DistillTask

    return (AveragingTask if config.mode.exchanges_weights else DistillTask)(config, topics)
