"""The attacks of issue 11, each run against a live federation and judged by what the nodes did.

An attack returns an :class:`AttackOutcome`: which finding it replays, the defence expected, what was
observed (with counts), and whether the defence held. After every attack the honest users (``alice`` on the
first peer, ``bob`` on the second) must still exchange a direct message both ways; an attack after which they
cannot has failed whatever else it saw.

The attacker holds no node's secrets. Its means are those of the threat model (docs/SECURITY.md): a stranger
on the network (raw connections, frames it sniffed), a rogue server that was admitted to the mesh (it joined
through the introducer, with the federation's join token when there is one), and a plain user.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from client.connection import ClientConnection
from client.downloads import save_file
from client.keystore import Identity
from socp import crypto
from socp import envelope as env
from socp.envelope import BROADCAST, FrameType
from socp.errors import ProtocolError
from socp.login import LoginChallenged, LoginGranted, LoginRefused, LoginSession
from socp.user import ClientEvent, DirectMessage, FileReceived, UserOffline
from testbed.adversary.wire import HonestUser, RogueServer, Wire, now_ms, secret_fields, try_open

KeySource = Callable[[], Awaitable[crypto.PrivateKey]]
"""A fresh RSA-4096 key for each call (the runner's pool in tests, generated otherwise)."""
HealthProbe = Callable[[str], Awaitable[tuple[int, dict[str, Any]]]]


@dataclass(frozen=True, slots=True)
class AttackOutcome:
    """One attack's verdict."""

    attack: str
    finding: str
    """The finding of issue 11 it replays (``1``..``9``, or ``held``)."""
    expected: str
    observed: str
    passed: bool
    counts: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The outcome as report data."""
        return asdict(self)

    def line(self) -> str:
        """``PASS join-registry: ...`` for progress output."""
        return f"{'PASS' if self.passed else 'FAIL'} {self.attack} (finding {self.finding}): {self.observed}"


@dataclass
class Target:
    """The federation under attack, as the scenario runner sees it."""

    urls: Mapping[str, str]
    """Node name → ``ws://`` URL reachable from here."""
    introducer: str
    peers: list[str]
    health: HealthProbe
    status: HealthProbe
    wait_healthy: Callable[[float], Awaitable[float]]
    collect_logs: Callable[[Path], list[Path]]
    """Copy every node's log into a folder (the backend's ``collect_logs``)."""
    new_key: KeySource
    factor: float = 1.0
    join_token: str | None = None
    other_source: str | None = None
    """A local address the nodes see as another source than the default one (``127.0.0.2`` for processes on
    loopback), for attacks that must come from elsewhere than the honest users; None when there is none (behind
    Docker's port publishing every host connection comes from one address)."""

    def seconds(self, base: float) -> float:
        """``base`` seconds scaled by the run's timeout factor."""
        return base * self.factor


class Arena:
    """The honest users and the rogue server the attacks share, and the round trip that judges them."""

    def __init__(self, target: Target) -> None:
        self.t = target
        self.alice: HonestUser | None = None
        self.bob: HonestUser | None = None
        self.keys: dict[str, crypto.PrivateKey] = {}
        self.ids: dict[str, str] = {}
        self.rogue: RogueServer | None = None
        self.server_ids: dict[str, str] = {}
        self.login: tuple[str, str] | None = None
        self.victims: list[RogueServer] = []
        """Well-behaved servers run here so that their frames can be sniffed and replayed."""
        self._extra: list[HonestUser | Wire] = []
        self._round = 0
        self.secrets: set[str] = set()
        """Every plaintext and password the attacks sent: none may appear in a node's log."""

    def secret(self, text: str) -> str:
        """Remember ``text`` as a plaintext no node may log; returns it."""
        self.secrets.add(text)
        return text

    @property
    def p1(self) -> str:
        """The first peer (alice's)."""
        return self.t.peers[0]

    @property
    def p2(self) -> str:
        """The second peer (bob's)."""
        return self.t.peers[1]

    @property
    def p3(self) -> str:
        """The third peer when there is one, else the second."""
        return self.t.peers[2] if len(self.t.peers) > 2 else self.t.peers[1]

    async def key(self, name: str) -> crypto.PrivateKey:
        """The key of ``name`` (made on first use)."""
        if name not in self.keys:
            self.keys[name] = await self.t.new_key()
            self.ids[name] = str(uuid.uuid4())
        return self.keys[name]

    async def user(self, name: str, node: str, *, display: str | None = None) -> HonestUser:
        """Connect ``name`` on ``node`` (closed with the arena)."""
        key = await self.key(name)
        user = await HonestUser.connect(self.t.urls[node], display or name, key, user_id=self.ids[name],
                                        timeout=self.t.seconds(10))
        self.server_ids[node] = user.server_id
        self._extra.append(user)
        return user

    async def setup(self) -> None:
        """alice on the first peer, bob on the second, each knowing the other; the rogue joined and linked."""
        self.alice = await self.user("alice", self.p1)
        self.bob = await self.user("bob", self.p2)
        for me, other in ((self.alice, self.bob), (self.bob, self.alice)):
            if not await me.knows(other.user_id, self.t.seconds(10)):
                raise RuntimeError(f"{me.name} never learned of {other.name}")
        self.rogue = await self.server("the rogue server (an admitted member)")

    async def server(self, what: str) -> RogueServer:
        """A server run here, joined through the introducer and linked with every peer (as a member must be:
        nodes count themselves healthy once they have linked with every server they learned of)."""
        server = RogueServer(await self.t.new_key(), join_token=self.t.join_token or None)
        if await server.join(self.t.urls[self.t.introducer], self.t.introducer, self.t.seconds(15)) is None:
            await server.close()
            raise RuntimeError(f"{what} could not join through the introducer")
        for node in self.t.urls:
            if not self.server_ids.get(node):
                _, body = await self.t.health(node)
                self.server_ids[node] = str(body.get("server_id", ""))
        for node in self.t.peers:
            if not await server.link(self.t.urls[node], node, self.server_ids[node], self.t.seconds(10)):
                await server.close()
                raise RuntimeError(f"{what} could not link with {node}")
        return server

    async def ensure_honest(self) -> None:
        """Bring alice and bob back if an attack cost them their connection."""
        if self.alice is None or self.alice.wire.closed:
            self.alice = await self.user("alice", self.p1)
        if self.bob is None or self.bob.wire.closed:
            self.bob = await self.user("bob", self.p2)

    async def round_trip(self) -> str | None:
        """alice → bob and bob → alice; None when both arrived, else what went wrong."""
        try:
            await self.ensure_honest()
        except (RuntimeError, OSError, TimeoutError) as exc:
            return f"an honest user could not reconnect: {exc}"
        assert self.alice is not None and self.bob is not None
        self._round += 1
        for sender, recipient in ((self.alice, self.bob), (self.bob, self.alice)):
            if not await sender.knows(recipient.user_id, self.t.seconds(10)):
                return f"{sender.name} no longer sees {recipient.name} online"
            text = self.secret(f"round trip {self._round} {sender.name}->{recipient.name} {secrets.token_hex(4)}")
            try:
                await sender.send_direct(recipient.user_id, text)
            except ProtocolError as exc:
                return f"{sender.name} cannot address {recipient.name}: {exc}"
            got = await recipient.wait_event(
                dm_with(text), self.t.seconds(10))
            if got is None:
                return f"{sender.name}'s DM to {recipient.name} did not arrive"
        return None

    async def close(self) -> None:
        """Close every connection the attacks opened."""
        for server in [self.rogue, *self.victims]:
            if server is not None:
                await server.close()
        for item in self._extra:
            await item.close()


Attack = Callable[[Arena], Awaitable[AttackOutcome]]


def dm_with(text: str) -> Callable[[ClientEvent], bool]:
    """A predicate: a direct message showing ``text``."""
    return lambda event: isinstance(event, DirectMessage) and event.text == text


def outcome(attack: str, finding: str, expected: str, failures: list[str], counts: dict[str, int],
            summary: str) -> AttackOutcome:
    """An outcome that passed when ``failures`` is empty."""
    observed = summary if not failures else f"{summary}; " + "; ".join(failures)
    return AttackOutcome(attack, finding, expected, observed, not failures, counts)


# --- 1: secrets for strangers --------------------------------------------------------------------

async def join_registry(a: Arena) -> AttackOutcome:
    """Unsigned and signed-unknown-key SERVER_HELLO_JOIN to the introducer and a peer, asking for the
    registry: no salt, verifier or sealed key may come back."""
    if a.login is None:
        await register_password_user(a)
    throwaway = await a.t.new_key()
    pub = crypto.encode_public_key(throwaway.public_key())
    counts = {"attempts": 0, "welcomed": 0, "frames_with_secrets": 0}
    failures = []
    for node in (a.t.introducer, a.p1):
        for signed in (False, True):
            counts["attempts"] += 1
            wire = await try_open(a.t.urls[node], f"stranger->{node}")
            if wire is None:
                continue
            payload = {"host": "127.0.0.1", "port": 9, "pubkey": pub}
            frame = env.make(FrameType.SERVER_HELLO_JOIN, str(uuid.uuid4()), a.t.urls[node].removeprefix("ws://"),
                             now_ms(), payload, throwaway if signed else None)
            await wire.send(frame)
            await wire.quiet(a.t.seconds(2))
            if wire.frames(FrameType.SERVER_WELCOME):
                counts["welcomed"] += 1
            leaked = [r for r in wire.inbox if secret_fields(r.text)]
            counts["frames_with_secrets"] += len(leaked)
            if leaked:
                fields = sorted(set().union(*(secret_fields(r.text) for r in leaked)))
                failures.append(f"{'signed' if signed else 'unsigned'} join to {node} received {fields}")
            await wire.close()
    return outcome("join-registry", "1", "a stranger's join (unsigned, or signed by an unknown key) gets no login "
                   "secret", failures, counts, f"{counts['welcomed']}/{counts['attempts']} joins welcomed, "
                   f"{counts['frames_with_secrets']} frames with secrets")


async def register_password_user(a: Arena) -> None:
    """carol registers a password on the first peer (what the join attack would steal), then leaves."""
    key = await a.key("carol")
    login = f"carol-{secrets.token_hex(3)}"
    password = a.secret(secrets.token_urlsafe(12))
    connection = await ClientConnection.connect(a.t.urls[a.p1], Identity(a.ids["carol"], login, key),
                                                timeout=a.t.seconds(10))
    try:
        await connection.register_password(password, login=login, timeout=a.t.seconds(15))
    finally:
        await connection.close()
    a.login = (login, password)


# --- 2, 3: a rogue server steals users -----------------------------------------------------------

async def forged_dm(a: Arena) -> AttackOutcome:
    """The rogue advertises alice as its own, removes her, then delivers a DM "from alice" to bob under its
    own key (and once under alice's key with a signature it made): bob must not be handed either."""
    assert a.rogue is not None and a.alice is not None and a.bob is not None
    rogue, alice, bob = a.rogue, a.alice, a.bob
    peer2 = bob.server_id
    await rogue.send(a.p2, rogue.make(FrameType.USER_ADVERTISE, BROADCAST, {
        "user_id": alice.user_id, "server_id": rogue.server_id, "pubkey": alice.pubkey,
        "meta": {"display_name": "alice"}}))
    await rogue.send(a.p2, rogue.make(FrameType.USER_REMOVE, BROADCAST,
                                      {"user_id": alice.user_id, "server_id": rogue.server_id}))
    start = len(bob.wire.inbox)
    texts, ciphertexts = [], []
    for variant, sender_pub in (("rogue key", rogue.pubkey), ("alice's key", alice.pubkey)):
        text = a.secret(f"forged from alice ({variant}) {secrets.token_hex(4)}")
        ts = now_ms()
        ciphertext = crypto.rsa_encrypt(crypto.decode_public_key(bob.pubkey), text.encode())
        content_sig = crypto.sign_direct(rogue.key, ciphertext, alice.user_id, bob.user_id, ts)
        await rogue.send(a.p2, rogue.make(FrameType.SERVER_DELIVER, peer2, {
            "user_id": bob.user_id, "ciphertext": ciphertext, "sender": alice.user_id, "sender_pub": sender_pub,
            "content_sig": content_sig}, ts=ts))
        texts.append(text)
        ciphertexts.append(ciphertext)
    await bob.wire.quiet(a.t.seconds(2))
    bob.pump()
    handed = [f.payload.get("ciphertext") for f in bob.wire.frames(start=start)]
    shown = [e for e in bob.events if isinstance(e, DirectMessage) and e.text in texts]
    # The first forgery carries a key that is not alice's: her pinned key refutes it at bob's server. The
    # second carries her key with a signature she never made: only a content_sig check refutes it (bob's
    # client must; his server may).
    counts = {"forged": len(texts), "delivered_foreign_key": handed.count(ciphertexts[0]),
              "delivered_bad_sig": handed.count(ciphertexts[1]), "shown_by_bob": len(shown)}
    failures = []
    if counts["delivered_foreign_key"]:
        failures.append("bob's server handed him a DM from alice under the rogue's key")
    if shown:
        failures.append(f"bob's client showed {len(shown)} as from alice")
    return outcome("forged-dm", "2", "a DM under a key that is not the sender's pinned key is refused by bob's "
                   "server, and bob's client shows no forgery", failures, counts,
                   f"{counts['delivered_foreign_key']} under a foreign key and {counts['delivered_bad_sig']} with a "
                   f"bad signature handed to bob, {len(shown)} shown")


async def swallow_dms(a: Arena) -> AttackOutcome:
    """The rogue advertises bob as its own, again and again: alice's DMs must still reach bob."""
    assert a.rogue is not None and a.alice is not None and a.bob is not None
    rogue, alice, bob = a.rogue, a.alice, a.bob
    start = len(rogue.links[a.p1].inbox)

    async def advertise() -> None:
        await rogue.send(a.p1, rogue.make(FrameType.USER_ADVERTISE, BROADCAST, {
            "user_id": bob.user_id, "server_id": rogue.server_id, "pubkey": bob.pubkey,
            "meta": {"display_name": "bob"}}))

    texts = []
    for number in range(5):
        await advertise()
        await rogue.links[a.p1].quiet(a.t.seconds(0.1))  # let the advert land before the DM
        text = a.secret(f"for bob only {number} {secrets.token_hex(4)}")
        texts.append(text)
        with contextlib.suppress(ProtocolError):
            await alice.send_direct(bob.user_id, text)
    arrived = 0
    for text in texts:
        if await bob.wait_event(dm_with(text),
                                a.t.seconds(5)) is not None:
            arrived += 1
    swallowed = [f for f in rogue.links[a.p1].frames(FrameType.SERVER_DELIVER, start)
                 if f.payload.get("user_id") == bob.user_id]
    counts = {"sent": len(texts), "arrived": arrived, "routed_to_rogue": len(swallowed)}
    failures = []
    if arrived < len(texts):
        failures.append(f"{len(texts) - arrived} DMs lost")
    if swallowed:
        failures.append(f"{len(swallowed)} DMs routed to the rogue")
    return outcome("swallow-dms", "3", "a server cannot place a user on itself without the user's proof",
                   failures, counts, f"{arrived}/{len(texts)} DMs reached bob, {len(swallowed)} went to the rogue")


# --- 4: re-timestamped and replayed frames ---------------------------------------------------------

def retimestamped(text: str, ts: int) -> str:
    """A copy of a frame's wire text with a fresh ``ts`` and everything else (the signature too) kept."""
    frame = json.loads(text)
    frame["ts"] = ts
    return json.dumps(frame, separators=(",", ":"))


async def replays(a: Arena) -> AttackOutcome:
    """Sniffed frames sent again, as is and with a fresh ``ts``: a USER_HELLO (a login as alice elsewhere),
    a USER_REMOVE (an online user removed), an empty presence snapshot, a server's SERVER_ANNOUNCE (a link
    hijack). None may act."""
    assert a.rogue is not None and a.alice is not None and a.bob is not None
    rogue, bob = a.rogue, a.bob
    counts: dict[str, int] = {"copies": 0, "acted": 0}
    failures: list[str] = []

    # USER_HELLO, sniffed from alice's connection: copies to bob's server and to her own.
    hello = a.alice.session.hello(now_ms() - 1000)
    for node in (a.p2, a.p1):
        for label, text in (("exact", str(hello)), ("re-timestamped", retimestamped(hello, now_ms()))):
            counts["copies"] += 1
            wire = await try_open(a.t.urls[node], f"hello-copy->{node}")
            if wire is None:
                continue
            await wire.send(text)
            if await wire.frame(FrameType.ACK, a.t.seconds(2)) is not None:
                counts["acted"] += 1
                failures.append(f"{label} copy of alice's USER_HELLO logged in at {node}")
            await wire.close()

    # USER_REMOVE of dave (on the first peer), captured by the rogue when dave left; dave comes back.
    dave = await a.user("dave", a.p1)
    await bob.knows(dave.user_id, a.t.seconds(10))
    mark = len(rogue.links[a.p1].inbox)
    await dave.close()
    removal = await rogue.links[a.p1].wait_for(
        lambda r: r.frame is not None and r.frame.type is FrameType.USER_REMOVE
        and r.frame.payload.get("user_id") == dave.user_id, a.t.seconds(5), mark)
    dave = await a.user("dave", a.p1)
    if removal is None or not await bob.knows(dave.user_id, a.t.seconds(10)):
        failures.append("setup: no USER_REMOVE of dave was captured, or bob never saw dave again")
    else:
        start = len(bob.events)
        for text in (removal.text, retimestamped(removal.text, now_ms())):
            counts["copies"] += 1
            await rogue.send(a.p2, text)
        await bob.wire.quiet(a.t.seconds(1.5))
        bob.pump()
        if any(isinstance(e, UserOffline) and e.record.user_id == dave.user_id for e in bob.events[start:]):
            counts["acted"] += 1
            failures.append("a replayed USER_REMOVE took dave offline for bob")

    # An empty SERVER_PRESENCE_SYNC of the third peer (nobody on it yet), then erin arrives there.
    sync_link = rogue.links[a.p3]
    empty = await sync_link.wait_for(
        lambda r: r.frame is not None and r.frame.type is FrameType.SERVER_PRESENCE_SYNC
        and r.frame.payload.get("users") == [], a.t.seconds(8))
    if a.p3 != a.p2 and empty is not None:
        erin = await a.user("erin", a.p3)
        if await bob.knows(erin.user_id, a.t.seconds(10)):
            start = len(bob.events)
            for text in (empty.text, retimestamped(empty.text, now_ms())):
                counts["copies"] += 1
                await rogue.send(a.p2, text)
            await bob.wire.quiet(a.t.seconds(1.5))
            bob.pump()
            if any(isinstance(e, UserOffline) and e.record.user_id == erin.user_id for e in bob.events[start:]):
                counts["acted"] += 1
                failures.append("a replayed empty presence snapshot took erin offline for bob")
        await erin.close()

    # SERVER_ANNOUNCE of a server opening its link to the first peer, sniffed on the (plain ws://) wire: a
    # fellow server run here (it behaves), whose link must survive copies of its opener sent by a stranger.
    try:
        victim = await a.server("a second server")
    except RuntimeError as exc:
        victim = None
        failures.append(f"setup: {exc} (nothing to sniff)")
    if victim is not None:
        a.victims.append(victim)
        opener = victim.sent[a.p1]
        for label, text in (("exact", opener), ("re-timestamped", retimestamped(opener, now_ms()))):
            counts["copies"] += 1
            wire = await try_open(a.t.urls[a.p1], "announce-copy")
            if wire is None:
                continue
            await wire.send(text)
            await wire.quiet(a.t.seconds(1.5))
            served = [f for f in wire.frames() if f.type is not FrameType.ERROR]
            if served:
                counts["acted"] += 1
                failures.append(f"{label} copy of a SERVER_ANNOUNCE opened a server link "
                                f"({', '.join(sorted({str(f.type) for f in served}))})")
            await wire.close()
        if victim.links[a.p1].closed:
            counts["acted"] += 1
            failures.append("the copies cost the real server its link")
    return outcome("replays", "4", "sniffed frames, as is or re-timestamped, act nowhere", failures, counts,
                   f"{counts['acted']}/{counts['copies']} copies acted")


# --- 5: cheap to refuse ----------------------------------------------------------------------------

def _deaths(body: Mapping[str, Any]) -> int:
    value = body.get("link_deaths")
    if isinstance(value, int):
        return value
    if isinstance(value, Mapping):
        return sum(v for v in value.values() if isinstance(v, int))
    return 0


async def junk_flood(a: Arena, frames: int = 3000, connections: int = 300) -> AttackOutcome:
    """5-byte junk as fast as one unauthenticated connection can send it, then many connections at once from
    the attacker's address: the node keeps answering /healthz, no peer declares it dead, no signature is spent
    on the stranger, and the connection caps refuse the excess."""
    node, source = a.p1, a.t.other_source
    before = {n: _deaths((await a.t.status(n))[1]) for n in a.t.urls}
    counts = {"junk_sent": 0, "health_checks": 0, "health_failures": 0, "signed_errors": 0,
              "connections_tried": connections, "connections_accepted": 0, "link_deaths": 0}
    failures = []

    async def probe(stop: asyncio.Event) -> None:
        while not stop.is_set():
            status, _ = await a.t.health(node)
            counts["health_checks"] += 1
            if status != 200:
                counts["health_failures"] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)

    async def probing(work: Awaitable[None], probe_it: bool) -> None:
        stop = asyncio.Event()
        prober = asyncio.create_task(probe(stop)) if probe_it else None
        try:
            await work
        finally:
            stop.set()
            if prober is not None:
                await prober

    async def junk() -> None:
        wire = await try_open(a.t.urls[node], "junk", source)
        if wire is None:
            return
        for _ in range(frames):
            if not await wire.send("xxxxx"):
                break
            counts["junk_sent"] += 1
        await wire.quiet(a.t.seconds(2))
        counts["signed_errors"] = sum(1 for f in wire.frames(FrameType.ERROR) if f.sig)
        await wire.close()

    async def crowd() -> None:
        opened = await asyncio.gather(*(try_open(a.t.urls[node], f"many-{i}", source) for i in range(connections)))
        live = [w for w in opened if w is not None]
        # A cap may accept the handshake and close at once: count what is still open after a moment.
        await asyncio.gather(*(w.quiet(a.t.seconds(1)) for w in live))
        counts["connections_accepted"] = sum(1 for w in live if not w.closed)
        await asyncio.gather(*(w.close() for w in live))

    await probing(junk(), True)
    # The crowd fills the per-source cap: /healthz is probed meanwhile only when it comes from another address.
    await probing(crowd(), source is not None)
    healthy_again = False
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(a.t.seconds(10)):
            while not healthy_again:
                healthy_again = (await a.t.health(node))[0] == 200
    after = {n: _deaths((await a.t.status(n))[1]) for n in a.t.urls}
    counts["link_deaths"] = sum(after[n] - before[n] for n in after)
    if counts["health_failures"]:
        failures.append(f"/healthz failed {counts['health_failures']}/{counts['health_checks']} times")
    if not healthy_again:
        failures.append(f"{node} did not answer /healthz 200 within 10 s after the crowd left")
    if counts["signed_errors"]:
        failures.append(f"{counts['signed_errors']} RSA-signed ERRORs spent on a stranger's junk")
    if counts["link_deaths"]:
        failures.append(f"{counts['link_deaths']} server links declared dead")
    if counts["connections_accepted"] >= connections:
        failures.append(f"all {connections} connections from one source were kept (no cap)")
    return outcome("junk-flood", "5", "junk costs no signature, the node stays responsive, peers keep it, "
                   "connections are capped", failures, counts,
                   f"{counts['junk_sent']} junk frames, {counts['signed_errors']} signed errors, "
                   f"{counts['health_failures']}/{counts['health_checks']} health failures, "
                   f"{counts['connections_accepted']}/{connections} connections kept")


