"""Banned imports, and uvicorn connection internals ruff cannot see (issue 15): a
library's internals change without notice, and one rename would break a whole module.

Imports are checked by ruff's banned-api rules (``[tool.ruff.lint.flake8-tidy-imports
.banned-api]`` in pyproject.toml); attribute names that exist only inside another
library's objects, which ruff cannot see, are checked here. Extend either list when a
new private name must stay out."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APP_PACKAGES = ("cryptovault", "accounts", "markets", "orders", "notifications", "bots")

# Attribute -> what it reaches into. These names mean nothing in our own code.
BANNED_ATTRIBUTES = {
    # uvicorn's WebSocket connection (the ASGI send's owner): write through ``send``.
    "transport": "an ASGI server's transport",
    "conn": "an ASGI server's protocol state",
    "handshake_complete": "uvicorn's connection state",
    "close_sent": "uvicorn's connection state",
    "writable": "uvicorn's flow control",
}
# Names set in a class body that reach into a base class's machinery.
BANNED_CLASS_ATTRIBUTES = {
    # Channels picks a layer by alias; an alias that is not configured is a hack.
    "channel_layer_alias": "Channels' layer lookup (a plain ASGI app needs no layer)",
}
# Methods that drive a coroutine by hand instead of awaiting it (or running a Task).
BANNED_CALLS = {"send": "coroutine.send(None)", "throw": "coroutine.throw()"}


def _app_files() -> list[Path]:
    return sorted(
        path
        for package in APP_PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "migrations" not in path.parts and "tests" not in path.parts
    )


def _private_uses(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in BANNED_ATTRIBUTES:
            found.append(f"line {node.lineno}: .{node.attr} ({BANNED_ATTRIBUTES[node.attr]})")
        elif isinstance(node, ast.ClassDef):
            for statement in node.body:
                targets = statement.targets if isinstance(statement, ast.Assign) else []
                for target in targets:
                    if isinstance(target, ast.Name) and target.id in BANNED_CLASS_ATTRIBUTES:
                        reason = BANNED_CLASS_ATTRIBUTES[target.id]
                        found.append(f"line {target.lineno}: {target.id} ({reason})")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "send"
            and len(node.args) == 1
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value is None
        ) or (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "throw"
        ):
            found.append(f"line {node.lineno}: {BANNED_CALLS[node.func.attr]}")
    return found


def _ruff(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(  # noqa: S603 - fixed arguments
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "TID251", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )


def test_app_code_imports_no_banned_internals():
    result = _ruff(*APP_PACKAGES)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(
    "line",
    [
        "from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol",
        "from websockets.protocol import State",
        "import websockets.frames",
    ],
)
def test_the_banned_imports_are_caught(line):
    result = _ruff("--stdin-filename", "markets/consumers.py", "-", stdin=line + "\n")
    assert result.returncode == 1
    assert "TID251" in result.stdout


def test_app_code_reads_no_private_attributes_of_other_libraries():
    found = {
        str(path.relative_to(ROOT)): uses
        for path in _app_files()
        if (uses := _private_uses(path.read_text()))
    }
    assert found == {}


def test_the_private_attribute_check_catches_the_old_fast_path():
    old = (
        "class PricesConsumer:\n"
        "    channel_layer_alias = 'no-such-layer'\n"
        "def deliver(connection, send, wire):\n"
        "    if connection.conn.state is OPEN and connection.writable.is_set():\n"
        "        connection.transport.write(wire)\n"
        "    send({'type': 'websocket.send'}).send(None)\n"
    )
    assert len(_private_uses(old)) == 5
