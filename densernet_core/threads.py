"""The thread pools of a process that localizes frame by frame.

The BLAS libraries loaded beside torch (OpenBLAS in the numpy, scipy and faiss wheels) each keep worker
threads, and after a matrix product those busy-wait for the next one (OpenBLAS: about 2^28 cycles, a
tenth of a second on this CPU). Per frame the localizer multiplies the query with the map's background
sample and re-scores places, 12,288-D products large enough for OpenBLAS to hand to its workers; they then
spin through the next frame's describe(), whose OpenMP threads already fill every core. On 2 cores they
took 19-22 % of a core, and densernet-localize ran 17 % slower per frame for it (docs/BENCHMARKS.md, *Node
overhead*; the node's own ratio over a bare describe() did not move measurably). One query's products gain
nothing from more BLAS threads, so a per-frame process holds BLAS to one and leaves the cores to the network
(torch's own threads are not BLAS pools and keep theirs).
"""
from __future__ import annotations

from typing import Callable

PER_FRAME_BLAS_THREADS = 1
PROBE_SHAPE = (512, 12288)  # a map's background sample against one raw-VLAD query, as the localizer does per frame


def _hold_blas() -> list[str]:
    """Hold every BLAS library to `PER_FRAME_BLAS_THREADS` for the rest of the process; what each now has,
    read back."""
    import faiss  # noqa: F401 - threadpoolctl limits the libraries loaded so far: load each BLAS first
    import numpy  # noqa: F401
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_info, threadpool_limits

    threadpool_limits(PER_FRAME_BLAS_THREADS, user_api="blas")  # called, not entered: it stays in force
    return [f"{i['internal_api']} {i['num_threads']} ({i['filepath'].rsplit('/', 1)[-1]})"
            for i in threadpool_info() if i["user_api"] == "blas"]


def limit_blas_for_frames() -> str:
    """Hold BLAS to one thread (the node and densernet-localize call this at start); the start-up log line."""
    return "BLAS threads (frame by frame beside the network's): " + (", ".join(_hold_blas()) or "none loaded")


def others_cpu_while_idle(product: Callable[[], object], repeats: int = 5, idle_s: float = 0.3) -> float:
    """CPU seconds the process's other threads burn while this one sleeps `idle_s` right after `product`,
    summed over `repeats` (Linux: /proc/self/task). BLAS workers' busy wait shows here and nowhere else."""
    import os
    import threading
    import time

    me = threading.get_native_id()
    tick = os.sysconf("SC_CLK_TCK")

    def others() -> float:
        total = 0.0
        for t in os.listdir("/proc/self/task"):
            if int(t) != me:
                try:
                    with open(f"/proc/self/task/{t}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:  # the thread ended meanwhile
                    continue
                total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        return total

    spent = 0.0
    for _ in range(repeats):
        product()
        before = others()
        time.sleep(idle_s)
        spent += others() - before
    return spent


def idle_burn_probe() -> dict:
    """Run in a fresh interpreter (the limit is for good): the other threads' CPU while idle after a
    `PROBE_SHAPE` product, with BLAS as it comes and then held to one thread (test and benchmark)."""
    import numpy as np
    from threadpoolctl import threadpool_info

    rng = np.random.default_rng(0)
    background = rng.standard_normal(PROBE_SHAPE).astype(np.float32)
    query = rng.standard_normal(PROBE_SHAPE[1]).astype(np.float32)
    threads = max([i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] or [0])
    before = others_cpu_while_idle(lambda: background @ query)
    limited = _hold_blas()
    return {"threads": threads, "before_s": before, "after_s": others_cpu_while_idle(lambda: background @ query),
            "limited": limited}