# --- 6: display-name impostor -----------------------------------------------------------------------

async def name_impostor(a: Arena) -> AttackOutcome:
    """mallory calls herself "alice": bob's client must tell them apart, and must not send to mallory what
    he meant for alice while alice is away."""
    assert a.alice is not None and a.bob is not None
    bob, alice = a.bob, a.alice
    mallory = await a.user("mallory", a.p2, display="alice")
    failures = []
    counts = {"checks": 3, "fooled": 0}
    await bob.knows(mallory.user_id, a.t.seconds(10))
    await mallory.knows(bob.user_id, a.t.seconds(10))
    text = a.secret(f"it is me, alice {secrets.token_hex(4)}")
    await mallory.send_direct(bob.user_id, text)
    fake = await bob.wait_event(dm_with(text), a.t.seconds(5))
    real = next((e for e in bob.events if isinstance(e, DirectMessage) and e.sender_id == alice.user_id), None)
    real_label = real.sender_label if real is not None else "alice"
    if isinstance(fake, DirectMessage) and fake.sender_label == real_label:
        counts["fooled"] += 1
        failures.append(f"mallory's DM is labelled {fake.sender_label!r}, exactly as alice's")
    with contextlib.suppress(ProtocolError):
        if bob.session.resolve("alice").user_id == mallory.user_id:
            counts["fooled"] += 1
            failures.append("'alice' resolved to mallory while both are online")
    await alice.close()
    await bob.wire.quiet(a.t.seconds(1))
    bob.pump()
    with contextlib.suppress(ProtocolError):
        if bob.session.resolve("alice").user_id == mallory.user_id:
            counts["fooled"] += 1
            failures.append("with alice away, /tell alice would go to mallory")
    await mallory.close()
    return outcome("name-impostor", "6", "a name that is not unique is shown with a fingerprint and /tell asks",
                   failures, counts, f"bob fooled {counts['fooled']}/{counts['checks']} times")


