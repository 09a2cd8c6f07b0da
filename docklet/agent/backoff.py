"""Jittered waits: how every agent loop waits out a CP or Docker that does not answer."""

from __future__ import annotations

import random
import threading


def jittered(seconds: float) -> float:
    """Between half and all of `seconds`, at random."""
    return random.uniform(seconds / 2, seconds)


class Backoff:
    """Doubling waits, capped, reset by success; each wait jittered.

    A wait lasts between half and all of the current step: a thousand agents
    refused together (a restarting or overloaded CP) do not come back together.
    """

    def __init__(self, cap: float, first: float = 0.5) -> None:
        self.cap, self.first, self.current = cap, min(first, cap), min(first, cap)

    def wait(self, stop: threading.Event) -> None:
        stop.wait(jittered(self.current))
        self.current = min(self.current * 2, self.cap)

    def reset(self) -> None:
        self.current = self.first
