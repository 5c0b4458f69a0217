"""The heap trimmer gives freed pages in the middle of glibc's heap back to the system: the kind of
memory a gateway process kept in its RSS and never used again."""

from __future__ import annotations

from pathlib import Path

from gateway.heap import HeapTrimmer

CHUNK = 64 * 1024  # under glibc's mmap threshold (128 KiB): taken from the heap, not mmap
CHUNKS = 1024  # 64 MiB


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


async def test_trim_returns_the_free_pages_held_below_a_live_allocation() -> None:
    trimmer = HeapTrimmer()
    assert trimmer.available  # Debian's glibc, as in the image; elsewhere the gateway runs no trim task
    await trimmer.trim()  # start from a trimmed heap
    chunks = [b"x" * CHUNK for _ in range(CHUNKS)]  # written: every page resident
    pinned = b"y" * CHUNK  # allocated last, above them: free() alone can give back only the heap's top
    del chunks
    held = _rss_kib()
    assert await trimmer.trim() is True
    released = held - _rss_kib()
    assert released > CHUNK * CHUNKS // 1024 // 2, f"only {released} KiB of {CHUNK * CHUNKS // 1024} given back"
    assert len(pinned) == CHUNK