# --- 7: login enumeration and lockout -----------------------------------------------------------------

async def login_probe(a: Arena) -> AttackOutcome:
    """The same answer for a known and an unknown login; wrong passwords from fresh connections (from another
    address than the real user's) do not keep the real user out."""
    if a.login is None:
        await register_password_user(a)
    assert a.login is not None
    login, password = a.login
    failures = []
    shapes = {}
    for label, name in (("known", login), ("unknown", f"nobody-{secrets.token_hex(3)}")):
        wire = await try_open(a.t.urls[a.p1], f"login-{label}", a.t.other_source)
        if wire is None:
            failures.append("setup: connection refused")
            continue
        await wire.send(LoginSession(name, "irrelevant").request(now_ms()))
        answer = await wire.wait_for(lambda r: r.frame is not None, a.t.seconds(5))
        frame = answer.frame if answer is not None else None
        shapes[label] = (str(frame.type), tuple(sorted(frame.payload)), str(frame.payload.get("code", ""))) \
            if frame is not None else ("none", (), "")
        await wire.close()
    distinguishable = len(shapes) == 2 and shapes["known"][:2] != shapes["unknown"][:2]
    if distinguishable:
        failures.append(f"known login answered {shapes['known'][0]}, unknown {shapes['unknown'][0]} "
                        f"{shapes['unknown'][2]}".strip())
    counts = {"probes": len(shapes), "distinguishable": int(distinguishable), "wrong_attempts": 0,
              "real_login_ok": 0, "proof_replays": 0, "proof_replays_granted": 0}
    # A proof sniffed from a successful login, replayed under a fresh challenge (issue 11, suspected).
    granted, proof = await password_login(a, login, password, None)
    if not granted or proof is None:
        failures.append("setup: the real user's own login failed")
    else:
        counts["proof_replays"] = 1
        if (await password_login(a, login, "", None, replayed_proof=proof))[0]:
            failures.append("a sniffed login proof, replayed under a fresh challenge, was granted")
            counts["proof_replays_granted"] = 1
    if a.t.other_source is None:
        return outcome("login-probe", "7", "decoy challenge for unknown logins; a sniffed proof does not log in "
                       "again (lockout not checked: the nodes see every connection from here as one source)",
                       failures, counts, f"known/unknown answers {'differ' if distinguishable else 'alike'}, "
                       f"{counts['proof_replays_granted']}/{counts['proof_replays']} proof replays granted")
    for _ in range(6):
        if (await password_login(a, login, "guess " + secrets.token_hex(4), a.t.other_source))[0]:
            failures.append("a wrong password was accepted")
        counts["wrong_attempts"] += 1
    try:
        connection = await ClientConnection.login(a.t.urls[a.p1], login, password, timeout=a.t.seconds(15))
        await connection.close()
        counts["real_login_ok"] = 1
    except Exception as exc:
        failures.append(f"after {counts['wrong_attempts']} wrong attempts from another address the real user could "
                        f"not log in: {type(exc).__name__}: {exc}")
    return outcome("login-probe", "7", "decoy challenge for unknown logins; throttling never locks the real user "
                   "out; a sniffed proof does not log in again", failures, counts,
                   f"known/unknown answers {'differ' if distinguishable else 'alike'}, "
                   f"{counts['proof_replays_granted']}/{counts['proof_replays']} proof replays granted, "
                   f"real login after {counts['wrong_attempts']} wrong ones: "
                   f"{'ok' if counts['real_login_ok'] else 'refused'}")


