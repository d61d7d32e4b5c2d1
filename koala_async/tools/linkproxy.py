"""A per-client TCP relay between a client and the broker that the runner can cut and restore: the
real way to take one client off the network while its process keeps running.

While cut, open connections are closed (the client sees its broker link drop, the broker publishes its
last will) and new ones are refused until ``restore()``.
"""

from __future__ import annotations

import asyncio

from koala_async.io.broker import free_port


class LinkProxy:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.upstream_port = upstream_port
        self.port = free_port(host)
        self.cut_active = False
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def __aenter__(self) -> LinkProxy:
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
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream_port)
        except OSError:
            writer.close()  # the broker is down: the client sees a refused link, as it would directly
            return
        self.connections += 1
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        self._writers.update((writer, up_writer))
        pipes = [asyncio.ensure_future(self._pipe(reader, up_writer)),
                 asyncio.ensure_future(self._pipe(up_reader, writer))]
        # Owned here: whichever direction ends first ends both, then both writers close.
        _, pending = await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for w in (writer, up_writer):
            w.close()
            self._writers.discard(w)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
