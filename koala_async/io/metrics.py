"""Prometheus metrics for a node, served on ``/metrics`` from a thread (optional: ``prometheus-client``).

One class per node role, :class:`ServerMetrics` and :class:`ClientMetrics`. Each owns its own
``CollectorRegistry``, never the process-global one: the runtime embeds in other programs, which may
run several nodes or have metrics of their own. A node calls one small method per event (each is O(1):
a counter increment or a histogram observation); the transport's own counters (messages and bytes in
and out, connects, failovers) are read from its ``TransportStats`` at scrape time, costing nothing per
message. ``port=None`` serves nothing: the host program can expose ``metrics.registry`` itself.

Names follow Prometheus conventions: the ``koala_`` prefix, ``_total`` on counters, base units
(``_seconds``, ``_bytes``). Staleness is counted in knowledge versions, so it has no unit suffix.

    with ServerMetrics("server", federation="lab", port=9100) as metrics:   # GET 127.0.0.1:9100/metrics
        metrics.watch_transport(transport.stats)
        metrics.update_accepted(staleness=2)
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any, Self
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from koala_async.errors import ConfigError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from koala_async.io.transport import TransportStats

STALENESS_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
DISTILL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TRAINING_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ConfigError("metrics need prometheus-client: pip install 'koala-async[metrics]'") from None
    return prometheus_client


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress never holds up the node's exit


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a line on stderr each."""


class _TransportCollector:
    """The transport's counters, read when scraped (a custom collector: nothing to do per message)."""

    def __init__(self, stats: TransportStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.stats
        for name, doc, value in (
                ("koala_mqtt_received_messages", "MQTT messages received on subscribed topics", s.messages_in),
                ("koala_mqtt_received_bytes", "payload bytes received", s.bytes_in),
                ("koala_mqtt_sent_messages", "MQTT messages published and acknowledged", s.messages_out),
                ("koala_mqtt_sent_bytes", "payload bytes published and acknowledged", s.bytes_out),
                ("koala_mqtt_connects", "connections made to a broker", s.connects),
                ("koala_mqtt_disconnects", "connections lost", s.disconnects),
                ("koala_mqtt_failovers", "connections made to a different broker than the one before",
                 s.failovers),
                ("koala_mqtt_publish_retries", "publishes retried after an error", s.publish_retries)):
            yield CounterMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily("koala_mqtt_protocol_version", "MQTT protocol level of the connection "
                                "(5, or 4 for 3.1.1; 0 before the first)", value=s.mqtt_version)


class NodeMetrics:
    """A registry of one node's metrics and, with a ``port``, the thread that serves it on ``/metrics``.

    ``start()``/``close()`` or ``with``; ``port=0`` takes a free port (read ``port`` after ``start``).
    """

    role = "node"

    def __init__(self, node_id: str, *, federation: str = "", port: int | None = None,
                 host: str = "127.0.0.1") -> None:
        prom = _prometheus()
        self.registry: CollectorRegistry = prom.CollectorRegistry(auto_describe=True)
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        prom.Info("koala_node", "which node this is", registry=self.registry).info(
            {"node_id": node_id, "role": self.role, "federation": federation})

    def _counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
        return _prometheus().Counter(name, doc, labels, registry=self.registry)

    def _gauge(self, name: str, doc: str) -> Any:
        return _prometheus().Gauge(name, doc, registry=self.registry)

    def _histogram(self, name: str, doc: str, buckets: tuple[float, ...]) -> Any:
        return _prometheus().Histogram(name, doc, buckets=buckets, registry=self.registry)

    def watch_transport(self, stats: TransportStats) -> None:
        """Export a transport's counters (``koala_mqtt_*``), read from ``stats`` at each scrape."""
        self.registry.register(_TransportCollector(stats))  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def start(self) -> None:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread (nothing when ``port`` is None)."""
        if self.port is None or self._server is not None:
            return
        from prometheus_client import make_wsgi_app

        server_class = _Server6 if ":" in self.host else _Server
        try:
            server = make_server(self.host, self.port, make_wsgi_app(self.registry), server_class, _QuietHandler)
        except OSError as exc:
            raise ConfigError(f"metrics: cannot serve on {self.host}:{self.port}: {exc}") from None
        self._server, self.port = server, int(server.server_address[1])  # the real one when given 0
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"koala-metrics-{self.port}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ServerMetrics(NodeMetrics):
    """The server's metrics; call the method named for each event."""

    role = "server"

    def __init__(self, node_id: str, **options: Any) -> None:
        super().__init__(node_id, **options)
        self._version = self._gauge("koala_knowledge_version", "version of the knowledge last published")
        self._accepted = self._counter("koala_updates_accepted_total", "client updates accepted")
        self._rejected = self._counter("koala_updates_rejected_total", "client updates rejected, by reason",
                                       ("reason",))
        self._staleness = self._histogram("koala_update_staleness",
                                          "staleness of accepted updates, in knowledge versions",
                                          STALENESS_BUCKETS)
        self._fused = self._histogram("koala_update_fused_latency_seconds",
                                      "time from an update's arrival to its fusion into the targets",
                                      LATENCY_BUCKETS)
        self._distill = self._histogram("koala_distillation_seconds", "duration of one distillation pass",
                                        DISTILL_BUCKETS)
        self._online = self._gauge("koala_clients_online", "clients whose presence says online")
        self._superseded = self._counter("koala_updates_superseded_total",
                                         "client updates their clients replaced before the server had them")

    def knowledge(self, version: int) -> None:
        self._version.set(version)

    def update_accepted(self, staleness: int) -> None:
        self._accepted.inc()
        self._staleness.observe(staleness)

    def update_rejected(self, reason: str) -> None:
        """``reason``: a short fixed code (``stale``, ``duplicate``, ``bad_shape``...), never free text."""
        self._rejected.labels(reason).inc()

    def update_superseded(self) -> None:
        self._superseded.inc()

    def update_fused(self, latency: float) -> None:
        """An update reached the fused targets ``latency`` seconds after it arrived."""
        self._fused.observe(latency)

    def distilled(self, seconds: float) -> None:
        self._distill.observe(seconds)

    def clients_online(self, count: int) -> None:
        self._online.set(count)


class ClientMetrics(NodeMetrics):
    """A client's metrics; call the method named for each event."""

    role = "client"

    def __init__(self, node_id: str, **options: Any) -> None:
        super().__init__(node_id, **options)
        self._sent = self._counter("koala_updates_sent_total", "updates published")
        self._accepted = self._counter("koala_updates_accepted_total", "updates the server accepted")
        self._rejected = self._counter("koala_updates_rejected_total",
                                       "updates the server rejected, by reason", ("reason",))
        self._training = self._histogram("koala_training_seconds", "duration of one local training round",
                                         TRAINING_BUCKETS)
        self._version = self._gauge("koala_knowledge_version", "version of the knowledge the client holds")

    def update_sent(self) -> None:
        self._sent.inc()

    def update_accepted(self) -> None:
        self._accepted.inc()

    def update_rejected(self, reason: str) -> None:
        self._rejected.labels(reason).inc()

    def trained(self, seconds: float) -> None:
        self._training.observe(seconds)

    def knowledge(self, version: int) -> None:
        self._version.set(version)
