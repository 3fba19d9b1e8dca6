"""The lean stream clients' common parts: an ``asyncio.Protocol`` base for one long HTTP
response, and opening many connections at once. Lean because the benchmark's clients share
the machine with the server: the ``websockets`` or ``httpx`` clients' Python per message
would weigh on the figures."""

import asyncio


class StreamClient(asyncio.Protocol):
    """A lean HTTP/1.1 client of one long response (a WebSocket, an event stream): sends
    ``request`` once connected, reads the response head once (``head(status)``; a false
    answer closes the connection), then hands what follows to ``body(buffer)``, which
    deletes from the buffer what it consumed. ``opened`` fails if the connection ends
    before a subclass resolved it."""

    def __init__(self, request: bytes, opened: asyncio.Future) -> None:
        self.request, self.opened = request, opened
        self.buffer = bytearray()
        self.headed = False

    def head(self, status: int) -> bool:
        raise NotImplementedError

    def body(self, buffer: bytearray) -> None:
        raise NotImplementedError

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed before the stream opened"))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.headed:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = int(buffer[9:12])
            del buffer[: end + 4]
            self.headed = True
            if not self.head(status):
                self.transport.close()
                return
        self.body(buffer)


async def open_many(count: int, opener, *, retry_on: tuple[type[BaseException], ...]):
    """``count`` connections from ``opener()``, at most 64 opening at once, each tried five
    times (backing off) on ``retry_on``: the open ones and how many failed."""
    gate = asyncio.Semaphore(64)

    async def open_one():
        async with gate:
            for attempt in range(5):
                try:
                    return await opener()
                except retry_on:
                    await asyncio.sleep(0.2 * (attempt + 1))
            return None

    opened = await asyncio.gather(*(open_one() for _ in range(count)))
    return [c for c in opened if c is not None], sum(c is None for c in opened)
