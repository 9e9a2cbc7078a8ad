"""End to end: `jobs-gateway serve` with LOG_FORMAT=json prints nothing but JSON lines, and
the lines about a request carry the id it was sent with (X-Request-ID)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SecretScan

pytestmark = pytest.mark.e2e

KEY = "e2e-key-not-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def finish(process: subprocess.Popen[bytes]) -> str:
    """Stop the process; what it printed, stdout and stderr together."""
    process.terminate()
    try:
        out, _ = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    return out.decode(errors="replace")


def wait_until_up(url: str, process: subprocess.Popen[bytes], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=1) as client:  # one for every look (tests/e2e/test_serve.py)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"the server exited with {process.returncode}")
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise AssertionError(f"{url} did not come up in {seconds}s")


def test_with_log_format_json_every_line_is_json_and_a_request_is_traceable(
    tmp_path: Path, secret_scan: SecretScan
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVEPOINT_", "DEMO"))}
    env |= {
        "DEMO": "true",
        "DEMO_CUSTOMERS": "3",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "API_KEYS": KEY,
        "DATABASE_URL": f"sqlite:///{tmp_path}/logs.db",
        "CUSTOMER_IDS": "",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(f"{base}/readyz", server)
        with httpx.Client(base_url=base, headers={"X-API-Key": KEY}, timeout=30) as client:
            assert client.get("/jobs").status_code == 200  # the first refreshes are done
            # max_age=0: the request refreshes every customer itself, so app lines carry its id.
            traced = client.get("/jobs", params={"max_age": 0}, headers={"X-Request-ID": "abc123"})
            unknown = client.get("/no-such-route")
    finally:
        output = finish(server)
    secret_scan.output(output, "jobs-gateway serve (LOG_FORMAT=json)")

    assert traced.status_code == 200
    assert traced.headers["x-request-id"] == "abc123"
    assert unknown.status_code == 404 and len(unknown.headers["x-request-id"]) == 32
    lines = output.splitlines()
    entries: list[dict[str, Any]] = []
    for line in lines:
        entry = json.loads(line)  # every line, uvicorn's and any traceback's included
        assert isinstance(entry, dict), line
        assert {"ts", "level", "logger", "msg"} <= entry.keys(), line
        entries.append(entry)
    loggers = {e["logger"] for e in entries}
    assert {"uvicorn.error", "uvicorn.access", "app.refresh"} <= loggers, loggers
    started = next(e for e in entries if e["msg"].startswith("Started server process"))
    assert "request_id" not in started

    about = [e for e in entries if e.get("request_id") == "abc123"]
    access = [e for e in about if e["logger"] == "uvicorn.access"]
    assert [(e["method"], e["path"], e["status"]) for e in access] == [
        ("GET", "/jobs?max_age=0", 200)
    ]
    refreshed = [e for e in about if e["logger"] == "app.refresh"]
    assert len(refreshed) == 3, about  # one line per customer the request refreshed
    other_ids = {e["request_id"] for e in entries if e["logger"] == "uvicorn.access"}
    assert len(other_ids) == sum(e["logger"] == "uvicorn.access" for e in entries)


@pytest.mark.parametrize(
    ("command", "env", "status"),
    [
        # A refusal at start-up: one JSON line naming the variable.
        (["serve"], {}, 1),
        # The demo's banner and a migration's last word are log lines too.
        (["migrate"], {"DATABASE_URL": "sqlite:///{tmp}/m.db"}, 0),
    ],
)
def test_the_cli_speaks_json_too(
    command: list[str], env: dict[str, str], status: int, tmp_path: Path
) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AVEPOINT_", "DEMO"))}
    base |= {"LOG_FORMAT": "json", "API_KEYS": KEY}
    base |= {k: v.format(tmp=tmp_path) for k, v in env.items()}
    result = subprocess.run(
        [sys.executable, "-m", "app", *command],
        env=base,
        capture_output=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == status
    lines = (result.stdout + result.stderr).decode().splitlines()
    assert lines
    entries = [json.loads(line) for line in lines]
    if status:
        assert "AVEPOINT_CLIENT_ID" in entries[-1]["msg"]
        assert entries[-1]["level"] == "ERROR"
