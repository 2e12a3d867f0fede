"""Test suite of socp-testbed; shared helpers live here so that every conftest can import them."""

from __future__ import annotations

import os

ENV_TIMEOUT_FACTOR = "SOCP_TIMEOUT_FACTOR"


def timeout_factor() -> float:
    """The factor every test timeout is multiplied by: ``$SOCP_TIMEOUT_FACTOR``, default 1 (slow CI: 3)."""
    raw = os.environ.get(ENV_TIMEOUT_FACTOR, "").strip()
    if not raw:
        return 1.0
    try:
        factor = float(raw)
    except ValueError:
        raise ValueError(f"{ENV_TIMEOUT_FACTOR} must be a positive number, got {raw!r}") from None
    if not factor > 0:
        raise ValueError(f"{ENV_TIMEOUT_FACTOR} must be a positive number, got {raw!r}")
    return factor


def scaled(seconds: float) -> float:
    """``seconds`` multiplied by :func:`timeout_factor`; wrap every timeout a test waits with it."""
    return seconds * timeout_factor()
