"""What changed since the controller's last pass, and the bell that asks for the next one.

Commits, syncs, heartbeats and reports name the apps they changed (`wake`);
the controller loop (cp/controller.py) takes them for its next pass and waits
on the bell between passes. None means "look at every app".
"""

from __future__ import annotations

import threading
from collections.abc import Iterable


class Changes:
    """The apps the controller's next pass looks at (None: every app), and its wake-up."""

    def __init__(self) -> None:
        self._apps: set[str] | None = None  # a fresh CP looks at everything first
        self._lock = threading.Lock()
        self._bell = threading.Event()

    def wake(self, apps: Iterable[str] | None = None) -> None:
        """Ask the controller loop for a pass now, over these apps (all of them if None)."""
        with self._lock:
            if apps is None:
                self._apps = None
            elif self._apps is not None:
                self._apps.update(apps)
        self._bell.set()

    def take(self) -> set[str] | None:
        """The apps changed since the last take (None: every app), forgotten here."""
        with self._lock:
            apps, self._apps = self._apps, set()
        return apps

    def missed(self) -> None:
        """A pass failed: what it took, the next one looks at (every app, to be sure)."""
        with self._lock:
            self._apps = None

    def wait(self, timeout: float) -> bool:
        """Wait for a wake-up, at most `timeout` seconds; whether one came."""
        woken = self._bell.wait(timeout)
        self._bell.clear()
        return woken
