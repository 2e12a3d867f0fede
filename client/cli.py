"""``socp-client``: a line-oriented chat shell over :class:`client.connection.ClientConnection`.

Output (one line each, flushed at once, so that a test can drive the client through pipes)::

    Connected to ws://127.0.0.1:8765 as alice
    [bootstrap] learned SERVER pubkey for 1a2b3c4d
    🟢 [remote] bob has joined the network via server 5e6f7a8b
    🟢 [local] carol has joined
    🔴 [remote] bob has left the network
    🔴 [local] carol has left
    bob: hey there!
    [all] bob: hello everyone
    [warning] public message from bob could not be read: it is encrypted under key …, which bob never shared with us …
    [file] bob is sending report.pdf (1.2 MiB)
    [file] report.pdf from bob: 40% (491.5 KiB of 1.2 MiB)
    [file] received report.pdf from bob (1.2 MiB, SHA-256 verified): downloads/report.pdf
    [file] rejected report.pdf from bob: SHA-256 mismatch: the file was altered in transit; nothing was saved
    [file] sent notes.txt to bob (12.0 KiB)
    [login] logged in as alice with a password (key recovered from the network)
    [error] USER_NOT_FOUND: user bob is not online
    [warning] ignored a frame from the server: …

Commands: ``/list``, ``/tell <name|id> <text>``, ``/all <text>``, ``/file <name|id|all> <path>``,
``/whois <name|id>``, ``/help``, ``/quit`` (end of input quits too).
Exit status: 0 normal end, 1 connection failure, wrong password or lost connection, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import getpass
import logging
import os
import sys
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from client.connection import ClientConnection, _size_text
from client.downloads import DEFAULT_DOWNLOADS
from client.errors import ClientError, ConnectionFailed, ConnectionLost
from client.keystore import DEFAULT_KEY_DIR, identity_paths, load_or_create_identity
from client.trust import KnownServers, KnownUsers
from socp.crypto import key_fingerprint as crypto_fingerprint
from socp.envelope import is_uuid
from socp.errors import (
    AuthFailed,
    BadKey,
    ConfigError,
    CryptoError,
    ErrorCode,
    NameInUse,
    ProtocolError,
    UserNotFound,
)
from socp.presence import UserRecord
from socp.registry import ELSEWHERE
from socp.settings import DEFAULT_MAX_FILE_BYTES
from socp.user import (
    PROGRESS_MIN_BYTES,
    ClientEvent,
    Delivered,
    DeliveryFailed,
    DirectMessage,
    DuplicateDelivery,
    FileIncoming,
    FileProgress,
    FileReceived,
    FileRejected,
    FrameRejected,
    PublicMessage,
    PublicMessageUnreadable,
    ServerError,
    UserOffline,
    UserOnline,
)

logger = logging.getLogger("socp.client.cli")

DEFAULT_SERVER: Final = "ws://127.0.0.1:8765"
PROG: Final = "socp-client"

EXIT_OK: Final = 0
EXIT_CONNECTION: Final = 1
EXIT_USAGE: Final = 2

HELP_TEXT: Final = (
    "Commands:",
    "  /list                     show everyone online (local and remote)",
    "  /tell <name|id> <text>    send an end-to-end encrypted direct message",
    "  /all <text>               send an end-to-end encrypted message to everyone online",
    "  /file <name|id> <path>    send a file end-to-end encrypted (/file all <path>: to everyone)",
    "  /whois <name|id>          look up a registered user's key, online or not",
    "  /help                     show this help",
    "  /quit                     leave (end of input does the same)",
)

# One friendly sentence per ERROR code; the server's own detail goes to the debug log only.
_ERROR_SENTENCES: Final[dict[str, str]] = {
    ErrorCode.USER_NOT_FOUND: "that user is not online",
    ErrorCode.INVALID_SIG: "the server could not verify the signature of a frame we sent",
    ErrorCode.BAD_KEY: "the server refused our key (RSA-4096 is required, and this user id may be registered "
                       "under another key)",
    ErrorCode.TIMEOUT: "the server gave up waiting for an answer",
    ErrorCode.UNKNOWN_TYPE: "the server does not understand a frame we sent",
    ErrorCode.NAME_IN_USE: "this user id is already connected to that server",
    ErrorCode.BAD_FRAME: "the server refused a frame we sent as malformed or not allowed",
    ErrorCode.TOO_LARGE: "the message is too large for the server",
    ErrorCode.RATE_LIMITED: "we are sending too fast; the server dropped a frame",
    ErrorCode.STALE: "the server refused a frame as stale; check this computer's clock",
    ErrorCode.AUTH_FAILED: "wrong password",
}

_BIDI_CONTROLS: Final = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Everything the CLI needs, built once from flags (and the environment, in ``__main__``)."""

    user: str
    """Local name: picks the identity files and is sent as ``meta.display_name``."""
    server: str = DEFAULT_SERVER
    """WebSocket URL of the server to attach to."""
    user_id: str | None = None
    """UUID to use (must match a stored identity); None: the stored one, or a fresh UUID v4."""
    key_dir: Path = DEFAULT_KEY_DIR
    """Directory of ``<user>.json`` and ``<user>.key.pem``."""
    passphrase: bytes | None = field(default=None, repr=False)
    """Passphrase of the private key file, if it is encrypted."""
    timeout: float = 10.0
    """Seconds to wait for the connection, the welcome and a /list answer."""
    log_level: str = "WARNING"
    """Level of the diagnostic log on stderr."""
    downloads: Path = DEFAULT_DOWNLOADS
    """Folder received files are written to."""
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    """Largest file sent or accepted."""
    use_password: bool = False
    """Password login: register the key under a password, or log in with it from an empty key dir."""
    password: str | None = field(default=None, repr=False)
    """The password (from --password-file or $SOCP_PASSWORD); None with ``use_password``: prompt for it."""
    interop: bool = False
    """The client side of the interop profile: a lenient welcome from other implementations (docs/INTEROP.md)."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``socp-client``."""
    parser = argparse.ArgumentParser(prog=PROG, description="SOCP v1.3 end-to-end encrypted chat client.")
    parser.add_argument("--user", required=True, metavar="NAME", help="your name (also picks your key files)")
    parser.add_argument("--server", default=DEFAULT_SERVER, metavar="URL",
                        help=f"server WebSocket URL (default {DEFAULT_SERVER})")
    parser.add_argument("--id", dest="user_id", metavar="UUID", help="user id to use (default: stored or new)")
    parser.add_argument("--key-dir", type=Path, default=DEFAULT_KEY_DIR, metavar="DIR",
                        help=f"where identities are kept (default {DEFAULT_KEY_DIR})")
    parser.add_argument("--passphrase-file", type=Path, metavar="FILE",
                        help="file holding the key passphrase (else $SOCP_PASSPHRASE, else none)")
    parser.add_argument("--password", action="store_true",
                        help="log in with a password: on first use the key is stored on the server network "
                             "sealed under it; later, with an empty --key-dir, it is fetched and opened here "
                             "(password from --password-file, else $SOCP_PASSWORD, else a prompt)")
    parser.add_argument("--password-file", type=Path, metavar="FILE",
                        help="file holding the login password (implies --password)")
    parser.add_argument("--downloads", type=Path, default=DEFAULT_DOWNLOADS, metavar="DIR",
                        help=f"where received files are saved (default ./{DEFAULT_DOWNLOADS})")
    parser.add_argument("--max-file-size", type=int, default=DEFAULT_MAX_FILE_BYTES, metavar="BYTES",
                        help="largest file sent or accepted (default 16 MiB)")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="connection and request timeout (default 10)")
    parser.add_argument("--interop", action="store_true",
                        help="accept other implementations' welcome (ACK USER_HELLO_OK, frames before the ACK, "
                             "server id from 'from'); docs/INTEROP.md")
    parser.add_argument("--log-level", default="WARNING", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                        help="diagnostics on stderr (default WARNING)")
    return parser


