"""A scripted malicious server and client that attack a live federation over the wire (issue 11).

:func:`run_attacks` runs the attacks of :data:`ATTACKS` against a :class:`Target` and returns one
:class:`AttackOutcome` each; the ``attack`` scenario step (``testbed/scenarios/hostile-peer.yaml``) reports them.
"""

from testbed.adversary.attacks import ATTACKS, AttackOutcome, Target, run_attacks

__all__ = ["ATTACKS", "AttackOutcome", "Target", "run_attacks"]
