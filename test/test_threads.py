"""One BLAS thread in a process that localizes frame by frame (densernet_core/threads.py)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

# In a fresh interpreter: the CPU time the process's other threads burn while this one sleeps right after
# a product of a query with a map's background sample, before and after the limit. The BLAS workers' busy
# wait shows there, and only there.
PROBE = "import json; from densernet_core.threads import idle_burn_probe; print(json.dumps(idle_burn_probe()))"


def test_blas_held_to_one_thread_leaves_no_worker_spinning_between_frames():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    probe = json.loads(out.stdout)
    threads, before, after, limited = probe["threads"], probe["before_s"], probe["after_s"], str(probe["limited"])
    if int(threads) < 2:
        pytest.skip(f"BLAS runs one thread here already ({threads}): nothing to hold back")
    assert limited.strip().startswith("[") and " 1 (" in limited and " 2 (" not in limited, limited
    if float(before) < 0.05:
        pytest.skip(f"this BLAS's workers do not busy-wait here ({float(before):.3f} s over 1.5 s idle)")
    assert float(after) < 0.02, f"BLAS workers still burn {float(after):.3f} s of CPU while the process idles"
