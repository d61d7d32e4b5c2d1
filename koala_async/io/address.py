"""Broker addresses: one ``mqtt://`` URL, or a failover list of them, as a node's config gives it.

``BrokerAddress`` says where and how to reach one broker; :func:`parse_brokers` turns a config value
(a list of URLs, or one string of comma-separated URLs) into the ordered tuple a
:class:`~koala_async.io.transport.Transport` fails over along.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass, replace
from urllib.parse import unquote, urlsplit

from koala_async.errors import ConfigError


@dataclass(frozen=True)
class BrokerAddress:
    """Where and how to reach a broker: ``mqtt://[user[:pass]@]host[:port]`` or ``mqtts://``."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False

    @classmethod
    def parse(cls, url: str, **extra: object) -> BrokerAddress:
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ConfigError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ConfigError(f"broker URL {url!r}: bad port") from None
        return cls(host=parts.hostname or "127.0.0.1", port=port,
                   username=unquote(parts.username) if parts.username else None,
                   password=unquote(parts.password) if parts.password else None,
                   tls=tls, **extra)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def explain(self, error: str) -> str:
        """``error`` (a connect failure's text), with what it means for TLS where that is known."""
        if self.tls and "CERTIFICATE_VERIFY_FAILED" in error:
            cas = f"CA file {self.ca_file}" if self.ca_file else "the system's CA certificates (no ca_file set)"
            return f"the broker's TLS certificate could not be verified with {cas}: {error}"
        return error

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the CA certificates: {exc}", source=self.ca_file) from None
        if self.cert_file:
            try:
                ctx.load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load the client certificate or its key ({self.key_file}): {exc}",
                                  source=self.cert_file) from None
        if self.tls_insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


def parse_brokers(value: str | Sequence[str], *, username: str | None = None, password: str | None = None,
                  ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None,
                  tls_insecure: bool = False) -> tuple[BrokerAddress, ...]:
    """The broker addresses a config value names, in failover order.

    ``value`` is one URL, several separated by commas (``"mqtt://a:1883, mqtt://b:1883"``), or a list
    of URLs. ``username``/``password`` override credentials in the URLs; the TLS options apply to every
    ``mqtts://`` address. An empty list, an entry that is not a string and a URL named twice are
    :class:`~koala_async.errors.ConfigError`\\ s that name the entry.
    """
    if isinstance(value, str):
        urls = [part.strip() for part in value.split(",")]
    elif isinstance(value, Sequence):
        urls = list(value)
    else:
        raise ConfigError(f"broker: expected a URL or a list of URLs, got {type(value).__name__}")
    tls_options = {"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file,
                   "tls_insecure": tls_insecure}
    addresses: list[BrokerAddress] = []
    for index, url in enumerate(urls):
        if not isinstance(url, str) or not url.strip():
            raise ConfigError(f"broker entry {index + 1} of {len(urls)}: expected a non-empty URL, got {url!r}")
        address = BrokerAddress.parse(url.strip(), **tls_options)
        if username:
            address = replace(address, username=username, password=password)
        if any((a.host, a.port) == (address.host, address.port) for a in addresses):
            raise ConfigError(f"broker entry {index + 1} ({url!r}): {address} is already in the list")
        addresses.append(address)
    if not addresses:
        raise ConfigError("broker: no broker URL given")
    return tuple(addresses)
