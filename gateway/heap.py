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
glibc keeps the pages of freed memory inside its heaps (one per thread that allocated: the image
writes and upload checks run on threads), and a heap gives back only what is free at its top.
malloc_trim(0) returns every whole free page of every heap. It runs on a thread (ctypes lets go of
the GIL); the event loop waits only if it allocates from the heap being trimmed at that moment (a
trim measured 3 ms, the first of 500 MiB freed in pieces 39 ms). A no-op where the C library is not
glibc.

The two work together: between trims (a minute by default) the freed memory of large answers is
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
MMAP_THRESHOLD = 32 * 1024 * 1024


def keep_freed_memory(keep_bytes: int) -> bool:
    """Whether glibc took the settings (False: another C library, or keep_bytes 0: left as it was)."""
    if keep_bytes <= 0 or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)  # the process's own C library
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, keep_bytes))


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
