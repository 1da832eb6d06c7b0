"""Ctrl-C and SIGTERM as a polite request to stop, for commands that must finish their files."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Within the `with` block, once `arm()` is called, Ctrl-C and SIGTERM set `requested`.

    The handlers stay installed until the block ends, which is after every thread is joined
    and every file closed: a second signal during that shutdown is acknowledged ("already
    stopping") and changes nothing, so an impatient Ctrl-C cannot cut a recording short.
    Before `arm()` signals keep their usual effect (Ctrl-C interrupts loading the model).
    Python runs signal handlers on the main thread only; elsewhere `arm()` does nothing.
    """

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        return self

    def arm(self) -> None:
        if threading.current_thread() is not threading.main_thread() or self._previous:
            return
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested.is_set():
            log.warning("%s: already stopping; the files are being finished", name)
            return
        log.info("%s: stopping", name)
        self.requested.set()
