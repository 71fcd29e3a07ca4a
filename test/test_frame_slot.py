"""The camera -> worker hand-over: newest frame only, stale frames refused when asked to."""
from __future__ import annotations

import threading
import time

import pytest

from densernet_ros.frame_slot import FrameSlot


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_newest_frame_wins_and_overwrites_count_as_dropped():
    slot = FrameSlot()
    for i in range(5):
        slot.put(i)
    assert slot.take(timeout=0) == 4
    assert (slot.received, slot.dropped, slot.stale) == (5, 4, 0)
    assert slot.take(timeout=0) is None, "a frame is handed out once"


@pytest.mark.parametrize("max_wait_s", [0.0, 0.005], ids=["no limit", "one frame: no camera period to wait for"])
def test_a_lone_old_frame_is_taken(max_wait_s):
    clock = FakeClock()
    slot = FrameSlot(max_wait_s, clock)
    slot.put("old")
    clock.now += 60.0
    assert slot.take(timeout=0) == "old"


def test_a_frame_that_waited_too_long_is_passed_over_for_the_next():
    clock = FakeClock()
    slot = FrameSlot(0.005, clock)
    for _ in range(3):  # a 30 Hz camera
        slot.put("older")
        clock.now += 1 / 30
    slot.put("waited 4 ms")
    clock.now += 0.004
    assert slot.take(timeout=0) == "waited 4 ms", "within the limit"
    slot.put("stale")
    clock.now += 0.010
    assert slot.take(timeout=0) is None, "the worker waits for the next frame"
    slot.put("fresh")
    assert slot.take(timeout=0) == "fresh"
    assert (slot.received, slot.dropped, slot.stale) == (6, 4, 1)


def test_a_frame_arriving_while_the_worker_waits_is_never_stale():
    clock = FakeClock()
    slot = FrameSlot(0.005, clock)
    slot.put("a")
    clock.now += 1 / 30
    assert slot.take(timeout=0) == "a"
    got = []
    worker = threading.Thread(target=lambda: got.append(slot.take(timeout=5)))
    worker.start()
    time.sleep(0.05)
    clock.now += 1.0  # the worker is slow to wake up (GIL, scheduler): not the frame's fault
    slot.put("b")
    worker.join(timeout=5)
    assert got == ["b"]


def test_the_stale_frame_is_taken_when_no_fresher_one_comes():
    """The end of a stream (or a stalled camera) must not lose the last frame."""
    clock = FakeClock()
    slot = FrameSlot(0.005, clock)
    slot.put("first")
    clock.now += 0.1
    slot.put("last")  # camera period 100 ms
    clock.now += 0.02
    assert slot.take(timeout=0) is None, "a fresher frame is due within 1.5 periods"
    clock.now += 0.2
    assert slot.take(timeout=0) == "last"
    assert slot.stale == 0


def test_worker_blocks_until_a_frame_arrives_and_close_wakes_it():
    slot = FrameSlot(0.05)
    got = []
    worker = threading.Thread(target=lambda: got.extend([slot.take(), slot.take()]))
    worker.start()
    time.sleep(0.1)
    slot.put("frame")
    time.sleep(0.1)
    slot.close()
    worker.join(timeout=2)
    assert not worker.is_alive()
    assert got == ["frame", None]


def test_rate_limit_takes_the_newest_frame_at_not_before():
    slot = FrameSlot()
    slot.put("early")
    not_before = time.monotonic() + 0.2
    threading.Timer(0.1, slot.put, args=("late",)).start()
    assert slot.take(not_before=not_before) == "late"
    assert time.monotonic() >= not_before
    assert slot.dropped == 1


def test_negative_max_wait_is_rejected():
    with pytest.raises(ValueError, match="max_wait_s"):
        FrameSlot(-1.0)
