"""A TCP proxy on 127.0.0.1 that adds a fixed one-way delay to every chunk the client sends, without limiting
bandwidth: each chunk is forwarded `delay_ms` after it arrived, in order, while later chunks keep arriving.

Loopback has no network latency, so a store benchmark on 127.0.0.1 measures only CPU cost per request. Put this
proxy between boto3 and the S3 server to see what concurrency buys when each request waits for a round trip, as it
does against a real S3 endpoint (tc/netem needs root and a kernel module this machine lacks). A request pays the
delay once (its bytes go client -> server); the response streams back undelayed.

    proxy = LatencyProxy("127.0.0.1", upstream_port, delay_ms=20); proxy.start(); ...; proxy.stop()
"""

from __future__ import annotations

import asyncio
import threading
import time

from tests.s3server import free_port


class LatencyProxy:
    def __init__(self, upstream_host: str, upstream_port: int, delay_ms: float) -> None:
        if delay_ms < 0:
            raise ValueError(f"delay_ms must be >= 0, got {delay_ms}")
        self.upstream = (upstream_host, upstream_port)
        self.delay = delay_ms / 1000.0
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def pump_in() -> None:
            while True:
                data = await reader.read(1 << 16)
                await queue.put((time.monotonic() + delay, data))
                if not data:
                    return

        async def pump_out() -> None:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        await asyncio.gather(pump_in(), pump_out())

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            u_reader, u_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            c_writer.close()
            return
        # each direction ends with a half-close (write_eof), so a request's EOF does not cut off its response;
        # both sockets close once both directions are done or one fails
        try:
            await asyncio.gather(self._pipe(c_reader, u_writer, self.delay), self._pipe(u_reader, c_writer, 0.0),
                                 return_exceptions=True)
        except asyncio.CancelledError:  # stop(): end quietly (asyncio's stream callback re-raises otherwise)
            pass
        finally:
            for w in (u_writer, c_writer):
                w.close()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self._shutdown())
        loop.close()

    async def _shutdown(self) -> None:
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    def start(self) -> LatencyProxy:
        self._thread = threading.Thread(target=self._run, name="latency-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise RuntimeError(f"latency proxy could not listen on 127.0.0.1:{self.port}: {self._error}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = self._thread = None
