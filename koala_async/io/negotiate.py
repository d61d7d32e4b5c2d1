"""Which MQTT version a connection speaks, and what each version needs from aiomqtt.

The transport tries MQTT 5 first and falls back to 3.1.1 where the broker refuses it. Brokers refuse
in three ways, all seen here:

- amqtt 0.12 answers a v5 CONNECT with CONNACK code 1 ("unacceptable protocol version", which paho
  reports as v5 reason code 132) ...
- ... unless the CONNECT carries a will: then it misreads the v5 will properties as the 3.1.1 will
  topic and message lengths and waits for bytes that never come, answering nothing. So a first v5
  try at a broker waits for its CONNACK only a few round trips (:func:`probe_window`: 0.5 s plus five
  times what opening the socket took), and silence counts as a refusal.
- RabbitMQ 3.10's MQTT plugin closes the socket without any CONNACK. aiomqtt 2.5 ignores a
  disconnect that comes before the CONNACK and waits out its whole connect timeout;
  :func:`fail_fast_before_connack` makes that close an immediate, recognisable error instead.

A fallback is remembered (per transport, per address) only once 3.1.1 has connected there, so a
broker that was merely down is asked for 5 again next time. A broker that speaks 5 but took longer
than the probe window to answer is spoken to in 3.1.1 from then on: it loses message expiry, nothing
else. A node that knows its broker (the embedded amqtt one) can skip the probe by
asking for 3.1.1 outright (``Transport(mqtt_version=4)``).

MQTT 5 features used: a message expiry interval on publishes that ask for one (a broker drops a stale
update rather than deliver it late) and a session expiry interval for persistent sessions (3.1.1's
``clean_session=False`` keeps a session forever; v5 keeps it for the interval given).
"""

from __future__ import annotations

import math
import time
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
_NO_CONNACK = "Operation timed out"  # aiomqtt 2.5's error when the CONNACK wait times out

# A first MQTT 5 CONNECT at a broker waits this long for an answer, plus V5_PROBE_RTTS times what opening
# the socket took (a TCP, maybe TLS, handshake: a round trip or three); a CONNACK takes one round trip.
V5_PROBE_FLOOR = 0.5
V5_PROBE_RTTS = 5


def refused_version(exc: BaseException, *, probing: bool = False) -> bool:
    """Whether a failed connect means the broker does not speak the version we asked for; with
    ``probing`` (a first v5 try), silence until the probe window closed counts as a refusal too."""
    if isinstance(exc, MqttConnectError):
        rc = exc.rc.value if isinstance(exc.rc, ReasonCode) else exc.rc
        return rc in _UNSUPPORTED_VERSION
    if not isinstance(exc, aiomqtt.MqttError):
        return False
    return str(exc) == _CLOSED_BEFORE_CONNACK or (probing and str(exc) == _NO_CONNACK)


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


def probe_window(client: aiomqtt.Client, cap: float) -> None:
    """Bound ``client``'s wait for the CONNACK by the probe window, measured as it connects (at most ``cap``).

    aiomqtt reads its public ``timeout`` when it starts waiting for the CONNACK, after paho opened the
    socket in an executor thread and called ``on_socket_open`` there: the window is set in that
    callback (read back on the event loop once the executor returns).
    """
    paho = client._client
    opened: Any = paho.on_socket_open
    started = time.monotonic()

    def on_open(paho_client: mqtt.Client, userdata: Any, sock: Any) -> None:
        client.timeout = min(cap, V5_PROBE_FLOOR + V5_PROBE_RTTS * (time.monotonic() - started))
        opened(paho_client, userdata, sock)

    paho.on_socket_open = on_open


def close_socket(client: aiomqtt.Client) -> None:
    """Close ``client``'s socket if a failed connect left it open (idempotent).

    aiomqtt 2.5 leaves the socket, its reader and its ``_misc_loop`` task behind when the wait for a
    CONNACK times out, which a probe at a silent broker makes routine; paho's ``_sock_close`` (private,
    paho 2.x) closes the socket and has aiomqtt unregister the reader and cancel that task.
    """
    client._client._sock_close()
    # aiomqtt 2.5 stores an unexpected disconnection in ``_disconnected`` and ``__aexit__`` returns
    # early without reading it when it is already set, so asyncio later logged "Future exception was
    # never retrieved" (an ERROR in the node's log) for a link that had already been handled.
    disconnected = client._disconnected
    if disconnected.done() and not disconnected.cancelled():
        disconnected.exception()
