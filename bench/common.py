"""What the benchmarks share: the price fixture, how they start a uvicorn server and the
platform's processes, and a meter of the CPU each part of the platform uses."""

import os
import subprocess
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from markets.catalogue import COINS, DEFAULT_TRACKED_COINS

# The default tracked coins at realistic levels, as decimal strings.
PRICES = {coin_id: str(COINS[coin_id].usd) for coin_id in DEFAULT_TRACKED_COINS}


@cache
def production_env() -> dict[str, str]:
    """Production settings (DEBUG off, which refuses to start without its own keys) with
    throwaway keys. Cached: the bench process and every server it starts share them, as
    they verify each other's tokens."""
    from cryptography.fernet import Fernet
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return {
        "DEBUG": "false",
        "SECRET_KEY": "bench-" + os.urandom(24).hex(),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "RSA_PRIVATE_KEY": pem.decode(),
        "API_KEY_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
    }


def uvicorn_command(
    *,
    port: int,
    app: str = "cryptovault.asgi:application",
    workers: int = 1,
    fast: bool = False,
    extra: Sequence[str] = (),
) -> list[str]:
    """A quiet uvicorn on 127.0.0.1 (``fast``: uvloop + httptools, as wrk runs want)."""
    command = [
        sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(workers), "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    if fast:
        command += ["--loop", "uvloop", "--http", "httptools"]
    return [*command, *extra]


def platform_command(
    name: str, *, web_port: int, simulator_port: int, beat_schedule: Path
) -> list[str]:
    """The command of one of a bench's own platform processes (the Procfile's ``web``,
    ``worker``, ``beat`` and ``simulator``)."""
    python = sys.executable
    return {
        "web": uvicorn_command(port=web_port),
        "worker": [python, "-m", "celery", "-A", "cryptovault", "worker", "--loglevel",
                   "WARNING", "--concurrency", "2", "-Q", "celery,orders"],
        "beat": [python, "-m", "celery", "-A", "cryptovault", "beat", "--loglevel", "WARNING",
                 "--scheduler", "django_celery_beat.schedulers:DatabaseScheduler",
                 "--schedule", str(beat_schedule)],
        "simulator": [python, "manage.py", "run_simulator", "--host", "127.0.0.1",
                      "--port", str(simulator_port)],
    }[name]  # fmt: skip


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def serving_pids(pid: int) -> list[int]:
    """The processes of a server that serve requests: a uvicorn supervisor's workers (its
    children, without multiprocessing's resource tracker), or the server itself."""
    children = [
        int(child)
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes()
    ]
    return children or [pid]


def connections_per_process(pids: Sequence[int], ports: Sequence[int]) -> list[int]:
    """How many established TCP connections to ``ports`` each process holds (from /proc:
    its socket inodes against the kernel's TCP table)."""
    local = tuple(f":{port:04X}" for port in ports)
    established = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[1].endswith(local) and fields[3] == "01":  # 01: ESTABLISHED
                established.add(fields[9])
    counts = []
    for pid in pids:
        held = 0
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                held += target.startswith("socket:[") and target[8:-1] in established
        except OSError:
            pass
        counts.append(held)
    return counts


def machine_cpu_seconds() -> float:
    """CPU-seconds every core of the machine has spent busy so far (all its processes)."""
    with open("/proc/stat") as stat:
        fields = [int(field) for field in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user already)
    busy = sum(fields[:3]) + sum(fields[5:8])
    return busy / os.sysconf("SC_CLK_TCK")


def _postgres_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    command = cmdline.read()
            except OSError:
                continue
            if command.startswith((b"postgres", b"/usr/lib/postgresql/")):
                pids.append(int(entry))
    return pids


def _cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by groups of processes between ``start()`` and ``stop()``.

    A group is a process tree (the pid of a server, with its workers), a list of exact
    pids, or ``"postgres"`` (every PostgreSQL process on the machine). A process that
    exits in between counts up to its last reading; one that starts in between counts
    from zero.
    """

    def __init__(self, groups: dict[str, int | list[int] | str]) -> None:
        self.groups = groups

    def _pids(self, group: int | list[int] | str) -> list[int]:
        if group == "postgres":
            return _postgres_pids()
        return list(group) if isinstance(group, list) else _process_tree(group)

    def _read(self) -> dict[str, dict[int, float]]:
        return {
            name: {pid: cpu for pid in self._pids(group) if (cpu := _cpu_seconds(pid)) is not None}
            for name, group in self.groups.items()
        }

    def start(self) -> None:
        self._start = self._read()
        self._last = {name: dict(readings) for name, readings in self._start.items()}

    def sample(self) -> None:
        """Take a reading now (call it now and then, so processes that exit are counted)."""
        current = self._read()
        for name, readings in current.items():
            self._last[name] = {**self._last[name], **readings}

    def stop(self) -> dict[str, float]:
        self.sample()
        used = {}
        for name, readings in self._last.items():
            before = self._start[name]
            used[name] = sum(cpu - before.get(pid, 0.0) for pid, cpu in readings.items())
        return used


def stop_all(processes: list[subprocess.Popen]) -> None:
    """Terminate the processes, then kill any still running 20 s later."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
