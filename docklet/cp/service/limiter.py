"""Failed credentials counted per address: what keeps a token from being guessed at speed.

Past `auth_failures` a minute, an address's failed credentials are answered
429 instead of 401 (the API's and Git's access checks share one count, and
one rule: http/auth.py's `failed`); a credential that passes is served
whatever the count. The address is the socket's, never X-Forwarded-For (which
a caller writes itself); behind a proxy, all callers share the proxy's budget.
"""

from __future__ import annotations

import collections
import threading
import time

from docklet.common import defaults

MAX_ADDRESSES = 10_000  # addresses tracked at once; the oldest are forgotten beyond


class FailureLimiter:
    """Failed credentials per address in a sliding minute."""

    def __init__(self, limit: int, period: float = defaults.AUTH_FAILURE_PERIOD) -> None:
        self.limit, self.period = limit, period
        self._failures: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()

    def retry_after(self, address: str, now: float | None = None) -> float | None:
        """Seconds until `address` may try again, or None when it may now."""
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._failures.get(address)
            if times is None:
                return None
            while times and times[0] <= now - self.period:
                times.popleft()
            if not times:
                del self._failures[address]
                return None
            if len(times) < self.limit:
                return None
            return times[0] + self.period - now

    def fail(self, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._failures.setdefault(address, collections.deque(maxlen=self.limit))
            times.append(now)
            self._failures.move_to_end(address)
            while len(self._failures) > MAX_ADDRESSES:
                self._failures.popitem(last=False)
