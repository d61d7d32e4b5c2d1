"""Which node class runs a federation mode: ``async`` (KOALA, no rounds), ``sync`` (KOALA in rounds)
or ``fedavg`` (clients train the large model; the server averages weights)."""

from __future__ import annotations

from koala_async.nodes.client import ClientConfig, ClientNode
from koala_async.nodes.server import ServerConfig, ServerNode


def server_node(config: ServerConfig) -> ServerNode:
    """The server node for ``config.mode``."""
    if config.mode == "sync":
        from koala_async.nodes.sync import SyncServerNode

        return SyncServerNode(config)
    if config.mode == "fedavg":
        from koala_async.nodes.fedavg_server import FedAvgServerNode

        return FedAvgServerNode(config)
    return ServerNode(config)


def client_node(config: ClientConfig) -> ClientNode:
    """The client node for ``config.mode`` (a ``sync`` client is a ClientNode that trains once per
    knowledge version)."""
    if config.mode == "fedavg":
        from koala_async.nodes.fedavg_client import FedAvgClientNode

        return FedAvgClientNode(config)
    return ClientNode(config)
