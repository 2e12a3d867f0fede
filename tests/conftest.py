"""Fixtures shared by every test directory (integration tests add their own conftest below)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import testbed.pytest_plugin
from tests import scaled, timeout_factor
from tests.keypool import KeyPool


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    """Register the testbed plugin (the ``cluster`` fixture) unless its entry point already did.

    Installed (``pip install -e .``), pytest loads it through the ``socp_testbed`` entry point; a bare checkout,
    or ``-p no:socp_testbed``, does not. Registering the same module twice would fail ("Plugin already
    registered"), and a second name keeps working when ``socp_testbed`` is blocked.
    """
    if not pluginmanager.is_registered(testbed.pytest_plugin):
        pluginmanager.register(testbed.pytest_plugin, "socp_testbed.conftest")


POOL_SIZE = 24
"""Keys generated up front (once per machine; later runs read them from the cache)."""


@pytest.fixture(scope="session")
def key_pool() -> KeyPool:
    """The shared pool of RSA-4096 test keys, with keys 0..23 ready."""
    pool = KeyPool()
    pool.ensure(POOL_SIZE)
    return pool


@pytest.fixture(scope="session", name="timeout_factor")
def timeout_factor_fixture() -> float:
    """``$SOCP_TIMEOUT_FACTOR`` (default 1): multiply every timeout by it."""
    return timeout_factor()


@pytest.fixture(scope="session")
def scaled_timeout() -> Callable[[float], float]:
    """``scaled_timeout(5)`` is 5 s times ``$SOCP_TIMEOUT_FACTOR``."""
    return scaled
