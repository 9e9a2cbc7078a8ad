"""A SQLite store in a folder its service may not write: answers, not 500s.

A service killed while it ran comes back up after its folder and files were made read-only
(a volume remounted read-only, a wrong `chown`, a restored backup). What the store holds is
served; every write fails as the outage it is: a refresh is a source error of kind
`database` (its customers served stale), a write the client asked for is 503
`database_unavailable` naming the file. Once the folder may be written again, refreshes
store again, without a restart.

Root writes anywhere, and the tests may run as root: then the service runs without the
capabilities that let root ignore a file's mode (`setpriv` drops them from its bounding set
before it starts), so that the mode bits hold for it as they do for anyone else. Another user
could not run the test's Python (it lives under root's home), hence no `setuid`.

A running service does not notice a folder made read-only at all: its open connections keep
writing the file. What the mode bits stop is opening the file again, here at the restart.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from app.simulator import Simulator, SimulatorConfig
from tests.e2e.conftest import serve_env, simulator_over_http
from tests.e2e.test_serve import free_port

pytestmark = pytest.mark.e2e

KEY = "e2e-key-not-secret"
DEADLINE_SECONDS = 60.0  # a failure guard only: conditions are polled, never timed
# Without these, root still reads and writes by the mode bits' owner rights, as any owner.
IGNORE_PERMISSIONS = "-dac_override,-dac_read_search,-fowner"


def _confined() -> list[str]:
    """The prefix that makes a process started by this one obey file modes."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv (util-linux): file modes cannot hold")
    return [setpriv, f"--bounding-set={IGNORE_PERMISSIONS}", "--"]


_OUTPUT: dict[int, tuple[threading.Thread, list[bytes]]] = {}


def _drain(stream: IO[bytes], chunks: list[bytes]) -> None:
    for line in iter(stream.readline, b""):
        chunks.append(line)


def launch(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    """`jobs-gateway serve`, obeying file modes, its output read as it comes."""
    process = subprocess.Popen(
        [*_confined(), sys.executable, "-m", "app", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    chunks: list[bytes] = []
    reader = threading.Thread(target=_drain, args=(process.stdout, chunks), daemon=True)
    reader.start()
    _OUTPUT[process.pid] = (reader, chunks)
    return process


def output_of(process: subprocess.Popen[bytes]) -> str:
    reader, chunks = _OUTPUT.pop(process.pid)
    reader.join(10)
    if process.stdout is not None:
        process.stdout.close()
    return b"".join(chunks).decode(errors="replace")


def stop(process: subprocess.Popen[bytes]) -> str:
    """SIGTERM; what it printed (scanned for secrets by tests/conftest.py)."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return output_of(process)


def crash(process: subprocess.Popen[bytes]) -> str:
    process.kill()
    process.wait()
    return output_of(process)


def until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not check():
        assert time.monotonic() < deadline, f"{what} within {DEADLINE_SECONDS} s"
        time.sleep(0.2)


def wait_ready(base: str, process: subprocess.Popen[bytes]) -> None:
    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"serve exited with {process.returncode}:\n{output_of(process)}")
        try:
            return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    until(ready, "serve answers /readyz")


def set_writable(folder: Path, writable: bool) -> None:
    """The folder and every file in it (the store, its -wal and -shm) writable or not."""
    for path in [*folder.iterdir(), folder]:
        mode = path.stat().st_mode
        write = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
        path.chmod(mode | stat.S_IWUSR if writable else mode & ~write)


def never_500(response: httpx.Response) -> httpx.Response:
    assert response.status_code < 500 or response.status_code == 503, response.text
    return response


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "store"
    try:
        yield folder
    finally:
        if folder.exists():
            set_writable(folder, True)


def test_a_store_it_may_not_write_serves_its_answers_and_writes_recover(store: Path) -> None:
    sim = Simulator(SimulatorConfig(seed=11, customers=3))
    database = store / "gateway.sqlite"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with simulator_over_http(sim) as upstream:
        env = serve_env(
            upstream,
            f"sqlite:///{database}",
            KEY,
            REFRESH_INTERVAL_SECONDS="0",
            # A failed refresh backs off for at most the TTL: the recovery below is quick.
            CACHE_TTL_SECONDS="5",
            RATE_LIMIT_PER_MINUTE="0",
        )
        headers = {"Authorization": f"Bearer {KEY}"}

        first = launch(env, port)
        try:
            wait_ready(base, first)
            stored = httpx.get(f"{base}/jobs?max_age=0&limit=500", headers=headers, timeout=30)
            assert stored.status_code == 200
            assert stored.json()["sources"] == []
            assert stored.json()["items"]
        finally:
            crash(first)

        set_writable(store, False)
        second = launch(env, port)
        try:
            wait_ready(base, second)
            with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
                check_reads_answer_and_writes_fail(client, stored.json(), database)
                set_writable(store, True)

                def stored_again() -> bool:
                    answer = never_500(client.get("/jobs?max_age=0&limit=500"))
                    return answer.status_code == 200 and answer.json()["sources"] == []

                until(stored_again, "a refresh stores again once the folder may be written")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n-- serve printed:\n{stop(second)[-8000:]}") from None
        else:
            stop(second)


def check_reads_answer_and_writes_fail(
    client: httpx.Client, stored: dict[str, Any], database: Path
) -> None:
    # A forced refresh cannot store: the stored answer is served, every customer stale
    # with an error of kind `database`.
    forced = never_500(client.get("/jobs?max_age=0&limit=500"))
    assert forced.status_code == 200, forced.text
    assert forced.json()["items"] == stored["items"]
    sources = forced.json()["sources"]
    assert len(sources) == stored["freshness"]["customers"]
    assert {(s["state"], s["error"]["kind"]) for s in sources} == {("stale", "database")}

    for path in ["/jobs?status=failed", "/customers", "/summary", "/alerts", "/events"]:
        assert never_500(client.get(path)).status_code == 200, path

    # A write the client asked for: 503 naming the file, never a 500.
    cid = stored["items"][0]["customer_id"]
    snooze = never_500(
        client.post(
            f"/alerts/{cid}:microsoft_365:exchange_online/snooze",
            json={"until": "2030-01-01T00:00:00Z", "reason": "read-only"},
        )
    )
    assert snooze.status_code == 503, snooze.text
    assert snooze.json()["error"] == "database_unavailable"
    assert f"the database (sqlite, {database}) cannot be reached" in snooze.json()["detail"]
    assert int(snooze.headers["retry-after"]) > 0

    run = never_500(client.post("/refresh"))
    assert run.status_code == 202

    def run_done() -> bool:
        return bool(never_500(client.get(run.headers["location"])).json()["state"] == "done")

    until(run_done, "the refresh run ends")
    outcome = client.get(run.headers["location"]).json()
    assert {c["state"] for c in outcome["customers"]} == {"error"}
