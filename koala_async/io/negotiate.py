"""Which MQTT version a connection speaks, and what each version needs from aiomqtt.

The transport tries MQTT 5 first and falls back to 3.1.1 where the broker refuses it. Brokers refuse
in two ways, both seen here: amqtt 0.12 answers a v5 CONNECT with CONNACK code 1 ("unacceptable
protocol version", which paho reports as v5 reason code 132), and RabbitMQ 3.10's MQTT plugin closes
the socket without any CONNACK. aiomqtt 2.5 ignores a disconnect that comes before the CONNACK and
waits out its whole connect timeout (10 s a try); :func:`fail_fast_before_connack` makes that close
an immediate, recognisable error instead.

MQTT 5 features used: a message expiry interval on publishes that ask for one (a broker drops a stale
update rather than deliver it late) and a session expiry interval for persistent sessions (3.1.1's
``clean_session=False`` keeps a session forever; v5 keeps it for the interval given).
"""

from __future__ import annotations

import math
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

MQTT_5 = 5
MQTT_311 = 4  # the protocol level byte of MQTT 3.1.1
VERSION_NAMES = {MQTT_5: "5", MQTT_311: "3.1.1"}

# CONNACK return code 1 (3.1.1) and reason code 0x84 (v5): the broker does not speak this version.
_UNSUPPORTED_VERSION = {1, 0x84}
_CLOSED_BEFORE_CONNACK = "connection closed before CONNACK"


def refused_version(exc: BaseException) -> bool:
    """Whether a failed connect means the broker does not speak the version we asked for."""
    if isinstance(exc, MqttConnectError):
        rc = exc.rc.value if isinstance(exc.rc, ReasonCode) else exc.rc
        return rc in _UNSUPPORTED_VERSION
    return isinstance(exc, aiomqtt.MqttError) and str(exc) == _CLOSED_BEFORE_CONNACK


def client_options(version: int, *, clean_session: bool, session_expiry: int) -> dict[str, Any]:
    """aiomqtt ``Client`` keyword arguments for a connection speaking ``version``.

    v5 has no clean-session flag: a persistent session is ``clean_start=False`` plus a session expiry
    interval (0, the default, would end the session at every disconnect).
    """
    if version == MQTT_311:
        return {"protocol": aiomqtt.ProtocolVersion.V311, "clean_session": clean_session}
    options: dict[str, Any] = {"protocol": aiomqtt.ProtocolVersion.V5, "clean_start": clean_session}
    if not clean_session:
        connect = Properties(PacketTypes.CONNECT)
        connect.SessionExpiryInterval = session_expiry
        options["properties"] = connect
    return options


def publish_properties(version: int, expiry: float | None) -> Properties | None:
    """The PUBLISH properties that carry ``expiry`` (seconds, rounded up) on a v5 link; None on 3.1.1."""
    if expiry is None or version != MQTT_5:
        return None
    props = Properties(PacketTypes.PUBLISH)  # a few microseconds, on updates only: not worth a cache
    props.MessageExpiryInterval = max(1, math.ceil(expiry))
    return props


def fail_fast_before_connack(client: aiomqtt.Client) -> None:
    """Make a socket the broker closes before its CONNACK fail ``client``'s connect at once.

    Reaches into aiomqtt 2.5's private ``_client`` (paho) and ``_connected`` (the CONNACK future), as
    aiomqtt offers no hook; pinned by ``aiomqtt<3`` and checked by the RabbitMQ fallback test, which
    would take 10 s per connect again if this stopped working.
    """
    paho = client._client
    on_disconnect: Any = paho.on_disconnect

    def closed(paho_client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        connected = client._connected
        if not connected.done():
            connected.set_exception(aiomqtt.MqttError(_CLOSED_BEFORE_CONNACK))
            return
        on_disconnect(paho_client, userdata, flags, reason, props)

    paho.on_disconnect = closed
