"""The machinery of the load benchmark (`bench/load.py`): processes, wrk, /proc, databases.

- `Processes` starts every process pinned to a core (`taskset -c`), in a process group of its
  own, logging to a file, and stops it (SIGTERM, then SIGKILL) however the run ends.
- `wrk` runs wrk on the load core and parses its report: req/s, the latency distribution,
  non-2xx/3xx answers and socket errors.
- `memory_mib`, `core_ticks` and `process_ticks` read /proc: a process's peak resident set,
  and how much of a core a process (or anything else) used while it was under load.
- `database` gives a case a fresh SQLite file, or a throwaway PostgreSQL database that is
  dropped afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable))

# The service and the baseline run on SERVICE_CORE; the stand-in, wrk and the orchestrator
# on LOAD_CORE.
SERVICE_CORE = 0
LOAD_CORE = 1
API_KEY = "bench-key"
# Seconds the stand-in takes per jobs (and customers) request.
LATENCY = 0.05
WRK_CONNECTIONS = 32
JOBS_READ = "/jobs?status=failed&limit=100"
CUSTOMERS_READ = "/customers"
SUMMARY_READ = "/summary"
EVENTS_READ = "/events?limit=100"
ALERTS_READ = "/alerts?state=open&limit=100"


class Broken(Exception):
    """Something that makes a measurement meaningless: a process, a request, lost data."""


# -- processes ---------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Processes:
    """Every process this run started, each in a process group of its own."""

    def __init__(self, logs: Path, pin: bool) -> None:
        self.logs = logs
        self.pin = pin
        self.running: list[Proc] = []

    def start(
        self, name: str, argv: list[str], *, core: int, env: dict[str, str] | None = None
    ) -> Proc:
        log = self.logs / f"{name}.log"
        command = ["taskset", "-c", str(core), *argv] if self.pin else argv
        with log.open("ab") as out:
            popen = subprocess.Popen(
                command,
                cwd=self.logs,  # no `.env` of the repository is read
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.running.append(proc)
        return proc

    def stop(self, proc: Proc, grace: float = 10.0) -> None:
        if proc in self.running:
            self.running.remove(proc)
        if proc.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.popen.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.popen.wait(5)

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):
            self.stop(proc, grace=5.0)


def service_get(
    client: httpx.Client, service: Proc, url: str, timeout: float = 120.0
) -> httpx.Response:
    """GET `url` of the service with the bench's key; `Broken` unless it answers 200 (and at
    once, with its last lines, when the service has exited)."""
    if not service.alive():
        raise Broken(f"the service exited:\n{service.tail()}")
    try:
        response = client.get(url, headers={"X-API-Key": API_KEY}, timeout=timeout)
    except httpx.HTTPError as exc:
        raise Broken(f"GET {url} failed: {exc!r}") from exc
    if response.status_code != 200:
        raise Broken(f"GET {url} answered {response.status_code}: {response.text[:300]}")
    return response


def log(message: str) -> None:
    print(message, flush=True)


def start_run(db: str, postgres_url: str) -> tuple[bool, list[str], str | None]:
    """What every run checks and claims first: wrk is there; this process moves to the load
    core when both cores are there (whether the run is pinned); the databases of `--db`
    ("sqlite", "postgres" or "both"), and PostgreSQL's version. `Broken` says why not."""
    if shutil.which("wrk") is None:
        raise Broken("wrk is not installed (apt-get install -y wrk)")
    cores = os.sched_getaffinity(0)
    pin = {SERVICE_CORE, LOAD_CORE} <= cores and shutil.which("taskset") is not None
    if pin:
        os.sched_setaffinity(0, {LOAD_CORE})  # this script stays off the service's core
    else:
        log(f"warning: cores {SERVICE_CORE} and {LOAD_CORE} are not both available: not pinned")
    dbs = ["sqlite", "postgres"] if db == "both" else [db]
    postgres = postgres_version(postgres_url)
    if "postgres" in dbs and postgres is None:
        raise Broken(f"PostgreSQL does not answer at {postgres_url}")
    return pin, dbs, postgres


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_up(client: httpx.Client, url: str, proc: Proc, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not proc.alive():
            raise Broken(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            if client.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise Broken(f"{proc.name} did not answer {url} within {seconds:.0f} s:\n{proc.tail()}")


def memory_mib(pid: int) -> dict[str, float]:
    """VmHWM (peak resident set) and VmRSS of a running process, in MiB."""
    values: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                values[key] = int(rest.split()[0]) / 1024
    return {"peak_rss_mib": values.get("VmHWM", math.nan), "rss_mib": values.get("VmRSS", math.nan)}


# -- wrk -----------------------------------------------------------------------------------------

_UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_wrk(output: str) -> dict[str, Any]:
    def number(pattern: str) -> float | None:
        m = re.search(pattern, output, re.MULTILINE)
        return float(m.group(1)) if m else None

    latency: dict[str, float] = {}
    for pct, value, unit in re.findall(
        r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.M
    ):
        latency[f"p{pct}_s"] = float(value) * _UNIT_SECONDS[unit]
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    rps = number(r"^Requests/sec:\s+([\d.]+)")
    if rps is None or "p99_s" not in latency:
        raise Broken(f"wrk's output was not understood:\n{output}")
    return {
        "rps": rps,
        **latency,
        "requests": int(number(r"^\s+(\d+) requests in") or 0),
        "non_2xx_3xx": int(number(r"Non-2xx or 3xx responses: (\d+)") or 0),
        "socket_errors": dict(
            zip(("connect", "read", "write", "timeout"), map(int, sock.groups()), strict=True)
        )
        if sock
        else {"connect": 0, "read": 0, "write": 0, "timeout": 0},
    }


def wrk(url: str, seconds: float, pin: bool) -> dict[str, Any]:
    """One wrk run on the load core; `--timeout 30s` so that slow answers are measured too."""
    command = [
        "wrk",
        "-t1",
        f"-c{WRK_CONNECTIONS}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "30s",
        "-H",
        f"X-API-Key: {API_KEY}",
        url,
    ]
    if pin:
        command = ["taskset", "-c", str(LOAD_CORE), *command]
    done = subprocess.run(  # its own session: a Ctrl-C reaches us, and we stop it below
        command, capture_output=True, text=True, timeout=seconds + 60, start_new_session=True
    )
    if done.returncode != 0:
        raise Broken(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout}")
    return parse_wrk(done.stdout)


def load_errors(result: dict[str, Any]) -> int:
    return int(result["non_2xx_3xx"]) + sum(result["socket_errors"].values())


# -- the databases -------------------------------------------------------------------------------


async def _postgres(admin_url: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@contextlib.contextmanager
def database(kind: str, workdir: Path, admin_url: str) -> Iterator[str]:
    """A fresh, empty database for one case: a SQLite file, or a throwaway PostgreSQL one."""
    if kind == "sqlite":
        path = workdir / f"bench-{secrets.token_hex(4)}.db"
        try:
            yield f"sqlite:///{path}"
        finally:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    name = f"bench_{secrets.token_hex(6)}"
    asyncio.run(_postgres(admin_url, f'CREATE DATABASE "{name}"'))
    try:
        base = admin_url.rsplit("/", 1)[0]
        yield f"{base}/{name}"
    finally:
        asyncio.run(_postgres(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def postgres_version(admin_url: str) -> str | None:
    async def ask() -> str:
        import asyncpg

        conn = await asyncpg.connect(admin_url, timeout=5)
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    try:
        return asyncio.run(ask())
    except Exception:  # refused, timed out, no such role or database: not reachable
        return None


def core_ticks(core: int) -> tuple[int, int]:
    """(busy, total) clock ticks of one core so far, from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            user, nice, system, idle, iowait, *rest = map(int, line.split()[1:9])
            busy = user + nice + system + sum(rest)
            return busy, busy + idle + iowait
    return 0, 0


def process_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads) so far, in clock ticks."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])
