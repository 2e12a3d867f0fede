"""The node's core thread: the one thread that owns ``ServerState`` and runs every call into it.

Why a thread: the core signs frames with RSA-4096 (a few milliseconds of CPU each). Run on the event loop, a
burst of signatures starves I/O, timers and ``/healthz``; peers then take a busy node for a dead one. The
``cryptography`` library releases the GIL while it signs, so with the core on its own thread the loop keeps
reading, writing and answering HTTP, and a node uses two cores.

Why exactly one: ``ServerState`` is a plain, single-threaded object. One worker thread needs no locks around
the state and keeps the order of everything:

- **calls run in submission order** (a FIFO queue), so frames of one link, and all calls globally, reach the
  core in the order the loop submitted them; ``now`` is read on the core thread when the call runs, so the
  core's clock never goes backwards. The one exception is the timer (:meth:`CoreThread.run_timer`), which
  runs next, ahead of queued frames: heartbeats must leave on time even when a burst of frames (each costing
  a signature) has piled up, or an idle peer takes this busy node for a dead one. The timer tells the core
  how far its input has been processed (``processed_until``: when the oldest frame still queued arrived), so
  that the failure detector never holds against a peer the silence of frames still waiting in our queue;
- **outputs are applied in the same order**: each call drains ``data_to_send()`` and ``events_received()``
  and reads ``next_deadline()`` right after it, on the core thread, and hands that :class:`CoreOutput` to the
  loop with ``call_soon_threadsafe`` (FIFO too). The runtime's ``apply`` carries it out there (sends, closes,
  dials, database records), before the caller's await returns. An output is applied even when its caller was
  cancelled or the call raised, so nothing the core queued is lost.

The loop never touches the state: ``/healthz`` and ``/status`` read :attr:`CoreThread.status`, a deep copy of
``state.status()`` the core thread refreshes after each call when nothing else is queued (else at most every
:data:`STATUS_REFRESH_S`), so they answer at once however long the backlog. The backlog itself is bounded by
the callers: the runtime lets each connection queue only a few frames before it stops reading it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from socp.actions import Action, Event
from socp.server import ServerState

T = TypeVar("T")

CoreCall = Callable[[ServerState, int], T]
"""A call into the core: ``call(state, now)``; ``now`` is read on the core thread as the call starts."""

STATUS_REFRESH_S = 0.05
"""Under a backlog, the status snapshot is refreshed at most this often."""


def now_ms() -> int:
    """Wall-clock time in integer milliseconds (SOCP ``ts`` unit)."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class CoreOutput:
    """What one call left behind, drained on the core thread right after it."""

    actions: list[Action]
    events: list[Event]
    deadline: int
    """``next_deadline()`` after the call."""
    server_id: str
    """The server's id after the call (an introducer may have just assigned it)."""


@dataclass(frozen=True, slots=True)
class _Item:
    """One queued call."""

    call: CoreCall[Any]
    future: asyncio.Future[Any] | None
    before_apply: Callable[[Any], object] | None
    submitted_at: int
    """Wall-clock ms when the loop queued it (for frames: about when they arrived)."""


