"""Slow and greedy clients against a real `serve` process (`app.server`): a request head that
does not arrive in time is cut off (HEADER_TIMEOUT_SECONDS, 1 s here) while other clients are
served; a head too large is refused; keep-alive and a clean SIGTERM stop still work.

No test bounds how late a cut comes (a loaded machine would fail that for nothing): a cut
must come at all (socket reads fail after GUARD_SECONDS), never before the deadline (timed
from before the connection opens, so load can only make it later), and for a dripping
client before its drip ends."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.server import MAX_HEAD_BYTES
from app.simulator import Simulator, SimulatorConfig
from tests.e2e.conftest import serve_env, simulator_over_http
from tests.e2e.test_serve import free_port, start, stop, wait_until_up

pytestmark = pytest.mark.e2e

KEY = "e2e-key-not-secret"
HEADER_TIMEOUT = 1.0
GUARD_SECONDS = 60.0  # a read that waits this long fails the test: never reached when well


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with simulator_over_http(Simulator(SimulatorConfig(seed=3, customers=2))) as base:
        yield base


def serve(upstream: str, database: Path) -> tuple[subprocess.Popen[bytes], int]:
    env = serve_env(
        upstream,
        f"sqlite:///{database}",
        KEY,
        REFRESH_INTERVAL_SECONDS="0",
        HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT),
    )
    port = free_port()
    process = start(["serve", "--port", str(port)], env)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/healthz", process)
    except BaseException:
        stop(process)
        raise
    return process, port


@pytest.fixture(scope="module")
def server(
    upstream: str, tmp_path_factory: pytest.TempPathFactory, secret_scan: object
) -> Iterator[int]:
    """One server for the module; its port."""
    process, port = serve(upstream, tmp_path_factory.mktemp("slow") / "gateway.db")
    try:
        yield port
    finally:
        output = stop(process)
        secret_scan.output(output, "serve (slow clients)")  # type: ignore[attr-defined]
        assert "Traceback" not in output, output[-3000:]


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=GUARD_SECONDS)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length, leaving the connection open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(status_line.split()[1]), headers, body


def envelope(response: bytes) -> tuple[int, dict[str, str]]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"\r\nconnection: close" in head.lower(), head
    return int(head.split()[1]), json.loads(body)


def test_a_stalled_head_is_cut_off_while_others_are_served(server: int) -> None:
    began = time.monotonic()
    stalled = connect(server)
    stalled.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")
    # Meanwhile, on other connections, normal clients are served at once.
    with httpx.Client(base_url=f"http://127.0.0.1:{server}", timeout=GUARD_SECONDS) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/jobs", headers={"X-API-Key": KEY}).status_code == 200
    answer = read_until_closed(stalled)
    took = time.monotonic() - began
    stalled.close()
    status, body = envelope(answer)
    assert status == 408
    assert body["error"] == "request_timeout"
    assert took >= HEADER_TIMEOUT * 0.9, took  # not before its deadline


def test_a_head_dripped_a_byte_at_a_time_does_not_reset_the_deadline(server: int) -> None:
    # 150 bytes, one every 0.1 s at least: 15 s of drip, each byte well within the deadline
    # of the one before. A deadline reset by every byte would let it all through.
    drip = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Slow: " + b"z" * 100
    sock = connect(server)
    sent = 0
    cut = False
    try:
        for byte in drip:
            sock.sendall(bytes([byte]))
            sent += 1
            time.sleep(0.1)
            sock.setblocking(False)
            try:
                if sock.recv(65536, socket.MSG_PEEK):
                    cut = True
                    break
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
    except (BrokenPipeError, ConnectionResetError):
        cut = True
    answer = read_until_closed(sock)
    sock.close()
    assert cut and sent < len(drip), f"not cut while dripping ({sent} of {len(drip)} bytes)"
    assert envelope(answer)[0] == 408


def test_an_idle_connection_is_closed_without_a_word(server: int) -> None:
    began = time.monotonic()
    sock = connect(server)
    assert read_until_closed(sock) == b""  # closed: a read would fail after GUARD_SECONDS
    took = time.monotonic() - began
    sock.close()
    assert took >= HEADER_TIMEOUT * 0.9, took  # not before its deadline


def test_keep_alive_outlives_the_header_timeout(server: int) -> None:
    """Between requests uvicorn's keep-alive timeout (5 s) rules, not the head's deadline."""
    sock = connect(server)
    request = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"
    sock.sendall(request)
    assert read_response(sock)[0] == 200
    time.sleep(HEADER_TIMEOUT + 0.5)
    sock.sendall(request)  # the same connection, idle for longer than the head's deadline
    status, headers, _ = read_response(sock)
    sock.close()
    assert status == 200
    assert headers.get("connection") != "close"


def test_a_head_over_the_limit_is_431(server: int) -> None:
    big = b"X-Big: " + b"b" * MAX_HEAD_BYTES + b"\r\n"
    # Whole: it reaches the parser's end, and is refused there.
    sock = connect(server)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n" + big + b"\r\n")
    status, body = envelope(read_until_closed(sock))
    sock.close()
    assert (status, body["error"]) == (431, "headers_too_large")
    # Without an end: refused once the limit is passed, not read for ever.
    sock = connect(server)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n" + big)
    status, body = envelope(read_until_closed(sock))
    sock.close()
    assert (status, body["error"]) == (431, "headers_too_large")
    # A request target longer than the limit is a 414.
    sock = connect(server)
    sock.sendall(b"GET /jobs?q=" + b"q" * MAX_HEAD_BYTES)
    status, body = envelope(read_until_closed(sock))
    sock.close()
    assert (status, body["error"]) == (414, "uri_too_long")
    # A head under the limit is served.
    with httpx.Client(base_url=f"http://127.0.0.1:{server}", timeout=GUARD_SECONDS) as client:
        ok = client.get("/healthz", headers={"X-Big": "b" * (MAX_HEAD_BYTES // 2)})
    assert ok.status_code == 200


def test_sigterm_stops_cleanly_with_a_stalled_head_open(
    upstream: str, tmp_path: Path, secret_scan: object
) -> None:
    process, port = serve(upstream, tmp_path / "gateway.db")
    try:
        stalled = connect(port)
        stalled.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n")
        time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=GUARD_SECONDS)  # it stops by itself
        stalled.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    output = out.decode(errors="replace")
    secret_scan.output(output, "serve (slow clients, SIGTERM)")  # type: ignore[attr-defined]
    assert process.returncode == 0, output[-3000:]
    assert "Traceback" not in output
