"""Ctrl-C and a scheduler's SIGTERM become a request to stop at the next safe point.

An exception raised in the middle of an update or a checkpoint write leaves nothing worth
resuming from; a flag lets the trainer finish the current step, write a checkpoint and exit
with one line saying how to resume. A second Ctrl-C still quits at once.

    with graceful_interrupts() as stop:
        for step in ...:
            update()
            if stop.requested:
                save(); print(f"stopped by {stop.signal_name}; run the same command to resume"); break
"""

from __future__ import annotations

import os
import signal
import threading


class graceful_interrupts:  # lower case: read like a function, `with graceful_interrupts() as stop`
    """While active, SIGINT/SIGTERM set `.requested` (and `.signal_name`) instead of raising.

    A SIGINT that arrives while a request is pending raises KeyboardInterrupt (force quit). The
    previous handlers come back on exit. Outside the main thread, where Python cannot install
    handlers, it does nothing and `.requested` stays False.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce: bool = True):
        self.announce = announce  # one line on stderr when the first signal arrives
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> graceful_interrupts:
        self.requested, self.signal_name = False, None
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            # None: the previous handler was not installed from Python; the default is the best we can do
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.requested:  # a repeated SIGTERM: already stopping
            return
        self.requested, self.signal_name = True, signal.Signals(signum).name
        if self.announce:
            # os.write, not print: a handler may run while the main thread is inside a print
            # (the progress bar), and re-entering the same buffered stream raises
            hint = " (Ctrl-C again to quit now)" if signum == signal.SIGINT else ""
            line = f"\n{self.signal_name}: stopping after the current step and saving a checkpoint{hint}\n"
            try:
                os.write(2, line.encode())
            except OSError:  # stderr closed: the flag is what matters
                pass
