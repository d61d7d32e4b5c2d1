"""koala-async: asynchronous federated knowledge transfer (KOALA) over MQTT.

Public API (everything else is private and may change):

- :class:`ServerNode`, :class:`ServerConfig`: the server that distills client logits into a large model.
- :class:`ClientNode`, :class:`ClientConfig`: a client that trains a small model and publishes logits.
  Embedding (a gateway's own asyncio program): ``async with ClientNode(config) as client`` runs in the
  caller's loop (training in a worker thread; cancelling the caller's task unwinds it completely);
  ``client.add_samples(x, y)`` feeds private samples to a running client (bounded by
  ``max_samples`` under ``retention = "reservoir" | "newest"``; an empty start with
  ``dataset = "none"`` trains once ``min_samples`` are held); bad input raises :class:`DataError`.
- ``node.events()`` on both nodes: an async iterator of typed, frozen events with its own bounded
  queue (oldest dropped when full, counted in ``node.events_dropped``): :class:`Connected`,
  :class:`ConnectionLost`, :class:`KnowledgeChanged`, :class:`TierChanged`, :class:`Trained`,
  :class:`UpdatePublished`,
  :class:`UpdateAccepted`, :class:`UpdateRejected` (all :class:`Event`; see
  :mod:`koala_async.nodes.events`).
- :class:`EmbeddedBroker`: an in-process amqtt broker on a loopback port.
- :class:`StalenessPolicy`, :class:`FusionConfig`: the aggregation knobs.
- :class:`KoalaError` and its subclasses (see :mod:`koala_async.errors`).

The library installs no signal handlers, configures no logging and keeps no global state; the
``koala`` CLI (``koala_async.tools.cli``) does the first two for its own process.
"""

from koala_async.core.fusion import FusionConfig
from koala_async.core.staleness import StalenessPolicy
from koala_async.errors import (
                                BrokerUnavailable,
                                ConfigError,
                                DataError,
                                KoalaError,
                                MessageError,
                                TransportError,
)
from koala_async.io.broker import EmbeddedBroker
from koala_async.nodes.client import ClientConfig, ClientNode
from koala_async.nodes.events import (
                                Connected,
                                ConnectionLost,
                                Event,
                                KnowledgeChanged,
                                TierChanged,
                                Trained,
                                UpdateAccepted,
                                UpdatePublished,
                                UpdateRejected,
)
from koala_async.nodes.server import ServerConfig, ServerNode

__all__ = [
    "BrokerUnavailable", "ClientConfig", "ClientNode", "ConfigError", "Connected", "ConnectionLost", "DataError",
    "EmbeddedBroker", "Event", "FusionConfig", "KnowledgeChanged", "KoalaError", "MessageError", "ServerConfig",
    "ServerNode", "StalenessPolicy", "TierChanged", "Trained", "TransportError", "UpdateAccepted", "UpdatePublished",
    "UpdateRejected",
]
__version__ = "0.1.0"
