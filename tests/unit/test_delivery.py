from __future__ import annotations

from gateway.service import Delivery


async def test_a_delivery_settles_once_with_the_first_verdict() -> None:
    seen: list[bool] = []

    async def settle(delivered: bool) -> None:
        seen.append(delivered)

    d = Delivery(settle)
    await d(True)
    await d(False)  # e.g. the hot path's safety net after the answer was sent and settled
    assert seen == [True] and d.done
