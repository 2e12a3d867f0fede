"""THE route table of a server: for each link role and frame type, the handler, the verification, the
replay rule — applied in one place, :meth:`Router.dispatch` (after aioquic's frame handler table with the
epochs each frame is allowed in).

Reading a row: ``Route(handler, verify, replay, peers_only)`` under ``(role, frame type)``. A frame type
without a row for the link's role is refused by that role's :data:`REFUSALS` entry (the text names the role's
expectation). ``Verify.HANDLER`` / ``Replay.HANDLER`` mark rows whose rule is special; the handler's
docstring says why.

Cost: one dictionary look-up per frame; the verification a row names is the frame's only signature check.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from socp import crypto
from socp.envelope import Envelope, FrameType
from socp.errors import BadFrame, InvalidSignature
from socp.interop import LEGACY_SIG_HINT
from socp.replay import ReplayCache
from socp.server.files import Files
from socp.server.links import Link, LinkRole
from socp.server.mesh import Mesh
from socp.server.outbox import Outbox
from socp.server.peers import ServerBook
from socp.server.presence import Presence
from socp.server.public import PublicChannel
from socp.server.registry import Registry
from socp.server.routing import Routing

Handler = Callable[[Link, Envelope, int], None]
"""``handler(link, frame, now)``: the frame passed its row's role, verification and replay checks."""


class Verify(enum.Enum):
    """Who must have signed a frame before its handler runs."""

    NONE = "none"                  # nothing to verify (the exchange is bound to the connection)
    HANDLER = "handler"            # special: the handler verifies (see its docstring)
    SELF_SIGNED = "self-signed"    # transport-signed by the key its payload announces
    LINKED_SERVER = "linked"       # from the linked server, signed with its pinned key
    PINNED_SERVER = "pinned"       # from any pinned server (gossip relayed by the linked one), signed with its key
    LINK_USER = "user"             # ``from`` is this connection's user (user frames carry content signatures)


class Replay(enum.Enum):
    """What the replay cache says about a frame before its handler runs."""

    NONE = "none"          # no check (answers a frame of ours on this connection)
    HANDLER = "handler"    # special: the handler checks (see its docstring)
    FRESH = "fresh"        # timestamp within the window; bound to the connection's nonce, not de-duplicated
    ONCE = "once"          # fresh, and a duplicate is dropped silently


