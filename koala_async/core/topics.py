"""MQTT topic names under a federation prefix ``koala/<federation>/``."""

from __future__ import annotations

import re
from dataclasses import dataclass

_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def check_id(value: str, what: str = "id") -> str:
    """Node and federation ids become topic levels, so wildcards and slashes are refused."""
    if not _ID.match(value):
        raise ValueError(f"{what} {value!r} must match {_ID.pattern} (no '/', '+', '#')")
    return value


@dataclass(frozen=True)
class Topics:
    federation: str = "default"

    def __post_init__(self) -> None:
        check_id(self.federation, "federation")

    @property
    def prefix(self) -> str:
        return f"koala/{self.federation}"

    @property
    def knowledge(self) -> str:
        return f"{self.prefix}/server/knowledge"

    @property
    def model(self) -> str:
        """The global model weights (FedAvg baseline), retained."""
        return f"{self.prefix}/server/model"

    @property
    def proxy(self) -> str:
        return f"{self.prefix}/server/proxy"

    def proxy_chunk(self, proxy_id: str, index: int) -> str:
        """Chunk ``index`` of proxy set ``proxy_id`` (retained; core/proxy_manifest.py). The manifest is
        on :attr:`proxy`."""
        return f"{self.prefix}/server/proxy/{proxy_id}/{index}"

    def chunk_of(self, topic: str) -> tuple[str, int] | None:
        """``(proxy_id, index)`` of a :meth:`proxy_chunk` topic, or None."""
        head, _, rest = topic.partition(f"{self.prefix}/server/proxy/")
        proxy_id, _, index = rest.partition("/")
        if head or not proxy_id or not (index.isascii() and index.isdigit()) or len(index) > 10:
            return None
        return proxy_id, int(index)

    @property
    def server_status(self) -> str:
        return f"{self.prefix}/server/status"

    def update(self, client_id: str) -> str:
        return f"{self.prefix}/clients/{client_id}/update"

    def client_status(self, client_id: str) -> str:
        return f"{self.prefix}/clients/{client_id}/status"

    def ack(self, client_id: str) -> str:
        """Where the server tells client ``client_id`` whether each of its updates was accepted."""
        return f"{self.prefix}/clients/{client_id}/ack"

    @property
    def all_updates(self) -> str:
        return f"{self.prefix}/clients/+/update"

    @property
    def all_client_status(self) -> str:
        return f"{self.prefix}/clients/+/status"

    def client_of(self, topic: str) -> str | None:
        """The client id a ``clients/<id>/...`` topic belongs to, or None."""
        parts = topic.split("/")
        if len(parts) == 5 and parts[0] == "koala" and parts[1] == self.federation and parts[2] == "clients":
            return parts[3]
        return None
