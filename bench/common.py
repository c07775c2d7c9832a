"""Shared by the benchmarks: the stack under test, a cheap HTTP client, small statistics.

Not a benchmark itself. `Stack` starts `herald dev` (Temporal dev server with SQLite + WAL, the
worker and the API, exactly what `make run` starts) on free ports in a temporary data dir;
`Connection` is a keep-alive HTTP/1.1 client on raw asyncio streams.
"""

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from herald.cli.devstack import find_binary

RESULTS = Path(__file__).parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Connection:
    """A keep-alive HTTP/1.1 connection on raw asyncio streams.

    httpx costs about a millisecond of CPU per request, as much as the server's own work; on a
    2-core machine a heavy load generator would measure itself. This one only frames bytes.
    """

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host, self.port = host, port
        self.head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        extra = f"content-type: application/json\r\ncontent-length: {len(body)}\r\n" if body else ""
        self.writer.write(
            f"{method} {path} HTTP/1.1\r\nhost: {self.host}\r\n{self.head}{extra}\r\n".encode()
            + (body or b"")
        )
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    async def json(self, method: str, path: str, body: object = None) -> tuple[int, object]:
        """A request with a JSON body (if any), and the JSON answer (None when empty)."""
        status, raw = await self.request(
            method, path, json.dumps(body).encode() if body is not None else None
        )
        return status, json.loads(raw) if raw else None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process has used so far (its threads included)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int | None:
    """Resident memory (VmRSS) of a process in kB, or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


_rss_kb = rss_kb  # the name the Stack used first


class Stack:
    """`herald dev` on free ports with its own data dir; stopped with SIGTERM like Ctrl-C."""

    def __init__(self, database_url: str | None = None) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="herald-bench-"))
        self.api_port = free_port()
        self.temporal_port = free_port()
        self.metrics_port = free_port()  # the worker's Prometheus endpoint (Temporal SDK)
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        env = {
            **os.environ,
            "HERALD_DATA_DIR": str(self.data_dir),
            "HERALD_DEV_TEMPORAL_PORT": str(self.temporal_port),
            "HERALD_TEMPORAL_UI_PORT": str(free_port()),
            "HERALD_API_PORT": str(self.api_port),
            "HERALD_WORKER_METRICS_PORT": str(self.metrics_port),
            "HERALD_LOG_LEVEL": "WARNING",
        }
        for name in ("TEMPORAL_ADDRESS", "HERALD_TEMPORAL_ADDRESS", "HERALD_DATABASE_URL"):
            env.pop(name, None)
        if database_url:
            env["HERALD_DATABASE_URL"] = database_url
        self.proc = subprocess.Popen(
            [find_binary("herald"), "dev"],
            env=env,
            stdout=subprocess.DEVNULL,
            # The stack's own logs (Temporal is chatty) go to a file, not over the table.
            stderr=open(self.log_path, "w"),  # noqa: SIM115
            start_new_session=True,
        )
        self.base = f"http://127.0.0.1:{self.api_port}"
        deadline = time.monotonic() + 120
        keys_file = self.data_dir / "dev-keys.json"
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"herald dev exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit("herald dev did not become ready in 120 s")
            try:
                if keys_file.exists() and httpx.get(f"{self.base}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass  # not listening yet: poll again
            time.sleep(0.3)
        self.keys = json.loads(keys_file.read_text())

    @property
    def temporal_address(self) -> str:
        return f"127.0.0.1:{self.temporal_port}"

    @property
    def sqlite_path(self) -> Path:
        """Herald's database file (when no database URL was given)."""
        return self.data_dir / "herald.db"

    def children(self) -> dict[str, int]:
        """PIDs of the processes `herald dev` started: temporal, worker, api."""
        found: dict[str, int] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            # The command name may hold spaces or parentheses: the fields follow the last ")".
            ppid = int(stat.rpartition(")")[2].split()[1])
            if ppid != self.proc.pid:
                continue
            args = [a.decode(errors="replace") for a in cmdline if a]
            if any(Path(a).name == "temporal" for a in args[:1]):
                found["temporal"] = int(entry.name)
            elif "worker" in args:
                found["worker"] = int(entry.name)
            elif "api" in args:
                found["api"] = int(entry.name)
        return found

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"herald dev exited with {self.proc.returncode}; see {self.log_path}"
            )

    def rss_mb(self) -> dict[str, float]:
        """Resident memory (VmRSS) of each child process, in MB."""
        self.check_alive()
        out = {}
        for name, pid in self.children().items():
            kb = _rss_kb(pid)
            if kb is not None:
                out[name] = kb / 1024
        return out

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each child process."""
        out = {}
        for name, pid in self.children().items():
            seconds = cpu_seconds(pid)
            if seconds is not None:
                out[name] = seconds
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        shutil.rmtree(self.data_dir, ignore_errors=True)
