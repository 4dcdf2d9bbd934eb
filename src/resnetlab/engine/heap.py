"""The CPU heap of a training run: memory one step frees is kept for the next, not handed back.

A training step allocates and frees the same tensors every time. glibc's malloc maps each block
above a threshold (at most 32 MiB) afresh and unmaps it when freed, and hands the top of its heap
back once enough of it is free; the next step's tensors then start on fresh pages, a page fault
and a zeroed page per 4 KiB (~0.85 us each on the 2-core Ice Lake Xeon). An fp32 channels_last
ResNet-50 step at batch 32 faulted 75,000-561,000 times there (its 51-102 MB activations are
above every threshold glibc allows), a ResNet-20 step at batch 128 up to 14,000 times.

`held_heap()` tells glibc to take every block from its heap (M_MMAP_MAX 0) and to keep what is
freed (M_TRIM_THRESHOLD at its largest): once the heap has grown to the step's needs, steps
hardly fault (ResNet-50: 2 faults a step, median). It costs peak
memory: freed blocks are reused only where they fit, so the heap grows past the live tensors
(peak RSS +3% for that ResNet-50 step, +5% for ResNet-20's; benchmarks/host_memory_ab.py,
benchmarks/results/xeon_icelake/host_memory_ab_*.json).

On leaving, glibc's default limits come back (the mmap threshold stays where glibc had moved it:
setting any limit stops its self-adjusting) and the free memory is handed back (malloc_trim), so a
process that goes on after a run (a notebook) does not keep its peak. Elsewhere than glibc
(macOS, Windows, musl) it does nothing. train.hold_heap false turns it off.

Held, the heap is also backed by huge pages (2 MiB on x86) once a step has grown it
(`huge_pages()`, which the training loop calls after each epoch's second step: an epoch of
progressive resizing grows it again). With 4 KiB pages a step's tensors span tens of thousands of
pages, more than the TLB holds; a bf16 channels_last step on the AMX Xeon, whose elementwise
passes wait on memory, ran 1.016x faster for ResNet-20 (21 of 30 rounds) and 1.046x for ResNet-50
(10 of 12) with them (benchmarks/host_memory_ab.py --pages, results/amx_xeon/huge_pages_ab_*.json).
Under transparent_hugepage "madvise" (Debian's default) the kernel would not use them there by
itself, so MADV_COLLAPSE (Linux 6.1 and later) moves each huge-page-sized region of the heap whose
pages are all resident onto one huge page: ~0.3-0.7 s for ResNet-20's ~300 MB, once, and well
under a millisecond for regions already moved. Only resident regions, so that it adds no memory:
a region with a hole (a page a previous run handed back) keeps its small pages. Nothing is advised
for later, so the memory a run hands back stays handed back. With transparent huge pages "never",
an older kernel, or elsewhere than Linux and glibc, nothing changes.
"""
from __future__ import annotations

import ctypes
import platform
import resource
import sys
from contextlib import contextmanager
from pathlib import Path

# mallopt parameters and glibc's defaults for them (malloc/malloc.c)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536
KEEP_ALL = 2**31 - 1  # mallopt takes an int: the largest trim threshold it can be told

_depth = 0  # nested held_heap() blocks: only the outermost restores the defaults
# whether the heap is held (hold_heap() took, release_heap() not since): huge_pages() acts only
# then (an inner held_heap(False) changes nothing while an outer block holds the heap)
_held = False
MADV_COLLAPSE = 25  # <linux/mman.h>: its number on these machines (others, such as MIPS, number it otherwise)
COLLAPSE_MACHINES = {"x86_64", "aarch64"}
THP = Path("/sys/kernel/mm/transparent_hugepage")
LOWEST_BIT = bytes(b & 1 for b in range(256))


def glibc():
    """The process's C library if it is glibc (the only one whose mallopt takes these settings), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def hold_heap() -> bool:
    """Keep freed memory in the heap for reuse from now on, for the rest of the process (a
    benchmark's worker); True if the C library took both settings."""
    global _held
    libc = glibc()
    held = libc is not None and bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_ALL))
    _held = _held or held
    return held


def release_heap() -> None:
    """glibc's default limits again, and the free memory handed back to the system."""
    global _held
    _held = False
    libc = glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(ctypes.c_size_t(0))


@contextmanager
def held_heap(enabled: bool = True):
    """Freed memory kept for reuse inside the block (where `enabled` and the C library is glibc);
    yields whether it is."""
    global _depth
    if not enabled:
        yield False
        return
    held = hold_heap()
    _depth += 1
    try:
        yield held
    finally:
        _depth -= 1
        if held and _depth == 0:
            release_heap()


def heap_mappings(maps: str = "/proc/self/maps") -> list[tuple[int, int]]:
    """(start, end) of the mappings glibc's main heap lies in (its brk area: one per growth the
    kernel could not merge)."""
    try:
        with open(maps) as lines:
            return [tuple(int(v, 16) for v in line.split()[0].split("-"))
                    for line in lines if line.rstrip().endswith("[heap]")]
    except OSError:
        return []


def huge_page_size(thp: Path = THP) -> int | None:
    """The kernel's transparent huge page size in bytes; None where they are off ("never"), the
    kernel has none, or MADV_COLLAPSE has another number (COLLAPSE_MACHINES)."""
    if platform.machine() not in COLLAPSE_MACHINES:
        return None
    try:
        mode, size = (thp / "enabled").read_text(), int((thp / "hpage_pmd_size").read_text())
    except (OSError, ValueError):
        return None
    return None if "[never]" in mode else size


def resident_regions(libc, start: int, end: int, size: int) -> list[int]:
    """The starts of the `size`-aligned regions inside [start, end) whose pages are all resident
    (mincore)."""
    page = resource.getpagesize()
    first, last = -(-start // size) * size, end // size * size
    if last <= first:
        return []
    residency = (ctypes.c_ubyte * ((last - first) // page))()
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    if libc.mincore(first, last - first, residency) != 0:
        return []
    resident, per_region = bytes(residency).translate(LOWEST_BIT), size // page  # bit 0: resident
    return [first + i * size for i in range((last - first) // size)
            if 0 not in resident[i * per_region:(i + 1) * per_region]]


def huge_pages(libc=None, maps: str = "/proc/self/maps", size: int | None = None) -> int:
    """Inside a held heap, back each of its huge-page-sized regions whose pages are all resident
    with one huge page (MADV_COLLAPSE); -> the bytes the kernel moved or found moved (0 outside a
    held heap, or where the kernel refuses: nothing else changes then). `libc` given (a test's
    stand-in) skips the held-heap check."""
    libc = libc or (glibc() if _held else None)
    size = size or huge_page_size()
    if libc is None or size is None:
        return 0
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return sum(size for start, end in heap_mappings(maps) for region in resident_regions(libc, start, end, size)
               if libc.madvise(region, size, MADV_COLLAPSE) == 0)