class CoreThread:
    """Runs calls into one ``ServerState`` on one dedicated thread; outputs are applied on the loop in order.

    ``apply(output)`` runs on the event loop for every call, in call order (see the module docstring).
    """

    def __init__(self, apply: Callable[[CoreOutput], None], log: logging.LoggerAdapter[logging.Logger]) -> None:
        self._apply = apply
        self._log = log
        self._queue: deque[_Item] = deque()  # FIFO of calls, guarded by _ready
        self._urgent: deque[_Item] = deque()  # timer runs, served before _queue
        self._ready = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._serve, name="socp-core", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state: ServerState | None = None  # touched on the core thread only
        self._status_at = 0.0  # core thread only
        self.status: dict[str, Any] | None = None
        """The latest ``state.status()`` snapshot (None before the state exists); never mutated once published."""

    async def start(self, make_state: Callable[[int], ServerState]) -> None:
        """Build the state on the core thread (``make_state(now)``), then start it."""
        self._loop = asyncio.get_running_loop()
        self._thread.start()

        def create(_: object, now: int) -> None:
            self._state = make_state(now)
            self._state.start(now)

        await self.call(create)

    def submit(self, call: CoreCall[T], *, before_apply: Callable[[T], object] | None = None) -> asyncio.Future[T]:
        """Queue ``call(state, now)`` for the core thread; the future resolves once its output has been applied.

        ``before_apply(result)`` runs on the loop just before the output is applied (e.g. to register a link the
        call created, so that actions for it find it). An exception raised by the call becomes the future's; its
        output is applied all the same.
        """
        future: asyncio.Future[T] = self._running_loop().create_future()
        self._submit(call, future, before_apply)
        return future

    async def call(self, call: CoreCall[T], *, before_apply: Callable[[T], object] | None = None) -> T:
        """:meth:`submit`, then wait for the result (or the call's exception)."""
        return await self.submit(call, before_apply=before_apply)

    def post(self, call: CoreCall[object]) -> None:
        """Queue ``call`` without waiting for it (its errors are logged); its output is applied in order."""
        self._submit(call, None, None)

    def run_timer(self) -> asyncio.Future[None]:
        """Queue ``handle_timer`` ahead of every queued frame; resolves once its output has been applied."""
        future: asyncio.Future[None] = self._running_loop().create_future()

        def timer(state: ServerState, now: int) -> None:
            state.handle_timer(now, processed_until=self._oldest_waiting())

        self._submit(timer, future, None, urgent=True)
        return future

    async def close(self) -> None:
        """Stop the core thread (after the calls queued so far; none may be submitted afterwards)."""
        with self._ready:
            self._closing = True
            self._ready.notify()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join)

    # --- internals -----------------------------------------------------------------------------------

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("core thread used before start()")
        return self._loop

    def _submit(self, call: CoreCall[Any], future: asyncio.Future[Any] | None,
                before_apply: Callable[[Any], object] | None, *, urgent: bool = False) -> None:
        self._running_loop()
        item = _Item(call, future, before_apply, now_ms())
        with self._ready:
            if self._closing:
                raise RuntimeError("core thread is closing")
            (self._urgent if urgent else self._queue).append(item)
            self._ready.notify()

    def _oldest_waiting(self) -> int | None:
        """On the core thread: when the oldest call still queued was submitted (None: nothing waits)."""
        with self._ready:
            return self._queue[0].submitted_at if self._queue else None

    def _serve(self) -> None:
        """The core thread: run queued calls, timers first, until closed and drained."""
        while True:
            with self._ready:
                while not self._urgent and not self._queue and not self._closing:
                    self._ready.wait()
                if self._urgent:
                    item = self._urgent.popleft()
                elif self._queue:
                    item = self._queue.popleft()
                else:
                    return  # closing, and nothing left to run
            self._run(item.call, item.future, item.before_apply)

    def _run(self, call: CoreCall[Any], future: asyncio.Future[Any] | None,
             before_apply: Callable[[Any], object] | None) -> None:
        """On the core thread: one call, its drained output, maybe a fresh status snapshot; then to the loop."""
        result: Any = None
        error: BaseException | None = None
        state = self._state
        try:
            result = call(state, now_ms())  # type: ignore[arg-type]  # only start()'s call sees None
        except Exception as exc:
            error = exc
            if future is None:
                self._log.exception("internal error in the core")
        state = self._state
        output = None
        if state is not None:
            try:
                output = CoreOutput(state.data_to_send(), state.events_received(), state.next_deadline(),
                                    state.server_id)
                self._refresh_status(state, idle=not self._queue and not self._urgent)
            except Exception:
                self._log.exception("internal error draining the core")
        loop = self._running_loop()
        with contextlib.suppress(RuntimeError):  # a closed loop: the node is gone, and so is whoever waited
            loop.call_soon_threadsafe(self._deliver, future, result, error, before_apply, output)

    def _refresh_status(self, state: ServerState, *, idle: bool) -> None:
        clock = time.monotonic()
        if idle or clock - self._status_at >= STATUS_REFRESH_S or self.status is None:
            self._status_at = clock
            self.status = copy.deepcopy(state.status())  # the loop reads it while the core moves on

    def _deliver(self, future: asyncio.Future[Any] | None, result: Any, error: BaseException | None,
                 before_apply: Callable[[Any], object] | None, output: CoreOutput | None) -> None:
        """On the loop: apply one call's output, then wake its caller (in call order)."""
        try:
            if before_apply is not None and error is None:
                before_apply(result)
            if output is not None:
                self._apply(output)
        except Exception:
            # A bug in carrying out one output must not leave its caller waiting forever.
            self._log.exception("internal error applying the core's output")
        if future is None or future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
