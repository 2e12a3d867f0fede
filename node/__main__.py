"""``socp-node`` / ``python -m node``: parse flags, set up logging, run the node until a signal."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import sys
from collections.abc import Callable

from node.config import NodeConfig, build_parser, config_from_args
from node.runtime import NodeRuntime
from node.storage import Database, load_or_create_identity
from socp.errors import ConfigError

GIL_SWITCH_INTERVAL_S = 0.001


class _NodeFieldFilter(logging.Filter):
    """Gives every record a ``node`` field so one format serves adapters and plain loggers."""

    def __init__(self, default: str) -> None:
        super().__init__()
        self.default = default

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "node"):
            record.node = self.default
        return True


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``socp-node``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args, socket.gethostname())
        identity = load_or_create_identity(config.data_dir, config.name, config.server_id)
    except ConfigError as exc:
        print(f"socp-node: {exc}", file=sys.stderr)
        return 2
    if config.show_identity:
        print(json.dumps({"server_id": identity.server_id, "name": identity.name, "pubkey": identity.pubkey}))
        return 0
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_NodeFieldFilter(identity.server_id[:8]))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s [%(node)s] %(message)s"))
    logging.basicConfig(level=config.log_level, handlers=[handler])
    logging.getLogger("socp.node.ws").setLevel(max(logging.WARNING, logging.getLevelName(config.log_level)))
    try:
        database = Database(config.data_dir / "socp.sqlite3")
    except ConfigError as exc:
        print(f"socp-node: {exc}", file=sys.stderr)
        return 2
    # The core thread (node.core) holds the GIL while it parses and routes; a 1 ms switch interval (default 5)
    # hands it back to the event loop sooner, which about halves loop lag under a Python-bound core backlog.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    try:
        asyncio.run(_run(config, NodeRuntime(config, identity, database, _announce(identity.server_id))))
    except OSError as exc:
        print(f"socp-node: cannot listen on {config.host}:{config.port}: {exc.strerror}", file=sys.stderr)
        return 1
    finally:
        database.close()
    return 0


def _announce(server_id: str) -> Callable[[str, int], None]:
    def on_listening(host: str, port: int) -> None:
        # The seed's line; tests and scripts read the bound port from it.
        print(f"[{server_id}] Listening on ws://{host}:{port}", flush=True)
    return on_listening


async def _run(config: NodeConfig, runtime: NodeRuntime) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await runtime.run(stop)


if __name__ == "__main__":
    sys.exit(main())
