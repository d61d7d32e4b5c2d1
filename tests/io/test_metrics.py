"""Node metrics: scraped over real HTTP from the node's own registry, in Prometheus text format."""

from __future__ import annotations

import urllib.error
import urllib.request

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from koala_async.errors import ConfigError
from koala_async.io.metrics import ClientMetrics, ServerMetrics
from koala_async.io.transport import TransportStats

pytestmark = pytest.mark.timeout(30)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_server_metrics_are_served_and_count_each_event() -> None:
    stats = TransportStats(messages_in=120, bytes_in=48_000, messages_out=7, connects=2, failovers=1,
                           mqtt_version=5)
    with ServerMetrics("srv", federation="lab", port=0) as metrics:
        assert metrics.port and metrics.url == f"http://127.0.0.1:{metrics.port}/metrics"
        metrics.watch_transport(stats)
        metrics.knowledge(7)
        metrics.update_accepted(staleness=0)
        metrics.update_accepted(staleness=5)
        for reason in ("stale", "stale", "duplicate"):
            metrics.update_rejected(reason)
        metrics.update_fused(0.03)
        metrics.distilled(1.5)
        metrics.clients_online(4)
        got = scrape(metrics.url)
        stats.messages_in += 30  # read at scrape time: the next scrape sees it
        again = scrape(metrics.url)

    assert value(got, "koala_node_info", node_id="srv", role="server", federation="lab") == 1
    assert value(got, "koala_knowledge_version") == 7
    assert value(got, "koala_updates_accepted_total") == 2
    assert value(got, "koala_updates_rejected_total", reason="stale") == 2
    assert value(got, "koala_updates_rejected_total", reason="duplicate") == 1
    assert value(got, "koala_update_staleness_count") == 2 and value(got, "koala_update_staleness_sum") == 5
    assert value(got, "koala_update_staleness_bucket", le="0.0") == 1
    assert value(got, "koala_update_staleness_bucket", le="4.0") == 1
    assert value(got, "koala_update_staleness_bucket", le="6.0") == 2
    assert value(got, "koala_update_fused_latency_seconds_bucket", le="0.025") == 0
    assert value(got, "koala_update_fused_latency_seconds_bucket", le="0.05") == 1
    assert value(got, "koala_distillation_seconds_sum") == 1.5
    assert value(got, "koala_clients_online") == 4
    assert value(got, "koala_mqtt_received_messages_total") == 120
    assert value(got, "koala_mqtt_received_bytes_total") == 48_000
    assert value(got, "koala_mqtt_failovers_total") == 1
    assert value(got, "koala_mqtt_protocol_version") == 5
    assert value(again, "koala_mqtt_received_messages_total") == 150


def test_client_metrics_count_updates_training_and_bytes() -> None:
    stats = TransportStats(bytes_out=9_000, bytes_in=2_000)
    with ClientMetrics("c1", port=0) as metrics:
        metrics.watch_transport(stats)
        for _ in range(3):
            metrics.update_sent()
        metrics.update_accepted()
        metrics.update_rejected("stale")
        metrics.trained(4.0)
        metrics.knowledge(12)
        got = scrape(metrics.url)
    assert value(got, "koala_node_info", node_id="c1", role="client", federation="") == 1
    assert value(got, "koala_updates_sent_total") == 3
    assert value(got, "koala_updates_accepted_total") == 1
    assert value(got, "koala_updates_rejected_total", reason="stale") == 1
    assert value(got, "koala_training_seconds_count") == 1 and value(got, "koala_training_seconds_sum") == 4
    assert value(got, "koala_knowledge_version") == 12
    assert value(got, "koala_mqtt_sent_bytes_total") == 9_000
    assert value(got, "koala_mqtt_received_bytes_total") == 2_000


def test_each_node_has_its_own_registry_never_the_global_one() -> None:
    # two servers in one process (an embedding program, a test): the global registry would refuse the
    # second set of names, and a host program's own metrics would be mixed with ours
    first, second = ServerMetrics("a"), ServerMetrics("b")
    first.update_accepted(1)
    assert first.registry.get_sample_value("koala_updates_accepted_total") == 1
    assert second.registry.get_sample_value("koala_updates_accepted_total") == 0
    assert prometheus_client.REGISTRY.get_sample_value("koala_updates_accepted_total") is None


def test_close_stops_serving_and_frees_the_port() -> None:
    metrics = ServerMetrics("srv", port=0)
    metrics.start()
    url, port = metrics.url, metrics.port
    assert scrape(url)
    metrics.close()
    metrics.close()  # twice is fine
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)
    with ServerMetrics("srv2", port=port) as reborn:  # the port was released
        assert value(scrape(reborn.url), "koala_node_info", node_id="srv2", role="server", federation="") == 1


def test_a_port_in_use_is_a_config_error_naming_it() -> None:
    with ServerMetrics("one", port=0) as taken, pytest.raises(ConfigError, match=f"127.0.0.1:{taken.port}"):
        ServerMetrics("two", port=taken.port).start()


def test_without_a_port_nothing_is_served() -> None:
    with ClientMetrics("quiet") as metrics:
        assert metrics.port is None
        metrics.update_sent()
        assert metrics.registry.get_sample_value("koala_updates_sent_total") == 1
