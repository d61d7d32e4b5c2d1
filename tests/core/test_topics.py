"""Topic names, id checks and mapping a topic back to its client."""

from __future__ import annotations

import pytest

from koala_async.core.topics import Topics, check_id


@pytest.mark.parametrize("good", ["c1", "client-0", "gw_3.a", "x" * 64])
def test_check_id_accepts(good: str) -> None:
    assert check_id(good) == good


@pytest.mark.parametrize("bad", ["a/b", "c+", "#", "", "x" * 65, "sp ace", "é"])
def test_check_id_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        check_id(bad, "node_id")


def test_federation_is_checked() -> None:
    with pytest.raises(ValueError, match="federation"):
        Topics("lab/one")


def test_topic_names() -> None:
    t = Topics("lab")
    assert t.knowledge == "koala/lab/server/knowledge"
    assert t.server_status == "koala/lab/server/status"
    assert t.proxy == "koala/lab/server/proxy"
    assert t.update("c1") == "koala/lab/clients/c1/update"
    assert t.client_status("c1") == "koala/lab/clients/c1/status"
    assert t.all_updates == "koala/lab/clients/+/update"
    assert t.all_client_status == "koala/lab/clients/+/status"


def test_client_of() -> None:
    t = Topics("lab")
    assert t.client_of(t.update("c7")) == "c7"
    assert t.client_of(t.client_status("gw-1")) == "gw-1"
    assert t.client_of("koala/other/clients/c7/update") is None  # another federation
    assert t.client_of(t.knowledge) is None
    assert t.client_of("koala/lab/clients/c7") is None
    assert t.client_of("koala/lab/clients/c7/update/extra") is None
