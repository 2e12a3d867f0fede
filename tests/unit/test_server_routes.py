"""The server's route table (socp/server/routes.py): which frame goes where, after which checks."""

from __future__ import annotations

import pytest

from socp.actions import PeerFault
from socp.envelope import FrameType
from socp.server import LinkRole, ServerState
from socp.server.routes import REFUSALS, Replay, Route, Verify, route_table
from tests.unit.conftest import TwoServers
from tests.unit.harness import Net


def table_of(state: ServerState) -> dict[tuple[LinkRole, FrameType], Route]:
    return route_table(state.mesh, state.presence, state.routing, state.public, state.files, state.registry)


def test_every_role_has_an_answer_for_unrouted_frames() -> None:
    assert set(REFUSALS) == set(LinkRole)


def test_the_table_routes_what_each_role_may_send(net: Net) -> None:
    table = table_of(net.introducer("I").state)
    routed = {role: {t for (r, t) in table if r is role} for role in LinkRole}
    assert routed[LinkRole.PENDING] == {FrameType.USER_HELLO, FrameType.USER_LOGIN_REQUEST, FrameType.USER_LOGIN_PROOF,
                                        FrameType.SERVER_HELLO_JOIN, FrameType.SERVER_ANNOUNCE,
                                        FrameType.SERVER_HELLO_LINK}
    assert routed[LinkRole.JOINING] == {FrameType.SERVER_WELCOME, FrameType.ERROR}
    assert routed[LinkRole.DIALING] == set()
    assert routed[LinkRole.SERVER] == {
        FrameType.HEARTBEAT, FrameType.SERVER_ANNOUNCE, FrameType.SERVER_HELLO_LINK, FrameType.USER_ADVERTISE,
        FrameType.USER_REMOVE, FrameType.SERVER_PRESENCE_SYNC, FrameType.SERVER_DELIVER, FrameType.ERROR,
        FrameType.ACK, FrameType.SERVER_USER_RECORDS, FrameType.PUBLIC_CHANNEL_ADD, FrameType.PUBLIC_CHANNEL_UPDATED,
        FrameType.PUBKEY_REQUEST, FrameType.PUBKEY_RESPONSE,
        FrameType.PUBLIC_CHANNEL_KEY_SHARE}  # a server's own share: refused by its handler unless --interop
    assert FrameType.USER_HELLO not in routed[LinkRole.USER]
    # Every user frame is from the connection's user and de-duplicated; every server frame but the
    # self-signed announce is verified with a pinned key and de-duplicated (SERVER_DELIVER by its handler: a
    # repeat of a delivered frame is ACKed again under delivery receipts).
    for (role, frame_type), route in table.items():
        if role is LinkRole.USER:
            assert (route.verify, route.replay) == (Verify.LINK_USER, Replay.ONCE), frame_type
        elif role is LinkRole.SERVER:
            expected = Replay.HANDLER if frame_type is FrameType.SERVER_DELIVER else Replay.ONCE
            assert route.replay is expected, frame_type
            assert route.verify in (Verify.LINKED_SERVER, Verify.PINNED_SERVER, Verify.SELF_SIGNED), frame_type
    relayed = {t for (r, t), route in table.items() if route.verify is Verify.PINNED_SERVER}
    assert relayed == {FrameType.USER_ADVERTISE, FrameType.USER_REMOVE}


@pytest.mark.parametrize("frame_type", [FrameType.USER_HELLO, FrameType.USER_LOGIN_REQUEST])
def test_introducers_refuse_user_frames_first(net: Net, frame_type: FrameType) -> None:
    intro = net.introducer("I")
    mallory = net.user("mallory")
    mallory.open(intro)
    # Unsigned, stale and oddly shaped: the introducer's refusal still comes first.
    mallory.send(mallory.frame(frame_type, intro.server_id, {"login": "x", "pubkey": "junk"}, ts=0))
    [error] = mallory.errors()
    assert "introducer and accepts no users" in error.payload["detail"]
    assert mallory.closed


def test_a_frame_a_server_link_does_not_take_is_refused_with_its_type(two: TwoServers) -> None:
    frame = two.net.nodes["B"].state.out.make(FrameType.LIST_REQUEST, two.a.server_id, two.net.now, {})
    two.net.inject("B", "A", frame.to_wire())
    faults = two.a.events_of(PeerFault)
    assert faults and faults[-1].detail == "LIST_REQUEST is not allowed on a server link"
    assert not faults[-1].fatal
