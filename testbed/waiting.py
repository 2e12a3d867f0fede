"""The testbed's one way to wait: :func:`poll` a check under a deadline, and fail in a way that explains itself.

Every wait of the testbed (a node listening, a healthy full mesh, a container state, converged directories)
goes through :func:`poll`. A wait ends in one of three ways:

- the check returns a value that is not :class:`Pending`: :func:`poll` returns it;
- a node the wait depends on has exited (a process that died, a container that stopped): :class:`NodeExited`
  at once, instead of polling on until the deadline;
- the deadline passes: :class:`WaitTimeout`.

Both errors are :class:`WaitFailed`, whose message says what was awaited, for how long, what the check saw
last, the tail of each relevant node's log and a hint (after testcontainers ``core/waiting_utils.py``)::

    timed out after 2.0s (21 checks) waiting for a healthy full mesh
      last seen: peer2: http 0, not linked to ['introducer', 'peer1']
      peer2 log (last 3 lines; all of it in /tmp/run/peer2.log):
        | [...] Listening on ws://127.0.0.1:40127
        ...
      hint: a node that never links could not reach an introducer or refused its key
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")

DEFAULT_INTERVAL = 0.1
"""Seconds between two checks unless the caller says otherwise."""
EXIT_PROBE_INTERVAL = 0.5
"""Least seconds between two looks at whether a node exited (a Docker API call for containers)."""
LOG_TAIL_LINES = 20
"""Lines of each relevant node's log quoted by a failed wait."""


@dataclass(frozen=True, slots=True)
class Pending:
    """What a check returns while its condition does not hold yet; ``seen`` is what it observed."""

    seen: str


@dataclass(frozen=True, slots=True)
class Diagnose:
    """What a wait may ask about the nodes it depends on (built by :meth:`ClusterBackend.diagnose`)."""

    exited: Callable[[], Awaitable[Mapping[str, str]]] | None = None
    """The relevant nodes that have exited although they should run: node → how (``exit code 1``)."""
    log_tails: Callable[[int], Awaitable[Mapping[str, str]]] | None = None
    """The last ``n`` lines of each relevant node's log: node → text (only read when the wait fails)."""
    logs: str = ""
    """Where the full logs are."""
    hint: str = ""
    """What to try or look at when the wait fails."""


@dataclass(eq=False)
class WaitFailed(Exception):
    """A wait that did not end well; ``str()`` is the whole explanation."""

    what: str
    """What was awaited (``a healthy full mesh``)."""
    seconds: float
    """How long the wait lasted."""
    checks: int
    """How many times the condition was checked."""
    last: str
    """What the check saw last."""
    log_tails: Mapping[str, str] = field(default_factory=dict)
    """The tail of each relevant node's log."""
    logs: str = ""
    """Where the full logs are."""
    hint: str = ""
    """What to try or look at."""

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def headline(self) -> str:
        """The first line of the message (overridden by each kind of failure)."""
        return f"gave up after {self.seconds:.1f}s waiting for {self.what}"

    def __str__(self) -> str:
        lines = [self.headline(), f"  last seen: {self.last}"]
        for node, tail in self.log_tails.items():
            text = tail.rstrip("\n")
            count = len(text.splitlines())
            lines.append(f"  {node} log (last {count} lines" + (f"; all of it in {self.logs}" if self.logs else "")
                         + "):")
            lines += [f"    | {line}" for line in text.splitlines()] or ["    | (empty)"]
        if self.logs and not self.log_tails:
            lines.append(f"  logs: {self.logs}")
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)


@dataclass(eq=False)
class WaitTimeout(WaitFailed, TimeoutError):
    """The deadline passed before the condition held."""

    timeout: float = 0.0
    """The deadline, in seconds after the start of the wait."""

    def headline(self) -> str:
        """``timed out after 2.0s (21 checks) waiting for …``."""
        return f"timed out after {self.timeout:.1f}s ({self.checks} checks) waiting for {self.what}"


@dataclass(eq=False)
class NodeExited(WaitFailed, RuntimeError):
    """A node the wait depends on exited: waiting on could only end in a timeout."""

    exited: Mapping[str, str] = field(default_factory=dict)
    """The nodes that exited: node → how."""

    def headline(self) -> str:
        """``peer2 exited (exit code 1) after 0.4s waiting for …``."""
        gone = ", ".join(f"{node} ({how})" for node, how in self.exited.items())
        return f"{gone} exited after {self.seconds:.1f}s waiting for {self.what}"


async def poll(check: Callable[[], Awaitable[T | Pending]], timeout: float, what: str,
               diagnose: Diagnose | None = None, *, interval: float = DEFAULT_INTERVAL) -> T:
    """Await ``check()`` every ``interval`` seconds until it returns something other than :class:`Pending`, and
    return that. A blocking check runs in a thread: ``lambda: asyncio.to_thread(look)``.

    Raises :class:`NodeExited` as soon as ``diagnose.exited`` reports a node, and :class:`WaitTimeout` once
    ``timeout`` seconds have passed; both quote the last :attr:`Pending.seen` and ``diagnose``'s log tails and
    hint. Bounded: a check still running at the deadline is cancelled, so the wait lasts at most ``timeout``
    plus one ``interval`` and checks at most ``timeout / interval + 2`` times.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + timeout
    next_exit_probe = start
    last = "nothing yet (the first check did not finish)"
    checks = 0
    while True:
        checks += 1
        budget = max(deadline - loop.time(), interval)
        try:
            async with asyncio.timeout(budget) as scope:
                result = await check()
        except TimeoutError:
            if not scope.expired():
                raise  # the check's own timeout: its business
            result = Pending(f"{last} (the last check was still running after {budget:.1f}s)")
        if not isinstance(result, Pending):
            return result
        last = result.seen
        now = loop.time()
        if diagnose is not None and diagnose.exited is not None and now >= next_exit_probe:
            next_exit_probe = now + EXIT_PROBE_INTERVAL
            exited = dict(await diagnose.exited())
            if exited:
                raise NodeExited(what, loop.time() - start, checks, last, *await _tails(diagnose, exited),
                                 exited=exited)
        if now >= deadline:
            raise WaitTimeout(what, now - start, checks, last, *await _tails(diagnose, None), timeout=timeout)
        await asyncio.sleep(min(interval, max(0.0, deadline - now)))


async def _tails(diagnose: Diagnose | None, only: Mapping[str, str] | None) -> tuple[dict[str, str], str, str]:
    """(log tails, where the logs are, hint) for a failed wait; the tails of ``only`` those nodes when given."""
    if diagnose is None:
        return {}, "", ""
    tails: dict[str, str] = {}
    if diagnose.log_tails is not None:
        try:
            tails = dict(await diagnose.log_tails(LOG_TAIL_LINES))
        except Exception as exc:  # the explanation must not hide the failure it explains
            tails = {"(logs)": f"could not read the logs: {type(exc).__name__}: {exc}"}
    if only is not None:
        tails = {node: text for node, text in tails.items() if node in only} or tails
    return tails, diagnose.logs, diagnose.hint