async def password_login(a: Arena, login: str, password: str, source: str | None, *,
                         replayed_proof: str | None = None) -> tuple[bool, str | None]:
    """One password login on a fresh connection (from ``source``): (granted, the proof frame sent). With
    ``replayed_proof`` the proof is not made but copied from a sniffed login, its nonce set to this challenge's."""
    wire = await try_open(a.t.urls[a.p1], "login", source)
    if wire is None:
        return False, None
    attempt = LoginSession(login, password)
    sent: str | None = None
    try:
        await wire.send(attempt.request(now_ms()))
        position = 0
        for _ in range(4):  # the challenge, then the answer to the proof (a refusal ends it sooner)
            received = await wire.wait_for(lambda r: True, a.t.seconds(5), position)
            if received is None:
                return False, sent
            position = wire.inbox.index(received) + 1
            for event in attempt.receive_text(received.text, now_ms()):
                if isinstance(event, LoginChallenged):
                    if replayed_proof is None:
                        sent = await asyncio.to_thread(attempt.prove, now_ms())
                    else:
                        copy = json.loads(replayed_proof)
                        copy["payload"]["nonce"] = attempt.nonce
                        sent = json.dumps(copy)
                    await wire.send(sent)
                elif isinstance(event, LoginGranted):
                    return True, sent
                elif isinstance(event, LoginRefused):
                    return False, sent
        return False, sent
    finally:
        await wire.close()


