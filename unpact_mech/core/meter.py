"""What a block of work cost: wall seconds and peak memory, blocks nested in blocks included.

Peak resident memory (CPU) of a block = ``max(samples)``: ``/proc/self/statm`` read every ``INTERVAL`` seconds by
one daemon thread while any block is open, and exact whenever the block set a new process peak
(``getrusage().ru_maxrss`` grew during it, so the block's peak is that new process peak). The kernel's
high-water mark is never reset, so ``/usr/bin/time`` and ``ru_maxrss`` keep meaning the whole process's peak.
On CUDA the block's peak is ``torch.cuda.max_memory_allocated`` after a reset at its start (an enclosing
block keeps the larger of its own and its inner blocks' peaks).
"""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

INTERVAL = 0.01  # seconds between RSS samples
GB = 1e9
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def mapped_bytes() -> tuple[int, int] | None:
    """This process's mapped (virtual) and resident bytes now, from Linux ``/proc/self/statm``; None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            size, resident = f.read().split()[:2]
        return int(size) * _PAGE, int(resident) * _PAGE
    except (OSError, ValueError):
        return None


def rss_bytes() -> int:
    """This process's resident set size now (Linux ``/proc/self/statm``; elsewhere the process peak)."""
    mapped = mapped_bytes()
    return process_peak_bytes() if mapped is None else mapped[1]


def release_memory() -> int:
    """Collect garbage and hand the C heap's free pages back to the system (glibc ``malloc_trim``): tensors under
    glibc's mmap threshold (32 MB at most) live on the heap, whose freed pages otherwise stay resident, so a
    finished stage's models and activations would still count in the process's RSS (on SmolLM2, 3.7 GB between
    stages instead of 1.3). Returns the bytes of RSS released (0 where glibc is absent)."""
    before = rss_bytes()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return 0
    return max(0, before - rss_bytes())


def process_peak_bytes() -> int:
    """The process's peak resident set size so far (``ru_maxrss``: KiB on Linux)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


@dataclass
class _Frame:
    peak_rss: int = 0
    peak_cuda: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


_OPEN: list[_Frame] = []
_ACTIVE = threading.Event()  # set while any block is open
_THREAD: list[threading.Thread] = []


def _sample() -> None:
    while _ACTIVE.wait():
        time.sleep(INTERVAL)
        now = rss_bytes()
        for fr in list(_OPEN):
            with fr.lock:
                fr.peak_rss = max(fr.peak_rss, now)


def _cuda() -> Any:
    """torch.cuda when torch is imported and CUDA is initialised, else None (never initialises CUDA)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda


def describe(cost: dict[str, Any]) -> str:
    """A measured block's cost in words: ``12.3 s, peak RSS 4.56 GB`` (and ``, peak CUDA ...`` where measured)."""
    return (f"{cost['seconds']:.1f} s, peak RSS {cost['peak_rss_gb']:.2f} GB"
            + (f", peak CUDA {cost['peak_cuda_gb']:.2f} GB" if "peak_cuda_gb" in cost else ""))


@contextmanager
def measure() -> Iterator[dict[str, Any]]:
    """Measure the block: the dict it yields is filled on exit with ``seconds``, ``peak_rss_gb`` (and
    ``peak_cuda_gb`` where CUDA is in use)."""
    cost: dict[str, Any] = {}
    cuda = _cuda()
    if cuda is not None:
        for fr in _OPEN:  # the peak so far belongs to the blocks already open; then start this block's own
            fr.peak_cuda = max(fr.peak_cuda, int(cuda.max_memory_allocated()))
        cuda.reset_peak_memory_stats()
    frame = _Frame(peak_rss=rss_bytes())
    _OPEN.append(frame)
    _ACTIVE.set()
    if not _THREAD:
        _THREAD.append(threading.Thread(target=_sample, name="unpact-meter", daemon=True))
        _THREAD[0].start()
    before, t0 = process_peak_bytes(), time.perf_counter()
    try:
        yield cost
    finally:
        seconds = time.perf_counter() - t0
        _OPEN.remove(frame)
        if not _OPEN:
            _ACTIVE.clear()
        after = process_peak_bytes()
        with frame.lock:
            peak = max(frame.peak_rss, rss_bytes(), after if after > before else 0)
        cost.update(seconds=round(seconds, 3), peak_rss_gb=round(peak / GB, 4))
        if cuda is not None:
            frame.peak_cuda = max(frame.peak_cuda, int(cuda.max_memory_allocated()))
            cost["peak_cuda_gb"] = round(frame.peak_cuda / GB, 4)
        for fr in _OPEN:  # the enclosing blocks saw at least this block's peak
            with fr.lock:
                fr.peak_rss = max(fr.peak_rss, peak)
                fr.peak_cuda = max(fr.peak_cuda, frame.peak_cuda)
