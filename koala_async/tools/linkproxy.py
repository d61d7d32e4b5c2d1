"""A TCP relay between a client and the broker that can be cut, restored and given a delay.

The runner puts one in front of each client it will cut: the real way to take one client off the
network while its process keeps running. While cut, open connections are closed (the client sees its
broker link drop, the broker publishes its last will) and new ones are refused until ``restore()``.

With ``delay`` (seconds) every chunk read from either side is held that long before it is sent on,
in order: one-way latency on the application data (TCP's own ACKs between the relay and each end are
not delayed). The multi-host test (``tools/netns.py``) runs it in a client's network namespace where
the kernel has no ``tc netem``: ``python -m koala_async.tools.linkproxy --listen 127.0.0.1:1883
--upstream 10.77.0.1:1883 --delay-ms 30``.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Self

from koala_async.io.broker import free_port

# Chunks in flight per direction before the reader waits (backpressure; a byte stream drops nothing).
DELAY_QUEUE_CHUNKS = 256


class LinkProxy:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1", *, upstream_host: str | None = None,
                 port: int | None = None, delay: float = 0.0, connect_timeout: float = 10.0) -> None:
        if delay < 0:
            raise ValueError("delay must be >= 0")
        self.host = host
        self.upstream_host = upstream_host or host
        self.upstream_port = upstream_port
        self.port = port or free_port(host)
        self.delay = delay
        self.connect_timeout = connect_timeout
        self.cut_active = False
        self.connections = 0
        self.upstream_failures = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self._drop_all()
        # Let the connection handlers see their links closed and end on their own, rather than be
        # cancelled at loop shutdown.
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=2.0)

    def cut(self) -> None:
        self.cut_active = True
        self._drop_all()

    def restore(self) -> None:
        self.cut_active = False

    def _drop_all(self) -> None:
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_active:
            writer.close()
            return
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        try:
            # Bounded: across a dead link the SYN retries would otherwise hold this for minutes.
            async with asyncio.timeout(self.connect_timeout):
                up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except (OSError, TimeoutError):
            self.upstream_failures += 1
            writer.close()  # the broker is unreachable: the client sees its link close, as it would directly
            return
        self.connections += 1
        self._writers.update((writer, up_writer))
        pipes = [asyncio.ensure_future(self._pipe(reader, up_writer)),
                 asyncio.ensure_future(self._pipe(up_reader, writer))]
        # Owned here: whichever direction ends first ends both, then both writers close.
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            for w in (writer, up_writer):
                w.close()
                self._writers.discard(w)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.delay > 0:
            try:
                await self._delayed_pipe(reader, writer)
            except* (ConnectionError, OSError):
                pass
            return
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass

    async def _delayed_pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read chunks as they come; send each ``delay`` seconds after it was read, in order."""
        loop = asyncio.get_running_loop()
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(DELAY_QUEUE_CHUNKS)

        async def send_when_due() -> None:
            while True:
                due, data = await held.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:  # end of stream, after everything read before it
                    return
                writer.write(data)
                await writer.drain()

        async with asyncio.TaskGroup() as tasks:
            sender = tasks.create_task(send_when_due())
            while data := await reader.read(65536):
                await held.put((loop.time() + self.delay, data))
            await held.put((loop.time() + self.delay, b""))
            await sender


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


async def _serve(args: argparse.Namespace) -> None:
    (host, port), (up_host, up_port) = args.listen, args.upstream
    async with LinkProxy(up_port, host, upstream_host=up_host, port=port, delay=args.delay_ms / 1000):
        print(f"linkproxy listening on {host}:{port} -> {up_host}:{up_port}, "
              f"delay {args.delay_ms:g} ms each way", flush=True)
        await asyncio.Event().wait()  # until the process is terminated


def main(argv: list[str] | None = None) -> int:
    """``python -m koala_async.tools.linkproxy --listen H:P --upstream H:P [--delay-ms MS]``."""
    parser = argparse.ArgumentParser(prog="python -m koala_async.tools.linkproxy", description=__doc__)
    parser.add_argument("--listen", type=_host_port, required=True, help="HOST:PORT to accept clients on")
    parser.add_argument("--upstream", type=_host_port, required=True, help="HOST:PORT to relay to")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay per direction")
    args = parser.parse_args(argv)
    if args.delay_ms < 0:
        parser.error("--delay-ms must be >= 0")
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
