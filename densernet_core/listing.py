"""How a list of names (frames, messages, parameters) is shown in a warning or an error: the first few,
then how many more, so a recording with thousands of bad messages gives one readable line."""
from __future__ import annotations

from typing import Iterable

SHOWN = 5


def first_few(items: Iterable[object], shown: int = SHOWN) -> str:
    """'a, b, c' or 'a, b, c, d, e and 12 more'."""
    items = [str(i) for i in items]
    head = ", ".join(items[:shown])
    return head + (f" and {len(items) - shown} more" if len(items) > shown else "")
