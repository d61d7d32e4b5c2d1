"""TLS end to end against a real Mosquitto TLS listener that requires client certificates.

Each test starts its own broker (about 0.2 s) and makes its certificates with ``cryptography``."""

from __future__ import annotations

import asyncio
import ssl

import aiomqtt
import pytest

from koala_async.errors import BrokerUnavailable, ConfigError
from koala_async.io.transport import BrokerAddress, MqttTransport
from tests.security.conftest import TLSBroker

pytestmark = pytest.mark.mosquitto


def _address(broker: TLSBroker, **changes: str | None) -> BrokerAddress:
    files = {"ca_file": broker.ca_file, "cert_file": broker.cert_file, "key_file": broker.key_file, **changes}
    return BrokerAddress.parse(broker.url, **files)


async def test_transport_publishes_and_receives_over_mqtts(tls_broker: TLSBroker) -> None:
    address = _address(tls_broker)
    assert address.tls and address.port == tls_broker.port
    async with MqttTransport(address, "tls-sub", subscriptions=(("koala/tls/#", 1),)) as sub, \
            MqttTransport(address, "tls-pub") as pub:
        await sub.wait_connected(10)
        await pub.wait_connected(10)
        await pub.publish("koala/tls/x", b"over tls", qos=1)
        async with asyncio.timeout(10):
            incoming = await anext(sub.messages())
    assert (incoming.topic, incoming.payload) == ("koala/tls/x", b"over tls")


async def test_plain_aiomqtt_with_the_fixture_files_connects(tls_broker: TLSBroker) -> None:
    ctx = ssl.create_default_context(cafile=tls_broker.ca_file)
    ctx.load_cert_chain(tls_broker.cert_file, tls_broker.key_file)
    async with aiomqtt.Client(tls_broker.host, tls_broker.port, tls_context=ctx, timeout=10) as client:
        await client.publish("koala/tls/ping", b"1", qos=1)


async def test_a_wrong_ca_is_refused_with_a_message_naming_it(tls_broker: TLSBroker) -> None:
    wrong = str(tls_broker.pki.other_ca_file)
    async with MqttTransport(_address(tls_broker, ca_file=wrong), "tls-wrong-ca") as transport:
        with pytest.raises(BrokerUnavailable) as err:
            await transport.wait_connected(2)
    message = str(err.value)
    assert "certificate could not be verified" in message and wrong in message, message
    assert tls_broker.url in message


async def test_without_a_client_certificate_the_broker_refuses(tls_broker: TLSBroker) -> None:
    async with MqttTransport(_address(tls_broker, cert_file=None, key_file=None), "tls-no-cert") as transport:
        with pytest.raises(BrokerUnavailable):
            await transport.wait_connected(2)
    assert transport.stats.connects == 0


async def test_a_plain_mqtt_client_gets_nothing_from_the_tls_listener(tls_broker: TLSBroker) -> None:
    plain = BrokerAddress.parse(f"mqtt://{tls_broker.host}:{tls_broker.port}")
    async with MqttTransport(plain, "plain-on-tls") as transport:
        with pytest.raises(BrokerUnavailable):
            await transport.wait_connected(2)


async def test_missing_certificate_files_are_config_errors(tls_broker: TLSBroker, tmp_path) -> None:
    with pytest.raises(ConfigError, match="missing-ca.pem"):
        async with MqttTransport(_address(tls_broker, ca_file=str(tmp_path / "missing-ca.pem")), "x"):
            pass
    with pytest.raises(ConfigError, match="client.pem"):
        async with MqttTransport(_address(tls_broker, key_file=str(tls_broker.pki.other_ca_file)), "x"):
            pass