# --- 8: lone surrogates ---------------------------------------------------------------------------

async def lone_surrogate(a: Arena) -> AttackOutcome:
    r"""``"\ud800"`` in ``from`` and ``to``, before and after a hello: BAD_FRAME, no crash (close 1011)."""
    counts = {"frames": 0, "bad_frame": 0, "internal_errors": 0}
    failures = []
    sender = await a.user("sam", a.p1)
    raw = '{"type":"%s","from":"%s","to":"%s","ts":%d,"payload":%s,"sig":""}'
    pending = await try_open(a.t.urls[a.p1], "surrogate")
    cases: list[tuple[Wire | None, str]] = [
        (pending, raw % ("USER_HELLO", "\\ud800", "*", now_ms(), json.dumps({"pubkey": sender.pubkey}))),
        (sender.wire, raw % ("LIST_REQUEST", sender.user_id, "\\udfff", now_ms(), "{}")),
        (sender.wire, raw % ("MSG_DIRECT", "\\ud800", sender.user_id, now_ms(), json.dumps(
            {"ciphertext": "AA", "sender_pub": sender.pubkey, "content_sig": "AA"}))),
    ]
    for wire, text in cases:
        if wire is None:
            continue
        start = len(wire.inbox)
        counts["frames"] += 1
        await wire.send(text)
        error = await wire.frame(FrameType.ERROR, a.t.seconds(3), start)
        if error is not None and error.payload.get("code") == "BAD_FRAME":
            counts["bad_frame"] += 1
        if wire.close_code == 1011:
            counts["internal_errors"] += 1
    if pending is not None:
        await pending.close()
    await sender.close()
    status, _ = await a.t.health(a.p1)
    if counts["bad_frame"] < counts["frames"]:
        failures.append(f"only {counts['bad_frame']}/{counts['frames']} answered BAD_FRAME")
    if counts["internal_errors"]:
        failures.append(f"{counts['internal_errors']} connections closed with 1011 (internal error)")
    if status != 200:
        failures.append(f"{a.p1} unhealthy afterwards ({status})")
    return outcome("lone-surrogate", "8", "BAD_FRAME, the session and the node survive", failures, counts,
                   f"{counts['bad_frame']}/{counts['frames']} BAD_FRAME, {counts['internal_errors']} internal errors")


