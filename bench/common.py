"""Shared by the benchmarks: the stack, polling, process meters, results and the driver.

Not a benchmark itself; each bench/<name>.py holds only what it measures. Here:

- `Stack` starts `herald dev` (Temporal dev server with SQLite + WAL, the worker and the API,
  exactly what `make run` starts) on free ports in a temporary data dir; `Connection` is a
  keep-alive HTTP/1.1 client on raw asyncio streams; `Db` reads Herald's SQLite file read-only.
- `poll` waits for a condition; `CpuMeter` and `RssSampler` meter processes by PID.
- `start_worker` / `serve`: a benchmark's own Temporal worker in a process of its own (the
  script re-run with a hidden flag), so it competes for the CPU the way Herald's worker does.
- `stack_arguments` (--keep-log and those hidden flags), `pick_backends`, `print_checks`, `save`
  (bench/results/) and `run_on_stack`, the driver of a benchmark on one stack: start it,
  measure, stop it, keep the log on failure, write the results.
"""

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx

from herald.cli.devstack import find_binary

RESULTS = Path(__file__).parent / "results"


def log(message: str) -> None:
    """Progress on stderr, off the tables on stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


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
            kb = rss_kb(pid)
            if kb is not None:
                out[name] = kb / 1024
        return out

    def connection(self, key: str = "private_key") -> Connection:
        """A keep-alive connection to the API, authorised with one of the dev keys."""
        headers = {"authorization": f"Bearer {self.keys[key]}"}
        return Connection("127.0.0.1", self.api_port, headers)

    def worker_metrics(self) -> dict[str, float]:
        """The worker's Temporal SDK metrics, each summed over its label sets (buckets left
        out); empty when the endpoint does not answer."""
        import urllib.request

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                text = answer.read().decode()
        except OSError:
            return {}
        out: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name = line.split("{")[0].split(" ")[0]
            if not name.endswith("_bucket"):
                out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        shutil.rmtree(self.data_dir, ignore_errors=True)


class Db:
    """Read-only view of Herald's SQLite file: WAL readers never block the writer."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)

    def scalar(self, sql: str, *params):
        return self.conn.execute(sql, params).fetchone()[0]

    def rows(self, sql: str, *params) -> list[tuple]:
        return self.conn.execute(sql, params).fetchall()


def sqlite_epoch(value: str | None) -> float | None:
    """A naive-UTC datetime as SQLite stores it, as a Unix timestamp (None stays None)."""
    if value is None:
        return None
    return datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp()


# ---- polling -----------------------------------------------------------------------------------


async def poll(check: Callable[[], object], every: float, give_up_after: float = 600) -> None:
    """Until `check()` (a function or coroutine function) is true."""
    deadline = time.monotonic() + give_up_after
    while True:
        ok = check()
        if asyncio.iscoroutine(ok):
            ok = await ok
        if ok:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up after {give_up_after:.0f} s")
        await asyncio.sleep(every)


# ---- process meters ----------------------------------------------------------------------------


def machine_busy_seconds() -> float:
    """CPU time all cores spent busy since boot (/proc/stat: everything but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds each process used between construction and stop().

    `pids` are metered, then this process (`bench`), then `extra`; with `other`, stop() adds
    what the rest of the machine used meanwhile (noise on a shared machine)."""

    def __init__(
        self, pids: dict[str, int], extra: dict[str, int] | None = None, *, other: bool = False
    ) -> None:
        self.pids, self.extra, self.other = pids, extra or {}, other
        self.start = self.read()

    def read(self) -> dict[str, float]:
        own = os.times()
        out: dict[str, float] = {}
        for name, pid in self.pids.items():
            seconds = cpu_seconds(pid)
            if seconds is not None:
                out[name] = seconds
        out["bench"] = own.user + own.system
        for name, pid in self.extra.items():
            out[name] = cpu_seconds(pid) or 0.0
        if self.other:
            out["machine"] = machine_busy_seconds()
        return out

    def stop(self) -> dict[str, float]:
        end = self.read()
        used = {k: end[k] - self.start.get(k, 0.0) for k in end}
        if self.other:
            machine = used.pop("machine")
            used["other"] = max(0.0, machine - sum(used.values()))
        return used


class RssSampler:
    """Peak VmRSS (MB) of some processes, sampled every `every` seconds in the background."""

    def __init__(self, pids: dict[str, int], every: float = 0.5) -> None:
        self.pids, self.every = pids, every
        self.peak: dict[str, float] = {}
        self.samples = 0
        self.task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            for name, pid in self.pids.items():
                kb = rss_kb(pid)
                if kb is not None:
                    self.peak[name] = max(self.peak.get(name, 0.0), kb / 1024)
            self.samples += 1
            await asyncio.sleep(self.every)

    async def stop(self) -> dict[str, float]:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        return self.peak


