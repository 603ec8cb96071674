"""A TCP relay on loopback that passes bytes upstream -> client at a fixed rate, so a blob fill
lasts long enough to be watched (the status page's moving bar). Requests go through unthrottled.

    with Throttle("127.0.0.1:5000", bytes_per_sec=16 << 20) as relay:
        relay.url  # http://127.0.0.1:PORT, to use as a mirror's remoteurl
"""

from __future__ import annotations

import asyncio
import threading
import time

CHUNK = 64 * 1024


class Throttle:
    def __init__(self, target_host: str, bytes_per_sec: int):
        self.target_host, _, port = target_host.rpartition(":")
        self.target_port = int(port)
        self.bytes_per_sec = bytes_per_sec
        self.port = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc):
        async def stop():
            self._server.close()
        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        return False

    async def _start(self):
        return await asyncio.start_server(self._relay, "127.0.0.1", 0)

    async def _relay(self, client_reader, client_writer):
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(self.target_host, self.target_port), 10)
        except (OSError, asyncio.TimeoutError):
            client_writer.close()
            return
        await asyncio.gather(self._pipe(client_reader, up_writer, None),
                             self._pipe(up_reader, client_writer, self.bytes_per_sec),
                             return_exceptions=True)

    @staticmethod
    async def _pipe(reader, writer, rate):
        started, sent = time.monotonic(), 0
        try:
            while data := await reader.read(CHUNK):
                writer.write(data)
                await writer.drain()
                sent += len(data)
                if rate:
                    # Ahead of the rate: hold the next read until the rate catches up.
                    ahead = sent / rate - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        finally:
            writer.close()
