"""Keep freed CPU memory in the process, so big tensors do not page-fault on every allocation.

PyTorch's CPU allocator is glibc's malloc. glibc serves a request above its mmap threshold (128 KiB at
start, raised dynamically up to 32 MiB) with a fresh `mmap` and returns it with `munmap` when the tensor
is freed, so the next tensor of that size touches brand-new pages: one page fault per 4 KiB, each time.
An update that makes the same big activations every step (CQL's critics over 31 actions per row: a
[2, 7936, 256] float32 activation is 16 MiB; Off2On's ten critics 80 MiB; a rollout round of 50k starts
through 7 members, 280 MiB per layer) then spends more time faulting pages in than computing. On this
project's 2-core VM, `python benchmarks/throughput.py --agent off2on --hidden 256 256` ran 2.8-3.1 updates/s
as glibc ships and 4.6-4.7 with `keep_freed_memory()` (README, Benchmarks).

`keep_freed_memory()` raises the mmap threshold to 1 GiB and the trim threshold to 2 GiB (`mallopt`), so
freed blocks go back to malloc's heap and are reused; only blocks above 1 GiB still come from `mmap`. This
changes which addresses tensors get, never their values, so every run stays bitwise the same. The cost:
the process keeps up to its peak heap instead of handing memory back to the OS between updates.

Called before the first big tensor by every agent run (`build_run`, so also the suite's runs and the
exploitation tool), `make_dataset`, the calibration tool and the throughput, model and REDQ benchmarks.
Set `O2O_KEEP_FREED_MEMORY=0` to keep glibc's defaults; elsewhere than glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1  # glibc malloc.h: mallopt parameter numbers
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # 1 GiB: requests above it still get their own mmap
TRIM_THRESHOLD = (1 << 31) - 1  # about 2 GiB (the largest int mallopt takes): free heap kept below it


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks for reuse (see the module docstring). Returns whether the settings took
    effect: False where malloc is not glibc's or when O2O_KEEP_FREED_MEMORY=0. Any other value than 0 or 1 is a
    ValueError naming the variable (agent runs report it as one error line)."""
    setting = os.environ.get("O2O_KEEP_FREED_MEMORY", "1")
    if setting not in ("0", "1"):
        raise ValueError(f"O2O_KEEP_FREED_MEMORY={setting!r}: set it to 0 (glibc's malloc defaults) or 1, or unset "
                         "it (the default, 1).")
    if setting == "0":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: no mallopt to call
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success, 0 when glibc refuses the value
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