# ---- a benchmark's own worker process ----------------------------------------------------------


def stack_arguments(parser: argparse.ArgumentParser, flag: str, *extra: str) -> None:
    """--keep-log (see run_on_stack), and the hidden options a benchmark script takes when
    start_worker re-runs it as its own worker."""
    parser.add_argument("--keep-log", action="store_true", help="keep the stack's log file")
    parser.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    for name in ("--address", "--task-queue", *extra):
        parser.add_argument(name, help=argparse.SUPPRESS)


@contextlib.contextmanager
def start_worker(
    script: str, flag: str, stack: Stack, task_queue: str, *extra: str
) -> Iterator[subprocess.Popen]:
    """`script flag --address .. --task-queue .. *extra` in a process of its own, once it said
    "ready" (see `serve`); its logs go to the stack's log; terminated on leaving."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(script).resolve()),
            flag,
            "--address",
            stack.temporal_address,
            "--task-queue",
            task_queue,
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=open(stack.log_path, "a"),  # noqa: SIM115
        text=True,
        env={**os.environ, "HERALD_LOG_LEVEL": "WARNING"},
    )
    try:
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the {flag} process did not start ({line!r}); see {stack.log_path}")
        yield proc
    finally:
        proc.terminate()
        proc.wait(30)


async def serve(worker) -> None:
    """Runs a temporalio Worker until SIGINT or SIGTERM; prints "ready" once it runs."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with worker:
        print("ready", flush=True)
        await stop.wait()


# ---- backends, results, the driver -------------------------------------------------------------


def pick_backends(
    parser: argparse.ArgumentParser, names: list[str]
) -> list[tuple[str, str | None]]:
    """(backend, database URL) for each name: sqlite (no URL), postgres when
    HERALD_BENCH_POSTGRES_URL or HERALD_TEST_POSTGRES_URL is set (skipped with a note if not)."""
    pg_url = os.environ.get("HERALD_BENCH_POSTGRES_URL") or os.environ.get(
        "HERALD_TEST_POSTGRES_URL"
    )
    out: list[tuple[str, str | None]] = []
    for name in names:
        if name == "sqlite":
            out.append((name, None))
        elif name == "postgres" and pg_url:
            out.append((name, pg_url))
        elif name == "postgres":
            print("PostgreSQL skipped: set HERALD_BENCH_POSTGRES_URL", file=sys.stderr)
        else:
            parser.error(f"unknown backend {name!r}")
    return out


def print_checks(checks: list[tuple[str, bool]]) -> None:
    for label, ok in checks:
        print(f"  [{'met' if ok else 'MISSED'}] {label}")


def save(name: str, out: dict, *, stamped: bool = True, seconds: float | None = None) -> Path:
    """Writes the raw numbers to bench/results/<name>-<timestamp>.json (<name>.json unless
    `stamped`) and says where; with `seconds`, how long the whole benchmark took too."""
    RESULTS.mkdir(exist_ok=True)
    stamp = f"-{time.strftime('%Y%m%dT%H%M%S')}" if stamped else ""
    path = RESULTS / f"{name}{stamp}.json"
    path.write_text(json.dumps(out, indent=2, default=str))
    whole = f"whole benchmark {seconds:.0f} s; " if seconds is not None else ""
    print(f"\n{whole}raw numbers: {path}")
    return path


def run_on_stack(
    name: str,
    measure: Callable[[Stack, argparse.Namespace, dict], Awaitable[None]],
    args: argparse.Namespace,
    *,
    timed: bool = False,
) -> None:
    """The driver of a benchmark on one stack: `measure(stack, args, out)` fills `out`, which
    is saved as bench/results/<name>-<timestamp>.json even when it fails (the error in it, the
    stack's log kept and its path printed, exit status 1). The log is kept with --keep-log too;
    `timed` adds the whole benchmark's seconds."""
    out: dict = {"cores": os.cpu_count(), "args": vars(args)}
    started = time.monotonic()
    stack = Stack()
    log(f"stack up: data {stack.data_dir}, log {stack.log_path}")
    failed = False
    try:
        asyncio.run(measure(stack, args, out))
    except Exception as exc:
        failed = True
        out["error"] = "".join(traceback.format_exception(exc))
        print(f"\nFAILED: {exc}", flush=True)
    finally:
        stack.stop()
        if not args.keep_log and not failed:
            stack.log_path.unlink(missing_ok=True)
    if timed:
        out["bench_seconds"] = time.monotonic() - started
    save(name, out, seconds=out.get("bench_seconds"))
    if failed:
        print(f"stack log: {stack.log_path}")
        raise SystemExit(1)
