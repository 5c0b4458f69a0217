"""gateway/heap.py: with freed memory kept, a second round of the same large buffers reuses the
pages of the first instead of faulting fresh ones in (measured in a fresh process each); the
trimmer gives freed pages in the middle of glibc's heap back to the system: the kind of memory a
gateway process kept in its RSS and never used again; and with one arena, what a thread freed
is handed back by the trim too (with an arena of its own, kept free at its top, it stayed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gateway.heap import HeapTrimmer

ROUNDS = """
import resource, sys
from gateway.heap import keep_freed_memory
print(keep_freed_memory(int(sys.argv[1])))
def round_():
    held = [bytearray(1024 * 1024) for _ in range(24)]  # 24 MiB live, then all of it freed
    del held
round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
round_()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _second_round_faults(keep_bytes: int) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", ROUNDS, str(keep_bytes)], capture_output=True, text=True, check=True)
    took, faults = out.stdout.split()
    return took == "True", int(faults)


def test_a_second_round_of_large_buffers_reuses_the_first_rounds_pages() -> None:
    took, kept = _second_round_faults(64 * 1024 * 1024)
    left, default = _second_round_faults(0)
    assert took and not left
    pages = 24 * 1024 * 1024 // 4096
    assert default > pages // 2  # glibc's defaults gave the 24 MiB back and faulted it in again
    assert kept < pages // 10


def test_zero_leaves_glibc_as_it_was() -> None:
    assert _second_round_faults(0)[0] is False


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


THREAD_BURST = """
import ctypes, sys, threading
from pathlib import Path
from gateway.heap import keep_freed_memory
print(keep_freed_memory(64 * 1024 * 1024, int(sys.argv[1])))
def rss_kib():
    return int(next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS:")).split()[1])
def burst():  # an upload checked or an image written on a thread: 30 MiB in 64 KiB blocks, then freed
    held = [bytearray(64 * 1024) for _ in range(480)]
    del held
thread = threading.Thread(target=burst)
thread.start()
thread.join()  # a pool's thread lives on; its arena outlives it either way
before = rss_kib()
ctypes.CDLL(None).malloc_trim(0)  # what HeapTrimmer does every GATEWAY_HEAP_TRIM_S
print(before - rss_kib())
"""


def _released_after_a_threads_burst(arena_max: int) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", THREAD_BURST, str(arena_max)], capture_output=True, text=True, check=True
    )
    took, released = out.stdout.split()
    return took == "True", int(released)


def test_one_arena_lets_the_trim_hand_back_what_a_thread_freed() -> None:
    took, released = _released_after_a_threads_burst(1)
    assert took
    assert released > 30 * 1024 * 3 // 4, f"only {released} KiB of 30 MiB given back"


def test_a_threads_own_arena_keeps_its_freed_top_past_the_trim() -> None:
    # Why one arena: glibc trims a thread arena's top only when more than the kept bytes are free
    # there, and malloc_trim(0) does not trim it; so each thread's high-water mark stayed in RSS.
    took, released = _released_after_a_threads_burst(0)
    assert took
    assert released < 30 * 1024 // 4
