"""engine/heap.py: inside held_heap a freed block is reused without page faults; after it glibc maps
large blocks afresh again; a CPU training run holds the heap unless train.hold_heap is false."""
import ctypes
import os
import resource
import subprocess
import sys
from contextlib import contextmanager

import pytest
import torch

from resnetlab.engine import heap, train_and_evaluate
from tests.test_engine_train import tiny_config

# The glibc checks read the process's heap, which earlier tests of a suite leave in any state: they
# run in a fresh process of their own (test_the_glibc_checks_pass_in_a_fresh_process).
FRESH = os.environ.get("RESNETLAB_FRESH_HEAP") == "1"
needs_glibc = pytest.mark.skipif(heap.glibc() is None or not FRESH, reason="glibc only, in a fresh process")
BLOCK = 64 * 2**20  # above the 32 MiB cap of glibc's mmap threshold: mapped afresh by default
PAGES = BLOCK // 4096


def faults_of_a_fresh_block() -> int:
    """Page faults while a tensor of 3/4 BLOCK is allocated and written right after a BLOCK-sized one
    was allocated, written and freed: by default it is mapped afresh; a held heap has the freed
    block's memory for it (it fits there wherever glibc put that block)."""
    torch.empty(BLOCK // 4).fill_(1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(3 * BLOCK // 16).fill_(2.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def blocks_mapped_for_a_block(size: int = BLOCK) -> int:
    """How many more blocks glibc has mapped on their own (mallinfo2().hblks) while a tensor of `size`
    bytes lives (never written: no pages are touched)."""
    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                         "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = heap.glibc()
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("mallinfo2 needs glibc 2.33")
    libc.mallinfo2.restype = MallInfo2
    before = libc.mallinfo2().hblks
    block = torch.empty(size // 4)
    mapped = libc.mallinfo2().hblks - before
    del block  # alive until glibc has counted
    return mapped


# After the held heap, glibc's defaults are back, but a large request may still be served from a
# free chunk the held heap left in the middle of the heap (resident, no faults): which one depends
# on where earlier allocations fell, so "mapped afresh" is checked on a block larger than all these
# tests ever hold together (a first version counted faults of a 48 MiB block and failed now and then).
LARGER_THAN_THE_HEAP = 16 * BLOCK


@needs_glibc
def test_a_freed_block_is_reused_without_page_faults_inside_and_mapped_afresh_after():
    with heap.held_heap() as held:
        assert held
        assert faults_of_a_fresh_block() < PAGES // 20
        assert blocks_mapped_for_a_block() == 0
    assert blocks_mapped_for_a_block(LARGER_THAN_THE_HEAP) == 1  # glibc's defaults again: mapped on its own


@needs_glibc
def test_only_the_outermost_block_restores_the_defaults():
    with heap.held_heap():
        with heap.held_heap() as inner:
            assert inner
        assert faults_of_a_fresh_block() < PAGES // 20
    assert blocks_mapped_for_a_block(LARGER_THAN_THE_HEAP) == 1


def test_only_the_outermost_block_hands_the_heap_back(monkeypatch):
    released = []
    monkeypatch.setattr(heap, "hold_heap", lambda: True)
    monkeypatch.setattr(heap, "release_heap", lambda: released.append(heap._depth))
    with heap.held_heap():
        with heap.held_heap() as inner:
            assert inner
        assert released == []
    assert released == [0]


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


@needs_glibc
def test_freed_memory_stays_resident_inside_and_is_handed_back_after():
    libc = heap.glibc()
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    with heap.held_heap():
        libc.malloc_trim(ctypes.c_size_t(0))  # free memory an earlier test left resident: not counted below
        start = resident_bytes()
        block = libc.malloc(BLOCK)  # straight from C: nothing allocated after it, so it ends the heap
        ctypes.memset(block, 1, BLOCK)
        libc.free(block)
        assert resident_bytes() - start > BLOCK // 2  # freed, and kept
    assert resident_bytes() - start < BLOCK // 4  # malloc_trim gave it back


def test_switched_off_or_without_glibc_it_changes_nothing(monkeypatch):
    with heap.held_heap(False) as held:
        assert held is False
    monkeypatch.setattr(heap, "glibc", lambda: None)
    assert heap.hold_heap() is False
    with heap.held_heap() as held:
        assert held is False
    heap.release_heap()  # nothing to call: no error


def test_glibc_is_none_off_linux(monkeypatch):
    monkeypatch.setattr(heap.sys, "platform", "darwin")
    assert heap.glibc() is None


@pytest.mark.parametrize("hold", [True, False])
def test_a_cpu_training_run_holds_the_heap_unless_switched_off(tmp_path, monkeypatch, hold):
    asked = []

    @contextmanager
    def recorded(enabled=True):
        asked.append(enabled)
        yield enabled
    monkeypatch.setattr("resnetlab.engine.train.held_heap", recorded)
    train_and_evaluate(tiny_config(("schedule.max_steps", 2), ("train.hold_heap", hold)), tmp_path)
    assert asked == [hold]


@pytest.mark.skipif(heap.glibc() is None or FRESH, reason="glibc only; this is the fresh process's parent")
def test_the_glibc_checks_pass_in_a_fresh_process():
    env = {**os.environ, "RESNETLAB_FRESH_HEAP": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", __file__,
                           "-k", "not fresh_process"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "skipped" not in done.stdout, done.stdout[-2000:]


class FakeCall:
    """A C function's stand-in: records its calls; `result(*args)` says what it returns."""

    def __init__(self, result):
        self.calls, self.result = [], result

    def __call__(self, *args):
        self.calls.append(args)
        return self.result(*args)


class FakeLibc:
    """mincore says every page resident but those in `holes`; MADV_COLLAPSE refused at `refuse`."""

    def __init__(self, holes=(), refuse=()):
        self.madvise = FakeCall(lambda start, length, advice: -1 if start in refuse else 0)
        self.mincore = FakeCall(self.residency)
        self.mallopt, self.malloc_trim = FakeCall(lambda *args: 1), FakeCall(lambda *args: 1)  # as glibc: taken
        self.holes = holes

    def residency(self, start, length, vec):
        for i in range(length // resource.getpagesize()):
            vec[i] = 0 if start + i * resource.getpagesize() in self.holes else 1
        return 0

    def collapsed(self):
        assert all(advice == heap.MADV_COLLAPSE and length == 2 * MIB for _, length, advice in self.madvise.calls)
        return [start for start, _, _ in self.madvise.calls]


MIB = 2**20


def test_huge_pages_collapses_each_resident_region_of_every_heap_mapping(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(f"{1 * MIB:x}-{9 * MIB:x} rw-p 00000000 00:00 0          [heap]\n"
                    f"{9 * MIB:x}-{10 * MIB + 5:x} rw-p 00000000 00:00 0          [heap]\n"  # no whole region
                    f"{20 * MIB:x}-{40 * MIB:x} rw-p 00000000 00:00 0 \n"  # an anonymous mapping: not glibc's heap
                    f"{64 * MIB:x}-{70 * MIB:x} rw-p 00000000 00:00 0          [heap]\n")
    libc = FakeLibc(holes={66 * MIB + 5 * resource.getpagesize()}, refuse={68 * MIB})
    # 2, 4, 6 and 64 MiB collapsed; 66 not asked (a page not resident: it would be filled), 68 refused
    assert heap.huge_pages(libc, str(maps), size=2 * MIB) == 8 * MIB
    assert libc.collapsed() == [2 * MIB, 4 * MIB, 6 * MIB, 64 * MIB, 68 * MIB]
    assert heap.huge_pages(libc, str(tmp_path / "no-such-file"), size=2 * MIB) == 0


def test_huge_pages_does_nothing_outside_a_held_heap_or_without_huge_pages(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(heap, "glibc", lambda: libc)
    monkeypatch.setattr(heap, "heap_mappings", lambda maps: [(2 * MIB, 6 * MIB)])
    monkeypatch.setattr(heap, "huge_page_size", lambda: 2 * MIB)
    assert heap.huge_pages() == 0 and libc.madvise.calls == []  # not held
    with heap.held_heap(False):
        assert heap.huge_pages() == 0 and libc.madvise.calls == []
    with heap.held_heap():  # glibc's settings taken (by the stand-in): held
        assert heap.huge_pages() == 4 * MIB and libc.collapsed() == [2 * MIB, 4 * MIB]
        monkeypatch.setattr(heap, "huge_page_size", lambda: None)  # transparent huge pages "never"
        assert heap.huge_pages() == 0 and len(libc.madvise.calls) == 2
    monkeypatch.setattr(heap, "huge_page_size", lambda: 2 * MIB)
    assert heap.huge_pages() == 0 and len(libc.madvise.calls) == 2  # released again
    assert heap.hold_heap() and heap.huge_pages() == 4 * MIB  # a benchmark worker's heap, held for good
    heap.release_heap()
    assert heap.huge_pages() == 0 and len(libc.madvise.calls) == 4


def test_huge_page_size_reads_the_kernels_settings(tmp_path, monkeypatch):
    monkeypatch.setattr(heap.platform, "machine", lambda: "x86_64")
    (tmp_path / "hpage_pmd_size").write_text("2097152\n")
    assert heap.huge_page_size(tmp_path) is None  # no "enabled": not a kernel with them
    (tmp_path / "enabled").write_text("always [madvise] never\n")
    assert heap.huge_page_size(tmp_path) == 2 * MIB
    (tmp_path / "enabled").write_text("always madvise [never]\n")
    assert heap.huge_page_size(tmp_path) is None
    (tmp_path / "enabled").write_text("always [madvise] never\n")
    monkeypatch.setattr(heap.platform, "machine", lambda: "mips64")  # MADV_COLLAPSE is another number there
    assert heap.huge_page_size(tmp_path) is None


def transparent_huge_pages() -> str | None:
    try:
        return open("/sys/kernel/mm/transparent_hugepage/enabled").read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return None


COLLAPSE_CHECK = """
import ctypes, resource
from resnetlab.engine import heap
libc = heap.glibc()
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]


def heap_huge_bytes():
    huge, in_heap = 0, False
    for line in open("/proc/self/smaps"):
        if "-" in line.split()[0] and len(line.split()) >= 5:
            in_heap = line.rstrip().endswith("[heap]")
        elif in_heap and line.startswith("AnonHugePages:"):
            huge += int(line.split()[1]) * 1024
    return huge


def resident():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()


with heap.held_heap():  # a held heap takes every block from the heap, maps none on its own
    block = libc.malloc(64 * 2**20)
    ctypes.memset(block, 1, 64 * 2**20)
    for attempt in range(3):  # the kernel may find no free huge page at once (EAGAIN), as its own tests retry
        collapsed = heap.huge_pages()
        if heap_huge_bytes() >= 60 * 2**20:
            break
    huge = heap_huge_bytes()
    halves = [libc.malloc(2**21) for _ in range(20)]  # 40 MiB of which only the first half of each block
    for half in halves:  # is written: every 2 MiB region of theirs holds pages never touched
        ctypes.memset(half, 1, 2**20)
    before = resident()
    heap.huge_pages()
    print(collapsed, huge, resident() - before)
"""


@pytest.mark.skipif(heap.glibc() is None or heap.huge_page_size() != 2 * MIB or transparent_huge_pages() != "madvise"
                    or tuple(map(int, os.uname().release.split(".")[:2])) < (6, 1),
                    reason="glibc, Linux 6.1 (MADV_COLLAPSE), transparent huge pages of 2 MiB in 'madvise' mode")
def test_a_held_heaps_resident_regions_get_huge_pages_and_its_holes_stay_empty():
    done = subprocess.run([sys.executable, "-c", COLLAPSE_CHECK], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    collapsed, huge, grown = map(int, done.stdout.split())
    assert collapsed >= 60 * MIB and huge >= 60 * MIB  # the 64 MiB block's pages, and the kernel says so
    assert grown < 4 * MIB  # the untouched pages stayed untouched (filled: ~20 MiB)


def test_the_training_loop_backs_the_heap_with_huge_pages_after_each_epochs_second_step(tmp_path, monkeypatch):
    from resnetlab.engine.train import train_loop
    steps = []  # (steps done before the call's step, steps per epoch)

    def recording(run, stop):
        monkeypatch.setattr("resnetlab.engine.train.huge_pages",
                            lambda: steps.append((run.state.step, run.steps_per_epoch)))
        return train_loop(run, stop)
    monkeypatch.setattr("resnetlab.engine.train.train_loop", recording)
    train_and_evaluate(tiny_config(("schedule.max_steps", 12)), tmp_path)
    per_epoch = steps[0][1]
    assert 12 > per_epoch >= 2 and [s for s, _ in steps] == [e * per_epoch + 1 for e in range(-(-12 // per_epoch))]
