"""The node's one configuration object, built once in ``__main__`` from flags."""

from __future__ import annotations

import argparse
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from socp import crypto
from socp.errors import ConfigError, ProtocolError
from socp.server import BootstrapEntry
from socp.settings import (
    DEFAULT_LOGIN_ATTEMPTS,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_IP,
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_RATE_BURST,
    DEFAULT_RATE_PER_SECOND,
    DEFAULT_SERVER_RATE_BURST,
    DEFAULT_SERVER_RATE_PER_SECOND,
    DEFAULT_TIMINGS,
    LOGIN_WINDOW_MS,
    MIB,
    Timings,
)

DEFAULT_BOOTSTRAP = "ws://127.0.0.1:9001"
JOIN_TOKEN_ENV = "SOCP_JOIN_TOKEN"
"""Environment variable read for the join token when ``--join-token`` is not given (keeps it out of ``ps``)."""


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything one node process needs; see ``socp-node --help`` for each field's flag."""

    name: str
    """Human name of the node (logs, default data directory)."""
    server_id: str | None
    """Requested server id; None keeps the stored one or mints a UUID v4."""
    introducer: bool
    """Run as a bootstrap introducer (registry of servers, no users)."""
    host: str
    """Address to bind."""
    port: int
    """Port to bind (0: any free port, reported on stdout)."""
    advertise_host: str
    """Host other servers dial to reach this node."""
    advertise_port: int | None
    """Port other servers dial (default: the bound port)."""
    data_dir: Path
    """Keys, identity and database."""
    bootstrap: tuple[BootstrapEntry, ...]
    """Introducers to join through (peer mode)."""
    log_level: str
    """Python logging level name."""
    timings: Timings
    """Heartbeat, peer timeout, presence sync and replay window (seconds)."""
    max_frame_bytes: int
    """Largest accepted frame."""
    rate_limit: float
    """Sustained frames per second allowed on one user connection."""
    rate_burst: int
    """Frames one user connection may send in a burst."""
    allow_unsigned_hello: bool
    """Interop switch: accept unsigned USER_HELLO."""
    show_identity: bool
    """Create the identity if needed, print it as JSON and exit."""
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    """Largest file (FILE_START ``size``) routed; larger ones get TOO_LARGE."""
    login_attempts: int = DEFAULT_LOGIN_ATTEMPTS
    """Failed password logins allowed per source address per minute before it is slowed down."""
    legacy_interop: bool = False
    """Accept payload-only transport signatures and '*'-addressed hellos / link openers (logged loudly)."""
    interop: bool = False
    """The interop profile (docs/INTEROP.md); implies ``legacy_interop`` and ``allow_unsigned_hello``."""
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    """Concurrent inbound connections accepted in total."""
    max_connections_per_ip: int = DEFAULT_MAX_CONNECTIONS_PER_IP
    """Concurrent inbound connections accepted from one source address."""
    server_rate_limit: float = DEFAULT_SERVER_RATE_PER_SECOND
    """Sustained frames per second allowed on one server link."""
    server_rate_burst: int = DEFAULT_SERVER_RATE_BURST
    """Frames one server link may send in a burst."""
    admit_keys: frozenset[str] = frozenset()
    """Admission control: server keys admitted to the federation (``--admit-keys FILE``)."""
    join_token: str = field(default="", repr=False)
    """Admission control: the federation's join secret (``--join-token`` or ``$SOCP_JOIN_TOKEN``); never logged."""


