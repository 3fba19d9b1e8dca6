"""The channel layer: channels-redis's, with a receive that ends when it is cancelled.

A consumer's receive is cancelled when its socket closes (Channels cancels it once the
consumer stops). channels-redis's receive can miss that cancellation while it waits in
``BZPOPMIN`` for the process's shared channel (seen with redis-py 8 on Python 3.11:
the task stays "cancelling" and goes on to the next ``BZPOPMIN``, every 5 s, for
ever). The consumer then never finishes, and uvicorn's shutdown waits for it without
end. Here the layer's receive runs as a task of its own that the caller waits for
without owning it: a cancelled caller returns at once, and the receive it leaves is
cancelled too (and, should that be missed again, only keeps pumping the process's
shared channel for the other consumers, as it would anyway).
"""

import asyncio
import contextlib

from channels_redis.core import RedisChannelLayer


def _retrieve(task: asyncio.Task) -> None:
    # An abandoned receive's outcome is nobody's: never "exception was never retrieved".
    if not task.cancelled():
        with contextlib.suppress(BaseException):
            task.exception()


class ChannelLayer(RedisChannelLayer):
    async def receive(self, channel: str) -> dict:
        receiving = asyncio.ensure_future(super().receive(channel))
        try:
            await asyncio.wait([receiving])
        except asyncio.CancelledError:
            receiving.cancel()
            receiving.add_done_callback(_retrieve)
            raise
        return receiving.result()
