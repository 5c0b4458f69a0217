"""One background loop for the gateway's periodic work (route probes, billing gauges, the image
sweeper): run a step, log a failure without ever ending the loop, wait, again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def repeat(step: Callable[[], Awaitable[object]], every_s: float, what: str) -> None:
    """Runs `step` every `every_s` seconds until cancelled; `what` names it in the log."""
    while True:
        try:
            await step()
        except Exception:  # one bad round (a bad record, a probe that raised) must not stop the loop
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # The loop was cancelled and the step turned that into an error of its own (a Redis
                # client can, while it waits on a reply): ending here is what the cancel asked for.
                # Logged and looped on, the loop never ended, and neither did a shutdown waiting on it.
                raise asyncio.CancelledError() from None
            log.exception("%s failed", what)
        await asyncio.sleep(every_s)
