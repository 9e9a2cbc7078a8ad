"""The same-run baseline of the load benchmark: a bare FastAPI endpoint serving the same bytes.

    python -m bench.baseline --port 8902 --path /jobs --body /tmp/jobs.json

One GET endpoint at `--path` answers the file's bytes as `application/json`, whatever the
query string. It is served the way `python -m app serve` serves the product (see
`app/cli.py` `run_server`): `uvicorn.run` in one process with one worker, uvicorn's default
loop and HTTP implementations (`auto`: uvloop and httptools when installed, as they are here),
`proxy_headers=True`, `server_header=False` and the same log level. So what the service costs
above this is its own work (authentication, the freshness read, the query, serialization and
middleware) and not the server, the framework's floor, the loopback or the size of the body.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from fastapi.responses import Response


def create_baseline_app(path: str, body: bytes) -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get(path)
    async def fixed() -> Response:
        return Response(content=body, media_type="application/json")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8902)
    parser.add_argument("--path", default="/jobs", help="the endpoint's path")
    parser.add_argument("--body", type=Path, required=True, help="file holding the body")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    app = create_baseline_app(args.path, args.body.read_bytes())
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        proxy_headers=True,
        server_header=False,
    )


if __name__ == "__main__":
    main()
