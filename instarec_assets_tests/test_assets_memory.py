"""release_freed_memory hands freed heap pages back, so in-process steps do not stack their peaks."""

import json
import subprocess
import sys

PROBE = """
import json
import numpy as np
from instarec_assets.assets.memory import release_freed_memory

def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

blocks = [np.ones(2000) for _ in range(25_000)]  # 16 KB each: heap, not mmap
survivors = blocks[::500]  # a few live blocks pin the heap top, as real steps leave behind
allocated = rss_mib()
del blocks
freed = rss_mib()
trimmed = release_freed_memory()
print(json.dumps({"allocated": allocated, "freed": freed, "after": rss_mib(), "trimmed": trimmed}))
"""


def test_freed_heap_pages_return_to_the_os_after_release():
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    figures = json.loads(run.stdout)
    assert figures["freed"] > figures["allocated"] - 50, "glibc keeps the freed pages until trimmed"
    assert figures["trimmed"] is True
    assert figures["after"] < figures["freed"] - 250
