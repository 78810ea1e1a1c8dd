"""Keep freed activation memory in the process instead of returning it to the OS (glibc only).

Why: glibc serves allocations above its mmap threshold (dynamic, at most 32 MiB) with fresh
``mmap`` pages and unmaps them on free, and trims the heap top past its trim threshold. A forward
pass allocates and frees megabyte-sized activations hundreds of times (a MiniLM MLP slice is
1,024 x 1,536 floats, 6 MiB), so each one page-faults its pages in again and the kernel zeroes
them: up to 920,000 minor faults per 256-pair pass of a MiniLM cross-encoder. With none, it ran
1.19-1.23x faster with oneDNN linear layers and 1.00-1.11x with MKL's (``bench/malloc.py``,
logits identical). Raising both thresholds makes freed blocks reusable, the usual fix (PyTorch's
CPU tuning guide suggests jemalloc/tcmalloc for the same reason); the price is that the process
keeps its peak heap (resident memory does not shrink between bursts), which a long-running server
holds anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import time

log = logging.getLogger("rankserve")

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks up to 32 MiB come from the reusable heap
TRIM_THRESHOLD = 1 << 30  # return the heap top to the OS only past 1 GiB free

_done = False
# Give freed heap memory back at most this often (seconds of wall time), from the model thread.
TRIM_INTERVAL = 10.0


def glibc() -> ctypes.CDLL | None:
    """The C library if it is glibc (mallopt and malloc_trim are glibc's; musl's mallopt is a no-op)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _ = libc.gnu_get_libc_version  # only glibc has it
    except (OSError, AttributeError):
        return None
    return libc


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; False where that is not glibc."""
    global _done
    if _done:
        return True
    libc = glibc()
    if libc is None:
        return False
    try:
        ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    except (OSError, AttributeError):
        return False
    if ok:
        _done = True
        log.debug(
            "glibc malloc: mmap threshold %d MiB, trim threshold %d MiB", MMAP_THRESHOLD >> 20, TRIM_THRESHOLD >> 20
        )
    return ok


class PeriodicTrim:
    """``malloc_trim(0)`` at most every ``interval`` seconds: bounds the process's resident memory.

    Why: with the thresholds above, freed memory stays in the process for reuse. Under varied
    traffic every batch has a new shape (rows x padded length), and oneDNN's linear layers allocate
    per shape from the model thread and its OpenMP workers' malloc arenas; the freed blocks were
    not reused well enough, and a 64-client soak grew the server from 499 to 1,000 MB in 60 s
    (bench/soak.py; a standalone loop over 1,200 shapes twice: 233 MB -> 5.1 GB, 0.68 GB after one
    trim). A trim costs 30-45 ms here, so once per 10 s is under 0.5 % of the model thread's time,
    and the memory it returns is faulted in again only once per interval.
    """

    def __init__(self, interval: float = TRIM_INTERVAL):
        self.interval = interval
        self.last = time.monotonic()
        libc = glibc()
        self._trim = None if libc is None else libc.malloc_trim

    def __call__(self) -> bool:
        """Trim if the interval has passed; True when it trimmed."""
        now = time.monotonic()
        if self._trim is None or now - self.last < self.interval:
            return False
        self.last = now
        self._trim(0)
        return True
