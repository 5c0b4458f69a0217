"""glibc's malloc told to keep the memory an answer frees for the next one, instead of handing it
back to the kernel at once.

An image answer allocates and frees buffers of megabytes: the upstream's body, a data URI's text,
the decoded image, pieces of base64, an upload. glibc serves a block past its mmap threshold (128
KiB at start, raised to the largest such block freed) with an mmap of its own, and trims the
heap's top once more than twice that is free there: either way the pages went back to the kernel,
and the next request faulted fresh ones in, zeroed, a page at a time. On the benchmark's VM a fresh
page costs about 4.5 us (2.3 ms for 2 MiB, against 0.03 ms rewriting pages already held), and a
fal b64_json answer of a 2 MiB image faulted ~2,500 pages: half the gateway's CPU for it (14.3 ms
a request, 6.7 ms with freed memory kept; bench.perf bytes).

Set once in each worker process before the app is built: blocks up to MMAP_THRESHOLD come from
the heap (a larger one, a 40 MP decode, is still mapped and unmapped alone), and the heap keeps up
to `keep_bytes` free at its top. What it keeps is a high-water mark, not a leak: the next answers
reuse it.
"""

from __future__ import annotations

import ctypes
import platform

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
