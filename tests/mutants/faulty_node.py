"""``socp-node`` with a deliberate delivery fault, for the checker's mutation test.

Run as a script (``python tests/mutants/faulty_node.py ARGS``, the local backend's ``command``): it patches
:meth:`socp.server.routing.Routing.on_server_deliver` and then runs the node as usual. ``SOCP_MUTANT`` says
which fault: ``drop:N`` drops every Nth direct message forwarded to this node (and, where the origin asked for
delivery receipts, acknowledges it all the same: a lying node, whose loss only the recipient's side shows),
``twice:N`` hands every Nth one to its recipient twice (past the node's own repeat filter). Each time it logs
``mutant <what> <user msg_ref>`` at WARNING, so the test knows which messages the checker must name.
"""

from __future__ import annotations

import os
import sys

from socp.envelope import PUBLIC_GROUP, Envelope, FrameType
from socp.server.links import Link
from socp.server.receipts import digest_of
from socp.server.routing import Routing

MODE, _, EVERY = os.environ.get("SOCP_MUTANT", "drop:10").partition(":")
_original = Routing.on_server_deliver
_count = 0


def _faulty_deliver(self: Routing, link: Link, frame: Envelope, now: int) -> None:
    global _count
    payload = frame.payload
    direct = payload.get("user_id") != PUBLIC_GROUP and payload.get("kind", FrameType.MSG_DIRECT.value) == \
        FrameType.MSG_DIRECT.value
    if direct and frame.to == self._out.server_id:
        _count += 1
        if _count % int(EVERY or 10) == 0:
            user_ref = f"{FrameType.MSG_DIRECT.value}:{payload.get('sender')}:{payload.get('user_id')}:{frame.ts}"
            if MODE == "drop":
                self._out.log.warning("mutant dropped %s", user_ref)
                if self.receipts.capable(link.peer):
                    self.receipts.acknowledge(link, frame, digest_of(frame), now)
                return
            self._out.log.warning("mutant doubled %s", user_ref)
            _original(self, link, frame, now)
            self.receipts._delivered.pop(digest_of(frame), None)  # past the repeat filter, as a buggy node would
    _original(self, link, frame, now)


Routing.on_server_deliver = _faulty_deliver  # type: ignore[method-assign]

if __name__ == "__main__":
    from node.__main__ import main

    sys.exit(main())
