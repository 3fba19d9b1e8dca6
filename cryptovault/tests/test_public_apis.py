"""Our code reads no private attribute of the libraries it runs on (Django, asgiref,
uvicorn, websockets, Channels, Celery, kombu): a rename in a minor release would break
it silently. Banned modules are ruff's (``TID251``, pyproject.toml); this walks the
syntax trees for what ruff cannot see, attribute access."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OUR_PACKAGES = ("cryptovault", "accounts", "markets", "orders", "notifications", "bots")

# Names that were read from library internals once, whatever object they hang on.
KNOWN_PRIVATE = {
    "threadlocal",
    "main_event_loop",
    "main_event_loop_pid",
    "unacked_key",
    "PRIORITY_STEPS",
}
# ``_``-names that are public API by documentation, or our own attributes.
ALLOWED_UNDERSCORE = {
    "_meta",  # Django's documented Model _meta API
    "_state",  # ``instance._state.db``, documented for multiple databases
    "_default_manager",  # documented on Model
    "_replace",  # namedtuple's public method
}
# (file, name): our own ``_``-attributes on other libraries' objects.
ALLOWED_IN_FILE: set[tuple[str, str]] = set()


def _python_files():
    for package in OUR_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.parts:
                yield path


def _own_names(tree: ast.Module) -> set[str]:
    """Names this module binds to our own packages' modules and objects."""
    names = {"self", "cls"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in OUR_PACKAGES:
                names.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in OUR_PACKAGES:
                    names.add((alias.asname or alias.name).split(".")[0])
    return names


def _root(node: ast.expr) -> ast.expr:
    while isinstance(node, ast.Attribute | ast.Subscript | ast.Call):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return node  # super(), a constructor: the call is the root
        node = node.func if isinstance(node, ast.Call) else node.value
    return node


def private_uses(source: str, relative: str) -> list[str]:
    """``line: expression`` for each read of a library's private name in ``source``."""
    tree = ast.parse(source)
    own = _own_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] not in OUR_PACKAGES:
                parts = [*node.module.split("."), *(alias.name for alias in node.names)]
                if any(p in KNOWN_PRIVATE or _is_private(p) for p in parts):
                    found.append(f"{node.lineno}: from {node.module} import ...")
        if isinstance(node, ast.Import):
            for alias in node.names:
                if any(_is_private(part) for part in alias.name.split(".")):
                    found.append(f"{node.lineno}: import {alias.name}")
        if not isinstance(node, ast.Attribute):
            continue
        if node.attr in KNOWN_PRIVATE:
            found.append(f"{node.lineno}: {ast.unparse(node)}")
            continue
        if not _is_private(node.attr) or node.attr in ALLOWED_UNDERSCORE:
            continue
        if (relative, node.attr) in ALLOWED_IN_FILE:
            continue
        root = _root(node.value)
        if isinstance(root, ast.Name) and root.id in own:
            continue
        if isinstance(root, ast.Call) and ast.unparse(root.func) == "super":
            continue
        found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_private_library_attribute_in_our_code():
    found = {
        str(path.relative_to(ROOT)): uses
        for path in _python_files()
        if (uses := private_uses(path.read_text(), str(path.relative_to(ROOT).as_posix())))
    }
    assert found == {}


@pytest.mark.parametrize(
    "source",
    [
        "from asgiref.sync import SyncToAsync\nSyncToAsync.threadlocal.main_event_loop",
        "def f(response, handler):\n    response._handler_class = handler",
        "class R:\n    pass\nR()._get_scheme()",
        "from kombu.transport.redis import Channel\nChannel.unacked_key",
        "from kombu.transport.redis import PRIORITY_STEPS",
        "def f(transport):\n    return transport._protocol",
        "from uvicorn.protocols.websockets import _impl",
        "import channels._private",
    ],
)
def test_catches_private_reads(source):
    assert private_uses(source, "example.py") != []


@pytest.mark.parametrize(
    "source",
    [
        "class A:\n    def f(self):\n        return self._cache",
        "from markets import asgi\nasgi._static_headers",
        "def f(model):\n    return model._meta.label",
        "class A(B):\n    def f(self):\n        return super()._x()",
    ],
)
def test_allows_our_own_and_documented_names(source):
    assert private_uses(source, "example.py") == []
