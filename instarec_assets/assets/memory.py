"""Give freed heap memory back to the operating system after the heaviest steps.

`instarec materialize` runs every step of a partition in one process. glibc keeps the freed heap
pages of a step (GraphSAGE's tensors, XGBoost's matrices) in its arenas, so the process keeps a
large step's footprint while later steps run (see test_assets_memory.py for the effect).
`malloc_trim(0)` returns them; elsewhere than glibc it is a no-op.
"""

import ctypes
import ctypes.util
import gc
from functools import cache


@cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return getattr(libc, "malloc_trim", None)


def release_freed_memory() -> bool:
    """Collect garbage and trim the heap; True when pages were returned to the OS."""
    gc.collect()
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
