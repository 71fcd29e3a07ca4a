"""One BLAS thread in a process that localizes frame by frame (densernet_core/threads.py)."""
from __future__ import annotations

import subprocess
import sys

import pytest

# In a fresh interpreter: the CPU time the process's other threads burn while this one sleeps right after
# a product of a query with a map's background sample (512 x 12,288, as the localizer does per frame),
# before and after the limit. The BLAS workers' busy wait shows there, and only there.
PROBE = r'''
import numpy as np
from threadpoolctl import threadpool_info
from densernet_core.threads import limit_blas_for_frames, others_cpu_while_idle

rng = np.random.default_rng(0)
background = rng.standard_normal((512, 12288)).astype(np.float32)
query = rng.standard_normal(12288).astype(np.float32)
blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
before = others_cpu_while_idle(lambda: background @ query)
limited = limit_blas_for_frames()
after = others_cpu_while_idle(lambda: background @ query)
print(max(blas or [0]), before, after, limited)
'''


def test_blas_held_to_one_thread_leaves_no_worker_spinning_between_frames():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    threads, before, after, limited = out.stdout.split(" ", 3)
    if int(threads) < 2:
        pytest.skip(f"BLAS runs one thread here already ({threads}): nothing to hold back")
    assert limited.strip().startswith("[") and " 1 (" in limited and " 2 (" not in limited, limited
    if float(before) < 0.05:
        pytest.skip(f"this BLAS's workers do not busy-wait here ({float(before):.3f} s over 1.5 s idle)")
    assert float(after) < 0.02, f"BLAS workers still burn {float(after):.3f} s of CPU while the process idles"
