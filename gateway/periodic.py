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
            raise_if_cancelling()
            log.exception("%s failed", what)
        await asyncio.sleep(every_s)


def raise_if_cancelling() -> None:
    """Raises CancelledError when this task has a cancel pending: for a loop that catches errors
    and goes on, after its step failed. A Redis client can turn the cancel it got while waiting on
    a reply into an error of its own; logged and looped on, the loop never ended, and neither did a
    shutdown waiting on it (the job runner's, session 7; repeat's, session 8)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError() from None
