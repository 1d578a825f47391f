"""Zoho's clock minus ours, estimated from the ``Date`` headers of its answers.

A Date has one-second resolution and was stamped somewhere between our send and receive, so each
answer only bounds the skew to [Date - received, Date + 1 s - sent]. Intersecting the bounds of
recent answers narrows that well below a second.

One header must not move every expiry: a skew beyond MAX_SKEW is never believed, and a jump of more
than MAX_JUMP against the current estimate is believed only once the next answer agrees with it
(a clock that was really stepped keeps saying so; a stray header does not).
"""

from __future__ import annotations

import threading
from collections import deque
from datetime import datetime, timedelta

from watchkeeper.zoho.wire import parse_http_date

MAX_SKEW = timedelta(days=1)
MAX_JUMP = timedelta(minutes=10)
_SAMPLES = 16

Bounds = tuple[float, float]


class SkewEstimate:
    """Thread-safe; times come in as arguments (no clock is read here)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bounds: deque[Bounds] = deque(maxlen=_SAMPLES)
        self._doubted: Bounds | None = None
        self._warned = False
        self.value = timedelta(0)

    def observe(self, date_header: str | None, sent: datetime, received: datetime) -> float | None:
        """Take one answer's Date into account.

        Returns the implausible skew (seconds) of a Date that was ignored, the first time in a row
        one is, so that the caller logs it once; None otherwise.
        """
        date = parse_http_date(date_header)
        if date is None:
            return None
        sample = ((date - received).total_seconds(), (date - sent).total_seconds() + 1.0)
        with self._lock:
            if self._believable(sample):
                self._warned = False
                self._apply(sample)
                return None
            first, self._warned = not self._warned, True
        return (sample[0] + sample[1]) / 2 if first else None

    def _believable(self, sample: Bounds) -> bool:
        middle = timedelta(seconds=(sample[0] + sample[1]) / 2)
        if abs(middle) > MAX_SKEW:
            return False
        if not self._bounds or abs(middle - self.value) <= MAX_JUMP:
            self._doubted = None
            return True
        doubted, self._doubted = self._doubted, sample
        if doubted is None or not _overlap(doubted, sample, slack=2.0):
            return False
        self._bounds.clear()  # confirmed: the clock was stepped, older answers no longer agree
        self._bounds.append(doubted)
        self._doubted = None
        return True

    def _apply(self, sample: Bounds) -> None:
        low, high = sample
        self._bounds.append(sample)
        for older_low, older_high in reversed(list(self._bounds)[:-1]):
            if max(low, older_low) > min(high, older_high):
                break  # a clock was stepped: the estimate starts afresh from the newer answers
            low, high = max(low, older_low), min(high, older_high)
        self.value = timedelta(seconds=(low + high) / 2)


def _overlap(a: Bounds, b: Bounds, slack: float) -> bool:
    return max(a[0], b[0]) <= min(a[1], b[1]) + slack
