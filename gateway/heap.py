"""glibc's heap in a gateway process: what an answer frees is kept for the next one, and what stays
free is handed back to the system now and then.

Kept (keep_freed_memory). An image answer allocates and frees buffers of megabytes: the upstream's
body, a data URI's text, the decoded image, pieces of base64, an upload. glibc serves a block past
its mmap threshold (128 KiB at start, raised to the largest such block freed) with an mmap of its
own, and trims the heap's top once more than twice that is free there: either way the pages went
back to the kernel, and the next request faulted fresh ones in, zeroed, a page at a time. On the
benchmark's VM a fresh page costs about 4.5 us (2.3 ms for 2 MiB, against 0.03 ms rewriting pages
already held), and a fal b64_json answer of a 2 MiB image faulted ~2,500 pages: half the gateway's
CPU for it (14.3 ms a request, 6.7 ms with freed memory kept; bench.perf bytes).

Set once in each worker process before the app is built: blocks up to MMAP_THRESHOLD come from the
heap (a larger one, a 40 MP decode, is still mapped and unmapped alone), and the heap keeps up to
`keep_bytes` free at its top. What it keeps is a high-water mark, not a leak: the next answers
reuse it.

Handed back (HeapTrimmer). A gateway process under steady load does not grow in Python objects
(tracemalloc and gc counts stay flat over a soak), but its RSS crept up about 0.5 MiB a minute:
glibc keeps the pages of freed memory inside its heap, and gives back only what is free at its
top. malloc_trim(0) returns every whole free page in the main arena, its top included. It runs on
a thread (ctypes lets go of the GIL); the event loop waits only if it allocates from the heap at
that moment (a trim measured 3 ms, the first of 500 MiB freed in pieces 39 ms). A no-op where the
C library is not glibc.

One arena (limit_arenas). By default glibc gives threads arenas of their own (up to 8 per core):
the image writes, upload checks and decodes, the image sweep and the trim itself run on threads.
A thread's arena trims its top only when more than keep_bytes is free there, which its 64 MiB
heaps never reach, and malloc_trim(0) gives back the free pages inside it but not its top: so each
thread's high-water mark stayed in RSS for good (30 MiB freed on a thread: all of it still
resident after the trim; tests/unit/test_heap.py). With one arena the threads allocate from the
main one, whose top the trim does hand back; they take its lock, uncontended nearly always, since
they hold the GIL to allocate Python objects. `gateway serve` sets MALLOC_ARENA_MAX for its worker
processes too, so uvicorn's thread in each, which allocates before the app is built, takes no arena.

The three work together: between trims (a minute by default) the freed memory of large answers is
reused; the trim returns what stayed free, so a burst's high-water mark does not stay in RSS.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import platform
from collections.abc import Callable

# mallopt's parameters (malloc.h); 32 MiB is the most glibc's own dynamic threshold would reach.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 32 * 1024 * 1024


def keep_freed_memory(keep_bytes: int, arena_max: int = 0) -> bool:
    """Whether glibc took the settings (False: another C library, or keep_bytes 0: left as it was).
    arena_max > 0: see limit_arenas."""
    libc = _glibc() if keep_bytes > 0 else None
    if libc is None:
        return False
    arenas = arenas_to_limit(keep_bytes, arena_max)
    if arenas and not limit_arenas(arenas):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, keep_bytes))


def arenas_to_limit(keep_bytes: int, arena_max: int) -> int:
    """The arenas a process is held to: arena_max while freed memory is kept (keep_bytes > 0), else
    0, glibc's default (only a thread arena's kept top is out of the trim's reach)."""
    return arena_max if keep_bytes > 0 and arena_max > 0 else 0


def limit_arenas(arena_max: int) -> bool:
    """At most arena_max glibc arenas in this process (1: every thread allocates from the main
    one). It binds threads that allocate for the first time after it: call it before any other
    thread has (an arena made before stays, and is shared with later threads)."""
    libc = _glibc() if arena_max > 0 else None
    if libc is None:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, arena_max))


def _glibc() -> ctypes.CDLL | None:
    """The process's own C library when it is glibc (whose mallopt parameters these are)."""
    return ctypes.CDLL(None) if platform.libc_ver()[0] == "glibc" else None


def _glibc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


class HeapTrimmer:
    def __init__(self) -> None:
        self._trim = _glibc_trim()

    @property
    def available(self) -> bool:
        return self._trim is not None

    async def trim(self) -> bool:
        """Give the heap's free pages back; True when glibc released any."""
        if self._trim is None:
            return False
        return bool(await asyncio.to_thread(self._trim, 0))
