"""Federation modes, as data: what a mode paces by and what its clients send.

Every place that behaves differently per mode asks a :class:`Mode` property; nothing else spells a
mode's name. The server composes a mode from a pacing policy and a learner, the client from a
pacing rule and a local training task (``koala_async.nodes.modes`` is that one place).

=========  ===================  ==================================================================
mode       pacing               exchange
=========  ===================  ==================================================================
async      none (each arrival)  logits on the proxy set, distilled into the large model (KOALA)
sync       rounds               the same logits, fused once per round (KOALA in synchronous rounds)
fedavg     rounds               full weights of the large model, averaged per round (FedAvg)
fedbuff    none (K arrivals)    the same weights, as staleness-scaled deltas of every K (FedBuff)
=========  ===================  ==================================================================

``sync`` vs ``async`` separates rounds from no rounds for logits; ``fedavg`` vs ``fedbuff`` does the
same for weights; ``async`` vs ``fedbuff`` separates logits from weights without rounds.
"""

from __future__ import annotations

from enum import StrEnum


class Mode(StrEnum):
    ASYNC = "async"
    SYNC = "sync"
    FEDAVG = "fedavg"
    FEDBUFF = "fedbuff"

    @property
    def rounds(self) -> bool:
        """Whether versions are synchronous rounds that wait for every selected client."""
        return self in (Mode.SYNC, Mode.FEDAVG)

    @property
    def exchanges_weights(self) -> bool:
        """Whether clients train the server's large model and send its weights (else: logits)."""
        return self in (Mode.FEDAVG, Mode.FEDBUFF)

    @classmethod
    def parse(cls, value: str | Mode) -> Mode:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"mode {value!r} is not one of {list(MODES)}") from None


MODES: tuple[str, ...] = tuple(m.value for m in Mode)
DEFAULT_MODE = Mode.ASYNC
