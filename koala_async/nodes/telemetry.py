"""The nodes' Prometheus metrics, wired: an adapter between a node and :mod:`koala_async.io.metrics`.

With ``metrics_port`` set in its config, a node serves ``/metrics`` on ``metrics_host:metrics_port``
(a thread; port 0 takes a free one, read back from ``node.telemetry.url``) while it runs. Every figure
is fed as its event happens, O(1) each, or read from a counter at scrape time; nothing is computed
per client or per scrape on the node's event loop.

Server (:class:`ServerTelemetry`, a :class:`~koala_async.core.server_state.StateListener` and the
listener of its :class:`~koala_async.core.rejects.RejectCounter`): knowledge version, updates accepted,
rejected by reason (every reason, undecodable messages included), superseded, staleness of accepted
updates, arrival-to-fused latency per update, seconds per learning pass, clients online, and the
transport's counters (``koala_mqtt_received_messages_total``: its rate is the ingest rate).

Client (:class:`ClientTelemetry`, a tap on the node's :class:`~koala_async.nodes.events.EventHub`):
updates sent, accepted, rejected by reason, training seconds, knowledge version, the transport's
counters, and the delivery ledger's superseded, republished and pending updates (read when scraped).

Without ``metrics_port`` the nodes get :func:`contextlib.nullcontext` and pay nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Self

from koala_async.io.metrics import ClientMetrics, ServerMetrics

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from koala_async.core.delivery import DeliveryLedger
    from koala_async.core.server_state import ServerState
    from koala_async.io.base import Transport
    from koala_async.nodes.config import ClientConfig, ServerConfig
    from koala_async.nodes.events import Event, EventHub


class ServerTelemetry:
    """Feeds a :class:`~koala_async.io.metrics.ServerMetrics` from the server's protocol state."""

    def __init__(self, config: ServerConfig, state: ServerState, transport: Transport) -> None:
        self.metrics = ServerMetrics(config.node_id, federation=config.federation, port=config.metrics_port,
                                     host=config.metrics_host)
        self.metrics.watch_transport(transport.stats)
        self.state = state
        state.listener = self
        state.rejects.listener = self.metrics.update_rejected

    @property
    def url(self) -> str:
        return self.metrics.url

    # -- StateListener ---------------------------------------------------------------------------

    def accepted(self, staleness: int) -> None:
        self.metrics.update_accepted(staleness)

    def superseded(self) -> None:
        self.metrics.update_superseded()

    def fused(self, latency: float) -> None:
        self.metrics.update_fused(latency)

    def published(self, version: int) -> None:
        self.metrics.knowledge(version)

    def distilled(self, seconds: float) -> None:
        self.metrics.distilled(seconds)

    def online(self, count: int) -> None:
        self.metrics.clients_online(count)

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.metrics.knowledge(self.state.version)  # a resumed server starts past version 0
        self.metrics.clients_online(self.state.online_count)
        self.metrics.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.metrics.close()


class _LedgerCollector:
    """The delivery ledger's counts, read at scrape time (nothing to do per update)."""

    def __init__(self, ledger: DeliveryLedger) -> None:
        self.ledger = ledger

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        ledger = self.ledger
        yield CounterMetricFamily("koala_updates_superseded", "updates replaced by a newer one before "
                                  "their verdict", value=ledger.superseded)
        yield CounterMetricFamily("koala_updates_republished", "publications of an update whose verdict "
                                  "was late", value=ledger.republished)
        yield GaugeMetricFamily("koala_updates_pending", "updates awaiting the server's verdict",
                                value=int(ledger.pending is not None))


class ClientTelemetry:
    """Feeds a :class:`~koala_async.io.metrics.ClientMetrics` from a client's events."""

    def __init__(self, config: ClientConfig, events: EventHub, transport: Transport,
                 ledger: DeliveryLedger) -> None:
        from koala_async.nodes import events as ev

        self.metrics = ClientMetrics(config.node_id, federation=config.federation, port=config.metrics_port,
                                     host=config.metrics_host)
        self.metrics.watch_transport(transport.stats)
        self.metrics.registry.register(_LedgerCollector(ledger))  # type: ignore[arg-type]
        m = self.metrics
        self._feed: dict[type, Any] = {
            ev.UpdatePublished: lambda e: m.update_sent(),
            ev.UpdateAccepted: lambda e: m.update_accepted(),
            ev.UpdateRejected: lambda e: m.update_rejected(e.reason),
            ev.Trained: lambda e: m.trained(e.seconds),
            ev.KnowledgeChanged: lambda e: m.knowledge(e.version),
        }
        events.tap(self._on_event)

    @property
    def url(self) -> str:
        return self.metrics.url

    def _on_event(self, event: Event) -> None:
        feed = self._feed.get(type(event))
        if feed is not None:
            feed(event)

    def __enter__(self) -> Self:
        self.metrics.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.metrics.close()


def server_telemetry(config: ServerConfig, state: ServerState,
                     transport: Transport) -> AbstractContextManager[ServerTelemetry | None]:
    """The server's metrics when ``config.metrics_port`` is set, else a context that does nothing."""
    return ServerTelemetry(config, state, transport) if config.metrics_port is not None else nullcontext()


def client_telemetry(config: ClientConfig, events: EventHub, transport: Transport,
                     ledger: DeliveryLedger) -> AbstractContextManager[ClientTelemetry | None]:
    """The client's metrics when ``config.metrics_port`` is set, else a context that does nothing."""
    return (ClientTelemetry(config, events, transport, ledger) if config.metrics_port is not None
            else nullcontext())
