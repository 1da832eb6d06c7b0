"""Background tasks for the window: anything slow (engines, downloads, encoding) runs here.

A task is a plain function `fn(context) -> result` run on a Python thread; it reports
progress and checks for a cancel through its `TaskContext`. Its progress and outcome travel
to the GUI thread through one long-lived QObject per runner (a queued signal), where they
reach the handlers registered with `Task.on`. Tasks own no Qt objects, so no Qt object is
ever created or freed off the GUI thread, and a handler registered right after `start` never
misses an event: events are handled on the GUI thread, after the code that registered it.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from typing import Any, Callable

from PyQt6.QtCore import QObject, pyqtSignal

from liveanim.app.ui.messages import window_text
from liveanim.errors import LiveAnimError

log = logging.getLogger(__name__)

EVENTS = ("progress", "finished", "failed", "cancelled")
ENDINGS = ("finished", "failed", "cancelled")


class Cancelled(Exception):
    """Raised inside a task by `TaskContext.check()` once the user has cancelled it."""


class TaskContext:
    """Handed to a task function: report progress, and notice a cancel between steps."""

    def __init__(self, report: Callable[[float, str], None]) -> None:
        self._report = report
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Ask the task to stop at its next `check()` (safe from any thread)."""
        self._cancel.set()

    def report(self, fraction: float, message: str = "") -> None:
        """fraction: done in [0, 1], or -1 when unknown."""
        self._report(fraction, message)

    def check(self) -> None:
        """Stop the task here if it was cancelled."""
        if self._cancel.is_set():
            raise Cancelled


TaskFn = Callable[[TaskContext], Any]
Post = Callable[["Task", str, tuple], None]


class Task:
    """One function to run on a worker thread; its errors become a 'failed' message, never a crash.

    Events and their handlers' arguments: progress(fraction, message), finished(result),
    failed(message), cancelled().
    """

    def __init__(self, fn: TaskFn, name: str, post: Post) -> None:
        self.name = name
        self._fn = fn
        self._post = post
        self._handlers: dict[str, list[Callable[..., object]]] = {event: [] for event in EVENTS}
        self.context = TaskContext(lambda fraction, message: post(self, "progress", (fraction, message)))

    def on(self, event: str, handler: Callable[..., object]) -> Task:
        """Call `handler` on the GUI thread when `event` happens (register on the GUI thread)."""
        self._handlers[event].append(handler)
        return self

    def on_end(self, handler: Callable[[], object]) -> Task:
        """Call `handler()` once the task has ended, however it ended."""
        for event in ENDINGS:
            self.on(event, lambda *_: handler())
        return self

    def cancel(self) -> None:
        self.context.cancel()

    def run(self) -> None:
        """The worker thread's part: run the function and post how it went."""
        try:
            result = self._fn(self.context)
        except Cancelled:
            self._post(self, "cancelled", ())
        except LiveAnimError as error:
            log.warning("%s failed: %s", self.name, error)
            self._post(self, "failed", (window_text(error),))
        except Exception as error:  # a bug must reach the user, not end a worker thread silently
            log.exception("%s failed", self.name)
            self._post(self, "failed", (f"{self.name} failed unexpectedly: {error}. See the log for details.",))
        else:
            self._post(self, "finished", (result,))

    def dispatch(self, event: str, args: tuple) -> None:
        """The GUI thread's part: call the handlers of `event`."""
        for handler in list(self._handlers[event]):
            handler(*args)


class TaskRunner(QObject):
    """Runs tasks on its own threads (`max_threads` at a time, in order) and waits for them on close."""

    _posted = pyqtSignal(object, str, object)  # task, event, handler arguments (a tuple)

    def __init__(self, parent: QObject | None = None, max_threads: int = 4) -> None:
        super().__init__(parent)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_threads, thread_name_prefix="liveanim-task")
        self._pending: dict[Task, concurrent.futures.Future] = {}
        self._active = 0
        self._lock = threading.Lock()
        self._posted.connect(self._deliver)

    def start(self, fn: TaskFn, name: str, on_done: Callable[[Any], object] | None = None,
              on_error: Callable[[str], object] | None = None) -> Task:
        """Run `fn` in the background; `on_done(result)` / `on_error(message)` run on the GUI thread."""
        task = self._task(fn, name, on_done, on_error)
        task.on_end(lambda: self._pending.pop(task, None))
        self._pending[task] = self._executor.submit(self._run, task)
        return task

    def start_detached(self, fn: TaskFn, name: str, on_done: Callable[[Any], object],
                       on_error: Callable[[str], object]) -> Task:
        """Run `fn` on a daemon thread that quitting does not wait for (for work that cannot be
        interrupted and is safe to abandon, like a resumable download)."""
        task = self._task(fn, name, on_done, on_error)
        threading.Thread(target=task.run, name=name, daemon=True).start()
        return task

    @property
    def active(self) -> bool:
        """Whether a task is running now (safe to ask from any thread)."""
        with self._lock:
            return self._active > 0

    def shutdown(self, timeout_s: float = 60.0) -> bool:
        """Drop queued tasks, cancel running ones and wait; False if one is still running."""
        for task, future in list(self._pending.items()):
            future.cancel()
            task.cancel()
        _, running = concurrent.futures.wait(list(self._pending.values()), timeout_s)
        self._executor.shutdown(wait=False, cancel_futures=True)
        return not running

    def _task(self, fn: TaskFn, name: str, on_done: Callable[[Any], object] | None,
              on_error: Callable[[str], object] | None) -> Task:
        task = Task(fn, name, self._post)
        if on_done is not None:
            task.on("finished", on_done)
        if on_error is not None:
            task.on("failed", on_error)
        return task

    def _run(self, task: Task) -> None:
        with self._lock:
            self._active += 1
        try:
            task.run()
        finally:
            with self._lock:
                self._active -= 1

    def _post(self, task: Task, event: str, args: tuple) -> None:
        """From any thread: queue the event for the GUI thread."""
        try:
            self._posted.emit(task, event, args)
        except RuntimeError:  # the window that owned this runner is gone (a detached task outlived it)
            log.debug("%s: %s dropped, nobody is listening any more", task.name, event)

    def _deliver(self, task: Task, event: str, args: tuple) -> None:
        task.dispatch(event, args)
