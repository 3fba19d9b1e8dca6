"""The channel layer: channels-redis's, with a receive that ends when it is cancelled.

A consumer's receive is cancelled when its socket closes (Channels cancels it once the
consumer stops). On Python 3.11, ``asyncio.wait_for`` drops a cancellation that arrives
just as the awaited operation completes (fixed in 3.12), and redis-py sends every
command through it; channels-redis's receive then goes on to its next ``BZPOPMIN``, every
5 s, for ever. Its consumer never finishes, and uvicorn's shutdown waited for it without
end. Here the layer's receive runs as a task of its own, and a cancelled caller cancels
that task again until it has ended (each miss needs that exact moment, so a second
cancellation ends it).
"""

import asyncio

from channels_redis.core import RedisChannelLayer

RECANCEL_SECONDS = 0.1


async def _cancel_until_done(task: asyncio.Task) -> None:
    while not task.done():
        task.cancel()
        try:
            await asyncio.wait([task], timeout=RECANCEL_SECONDS)
        except asyncio.CancelledError:
            # Cancelled again (the loop shutting down): the task must still end first.
            continue
    if not task.cancelled():
        # Its message or error has no taker any more (as when a receive is cancelled).
        task.exception()


class ChannelLayer(RedisChannelLayer):
    async def receive(self, channel: str) -> dict:
        receiving = asyncio.ensure_future(super().receive(channel))
        try:
            await asyncio.wait([receiving])
        except asyncio.CancelledError:
            await _cancel_until_done(receiving)
            raise
        return receiving.result()