def config_from_args(argv: Sequence[str] | None, env_passphrase: str | None = None,
                     env_password: str | None = None) -> ClientConfig:
    """Parse ``argv`` into a :class:`ClientConfig`; exits with status 2 on a usage error.

    ``--passphrase-file`` wins over ``env_passphrase``, ``--password-file`` over ``env_password`` (the caller
    reads the environment). Raises :class:`ConfigError` when a passphrase or password file cannot be read.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    if args.max_file_size < 0:
        parser.error("--max-file-size must not be negative")
    use_password = bool(args.password or args.password_file)
    password: str | None = None
    if args.password_file is not None:
        try:
            password = args.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(f"cannot read password file {args.password_file}: {reason}") from exc
    elif use_password and env_password:
        password = env_password
    if use_password and password == "":
        raise ConfigError("the password must not be empty")
    passphrase: bytes | None = None
    if args.passphrase_file is not None:
        try:
            passphrase = args.passphrase_file.read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise ConfigError(f"cannot read passphrase file {args.passphrase_file}: {exc.strerror}") from exc
    elif env_passphrase:
        passphrase = env_passphrase.encode("utf-8")
    return ClientConfig(user=args.user, server=args.server, user_id=args.user_id, key_dir=args.key_dir,
                        passphrase=passphrase or None, timeout=args.timeout, log_level=args.log_level,
                        downloads=args.downloads, max_file_bytes=args.max_file_size, use_password=use_password,
                        password=password, interop=args.interop)


def main(argv: Sequence[str] | None = None, env_passphrase: str | None = None,
         env_password: str | None = None) -> int:
    """Run the client; returns the exit status."""
    try:
        config = config_from_args(argv, env_passphrase, env_password)
    except ConfigError as exc:
        _fail(str(exc))
        return EXIT_USAGE
    if config.use_password and config.password is None:
        try:
            password = getpass.getpass(f"Password for {config.user}: ")
        except (EOFError, KeyboardInterrupt):
            _fail("no password given")
            return EXIT_USAGE
        if not password:
            _fail("the password must not be empty")
            return EXIT_USAGE
        config = dataclasses.replace(config, password=password)
    logging.basicConfig(level=config.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(run(config))
    except KeyboardInterrupt:
        return 130


async def run(config: ClientConfig, say: Callable[[str], None] | None = None) -> int:
    """Load the identity (or log in), connect, and run the chat shell until /quit, end of input or a lost
    connection."""
    out = say or _say
    known_servers = KnownServers(config.key_dir)
    expected = known_servers.expected(config.server)
    try:
        if config.use_password:
            conn, notices = await _password_session(config, expected)
        else:
            conn, notices = await _connect_local(config, expected), []
    except AuthFailed:
        _fail(f"login refused: wrong password for {config.user}")
        return EXIT_CONNECTION
    except ConnectionFailed as exc:
        _fail(str(exc))
        return EXIT_CONNECTION
    except BadKey as exc:
        if expected is None or "was expected" not in exc.detail:
            _fail(f"{config.server} refused us: {exc.code}: {_clean(exc.detail)}")
        else:
            _fail(f"{config.server} presented a different server key than on earlier visits (pinned in "
                  f"{known_servers.path}); refusing to talk to a possible impostor. If the server's key really "
                  "changed, remove its line from that file.")
        return EXIT_CONNECTION
    except ProtocolError as exc:
        # The server's own words name the precise reason here ("this server is an introducer", …).
        _fail(f"{config.server} refused us: {exc.code}: {_clean(exc.detail) or _ERROR_SENTENCES.get(exc.code)}")
        return EXIT_CONNECTION
    except ConfigError as exc:
        _fail(str(exc))
        return EXIT_USAGE
    except CryptoError as exc:
        _fail(f"{exc} ({config.key_dir.expanduser() / (config.user + '.key.pem')})")
        return EXIT_CONNECTION
    except TimeoutError as exc:
        _fail(str(exc))
        return EXIT_CONNECTION
    # A password login on a borrowed machine writes nothing there, not even the server pin.
    borrowed = config.use_password and not identity_paths(config.key_dir.expanduser(), config.user)[1].exists()
    first_contact = expected is None if borrowed else known_servers.remember(config.server, conn.server_pub)
    async with conn:
        out(f"Connected to {config.server} as {config.user}")
        if borrowed:
            out(f"[bootstrap] learned SERVER pubkey for {conn.server_id[:8]}"
                + ("" if first_contact else " (matches the one pinned earlier)"))
        elif first_contact:
            out(f"[bootstrap] learned SERVER pubkey for {conn.server_id[:8]} (pinned for next time)")
        else:
            out(f"[bootstrap] SERVER pubkey for {conn.server_id[:8]} matches the one pinned earlier")
        for notice in notices:
            out(notice)
        try:
            return await ChatShell(conn, out, timeout=config.timeout).run(_stdin_lines())
        finally:
            if not borrowed:
                # The first key of every user id met, kept for next time (a borrowed machine keeps nothing).
                with contextlib.suppress(OSError):
                    KnownUsers(config.key_dir).save(conn.session.known_users())


async def _password_session(config: ClientConfig, expected: str | None) -> tuple[ClientConnection, list[str]]:
    """``--password``: use the local key and (re)register the password, or log in with the password alone.

    - the key dir holds this user's key: connect with it and store it sealed under the password (again);
    - it does not: log in by name; the server network hands over the sealed key, opened here in memory
      (nothing is written to the key dir, so a borrowed machine keeps no trace);
    - nobody has that login yet: create a new identity in the key dir and register it.

    A server answers an unknown login exactly like a wrong password (a decoy challenge, PROTOCOL.md §9.1), so
    after AUTH_FAILED with an empty key dir we try to claim the login with a new identity: NAME_IN_USE means
    the login exists and the password was wrong; the identity just made is then deleted again.

    Returns the connection and the lines to show once connected; raises what :func:`run` reports.
    """
    assert config.password is not None
    password = config.password
    json_path, pem_path = identity_paths(config.key_dir.expanduser(), config.user)
    claimed = False
    if pem_path.exists():
        conn = await _connect_local(config, expected)
    else:
        try:
            conn = await ClientConnection.login(config.server, config.user, password, timeout=config.timeout,
                                                downloads=config.downloads, max_file_bytes=config.max_file_bytes,
                                                known_users=KnownUsers(config.key_dir).load())
            return conn, [f"[login] logged in as {config.user} with a password (key recovered from the network)"]
        except UserNotFound as exc:
            if ELSEWHERE in exc.detail:
                raise  # the login exists, on another server: say so, and create nothing here
            conn = await _connect_local(config, expected)
        except AuthFailed:
            conn = await _connect_local(config, expected)
            claimed = True
    try:
        await conn.register_password(password, login=config.user, timeout=config.timeout)
    except NameInUse:
        await conn.close()
        if not claimed:
            raise
        for path in (json_path, pem_path):
            path.unlink(missing_ok=True)
        raise AuthFailed(f"wrong password for {config.user}") from None
    except BaseException:
        await conn.close()
        raise
    return conn, [f"[login] password registered for {config.user}: log in on this server ({config.server}) with "
                  "--password from any machine (password records never leave it)"]


async def _connect_local(config: ClientConfig, expected: str | None) -> ClientConnection:
    """Load or create the identity in the key dir and connect with it (the server key must be ``expected``)."""
    # Generating a key takes about half a second of CPU: keep the event loop free meanwhile.
    identity = await asyncio.to_thread(load_or_create_identity, config.key_dir, config.user, config.user_id,
                                       config.passphrase)
    return await ClientConnection.connect(config.server, identity, timeout=config.timeout,
                                          downloads=config.downloads, max_file_bytes=config.max_file_bytes,
                                          expected_server_pub=expected, known_users=KnownUsers(config.key_dir).load(),
                                          interop=config.interop)


class _Finished(Exception):
    """Ends the shell's task group with an exit status."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class ChatShell:
    """Turns events into lines of output and input lines into commands, for one connection."""

    def __init__(self, conn: ClientConnection, say: Callable[[str], None], *, timeout: float = 10.0) -> None:
        self._conn = conn
        self._say = say
        self._timeout = timeout
        # Who each recent message went to, so that a later USER_NOT_FOUND about it can name them, and its
        # first words, so that its receipt or failure can say which message it was.
        self._sent: OrderedDict[str, str] = OrderedDict()
        self._words: OrderedDict[str, str] = OrderedDict()
        # Users whose server stopped answering (id -> label), so that /tell can say so.
        self._unreachable: OrderedDict[str, str] = OrderedDict()
        self._group: asyncio.TaskGroup | None = None

    async def run(self, lines: asyncio.Queue[str | None]) -> int:
        """Serve until /quit or end of input (0) or until the connection is lost (1)."""
        status = EXIT_OK
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                group.create_task(self._pump_events())
                group.create_task(self._pump_commands(lines))
        except* _Finished as finished:
            first = finished.exceptions[0]
            status = first.status if isinstance(first, _Finished) else EXIT_CONNECTION
        return status

    # --- events ----------------------------------------------------------------------------------

    async def _pump_events(self) -> None:
        while True:
            try:
                event = await self._conn.next_event()
            except ConnectionLost as exc:
                self._say(f"[error] {exc}")
                raise _Finished(EXIT_CONNECTION) from None
            self.show(event)

    def show(self, event: ClientEvent) -> None:
        """Print what ``event`` means to the user (nothing for events of no interest)."""
        if isinstance(event, DirectMessage):
            self._say(f"{_clean(event.sender_label)}: {_clean(event.text)}")
        elif isinstance(event, PublicMessage):
            self._say(f"[all] {_clean(event.sender_label)}: {_clean(event.text)}")
        elif isinstance(event, PublicMessageUnreadable):
            self._say(f"[warning] public message from {_clean(event.sender_label)} could not be read: "
                      f"{_clean(event.reason)}")
        elif isinstance(event, FileIncoming):
            self._say(f"[file] {_clean(event.sender_label)} is sending {_clean(event.name)} ({_size_text(event.size)})")
        elif isinstance(event, FileProgress):
            self._say(f"[file] {_clean(event.name)} from {_clean(event.sender_label)}: "
                      f"{event.received * 100 // max(1, event.size)}% ({_size_text(event.received)} of "
                      f"{_size_text(event.size)})")
        elif isinstance(event, FileReceived):
            where = _clean(event.path) if event.path else "kept in memory (no downloads folder)"
            self._say(f"[file] received {_clean(event.name)} from {_clean(event.sender_label)} "
                      f"({_size_text(event.size)}, SHA-256 verified): {where}")
        elif isinstance(event, FileRejected):
            self._say(f"[file] rejected {_clean(event.name)} from {_clean(event.sender_label)}: "
                      f"{_clean(event.reason)}; nothing was saved")
        elif isinstance(event, UserOnline):
            self._unreachable.pop(event.record.user_id, None)
            if event.is_new and event.record.user_id != self._conn.user_id:
                label = _clean(self._conn.session.display(event.record.user_id))
                if event.record.server_id == self._conn.server_id:
                    self._say(f"🟢 [local] {label} has joined")
                else:
                    self._say(f"🟢 [remote] {label} has joined the network via server "
                              f"{event.record.server_id[:8]}")
        elif isinstance(event, UserOffline):
            if event.record.user_id != self._conn.user_id:
                label = _clean(self._conn.session.display(event.record.user_id))
                if event.record.server_id == self._conn.server_id:
                    self._say(f"🔴 [local] {label} has left")
                elif event.unreachable:
                    self._unreachable[event.record.user_id] = event.record.label
                    while len(self._unreachable) > 1000:
                        self._unreachable.popitem(last=False)
                    self._say(f"🔴 [remote] {label} is unreachable: their server {event.record.server_id[:8]} "
                              "stopped answering")
                else:
                    self._say(f"🔴 [remote] {label} has left the network")
        elif isinstance(event, ServerError):
            logger.debug("server error %s about %s: %s", event.code, event.msg_ref, event.detail)
            self._say(f"[error] {_clean(event.code)}: {self._error_sentence(event)}")
        elif isinstance(event, FrameRejected):
            self._say(f"[warning] ignored a frame from the server: {_clean(event.reason)}")
        elif isinstance(event, DuplicateDelivery):
            self._say(f"[warning] ignored a second copy of a message from {_clean(event.sender_label)}")
        elif isinstance(event, Delivered) and event.file_id is None:
            name, words = self._sent.get(event.msg_ref, "?"), self._words.get(event.msg_ref, "")
            self._say(f"✓ delivered to {_clean(name)}: {_clean(words)}")
        elif isinstance(event, DeliveryFailed) and event.file_id is None:
            name, words = self._sent.get(event.msg_ref, "?"), self._words.get(event.msg_ref, "")
            error = ServerError(event.code, event.reason, event.msg_ref)
            self._say(f"[error] not delivered to {_clean(name)} ({_clean(words)}): {_clean(event.code)}: "
                      f"{self._error_sentence(error)}")

    def _error_sentence(self, event: ServerError) -> str:
        about = event.about
        if event.code == ErrorCode.TIMEOUT and event.detail:
            return _clean(event.detail)  # says that the recipient's server is unreachable
        if event.code == ErrorCode.USER_NOT_FOUND and event.msg_ref:
            name = self._sent.get(event.msg_ref) or self._label_of(about.to if about is not None else "")
            if name:
                return f"user {_clean(name)} is not online"
        if about is not None and about.type.startswith("FILE_") and event.detail:
            # The server's words say which file and which limit; the generic sentence would not.
            return _clean(event.detail)
        return _ERROR_SENTENCES.get(event.code) or _clean(event.detail) or "the server reported an error"

    def _label_of(self, user_id: str) -> str:
        return self._conn.session.display(user_id)

    # --- commands --------------------------------------------------------------------------------

    async def _pump_commands(self, lines: asyncio.Queue[str | None]) -> None:
        while True:
            line = await lines.get()
            if line is None:
                raise _Finished(EXIT_OK)
            if not await self.handle_line(line):
                raise _Finished(EXIT_OK)

    async def handle_line(self, line: str) -> bool:
        """Carry out one input line; False when the user asked to quit."""
        line = line.strip()
        if not line:
            return True
        if not line.startswith("/"):
            self._say("[error] to send a message type /tell <name|id> <text>; /help lists the commands")
            return True
        command, _, rest = line.partition(" ")
        try:
            if command == "/quit":
                return False
            if command == "/help":
                for help_line in HELP_TEXT:
                    self._say(help_line)
            elif command == "/list":
                self._show_list(await self._conn.list_users(self._timeout))
            elif command == "/tell":
                await self._tell(rest)
            elif command == "/all":
                if not rest.strip():
                    self._say("[error] usage: /all <text>")
                else:
                    await self._conn.send_public(rest.strip())
            elif command == "/file":
                await self._file(rest)
            elif command == "/whois":
                await self._whois(rest.strip())
            else:
                self._say(f"[error] unknown command {_clean(command)}; type /help for the list of commands")
        except ProtocolError as exc:
            self._say(f"[error] {exc.code}: {_clean(exc.detail)}")
        except (TimeoutError, ClientError) as exc:
            self._say(f"[error] {_clean(str(exc))}")
        return True

    async def _file(self, rest: str) -> None:
        target, _, path_text = rest.strip().partition(" ")
        path_text = path_text.strip()
        if not target or not path_text:
            self._say("[error] usage: /file <name|id|all> <path>")
            return
        if target == "all":
            label = "everyone"
        else:
            record = self._conn.session.resolve(target)
            target, label = record.user_id, self._conn.session.display(record.user_id)
        path = Path(path_text).expanduser()
        if self._group is None:
            await self._send_file(target, path, label)
        else:
            # A big file takes a while (the chunks are paced): keep reading commands meanwhile.
            self._group.create_task(self._send_file(target, path, label))

    async def _send_file(self, target: str, path: Path, label: str) -> None:
        shown = {"tenths": 0}

        def progress(sent: int, size: int) -> None:
            # Every 10 % of a large file (with receipts: of what the recipient's server handed over).
            tenths = sent * 10 // max(1, size)
            if size >= PROGRESS_MIN_BYTES and shown["tenths"] < tenths < 10:
                shown["tenths"] = tenths
                self._say(f"[file] sending {_clean(path.name)} to {_clean(label)}: {tenths * 10}% "
                          f"({_size_text(sent)} of {_size_text(size)})")

        try:
            await self._conn.send_file(target, path, progress=progress)
        except ProtocolError as exc:
            self._say(f"[error] {exc.code}: {_clean(exc.detail)}")
        except ClientError as exc:
            # Never let a background transfer end the shell: a lost connection is reported by the event pump.
            self._say(f"[error] {_clean(str(exc))}")
        except TimeoutError as exc:
            self._say(f"[error] {exc}")
        else:
            size = path.stat().st_size if path.exists() else 0
            self._say(f"[file] sent {_clean(path.name)} to {_clean(label)} ({_size_text(size)})")

    async def _whois(self, target: str) -> None:
        if not target:
            self._say("[error] usage: /whois <name|id>")
            return
        if not is_uuid(target.lower()):
            with contextlib.suppress(UserNotFound):  # not online: ask the registry by login name
                target = self._conn.session.resolve(target).user_id
        entry = await self._conn.lookup_user(target, self._timeout)
        where = (f"online via server {entry.server_id[:8]}" if entry.online
                 else f"offline (registered via server {entry.home_server[:8]})")
        login = f"  login {_clean(entry.login)}" if entry.login else ""
        self._say(f"{_clean(entry.label)}  {entry.user_id}  key {crypto_fingerprint(entry.pubkey)}  {where}{login}")

    async def _tell(self, rest: str) -> None:
        target, _, text = rest.strip().partition(" ")
        if not target or not text.strip():
            self._say("[error] usage: /tell <name|id> <text>")
            return
        try:
            record = self._conn.session.resolve(target)
        except UserNotFound:
            gone = [label for user_id, label in self._unreachable.items() if target in (user_id, label)]
            if gone:
                self._say(f"[error] {_clean(gone[-1])}'s server is unreachable; the message was not sent")
                return
            raise
        msg_ref = await self._conn.send_direct(record.user_id, text.strip())
        self._sent[msg_ref] = self._conn.session.display(record.user_id)
        self._words[msg_ref] = _first_words(text.strip())
        while len(self._sent) > 1000:
            self._sent.popitem(last=False)
        while len(self._words) > 1000:
            self._words.popitem(last=False)

    def _show_list(self, records: Sequence[UserRecord]) -> None:
        self._say(f"Online users ({len(records)}):")
        # A display label shared by two user ids is shown with a key fingerprint (issue 11, finding 6).
        labels = {record.user_id: _clean(self._conn.session.display(record.user_id)) for record in records}
        width = max((len(label) for label in labels.values()), default=0)
        for record in records:
            you = "  (you)" if record.user_id == self._conn.user_id else ""
            self._say(f"  {labels[record.user_id]:<{width}}  {record.user_id[:8]}  server {record.server_id[:8]}{you}")