# --- 9 and held: replays --------------------------------------------------------------------------

async def replay_flush(a: Arena, flood: int = 1500) -> AttackOutcome:
    """A DM re-sent exactly is dropped, also after a flood of distinct frames meant to flush the cache."""
    assert a.bob is not None
    bob = a.bob
    mallory = await a.user("mel", a.p1)
    await mallory.knows(bob.user_id, a.t.seconds(10))
    text = a.secret(f"only once {secrets.token_hex(4)}")
    frame = await mallory.send_direct(bob.user_id, text)
    first = await bob.wait_event(dm_with(text), a.t.seconds(5))
    counts = {"flood": 0, "rate_limited": 0, "copies_delivered": 0}
    start_ts = now_ms()
    await mallory.wire.send(frame)                      # the exact copy at once
    for i in range(flood):
        heartbeat = env.make(FrameType.HEARTBEAT, mallory.user_id, mallory.server_id, start_ts + i + 1, {})
        if not await mallory.wire.send(heartbeat):
            break
        counts["flood"] += 1
    await mallory.wire.send(frame)                      # and after the flood
    await bob.wire.quiet(a.t.seconds(2))
    bob.pump()
    delivered = sum(1 for e in bob.events if isinstance(e, DirectMessage) and e.text == text)
    ciphertext = json.loads(frame)["payload"]["ciphertext"]
    handed = sum(1 for f in bob.wire.frames() if f.payload.get("ciphertext") == ciphertext)
    counts["copies_delivered"] = handed
    counts["rate_limited"] = mallory.wire.errors().count("RATE_LIMITED")
    await mallory.close()
    failures = []
    if first is None:
        failures.append("setup: the original DM never arrived")
    if handed > 1:
        failures.append(f"bob's server handed him {handed} copies of one DM")
    if delivered > 1:
        failures.append(f"bob's client showed it {delivered} times")
    return outcome("replay-flush", "9", "an exact replay is dropped, before and after a flood", failures, counts,
                   f"{handed} copies reached bob after {counts['flood']} flood frames "
                   f"({counts['rate_limited']} RATE_LIMITED)")


