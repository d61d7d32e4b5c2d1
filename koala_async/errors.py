"""The exception tree of koala-async, drawn once here.

    KoalaError                      base of everything this package raises on purpose
    ├── ConfigError                 a bad config or scenario file (names the file, key path, expectation)
    ├── MessageError                a message from the network failed decoding or validation
    │                               (``reason`` is a short machine-readable code; counted, then dropped)
    ├── TransportError              the broker could not be reached or the link failed
    │   └── BrokerUnavailable       connecting failed; ``address`` says where we looked
    └── DataError                   a dataset or data file is missing or malformed

Errors of dependencies (paho/aiomqtt, msgpack, numpy loading) are translated into these where they
enter the package, so callers only ever catch ``KoalaError`` subclasses.
"""

from __future__ import annotations


class KoalaError(Exception):
    """Base class of every error koala-async raises on purpose."""


class ConfigError(KoalaError):
    """A configuration or scenario file is invalid."""

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None,
                 line: int | None = None) -> None:
        self.message = message  # without the "file:line [key]" prefix
        self.source = source
        self.key = key
        self.line = line
        where = ""
        if source:
            where = source + (f":{line}" if line else "")
        if key:
            where = f"{where} [{key}]" if where else f"[{key}]"
        super().__init__(f"{where}: {message}" if where else message)


class MessageError(KoalaError):
    """A network message was rejected; ``reason`` is the counter key it is filed under."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class TransportError(KoalaError):
    """The MQTT transport failed."""


class BrokerUnavailable(TransportError):
    """No broker answered at ``address``."""

    def __init__(self, address: str, cause: str) -> None:
        self.address = address
        self.cause = cause
        super().__init__(f"no MQTT broker reachable at {address}: {cause}")


class DataError(KoalaError):
    """A dataset or data file is missing or malformed."""
