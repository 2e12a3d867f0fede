"""tests/__init__.py: the timeout factor every waiting test multiplies its timeouts by."""

from __future__ import annotations

import pytest

from tests import ENV_TIMEOUT_FACTOR, scaled, timeout_factor


def test_default_factor_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_TIMEOUT_FACTOR, raising=False)
    assert timeout_factor() == 1.0
    assert scaled(5) == 5.0
    monkeypatch.setenv(ENV_TIMEOUT_FACTOR, " ")
    assert timeout_factor() == 1.0


def test_factor_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_TIMEOUT_FACTOR, "2.5")
    assert timeout_factor() == 2.5
    assert scaled(4) == 10.0


@pytest.mark.parametrize("value", ["0", "-1", "fast", "nan"])
def test_invalid_factor_is_an_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(ENV_TIMEOUT_FACTOR, value)
    with pytest.raises(ValueError, match=ENV_TIMEOUT_FACTOR):
        timeout_factor()


def test_fixtures(timeout_factor: float, scaled_timeout) -> None:  # type: ignore[no-untyped-def]
    assert timeout_factor > 0
    assert scaled_timeout(2) == 2 * timeout_factor