async def impersonation(a: Arena) -> AttackOutcome:
    """Held: alice's id under another key, ``from`` alice on mallory's connection, alice's key as mallory's
    ``sender_pub``: each refused, nothing reaches bob."""
    assert a.alice is not None and a.bob is not None
    alice, bob = a.alice, a.bob
    counts = {"attempts": 0, "refused": 0}
    failures = []
    # alice's id, mallory's key, on bob's server.
    counts["attempts"] += 1
    key = await a.key("mallory")
    try:
        impostor = await HonestUser.connect(a.t.urls[a.p2], "alice", key, user_id=alice.user_id,
                                            timeout=a.t.seconds(5))
        failures.append("alice's id was accepted under mallory's key")
        await impostor.close()
    except RuntimeError:
        counts["refused"] += 1
    mallory = await a.user("mallory", a.p1)
    await mallory.knows(bob.user_id, a.t.seconds(10))
    start = len(bob.wire.inbox)
    text = a.secret(f"impersonated {secrets.token_hex(4)}")
    ts = now_ms()
    ciphertext = crypto.rsa_encrypt(crypto.decode_public_key(bob.pubkey), text.encode())
    forged = [
        # from alice on mallory's connection, signed by mallory
        env.make(FrameType.MSG_DIRECT, alice.user_id, bob.user_id, ts, {
            "ciphertext": ciphertext, "sender_pub": alice.pubkey,
            "content_sig": crypto.sign_direct(mallory.key, ciphertext, alice.user_id, bob.user_id, ts)}, mallory.key),
        # mallory's frame claiming alice's key
        env.make(FrameType.MSG_DIRECT, mallory.user_id, bob.user_id, ts + 1, {
            "ciphertext": ciphertext, "sender_pub": alice.pubkey,
            "content_sig": crypto.sign_direct(mallory.key, ciphertext, mallory.user_id, bob.user_id, ts + 1)},
            mallory.key),
    ]
    for frame in forged:
        counts["attempts"] += 1
        mark = len(mallory.wire.inbox)
        await mallory.wire.send(frame)
        if await mallory.wire.frame(FrameType.ERROR, a.t.seconds(3), mark) is not None:
            counts["refused"] += 1
    await bob.wire.quiet(a.t.seconds(1))
    if any(f.payload.get("ciphertext") == ciphertext for f in bob.wire.frames(start=start)):
        failures.append("an impersonating DM reached bob")
    if counts["refused"] < counts["attempts"]:
        failures.append(f"only {counts['refused']}/{counts['attempts']} attempts refused")
    await mallory.close()
    return outcome("impersonation", "held", "impersonation and key substitution refused", failures, counts,
                   f"{counts['refused']}/{counts['attempts']} refused")


HOSTILE_NAMES = ("../../../etc/passwd", "/etc/shadow", "..\\..\\boot.ini", "a/../../b", ".", "..",
                 "con", "x" * 300, "\u202etxt.exe", "nul\u0000byte")