def build_parser() -> argparse.ArgumentParser:
    """The ``socp-node`` command line."""
    parser = argparse.ArgumentParser(
        prog="socp-node", description="SOCP v1.3 federated chat server (introducer or peer).")
    parser.add_argument("--name", default=None, help="node name (default: introducer or server)")
    parser.add_argument("--id", dest="server_id", default=None, help="server UUID v4 (default: stored or new)")
    parser.add_argument("--introducer", action="store_true", help="run as a bootstrap introducer")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None,
                        help="port to bind (default 9001 for an introducer, 8765 otherwise; 0 = any free port)")
    parser.add_argument("--advertise-host", default=None,
                        help="host other servers use to reach this one (default: --host, or the hostname "
                             "when binding 0.0.0.0)")
    parser.add_argument("--advertise-port", type=int, default=None, help="port other servers use (default --port)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="keys, identity and database (default ~/.local/share/socp/NAME)")
    parser.add_argument("--bootstrap", action="append", default=None, metavar="FILE.yaml|ws://HOST:PORT",
                        help=f"bootstrap introducers: a YAML file or URLs, repeatable (default {DEFAULT_BOOTSTRAP})")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    timings = DEFAULT_TIMINGS
    parser.add_argument("--heartbeat-interval", type=float, default=timings.heartbeat_interval, metavar="SECONDS",
                        help="HEARTBEAT period on server links (default %(default)g)")
    parser.add_argument("--peer-timeout", type=float, default=timings.peer_timeout, metavar="SECONDS",
                        help="silence after which a server link is dead and reconnected (default %(default)g)")
    parser.add_argument("--presence-sync-interval", type=float, default=timings.presence_sync_interval,
                        metavar="SECONDS", help="period of SERVER_PRESENCE_SYNC anti-entropy snapshots "
                                                "(default %(default)g)")
    parser.add_argument("--replay-window", type=float, default=timings.replay_window, metavar="SECONDS",
                        help="frames further than this from our clock are STALE (default %(default)g)")
    parser.add_argument("--max-frame-bytes", type=int, default=DEFAULT_MAX_FRAME_BYTES, metavar="BYTES",
                        help=f"larger frames get TOO_LARGE and the connection is closed "
                             f"(default {DEFAULT_MAX_FRAME_BYTES // MIB} MiB)")
    parser.add_argument("--rate-limit", type=float, default=DEFAULT_RATE_PER_SECOND, metavar="FRAMES_PER_S",
                        help="sustained frames/s per user connection (default %(default)g)")
    parser.add_argument("--rate-burst", type=int, default=DEFAULT_RATE_BURST, metavar="FRAMES",
                        help="burst of frames per user connection (default %(default)d)")
    parser.add_argument("--max-file-size", type=int, default=DEFAULT_MAX_FILE_BYTES, metavar="BYTES",
                        help=f"largest file routed; larger ones get TOO_LARGE "
                             f"(default {DEFAULT_MAX_FILE_BYTES // MIB} MiB)")
    parser.add_argument("--login-attempts", type=int, default=DEFAULT_LOGIN_ATTEMPTS, metavar="N",
                        help=f"failed password logins allowed per source address per {LOGIN_WINDOW_MS // 1000} s "
                             f"before it is slowed down (default %(default)d)")
    parser.add_argument("--server-rate-limit", type=float, default=DEFAULT_SERVER_RATE_PER_SECOND,
                        metavar="FRAMES_PER_S", help="sustained frames/s per server link (default %(default)g)")
    parser.add_argument("--server-rate-burst", type=int, default=DEFAULT_SERVER_RATE_BURST, metavar="FRAMES",
                        help="burst of frames per server link (default %(default)d)")
    parser.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS, metavar="N",
                        help="concurrent inbound connections in total; more are closed with 1013 "
                             "(default %(default)d)")
    parser.add_argument("--max-connections-per-ip", type=int, default=DEFAULT_MAX_CONNECTIONS_PER_IP, metavar="N",
                        help="concurrent inbound connections from one address; more are closed with 1013 "
                             "(default %(default)d)")
    parser.add_argument("--legacy-interop", action="store_true",
                        help="INSECURE interop switch: accept transport signatures over the payload alone and "
                             "USER_HELLO / SERVER_ANNOUNCE addressed to '*' (WIRE §2); logged as a WARNING")
    parser.add_argument("--interop", action="store_true",
                        help="interop profile (docs/INTEROP.md): accept other SOCP implementations' variants; "
                             "implies --legacy-interop and --allow-unsigned-hello; logged as a WARNING")
    parser.add_argument("--allow-unsigned-hello", action="store_true",
                        help="interop switch: accept USER_HELLO without a signature")
    parser.add_argument("--admit-keys", type=Path, default=None, metavar="FILE",
                        help="closed federation: admit only servers whose public key (base64url DER, one per line, "
                             "'#' comments) is listed, or that hold the join token")
    parser.add_argument("--join-token", default=None, metavar="TOKEN",
                        help=f"closed federation: the shared join secret (default ${JOIN_TOKEN_ENV}); joins prove "
                             "it with an HMAC and never send it. Without this and --admit-keys admission is open")
    parser.add_argument("--show-identity", action="store_true",
                        help="create the identity if needed, print {server_id, pubkey} as JSON, exit")
    return parser


