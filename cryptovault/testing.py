"""Helpers for the test suites (imported by tests only)."""

import base64
import contextlib
import itertools
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn
from websockets.sync.client import ClientConnection, connect


@contextmanager
def celery_worker_running():
    """A real Celery worker thread consuming the real Redis broker, for as long as the
    block runs (the ``celery_worker`` fixture, or a test that starts it later)."""
    from celery.contrib.testing.worker import start_worker

    from cryptovault.celery import app

    with start_worker(
        app,
        pool="threads",
        concurrency=2,
        perform_ping_check=False,
        loglevel="WARNING",
        shutdown_timeout=30,
        queues=["celery", "orders"],
    ) as worker:
        yield worker


@contextmanager
def uvicorn_in_thread(app, **config) -> Iterator[str]:
    """Serve the ASGI ``app`` on a real uvicorn, in a daemon thread on a free port;
    yields ``host:port``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = {"log_level": "warning", "lifespan": "off", **config}
    server = uvicorn.Server(uvicorn.Config(app, **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)


class TcpProxy:
    """A TCP forwarder to ``upstream`` (host, port) that a test can cut and restore,
    to play a dependency going down and coming back on the same address.

    ``down()`` closes the listener and every forwarded connection (clients then see
    their connections dropped and new ones refused); ``up()`` listens again.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, set()
            listener, self._listener = self._listener, None
        for sock in [listener, *sockets]:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets |= {client, server}
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def chromium_path() -> str | None:
    """Debian's chromium (scripts/browser.sh installs it), or $CHROMIUM."""
    return os.environ.get("CHROMIUM") or shutil.which("chromium")


class Page:
    """One headless Chromium tab driven over the DevTools protocol (a websocket, no
    driver binary, no browser download). It records what a person would see in the
    devtools: every request with its resource type and status, and console/log
    entries, CSP reports included."""

    def __init__(self, websocket: ClientConnection) -> None:
        self._ws = websocket
        self._ids = itertools.count(1)
        self.requests: dict[str, dict] = {}
        self.console: list[str] = []
        self._loaded = False
        for domain in ("Page", "Network", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        # Every load asks the server: a cached response would prove nothing about it.
        self.send("Network.setCacheDisabled", cacheDisabled=True)

    def send(self, method: str, **params) -> dict:
        message_id = next(self._ids)
        self._ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=20))
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self._record(message)

    def _record(self, event: dict) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Network.requestWillBeSent":
            self.requests[params["requestId"]] = {
                "url": params["request"]["url"],
                "type": params.get("type"),
                "status": None,
            }
        elif method == "Network.responseReceived":
            entry = self.requests.setdefault(params["requestId"], {"url": "", "type": None})
            entry["status"] = params["response"]["status"]
            entry["type"] = params.get("type") or entry["type"]
        elif method == "Network.loadingFailed":
            entry = self.requests.setdefault(params["requestId"], {"url": "", "type": None})
            entry["status"] = f"failed: {params.get('errorText')} {params.get('blockedReason', '')}"
        elif method == "Log.entryAdded":
            entry = params["entry"]
            self.console.append(f"{entry['level']} [{entry['source']}] {entry['text']}")
        elif method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            self.console.append(f"{params['type']} [console] {text}")
        elif method == "Runtime.exceptionThrown":
            self.console.append(f"error [exception] {params['exceptionDetails']['text']}")
        elif method == "Page.loadEventFired":
            self._loaded = True

    def pump(self, seconds: float) -> None:
        """Record events for a while (requests a page makes after its load event)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                self._record(json.loads(self._ws.recv(timeout=left)))
            except TimeoutError:
                return

    def goto(self, url: str) -> None:
        self.requests.clear()
        self.console.clear()
        self._loaded = False
        self.send("Page.navigate", url=url)
        self.wait_load()

    def wait_load(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not self._loaded:
            if time.monotonic() > deadline:
                raise TimeoutError("the page did not load")
            self._record(json.loads(self._ws.recv(timeout=timeout)))

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"]["text"])
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 15):
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"never true: {expression}")
            self.pump(0.1)
        return value

    def submit_form(self, selector: str, fields: dict[str, str]) -> None:
        self._loaded = False
        self.evaluate(
            f"(() => {{ const form = document.querySelector({json.dumps(selector)});"
            f" for (const [name, value] of Object.entries({json.dumps(fields)}))"
            " form.elements[name].value = value;"
            " form.submit(); })()"
        )
        self.wait_load()

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))


@contextmanager
def chromium_page(binary: str, *, width: int = 1280, height: int = 900) -> Iterator[Page]:
    """A headless Chromium with a throwaway profile, and a tab on it."""
    # Chromium's helper processes may still write to the profile while it is removed.
    with tempfile.TemporaryDirectory(prefix="cv-chromium-", ignore_cleanup_errors=True) as profile:
        args = [
            binary,
            "--headless",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-extensions",
            "about:blank",
        ]
        if os.geteuid() == 0:  # Chromium refuses to run as root inside its sandbox
            args.insert(1, "--no-sandbox")
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 20
            while not port_file.exists() or not port_file.read_text().strip():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"chromium did not start (exit {process.poll()})")
                time.sleep(0.05)
            port = port_file.read_text().split()[0]
            targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
            tab = next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"]
            with connect(tab, max_size=None, open_timeout=10) as websocket:
                yield Page(websocket)
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def minute_fresh(*, margin: float = 45.0) -> None:
    """Rate limits count per wall-clock minute (fixed windows): a test that fills one
    starts well inside a minute, or waits for the next, so its burst never straddles two."""
    if time.time() % 60 > margin:
        time.sleep(61 - time.time() % 60)