async def hostile_file_names(a: Arena) -> AttackOutcome:
    """Held: files with path-escaping names land inside the receiver's download folder (or are refused)."""
    assert a.bob is not None
    bob = a.bob
    mallory = await a.user("mallory-files", a.p1)
    await mallory.knows(bob.user_id, a.t.seconds(10))
    counts = {"names": 0, "received": 0, "escaped": 0}
    failures = []
    sent = 0
    with tempfile.TemporaryDirectory(prefix="socp-hostile-") as folder:
        root = Path(folder) / "downloads"
        for name in HOSTILE_NAMES:
            counts["names"] += 1
            try:
                content = a.secret(f"file content {secrets.token_hex(6)}").encode()
                outgoing = mallory.session.send_file(bob.user_id, name, content, now_ms())
            except ProtocolError:
                continue  # refused at the sender: nothing to escape
            while (frame := outgoing.next_frame(now_ms())) is not None:
                await mallory.wire.send(frame)
            sent += 1
        await bob.wait_count(lambda e: isinstance(e, FileReceived), sent, a.t.seconds(10))
        received = [e for e in bob.events if isinstance(e, FileReceived)]
        counts["received"] = len(received)
        for event in received:
            with contextlib.suppress(Exception):
                path = save_file(root, event.name, event.data).resolve()
                if root.resolve() not in path.parents:
                    counts["escaped"] += 1
                    failures.append(f"{event.name!r} was written to {path}")
    await mallory.close()
    return outcome("hostile-file-names", "held", "no path escape", failures, counts,
                   f"{counts['received']} files received, {counts['escaped']} escaped the download folder")


async def giant_and_deep(a: Arena) -> AttackOutcome:
    """Held: a 3 MiB frame and a deeply nested one are refused quickly; the node stays healthy."""
    counts = {"frames": 2, "refused": 0}
    failures = []
    for label, text in (("giant", '{"type":"HEARTBEAT","pad":"' + "x" * (3 * 1024 * 1024) + '"}'),
                        ("deep", "[" * 100_000 + "]" * 100_000)):
        wire = await try_open(a.t.urls[a.p1], label)
        if wire is None:
            continue
        await wire.send(text)
        error = await wire.frame(FrameType.ERROR, a.t.seconds(5))
        if error is not None or await wire.until_closed(a.t.seconds(1)):
            counts["refused"] += 1
        else:
            failures.append(f"{label} frame neither refused nor answered")
        await wire.close()
    status, _ = await a.t.health(a.p1)
    if status != 200:
        failures.append(f"{a.p1} unhealthy afterwards ({status})")
    return outcome("giant-deep-frames", "held", "refused quickly, node healthy", failures, counts,
                   f"{counts['refused']}/{counts['frames']} refused")


def plaintexts_in(files: list[Path], markers: set[str]) -> dict[str, list[str]]:
    """File name → the ``markers`` found in it (files without any are left out)."""
    found = {}
    for path in files:
        text = path.read_bytes().decode("utf-8", "replace")
        leaked = sorted(marker for marker in markers if marker in text)
        if leaked:
            found[path.name] = leaked
    return found


async def no_plaintext_in_logs(a: Arena) -> AttackOutcome:
    """Held: no plaintext of any DM, file or password the attacks sent appears in any node's log (run last)."""
    counts = {"markers": len(a.secrets), "logs": 0, "found": 0}
    failures = []
    with tempfile.TemporaryDirectory(prefix="socp-logs-") as folder:
        logs = await asyncio.to_thread(a.t.collect_logs, Path(folder))
        counts["logs"] = len(logs)
        for name, leaked in plaintexts_in(logs, a.secrets).items():
            counts["found"] += len(leaked)
            failures.append(f"{name} contains {len(leaked)} plaintext(s), e.g. {leaked[0]!r}")
    if not counts["logs"]:
        failures.append("no node log could be collected")
    return outcome("no-plaintext-in-logs", "held", "no plaintext or password in any node log", failures, counts,
                   f"{counts['found']} of {counts['markers']} plaintexts found in {counts['logs']} node logs")


ATTACKS: dict[str, Attack] = {
    "join-registry": join_registry,
    "forged-dm": forged_dm,
    "swallow-dms": swallow_dms,
    "replays": replays,
    "junk-flood": junk_flood,
    "name-impostor": name_impostor,
    "login-probe": login_probe,
    "lone-surrogate": lone_surrogate,
    "replay-flush": replay_flush,
    "impersonation": impersonation,
    "hostile-file-names": hostile_file_names,
    "giant-deep-frames": giant_and_deep,
    "no-plaintext-in-logs": no_plaintext_in_logs,
}
"""Every attack by name, in the order ``all`` runs them."""


async def run_attacks(target: Target, names: list[str] | None = None,
                      progress: Callable[[str], None] | None = None) -> list[AttackOutcome]:
    """Run ``names`` (default: all) against ``target``; each outcome also requires an honest DM round trip
    afterwards."""
    chosen = names if names else list(ATTACKS)
    unknown = [name for name in chosen if name not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attack(s) {', '.join(unknown)}; known: {', '.join(ATTACKS)}")
    if len(target.peers) < 2:
        raise ValueError(f"the attacks need at least two peers (alice's and bob's), not {len(target.peers)}")
    arena = Arena(target)
    results: list[AttackOutcome] = []
    try:
        await arena.setup()
        for name in chosen:
            try:
                result = await ATTACKS[name](arena)
            except Exception as exc:  # an attack that breaks is a failed attack, with its reason
                result = AttackOutcome(name, "?", "runs to the end", f"{type(exc).__name__}: {exc}", False)
            problem = await arena.round_trip()
            if problem is not None:
                result = AttackOutcome(result.attack, result.finding, result.expected,
                                       f"{result.observed}; honest users afterwards: {problem}", False,
                                       result.counts)
            results.append(result)
            if progress is not None:
                progress(f"      {result.line()}")
    finally:
        await arena.close()
    return results