def config_from_args(args: argparse.Namespace, hostname: str) -> NodeConfig:
    """Validate parsed flags into a :class:`NodeConfig` (raises :class:`ConfigError`)."""
    name = args.name or ("introducer" if args.introducer else "server")
    if args.server_id is not None:
        try:
            if str(uuid.UUID(args.server_id)) != args.server_id.lower():
                raise ValueError
        except ValueError:
            raise ConfigError(f"--id {args.server_id!r} is not a UUID") from None
    port = args.port if args.port is not None else (9001 if args.introducer else 8765)
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port} is out of range")
    if min(args.heartbeat_interval, args.peer_timeout, args.presence_sync_interval, args.replay_window) <= 0:
        raise ConfigError("intervals and timeouts must be positive")
    if args.peer_timeout <= args.heartbeat_interval:
        raise ConfigError("--peer-timeout must be longer than --heartbeat-interval")
    timings = Timings(heartbeat_interval=args.heartbeat_interval, peer_timeout=args.peer_timeout,
                      presence_sync_interval=args.presence_sync_interval, replay_window=args.replay_window)
    if args.rate_limit <= 0 or args.rate_burst < 1:
        raise ConfigError("--rate-limit and --rate-burst must be positive")
    if args.server_rate_limit <= 0 or args.server_rate_burst < 1:
        raise ConfigError("--server-rate-limit and --server-rate-burst must be positive")
    if args.max_connections < 1 or args.max_connections_per_ip < 1:
        raise ConfigError("--max-connections and --max-connections-per-ip must be at least 1")
    if args.max_file_size < 0 or args.login_attempts < 1:
        raise ConfigError("--max-file-size must not be negative and --login-attempts must be at least 1")
    admit_keys = load_admit_keys(args.admit_keys) if args.admit_keys is not None else frozenset()
    join_token = args.join_token if args.join_token is not None else os.environ.get(JOIN_TOKEN_ENV, "")
    advertise_host = args.advertise_host or (hostname if args.host in ("0.0.0.0", "::") else args.host)
    data_dir = args.data_dir or Path(os.path.expanduser("~/.local/share/socp")) / name
    bootstrap: tuple[BootstrapEntry, ...] = ()
    if not args.introducer or args.bootstrap:
        bootstrap = tuple(entry for source in (args.bootstrap or [DEFAULT_BOOTSTRAP])
                          for entry in load_bootstrap(source))
    return NodeConfig(
        name=name, server_id=args.server_id.lower() if args.server_id else None, introducer=args.introducer,
        host=args.host, port=port, advertise_host=advertise_host, advertise_port=args.advertise_port,
        data_dir=data_dir, bootstrap=bootstrap, log_level=args.log_level,
        timings=timings,
        max_frame_bytes=args.max_frame_bytes, rate_limit=args.rate_limit, rate_burst=args.rate_burst,
        allow_unsigned_hello=args.allow_unsigned_hello or args.interop,
        show_identity=args.show_identity, max_file_bytes=args.max_file_size, login_attempts=args.login_attempts,
        legacy_interop=args.legacy_interop or args.interop, interop=args.interop, max_connections=args.max_connections,
        max_connections_per_ip=args.max_connections_per_ip, server_rate_limit=args.server_rate_limit,
        server_rate_burst=args.server_rate_burst, admit_keys=admit_keys, join_token=join_token,
    )


def load_admit_keys(path: Path) -> frozenset[str]:
    """The server keys of an ``--admit-keys`` file: one public key per line, blank lines and ``#`` comments
    skipped; each must be a valid RSA-4096 key (raises :class:`ConfigError` naming the line)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"--admit-keys {path}: {exc.strerror or exc}") from None
    keys = set()
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            keys.add(crypto.normalize_public_key(text))
        except ProtocolError as exc:
            raise ConfigError(f"--admit-keys {path}:{number}: {exc.detail}") from None
    if not keys:
        raise ConfigError(f"--admit-keys {path} lists no key")
    return frozenset(keys)


def load_bootstrap(source: str) -> list[BootstrapEntry]:
    """Bootstrap entries from a ``ws://host:port`` URL or a YAML file with ``bootstrap_servers``."""
    if source.startswith(("ws://", "wss://")):
        parts = urlsplit(source)
        if not parts.hostname or not parts.port:
            raise ConfigError(f"bootstrap URL {source!r} needs a host and a port")
        return [BootstrapEntry(parts.hostname, parts.port, None)]
    path = Path(source)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read bootstrap file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"bootstrap file {path} is not valid YAML: {exc}") from None
    servers = document.get("bootstrap_servers") if isinstance(document, dict) else None
    if not isinstance(servers, list) or not servers:
        raise ConfigError(f"bootstrap file {path} needs a non-empty 'bootstrap_servers' list")
    entries = []
    for index, item in enumerate(servers):
        if not isinstance(item, dict) or not isinstance(item.get("host"), str) or not isinstance(item.get("port"), int):
            raise ConfigError(f"{path}: bootstrap_servers[{index}] needs 'host' (string) and 'port' (integer)")
        pubkey = item.get("pubkey")
        if pubkey is not None and not isinstance(pubkey, str):
            raise ConfigError(f"{path}: bootstrap_servers[{index}].pubkey must be a string")
        if pubkey:
            try:
                pubkey = crypto.normalize_public_key(pubkey)
            except ProtocolError as exc:
                raise ConfigError(f"{path}: bootstrap_servers[{index}].pubkey is unusable: {exc.detail}") from None
        entries.append(BootstrapEntry(item["host"], item["port"], pubkey or None))
    return entries
