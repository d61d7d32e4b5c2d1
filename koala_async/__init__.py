"""koala-async: asynchronous federated knowledge transfer (KOALA) over MQTT.

Public API (everything else is private and may change):

- :class:`ServerNode`, :class:`ServerConfig`: the server that distills client logits into a large model.
- :class:`ClientNode`, :class:`ClientConfig`: a client that trains a small model and publishes logits.
- :class:`EmbeddedBroker`: an in-process amqtt broker on a loopback port.
- :class:`StalenessPolicy`, :class:`FusionConfig`: the aggregation knobs.
- :class:`KoalaError` and its subclasses (see :mod:`koala_async.errors`).
"""

from koala_async.core.fusion import FusionConfig
from koala_async.core.staleness import StalenessPolicy
from koala_async.errors import (BrokerUnavailable, ConfigError, DataError, KoalaError, MessageError,
                                TransportError)
from koala_async.io.broker import EmbeddedBroker
from koala_async.nodes.client import ClientConfig, ClientNode
from koala_async.nodes.server import ServerConfig, ServerNode

__all__ = [
    "BrokerUnavailable", "ClientConfig", "ClientNode", "ConfigError", "DataError", "EmbeddedBroker",
    "FusionConfig", "KoalaError", "MessageError", "ServerConfig", "ServerNode", "StalenessPolicy",
    "TransportError",
]
__version__ = "0.1.0"
