"""One background loop for the gateway's periodic work (route probes, billing gauges, the image
sweeper): run a step, log a failure without ever ending the loop, wait, again.

Every loop that runs for the life of the app ends when its task is cancelled, even when the cancel
never reached it as an exception: on Python 3.11, asyncio.wait_for returns its result instead of
raising when the cancel comes as the awaited call finishes, and redis-py sends each command through
it. A loop that then went on waited for ever, and so did the app's shutdown (asyncio.run cancels
what is left, once, and waits for it): a test gateway hung so in CI (session 11), its key
revocation feed still listening. So each round ends with raise_if_cancelling, whatever the step
did."""

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
        raise_if_cancelling()  # a cancel the step swallowed (see above) still ends the loop
        await asyncio.sleep(every_s)


def start_repeating(step: Callable[[], Awaitable[object]], every_s: float, what: str) -> asyncio.Task[None]:
    """repeat() as a task of the running loop, named `what` (shutdown names a task that would not stop)."""
    return asyncio.create_task(repeat(step, every_s, what), name=what)


def raise_if_cancelling() -> None:
    """Raises CancelledError when this task has a cancel pending: for a loop that catches errors
    and goes on, after each round. A Redis client can turn the cancel it got while waiting on a
    reply into an error of its own (the job runner's, session 7; repeat's, session 8), or lose it
    (wait_for on 3.11, above); logged and looped on, the loop never ended, and neither did a
    shutdown waiting on it. task.cancelling() still counts a cancel that was lost so."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError() from None