# --- terminal helpers -----------------------------------------------------------------------------

def _first_words(text: str, count: int = 5) -> str:
    """The first ``count`` words of a message, "…" when there are more (to name it in receipts and failures)."""
    words = text.split()
    return '"' + " ".join(words[:count]) + ("…" if len(words) > count else "") + '"'


def _clean(text: str) -> str:
    """``text`` safe for one terminal line: control and bidi-override characters escaped.

    Message text and labels come from other users; unescaped, a newline or an ANSI sequence would let
    them forge lines such as a fake join notice.
    """
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char in _BIDI_CONTROLS or unicodedata.category(char) == "Cc":
            out.append(char.encode("unicode_escape").decode("ascii"))
        else:
            out.append(char)
    return "".join(out)


def _say(line: str) -> None:
    print(line, flush=True)


def _fail(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _stdin_lines() -> asyncio.Queue[str | None]:
    """Lines of standard input, delivered into the event loop by a daemon thread (None at end of input).

    A thread works for a terminal, a pipe and a regular file alike and leaves the terminal's blocking mode
    untouched. It reads the file descriptor with ``os.read`` rather than through ``sys.stdin``: a daemon
    thread blocked inside the buffered reader holds its lock, and the interpreter aborts at exit when it
    finds that lock taken; ``os.read`` holds no Python lock, so the exit stays clean.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def deliver(item: str | None) -> bool:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: the client is exiting
            return False
        return True

    def read() -> None:
        try:
            fd = sys.stdin.fileno() if sys.stdin is not None else -1
        except (OSError, ValueError):
            fd = -1
        pending = b""
        while fd >= 0:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if not all(deliver(line.decode("utf-8", "replace")) for line in lines):
                return
        if pending:
            deliver(pending.decode("utf-8", "replace"))
        deliver(None)

    threading.Thread(target=read, name="socp-client-stdin", daemon=True).start()
    return queue
