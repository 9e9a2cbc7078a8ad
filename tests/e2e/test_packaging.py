"""Packaging that stands on its own: the wheel, the container and the compose stack.

- The wheel is built from exactly what the Dockerfile's build stage copies, installed with
  its dependencies into a fresh virtual environment, and run from an empty folder with no
  PYTHONPATH: `jobs-gateway migrate` and `jobs-gateway serve` must work with no checkout.
- The Dockerfile's run stage installs that wheel and nothing else.
- docker-compose.yml (PostgreSQL and two replicas) sets only variables `Settings` knows,
  and is a configuration the service accepts once the required variables are given.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from alembic.script import ScriptDirectory

from app.config import Settings
from app.store.db import MIGRATIONS_DIR, alembic_config

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
GATEWAYS = ("gateway-1", "gateway-2")
REQUIRED = ("API_KEYS", "AVEPOINT_CLIENT_ID", "AVEPOINT_CLIENT_SECRET")
CONTAINER_PORT = 8000

# ---------------------------------------------------------------------------------------------
# The Dockerfile


def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), one list per stage."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def copy_sources(instruction: str) -> list[str]:
    """The sources of a `COPY a b ./dest` instruction (flags such as --from dropped)."""
    words = [w for w in instruction.split()[1:] if not w.startswith("--")]
    return words[:-1]


def build_inputs() -> list[str]:
    """What the build stage copies into the image: the wheel is built from these alone."""
    build = dockerfile_stages()[0]
    return [s for line in build if line.upper().startswith("COPY ") for s in copy_sources(line)]


def test_the_container_runs_the_wheel_and_nothing_else() -> None:
    build, run = dockerfile_stages()[0], dockerfile_stages()[-1]
    assert any("pip wheel" in line for line in build)
    # The top-level migrations/ goes into the wheel as app/migrations (pyproject.toml).
    assert {"pyproject.toml", "app", "migrations"} <= set(build_inputs())
    # The run stage copies nothing: it installs the wheels the build stage made.
    assert not [line for line in run if line.upper().startswith(("COPY ", "ADD "))]
    assert not [line for line in run if "PYTHONPATH" in line]
    assert any("pip install" in line and "jobs-gateway" in line for line in run)
    users = [line.split()[1] for line in run if line.upper().startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}
    assert any(line.upper().startswith("HEALTHCHECK ") for line in run)
    cmd = [line for line in run if line.upper().startswith("CMD ")]
    assert cmd and '"jobs-gateway", "serve"' in cmd[-1] and f'"{CONTAINER_PORT}"' in cmd[-1]


# ---------------------------------------------------------------------------------------------
# docker-compose.yml

VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: object, given: str = "x") -> str:
    """The value as compose would make it with every required variable set to `given` and
    every optional one unset (so its default applies)."""

    def one(match: re.Match[str]) -> str:
        op = match["op"] or ""
        if op.endswith("?"):
            return given
        return match["arg"] if op.endswith("-") else ""

    return VARIABLE.sub(one, str(value))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the `- NAME=value` form
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def test_compose_has_postgres_and_two_gateway_replicas(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", *GATEWAYS} <= set(services)
    postgres = services["postgres"]
    assert str(postgres["image"]).startswith("postgres:16")
    assert "pg_isready" in " ".join(map(str, postgres["healthcheck"]["test"]))
    volume = str(postgres["volumes"][0]).split(":")[0]
    assert volume in (compose.get("volumes") or {}), "the database lives in a named volume"

    host_ports = []
    for name in GATEWAYS:
        gateway = services[name]
        assert gateway["build"] in (".", {"context": "."})
        assert gateway["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "/readyz" in " ".join(map(str, gateway["healthcheck"]["test"]))
        (published,) = gateway["ports"]
        host, container = str(published).rsplit(":", 1)
        assert int(container) == CONTAINER_PORT
        host_ports.append(host)
    assert len(set(host_ports)) == len(GATEWAYS), "each replica on its own host port"


def test_compose_sets_only_variables_the_service_knows(compose: dict[str, Any]) -> None:
    known = {name.upper() for name in Settings.model_fields}
    for name in GATEWAYS:
        env = environment(compose["services"][name])
        assert set(env) <= known, (name, sorted(set(env) - known))
        for variable in REQUIRED:
            assert re.fullmatch(rf"\$\{{{variable}:\?[^}}]*\}}", env[variable]), variable
        assert env.get("LOG_FORMAT") == "json"


def test_both_replicas_share_the_postgres_database(compose: dict[str, Any]) -> None:
    services = compose["services"]
    urls = {environment(services[name])["DATABASE_URL"] for name in GATEWAYS}
    assert len(urls) == 1, "the replicas must share one database"
    (url,) = urls
    database = environment(services["postgres"])
    parts = urlsplit(interpolate(url))
    assert parts.scheme in ("postgresql", "postgres")
    assert (parts.hostname, parts.port) == ("postgres", 5432)
    assert parts.username == database["POSTGRES_USER"]
    assert parts.path == f"/{database['POSTGRES_DB']}"
    # The same password variable on both sides, not a second copy of the secret.
    (password,) = VARIABLE.findall(url)
    assert password[0] in database["POSTGRES_PASSWORD"]


def test_compose_configuration_is_one_the_service_accepts(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for field in Settings.model_fields:
        monkeypatch.delenv(field.upper(), raising=False)
    env = environment(compose["services"][GATEWAYS[0]])
    settings = Settings(_env_file=None, **{k.lower(): interpolate(v) for k, v in env.items()})
    settings.check()  # credentials and keys present, nothing contradictory
    assert not settings.demo
    assert settings.database_url.startswith("postgresql://")
    assert settings.log_format == "json"


# ---------------------------------------------------------------------------------------------
# The wheel, installed into a fresh virtual environment


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    workdir: Path  # empty: the commands run here, far from the checkout
    seconds: dict[str, float]

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self, **variables: str) -> dict[str, str]:
        """A bare environment: no PYTHONPATH, no settings of the test run, only `variables`."""
        keep = {k: os.environ[k] for k in ("HOME", "LANG", "LC_ALL", "TMPDIR") if k in os.environ}
        path = os.pathsep.join([str(self.bin), os.environ.get("PATH", os.defpath)])
        return {**keep, "PATH": path, **variables}


def run(args: list[str | Path], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel built from the Dockerfile's build inputs, installed with its dependencies
    (pinned by constraints.txt) into a new virtual environment outside the checkout.

    The wheel is built from a copy of those inputs, not in the checkout: setuptools would
    write build/ and *.egg-info there, and a stale build/lib could slip deleted files into
    the wheel.
    """
    root = tmp_path_factory.mktemp("packaging")
    source, dist, venv, workdir = (root / n for n in ("source", "dist", "venv", "empty"))
    source.mkdir()
    workdir.mkdir()
    seconds: dict[str, float] = {}
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in build_inputs():
        path = REPO_ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=ignore)
        else:
            shutil.copy2(path, source / name)
    # pip's own settings (index, proxy, certificates) stay; Python's do not.
    pip_env = {
        k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"
    }

    started = time.monotonic()
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, "."], source, pip_env)
    seconds["wheel"] = time.monotonic() - started
    (wheel,) = dist.glob("jobs_gateway-*.whl")

    # The new environment gets no pip of its own (installing one costs seconds): this pip
    # installs into it (`--python`), and compiles nothing ahead: Python compiles what the
    # commands import, the rest of every dependency is never read.
    started = time.monotonic()
    run([sys.executable, "-m", "venv", "--without-pip", venv], workdir, pip_env)
    seconds["venv"] = time.monotonic() - started

    started = time.monotonic()
    constraints = source / "constraints.txt"
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", python]
    run(
        [*pip, "install", "-q", "--no-compile", "-c", constraints, wheel],
        workdir,
        pip_env,
        timeout=600,
    )
    seconds["install"] = time.monotonic() - started
    return Installed(wheel=wheel, venv=venv, workdir=workdir, seconds=seconds)


