"""The hand-over between the camera callback and the inference worker: one slot, newest frame only.

A camera is faster than inference, so a queue would only grow stale. The callback overwrites the
slot (the overwritten frame is counted as dropped); the worker takes what is there when it is free.
That frame has waited for the busy worker, on average half a camera period (17 ms at 30 Hz), which
adds to the answer's latency. With `max_wait_s` > 0, a frame that waited longer than that is passed
over for the next one, if the next one arrives within NEXT_FRAME_MARGIN camera periods (measured
from the arrivals) of it; otherwise (the camera stopped or stalled) it is taken after all, so the
last frame of a stream is never lost. Fresher answers, fewer of them per second (the idle wait);
see docs/BENCHMARKS.md.
"""
from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from typing import Callable, Generic, TypeVar

T = TypeVar("T")

NEXT_FRAME_MARGIN = 1.5  # camera periods to wait for a fresher frame before taking the stale one
PERIOD_SAMPLES = 9       # recent inter-arrival intervals whose median is the camera period


class FrameSlot(Generic[T]):
    def __init__(self, max_wait_s: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0 (0: take the newest frame however long it waited), "
                             f"got {max_wait_s}")
        self.max_wait_s, self._clock = max_wait_s, clock
        self._cond = threading.Condition()
        self._item: T | None = None
        self._arrived: float | None = None
        self._intervals: deque[float] = deque(maxlen=PERIOD_SAMPLES)
        self._closed = False
        self._passed_over: float | None = None  # arrival of the frame the worker is waiting to replace
        self.received = 0  # frames put
        self.last_arrival: float | None = None  # clock time of the newest put (a camera outage shows here)
        self.dropped = 0   # frames overwritten before the worker took them
        self.stale = 0     # of those, frames the worker passed over for a fresher one

    def put(self, item: T) -> None:
        """From the subscription callback: never blocks on the worker."""
        with self._cond:
            now = self._clock()
            self.received += 1
            if self._item is not None:
                self.dropped += 1
            if self._arrived is not None:
                self._intervals.append(now - self._arrived)
            self._item, self._arrived = item, now
            self.last_arrival = now
            self._cond.notify()

    def take(self, not_before: float = 0.0, timeout: float | None = None) -> T | None:
        """The newest frame at `not_before` (clock time) or later, fresh as `max_wait_s` asks; None
        once closed or after `timeout` seconds."""
        start = self._clock()
        end = None if timeout is None else start + timeout
        ready = max(start, not_before)  # when the worker is free: a frame arriving later never waited
        with self._cond:
            while not self._closed:
                now = self._clock()
                wake: float | None = None
                if now < not_before:  # rate limit: wait first, so that the frame taken is the newest
                    wake = not_before
                elif self._item is not None:
                    next_due = self._next_frame_due()
                    if ready - self._arrived > self.max_wait_s > 0 and next_due is not None and now < next_due:
                        self._passed_over, wake = self._arrived, next_due
                    else:
                        if self._passed_over is not None and self._arrived != self._passed_over:
                            self.stale += 1
                        self._passed_over = None
                        item, self._item = self._item, None
                        return item
                if end is not None and now >= end:
                    return None
                deadlines = [t for t in (wake, end) if t is not None]
                self._cond.wait(min(deadlines) - now if deadlines else None)
            return None

    def _next_frame_due(self) -> float | None:
        """The latest time a frame after the waiting one should arrive; None before two frames."""
        if not self._intervals:
            return None
        return self._arrived + NEXT_FRAME_MARGIN * statistics.median(self._intervals)

    def close(self) -> None:
        """Wake the worker for shutdown."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
