"""Graceful stop: the first SIGINT/SIGTERM asks training to stop after the current step; a second
one stops at once."""

from __future__ import annotations

import signal
import sys
from typing import Optional


class GracefulStop:
    """Context manager that records the first SIGINT/SIGTERM
    instead of dying; `requested` names it."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: Optional[str] = None
        self._previous: dict = {}

    def _handle(self, signum: int, frame) -> None:
        # second signal: stop now (typer turns KeyboardInterrupt into exit 130)
        if self.requested is not None:
            self.__exit__()
            print(
                f"{signal.Signals(signum).name} again: stopping at once; "
                "the run's checkpoints are as they were (continue with --resume)",
                file=sys.stderr,
            )
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        print(
            f"\n{self.requested}: finishing the current step and saving last.pt (press Ctrl-C "
            "again to stop at once)",
            file=sys.stderr,
        )

    def __enter__(self) -> GracefulStop:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
