"""Nodes built without one check, to show that the hostile-peer scenario notices (issue 11).

``python -m tests.mutants MUTATION [socp-node flags...]`` removes the check ``MUTATION`` names from the server
core, says so on stderr, and runs the node as ``python -m node`` would; the local backend takes it as its node
command (``LocalCluster(command=[sys.executable, "-m", "tests.mutants", MUTATION])``). Test-only: nothing
outside tests/ imports it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def _without_sender_pub_check() -> None:
    from socp.server.routing import Routing

    def accept_any_key(self: Routing, link: Any, frame: Any, payload: Any) -> None:
        return None

    Routing._check_sender_key = accept_any_key  # type: ignore[method-assign]


def _without_attestation_check() -> None:
    from socp.server.presence import Presence

    def believe_any_location(self: Presence, user_id: str, raw: object, server_id: str, key_text: str) -> bool:
        return True

    Presence._attested = believe_any_location  # type: ignore[method-assign]


MUTATIONS: dict[str, tuple[str, Callable[[], None]]] = {
    "sender-pub": ("a forwarded user frame's sender_pub is not checked against the sender's pinned key "
                   "(issue 11, finding 2)", _without_sender_pub_check),
    "attestation": ("a server may place any user on itself without the user's signed attestation "
                    "(issue 11, finding 3)", _without_attestation_check),
}
"""Mutation name → (what the node no longer checks, the patch)."""


def main(argv: list[str]) -> int:
    """Apply ``argv[0]``'s mutation, then run the node with the remaining arguments."""
    if not argv or argv[0] not in MUTATIONS:
        print(f"usage: python -m tests.mutants {{{','.join(MUTATIONS)}}} [socp-node flags...]", file=sys.stderr)
        return 2
    what, patch = MUTATIONS[argv[0]]
    patch()
    print(f"MUTANT NODE: {what}", file=sys.stderr, flush=True)
    from node.__main__ import main as node_main
    return node_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
