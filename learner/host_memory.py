"""Freed host memory stays in a CPU learner rank's process, for the next micro-batch.

glibc's malloc serves a block above its mmap threshold (128 KiB, rising with use to at most
32 MiB) with a fresh mapping and unmaps it when it is freed, and hands the top of its heap
back to the kernel once more than its trim threshold is free there. A training step
allocates and frees the same activations and optimizer temporaries every time, so each
step faulted the same pages in again: 8,500 minor faults a step on the tiny model and
630,000 on the ~100M one. Raising both thresholds keeps those pages for the next use:
in two plain-torch processes taking turns on the same batches, default malloc against
raised thresholds (mmap at 64 MiB, above every block plain torch frees), a step took 1.03x
as long without them on the tiny model and 1.12-1.18x on the ~100M one. In duet's full
~100M step (``benchmarks.floor``) the learner went from 31.5 s to 29.4 s against the plain
process's 28.3 and 28.8 s.

The cost is memory: the heap holds what it once held, and big long-lived buffers share it
with short-lived ones, so the peak grows by what cannot be reused in between: +2-4% in one
process on ~100M, +0.5-0.7 GiB a rank (a fifth) for two ~97M ranks on gloo
(``benchmarks.learner``). ``learner.keep_freed_memory=false`` turns it off.
"""

from __future__ import annotations

import ctypes
import resource

MMAP_THRESHOLD = 1 << 30
"""Blocks below 1 GiB come from the heap, whose freed memory is reused: a ZeRO optimizer
steps over flat buffers of all the rank's parameters, whose temporaries are hundreds of MB
on a ~100M model (with 64 MiB here, a ~97M rank's step took 9.1-10.2 s against 7.7-7.9 s
with 1 GiB, ``benchmarks.learner``)."""
TRIM_THRESHOLD = (1 << 31) - 1
"""The heap's top goes back to the kernel only past 2 GiB free (mallopt takes an int)."""
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>


def keep_freed_memory() -> bool:
    """Raise this process's malloc thresholds. False where the C library has no such
    setting (not glibc) or refuses it: the process then runs as before."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # musl has mallopt too, as a stub returning 0.
    return (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)


def refaults(size: int = 32 << 20) -> int:
    """Minor page faults of touching a ``size``-byte block again after freeing it: its
    page count when freed memory goes back to the kernel, none when it is kept. (32 MiB:
    above what glibc's own threshold ever rises to, below ``MMAP_THRESHOLD``.)"""
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)

    def touched() -> int:
        block = libc.malloc(size)
        if not block:
            raise MemoryError(f"malloc({size}) failed")
        ctypes.memset(block, 1, size)
        return block

    libc.free(touched())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = touched()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    libc.free(block)
    return faults
