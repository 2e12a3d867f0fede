"""Entry point of ``python -m client`` and the ``socp-client`` console script.

The only place the client reads the environment: ``SOCP_PASSPHRASE`` (used when no ``--passphrase-file``) and
``SOCP_PASSWORD`` (the login password with ``--password``, when no ``--password-file``).
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Sequence

from client import cli


def main(argv: Sequence[str] | None = None) -> int:
    """Run the client with ``argv`` (default: the command line); returns the exit status."""
    if isinstance(sys.stdout, io.TextIOWrapper):
        # Emoji notices must never crash a client whose stdout is a pipe in a non-UTF-8 locale.
        sys.stdout.reconfigure(errors="replace")
    return cli.main(argv, env_passphrase=os.environ.get("SOCP_PASSPHRASE"),
                    env_password=os.environ.get("SOCP_PASSWORD"))


if __name__ == "__main__":
    sys.exit(main())
