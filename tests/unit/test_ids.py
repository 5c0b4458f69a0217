from __future__ import annotations

import re

from gateway.ids import RandomIds


def test_ids_are_unique_across_refills_and_have_the_asked_length() -> None:
    ids = RandomIds(block=64)  # a refill every 4 ids of 16 bytes
    made = [ids.hex(16) for _ in range(1000)]
    assert len(set(made)) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in made)
    names = [ids.urlsafe(18) for _ in range(100)]
    assert len(set(names)) == 100 and all(re.fullmatch(r"[A-Za-z0-9_-]{24}", n) for n in names)
    assert len(ids.bytes(100)) == 100  # more than a block at once
