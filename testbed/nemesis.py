"""The nemesis: a random fault schedule drawn from a seed, as Jepsen's nemesis does.

:func:`schedule` is pure: the same :class:`~testbed.scenario.Nemesis` step and the same nodes give the same
strikes, so a failing run is replayed by running its scenario again. The runner carries the strikes out
(:meth:`testbed.runner.ScenarioRunner._step_nemesis`), recording each in the history.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from testbed.proxy import Effect
from testbed.scenario import Nemesis

DELAY = Effect(delay=0.1, jitter=0.02)
"""The ``delay`` fault: 100 ms ± 20 ms on every link of one node."""
LOSS = Effect(loss=0.05)
"""The ``loss`` fault: 5 % of the chunks on every link of one node are late by a retransmission."""
EFFECTS = {"delay": DELAY, "loss": LOSS}


@dataclass(frozen=True, slots=True)
class Strike:
    """One fault: ``fault`` strikes ``at`` seconds into the step and is undone at ``until``."""

    at: float
    until: float
    fault: str
    node: str | None = None
    """The node paused, killed or degraded (None for a partition)."""
    groups: tuple[tuple[str, ...], ...] = ()
    """The partition's two groups."""

    def describe(self) -> str:
        """``3.0-5.0s partition introducer,peer1 | peer2,peer3``."""
        target = " | ".join(",".join(g) for g in self.groups) if self.groups else str(self.node)
        return f"{self.at:.1f}-{self.until:.1f}s {self.fault} {target}"


def schedule(step: Nemesis, nodes: Sequence[str], peers: Sequence[str]) -> list[Strike]:
    """The strikes of ``step`` on a federation of ``nodes`` (``peers`` among them may be killed)."""
    rng = random.Random(step.seed)
    hold = step.hold if step.hold is not None else step.every / 2
    strikes = []
    at = 0.0
    while at + hold <= step.duration:
        fault = rng.choice(step.faults)
        if fault == "partition" and len(nodes) >= 2:
            shuffled = list(nodes)
            rng.shuffle(shuffled)
            cut = rng.randint(1, len(shuffled) - 1)
            groups = (tuple(sorted(shuffled[:cut])), tuple(sorted(shuffled[cut:])))
            strikes.append(Strike(at, at + hold, fault, groups=groups))
        elif fault == "kill" and peers:
            strikes.append(Strike(at, at + hold, fault, rng.choice(list(peers))))
        elif fault != "partition" and fault != "kill":
            strikes.append(Strike(at, at + hold, fault, rng.choice(list(nodes))))
        at += step.every
    return strikes
