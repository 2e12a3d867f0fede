"""socp/ is a pure, deterministic core: no event loop, sockets, clock or environment (ARCHITECTURE.md).

The check reads the source with :mod:`ast` (imports, and uses such as ``os.environ`` or ``time.time()``)
and imports the package in a fresh interpreter to see which I/O modules it drags in.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests import scaled

SOCP_DIR = Path(__file__).resolve().parents[2] / "socp"
MODULES = sorted(SOCP_DIR.rglob("*.py"))
"""Every module of the core, subpackages included (``socp/server/…``)."""


def _rel(path: Path) -> str:
    """``path`` relative to ``socp/`` (``server/state.py``): test ids and messages."""
    return path.relative_to(SOCP_DIR).as_posix()


def _module(path: Path) -> str:
    """The dotted module name below ``socp`` (``server.state``; ``server`` for its ``__init__``; "" for socp)."""
    parts = list(path.relative_to(SOCP_DIR).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)

FORBIDDEN_MODULES = {"asyncio", "socket", "time", "websockets", "selectors", "ssl", "subprocess", "threading",
                     "multiprocessing", "concurrent", "http", "urllib", "importlib", "signal", "trio", "anyio"}
"""Modules the core must never import (I/O, clock, concurrency, dynamic imports)."""

FORBIDDEN_ATTRIBUTES = {("os", "environ"), ("os", "getenv"), ("os", "putenv"), ("os", "environb"),
                        ("datetime", "now"), ("datetime", "utcnow"), ("datetime", "today"), ("date", "today"),
                        ("uuid", "uuid1"), ("uuid", "uuid4")}
"""``name.attr`` uses that read the environment, the clock, or unseeded randomness."""

RANDOM_ALLOWED = {"Random"}
"""Protocol randomness comes from an ``rng`` argument; only the ``random.Random`` type may be named."""


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imported_roots(tree: ast.Module) -> dict[str, int]:
    roots: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                roots.setdefault(alias.name.split(".")[0], node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.setdefault(node.module.split(".")[0], node.lineno)
    return roots


def test_core_modules_found() -> None:
    names = {_module(path) for path in MODULES}
    assert {"errors", "codec", "crypto", "envelope", "replay", "presence", "actions", "server", "server.state",
            "server.routes"} <= names


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_no_forbidden_imports(path: Path) -> None:
    roots = _imported_roots(_tree(path))
    bad = {name: line for name, line in roots.items() if name in FORBIDDEN_MODULES}
    assert not bad, f"{_rel(path)} imports {bad} (module: line)"


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_no_environment_clock_or_hidden_randomness(path: Path) -> None:
    tree = _tree(path)
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            pair = (node.value.id, node.attr)
            if pair in FORBIDDEN_ATTRIBUTES or node.value.id == "time":
                problems.append(f"line {node.lineno}: {pair[0]}.{pair[1]}")
            if node.value.id == "random" and node.attr not in RANDOM_ALLOWED:
                problems.append(f"line {node.lineno}: random.{node.attr} (use the rng argument)")
        elif isinstance(node, ast.ImportFrom) and node.module in {"os", "datetime", "uuid", "random"}:
            for alias in node.names:
                if (node.module, alias.name) in FORBIDDEN_ATTRIBUTES or (
                        node.module == "random" and alias.name not in RANDOM_ALLOWED) or (
                        node.module == "datetime" and alias.name in {"datetime", "date"}):
                    problems.append(f"line {node.lineno}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in {
                "__import__", "open", "input", "print"}:
            problems.append(f"line {node.lineno}: {node.func.id}()")
    assert not problems, f"{_rel(path)}: " + "; ".join(problems)


def test_plain_text_grep_for_environment_and_clock() -> None:
    """Belt and braces for uses the AST walk could miss (getattr strings, aliases)."""
    for path in MODULES:
        source = path.read_text(encoding="utf-8")
        for needle in ("os.environ", "getenv", "time.time", "time.monotonic", "perf_counter", "import time",
                       "import asyncio", "import socket", "websockets"):
            assert needle not in source, f"{_rel(path)} mentions {needle!r}"


def test_only_crypto_imports_cryptography_and_os() -> None:
    importers = {_rel(path): _imported_roots(_tree(path)) for path in MODULES}
    assert {name for name, roots in importers.items() if "cryptography" in roots} == {"crypto.py"}
    assert {name for name, roots in importers.items() if "os" in roots} <= {"crypto.py"}


def test_importing_the_core_loads_no_io_modules() -> None:
    modules = ", ".join(f"socp.{_module(path)}" for path in MODULES if _module(path))
    code = (f"import sys\nimport {modules}\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'asyncio', 'socket', 'websockets', 'selectors', 'ssl', 'subprocess'})\n"
            "print(','.join(bad))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=scaled(60),
                            cwd=SOCP_DIR.parent, check=True)
    assert result.stdout.strip() == "", f"importing socp loads {result.stdout.strip()}"
