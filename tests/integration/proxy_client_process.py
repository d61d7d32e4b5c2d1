"""A client process for tests/integration/test_proxy_transfer.py: one real ClientNode (no private data)
that runs until it holds the server's proxy set.

``python tests/integration/proxy_client_process.py '<ClientConfig fields as JSON>'`` prints one JSON
line with what it measured: each fetch link's subscriptions and messages, the proxy sync's counters,
the transfer time, and its resident memory before and at its highest during the transfer (sampled
every 5 ms by a thread; a separate process, so the server's copy of the proxy set is not counted).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from typing import Any

from koala_async.io.base import LinkOptions, Transport, TransportStats
from koala_async.nodes.client import ClientConfig, ClientNode
from koala_async.nodes.common import node_transport


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss(threading.Thread):
    """The highest resident set size seen while it runs (ru_maxrss would include start-up's peak)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = rss_bytes()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.005):
            self.peak = max(self.peak, rss_bytes())


async def main(fields: dict[str, Any]) -> None:
    config = ClientConfig(**fields)
    base = node_transport(config)
    links: list[tuple[int, TransportStats]] = []  # the counters only: a transport kept would keep its buffers
    first_link: list[float] = []  # when the first fetch link was made: the transfer's start

    def factory(options: LinkOptions) -> Transport:
        transport = base(options)
        if options.client_id.endswith("-proxy"):
            first_link[:] = first_link or [time.perf_counter()]
            links.append((len(options.subscriptions), transport.stats))
        return transport

    started = time.perf_counter()
    async with ClientNode(config, transport=factory) as client:
        baseline = rss_bytes()  # torch and the rest imported; the proxy buffer not yet written
        sampler = PeakRss()
        sampler.start()
        sync = client.task.sync
        while client.proxy is None:
            await asyncio.sleep(0.02)
        seconds = time.perf_counter() - started
        transfer = time.perf_counter() - first_link[0]
        sampler.done.set()
        sampler.join()
        proxy = client.proxy
        result = {"proxy_id": proxy.proxy_id, "dtype": proxy.inputs.dtype.str, "shape": list(proxy.inputs.shape),
                  "seconds": round(seconds, 2), "transfer_seconds": round(transfer, 2), "stats": sync.stats(), "rejected": dict(client.rejects.counts),
                  "links": [{"subscribed": n, "messages": stats.messages_in, "bytes": stats.bytes_in}
                            for n, stats in links],
                  "rss_baseline": baseline, "rss_now": rss_bytes(), "rss_peak": sampler.peak}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(main(json.loads(sys.argv[1])))