@dataclass(frozen=True, slots=True)
class Route:
    """One row of the table."""

    handler: Handler
    verify: Verify
    replay: Replay
    peers_only: bool = False
    """Refused by introducers (they accept no users), before anything else is checked."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """What a role does with a frame type it has no row for: check, then refuse with ``message``."""

    verify: Verify
    replay: Replay
    message: str | None
    """Format with ``{type}``; None: ignore the frame."""
    fatal: bool = False


REFUSALS: dict[LinkRole, Refusal] = {
    LinkRole.PENDING: Refusal(Verify.NONE, Replay.NONE, "a new connection must start with USER_HELLO, "
                              "USER_LOGIN_REQUEST, SERVER_HELLO_JOIN or SERVER_ANNOUNCE, not {type}", fatal=True),
    LinkRole.DIALING: Refusal(Verify.NONE, Replay.NONE, None),
    LinkRole.JOINING: Refusal(Verify.NONE, Replay.NONE, "expected SERVER_WELCOME after SERVER_HELLO_JOIN, got {type}",
                              fatal=True),
    LinkRole.SERVER: Refusal(Verify.NONE, Replay.NONE, "{type} is not allowed on a server link"),
    LinkRole.USER: Refusal(Verify.LINK_USER, Replay.ONCE, "{type} is not something a user may send (yet)"),
}
"""Per role, the answer to a frame type without a row (the texts are part of the interface: tests and
peers read them)."""

INTRODUCER_REFUSAL = "this server is an introducer and accepts no users; connect to a peer server"


def route_table(mesh: Mesh, presence: Presence, routing: Routing, public: PublicChannel, files: Files,
                registry: Registry) -> dict[tuple[LinkRole, FrameType], Route]:
    """The table, bound to one server's components."""
    pending, joining, server, user = LinkRole.PENDING, LinkRole.JOINING, LinkRole.SERVER, LinkRole.USER
    t = FrameType
    V, R = Verify, Replay
    rows: list[tuple[LinkRole, tuple[FrameType, ...], Route]] = [
        # role    frame types                                  handler                     verify          replay
        (pending, (t.USER_HELLO,), Route(presence.on_user_hello, V.HANDLER, R.HANDLER, peers_only=True)),
        (pending, (t.USER_LOGIN_REQUEST,), Route(registry.on_login_request, V.NONE, R.FRESH, peers_only=True)),
        (pending, (t.USER_LOGIN_PROOF,), Route(registry.on_login_proof, V.NONE, R.FRESH)),
        (pending, (t.SERVER_HELLO_JOIN,), Route(mesh.on_hello_join, V.HANDLER, R.HANDLER)),
        (pending, (t.SERVER_ANNOUNCE, t.SERVER_HELLO_LINK), Route(mesh.on_direct_announce, V.SELF_SIGNED, R.HANDLER)),
        (joining, (t.SERVER_WELCOME,), Route(mesh.on_welcome, V.HANDLER, R.NONE)),
        (joining, (t.ERROR,), Route(mesh.on_join_error, V.NONE, R.NONE)),
        (server, (t.HEARTBEAT,), Route(mesh.on_heartbeat, V.LINKED_SERVER, R.ONCE)),
        (server, (t.SERVER_ANNOUNCE, t.SERVER_HELLO_LINK), Route(mesh.on_mesh_announce, V.SELF_SIGNED, R.ONCE)),
        (server, (t.USER_ADVERTISE,), Route(presence.on_user_advertise, V.PINNED_SERVER, R.ONCE)),
        (server, (t.USER_REMOVE,), Route(presence.on_user_remove, V.PINNED_SERVER, R.ONCE)),
        (server, (t.SERVER_PRESENCE_SYNC,), Route(presence.on_presence_sync, V.LINKED_SERVER, R.ONCE)),
        (server, (t.SERVER_DELIVER,), Route(routing.on_server_deliver, V.LINKED_SERVER, R.HANDLER)),
        (server, (t.ERROR,), Route(routing.on_server_error, V.LINKED_SERVER, R.ONCE)),
        (server, (t.ACK,), Route(routing.on_server_ack, V.LINKED_SERVER, R.ONCE)),
        (server, (t.SERVER_USER_RECORDS,), Route(registry.on_user_records, V.LINKED_SERVER, R.ONCE)),
        (server, (t.PUBLIC_CHANNEL_ADD,), Route(public.on_public_add, V.LINKED_SERVER, R.ONCE)),
        (server, (t.PUBLIC_CHANNEL_UPDATED,), Route(public.on_public_updated, V.LINKED_SERVER, R.ONCE)),
        # a server's own key share (standard §9.3): interop profile only, the handler refuses it otherwise
        (server, (t.PUBLIC_CHANNEL_KEY_SHARE,), Route(public.on_server_key_share, V.LINKED_SERVER, R.ONCE)),
        (server, (t.PUBKEY_REQUEST,), Route(presence.on_pubkey_request, V.LINKED_SERVER, R.ONCE)),
        (server, (t.PUBKEY_RESPONSE,), Route(presence.on_pubkey_response, V.LINKED_SERVER, R.ONCE)),
        (user, (t.LIST_REQUEST,), Route(presence.on_list_request, V.LINK_USER, R.ONCE)),
        (user, (t.HEARTBEAT,), Route(routing.on_user_heartbeat, V.LINK_USER, R.ONCE)),
        (user, (t.MSG_DIRECT,), Route(routing.on_direct, V.LINK_USER, R.ONCE)),
        (user, (t.FILE_START, t.FILE_CHUNK, t.FILE_END), Route(files.on_file_frame, V.LINK_USER, R.ONCE)),
        (user, (t.MSG_PUBLIC_CHANNEL, t.PUBLIC_CHANNEL_KEY_SHARE), Route(public.on_public_frame, V.LINK_USER, R.ONCE)),
        (user, (t.USER_REGISTER,), Route(registry.on_register, V.LINK_USER, R.ONCE)),
        (user, (t.DIRECTORY_QUERY,), Route(registry.on_directory_query, V.LINK_USER, R.ONCE)),
        (user, (t.PUBKEY_REQUEST,), Route(presence.on_pubkey_request, V.LINK_USER, R.ONCE)),
        (user, (t.ACK, t.ERROR), Route(routing.on_user_reply, V.LINK_USER, R.ONCE)),
    ]
    table: dict[tuple[LinkRole, FrameType], Route] = {}
    for role, frame_types, route in rows:
        for frame_type in frame_types:
            assert (role, frame_type) not in table, f"two routes for {frame_type} on {role.value} links"
            table[(role, frame_type)] = route
    return table


class Router:
    """Applies the route table: role, then verification, then replay, then the handler."""

    def __init__(self, table: dict[tuple[LinkRole, FrameType], Route], *, introducer: bool, out: Outbox,
                 book: ServerBook, replay: ReplayCache) -> None:
        self._table = table
        self._introducer = introducer
        self._out = out
        self._book = book
        self._replay = replay

    def dispatch(self, link: Link, frame: Envelope, now: int) -> None:
        """Route ``frame`` received on ``link``; raises ProtocolError when it is refused."""
        route = self._table.get((link.role, frame.type))
        if route is None:
            refusal = REFUSALS[link.role]
            if refusal.message is None or not self._admitted(link, frame, now, refusal.verify, refusal.replay):
                return
            raise BadFrame(refusal.message.format(type=frame.type), msg_ref=frame.msg_ref, fatal=refusal.fatal)
        if route.peers_only and self._introducer:
            raise BadFrame(INTRODUCER_REFUSAL, msg_ref=frame.msg_ref, fatal=True)
        if self._admitted(link, frame, now, route.verify, route.replay):
            route.handler(link, frame, now)

    def _admitted(self, link: Link, frame: Envelope, now: int, verify: Verify, replay: Replay) -> bool:
        """Apply a verification and a replay rule; False for a duplicate to drop silently."""
        if verify is Verify.LINKED_SERVER or verify is Verify.PINNED_SERVER:
            self._book.verify(link, frame, now, relayable=verify is Verify.PINNED_SERVER)
        elif verify is Verify.SELF_SIGNED:
            key_text = crypto.normalize_public_key(frame.payload["pubkey"])
            if not self._out.verify(frame, key_text, link):
                hint = "" if self._out.legacy_interop else f" ({LEGACY_SIG_HINT})"
                raise InvalidSignature(f"{frame.type} is not signed by the key it announces{hint}",
                                       msg_ref=frame.msg_ref, fatal=True)
        elif verify is Verify.LINK_USER and frame.sender != link.peer:
            raise BadFrame(f"frame 'from' {frame.sender} is not this connection's user {link.peer}",
                           msg_ref=frame.msg_ref)
        if replay is Replay.ONCE:
            return self._replay.admit(frame, now)
        if replay is Replay.FRESH:
            self._replay.check_fresh(frame, now)
        return True