def test_the_wheel_carries_the_migrations(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
    assert {n.split("/")[0] for n in names} == {
        "app",
        f"{installed.wheel.name.rsplit('-', 3)[0]}.dist-info",
    }
    assert {"app/migrations/env.py", "app/migrations/script.py.mako"} <= names
    versions = {
        f"app/migrations/versions/{p.name}" for p in (MIGRATIONS_DIR / "versions").glob("*.py")
    }
    assert versions, "no migrations in the checkout"
    assert versions == {n for n in names if n.startswith("app/migrations/versions/")}
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_the_installed_package_is_not_the_checkout(installed: Installed) -> None:
    probe = "import app, app.store.db as db; print(app.__file__); print(db.MIGRATIONS_DIR)"
    python = installed.bin / "python"
    for flags in ([], ["-I"]):  # as a console script runs, and fully isolated
        out = run([python, *flags, "-c", probe], installed.workdir, installed.env())
        package, migrations = (Path(line) for line in out.split())
        assert package.is_relative_to(installed.venv), package
        assert migrations.is_relative_to(installed.venv), migrations
        assert not package.is_relative_to(REPO_ROOT)


def test_installed_migrate_works_from_an_empty_folder(installed: Installed, tmp_path: Path) -> None:
    database = tmp_path / "x.db"
    run(
        [installed.bin / "jobs-gateway", "migrate"],
        installed.workdir,
        installed.env(DATABASE_URL=f"sqlite:///{database}"),
        timeout=120,
    )
    with sqlite3.connect(database) as connection:
        tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master")}
        (revision,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    assert {"customers", "snapshots", "jobs", "events", "alerts", "alembic_version"} <= tables
    # The installed migrations reach the same head as the checkout's.
    assert {revision} == set(ScriptDirectory.from_config(alembic_config()).get_heads())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(installed: Installed, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    log = tmp_path / "serve.log"
    env = installed.env(DEMO="true", DATABASE_URL=f"sqlite:///{tmp_path / 'serve.db'}")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [installed.bin / "jobs-gateway", "serve", "--port", str(port)],
            cwd=installed.workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{port}", process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        print(log.read_text(errors="replace")[-4000:])


def test_installed_serve_answers_readyz(served: tuple[str, subprocess.Popen[bytes]]) -> None:
    base, process = served
    deadline = time.monotonic() + 60
    status = None
    with httpx.Client(timeout=2) as client:  # one for every look (tests/e2e/test_serve.py)
        while time.monotonic() < deadline and process.poll() is None:
            try:
                status = client.get(f"{base}/readyz").status_code
            except httpx.TransportError:
                status = None
            if status == 200:
                break
            time.sleep(0.2)
    assert process.poll() is None, f"serve exited with {process.returncode}"
    assert status == 200
