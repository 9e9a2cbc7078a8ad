"""GET /jobs.csv as its users rely on it: the rows of `/jobs`, flattened, every one of them."""

from __future__ import annotations

import csv
import dataclasses
import io
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from app.api import export
from app.refresh import Refresher
from app.simulator import Simulator
from app.store import repo
from tests.api.conftest import Gateway
from tests.api.test_jobs import all_items
from tests.clock import FakeClock

# The contract's columns, in order: written out here so that a change to them is on purpose.
COLUMNS = [
    "id",
    "customer_id",
    "customer_name",
    "job_id",
    "name",
    "job_type",
    "job_type_code",
    "module",
    "module_code",
    "status",
    "status_code",
    "total_count",
    "failed_count",
    "successful_count",
    "skipped_count",
    "warning_count",
    "backup_size_bytes",
    "start_time",
    "end_time",
    "duration_seconds",
    "last_modified",
    "fetched_at",
]

TEXT_COLUMNS = ("id", "customer_id", "customer_name", "job_id", "name")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def parse(response: httpx.Response) -> list[list[str]]:
    assert response.status_code == 200, response.text
    return list(csv.reader(io.StringIO(response.content.decode("utf-8"), newline="")))


async def export_rows(
    api: httpx.AsyncClient, params: dict[str, Any] | None = None
) -> list[dict[str, str]]:
    """The rows of an export, by column name, after checking its header row."""
    header, *rows = parse(await api.get("/jobs.csv", params=params))
    assert header == COLUMNS
    return [dict(zip(header, row, strict=True)) for row in rows]


def guarded(text: str) -> str:
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def flattened(item: dict[str, Any]) -> dict[str, str]:
    """A job of `/jobs` as its CSV row should read: counts flattened, null empty."""
    flat = {k: v for k, v in item.items() if k != "counts"}
    flat |= {f"{k}_count": v for k, v in item["counts"].items()}
    cells = {c: "" if flat[c] is None else str(flat[c]) for c in COLUMNS}
    return cells | {c: guarded(cells[c]) for c in TEXT_COLUMNS}


async def test_a_download_with_one_header_row(api: httpx.AsyncClient, sim: Simulator) -> None:
    response = await api.get("/jobs.csv")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == 'attachment; filename="jobs.csv"'
    # The first read of every customer went to the upstream and stored what it found.
    assert response.headers["cache-status"] == "jobs-gateway; fwd=miss; stored"
    header, *rows = parse(response)
    assert header == COLUMNS
    assert len(rows) > 100
    assert all(len(row) == len(COLUMNS) for row in rows)
    assert header not in rows
    assert {row[1] for row in rows} == set(sim.customer_ids())
    again = await api.get("/jobs.csv")
    assert again.headers["cache-status"].startswith("jobs-gateway; hit; ttl=")
    assert again.content == response.content


async def test_rows_are_the_json_listing_flattened_in_every_sort(api: httpx.AsyncClient) -> None:
    for sort in ("-start_time", "start_time", "last_modified", "-last_modified"):
        items = await all_items(api, {"sort": sort, "limit": 500})
        rows = await export_rows(api, {"sort": sort})
        assert [r["id"] for r in rows] == [i["id"] for i in items], sort
        assert rows == [flattened(i) for i in items], sort
    # The default sort is the listing's default sort.
    items = await all_items(api, {"limit": 500})
    assert [r["id"] for r in await export_rows(api)] == [i["id"] for i in items]
    # Times as in JSON, and nulls as empty cells.
    row = next(r for r in rows if r["start_time"])
    assert datetime.strptime(row["start_time"], "%Y-%m-%dT%H:%M:%SZ")
    assert any(r["end_time"] == "" and r["duration_seconds"] == "" for r in rows), "running jobs"


@pytest.mark.parametrize(
    "params",
    [
        {"status": "failed,finished_with_exception", "sort": "-duration"},
        {"status": ["finished"], "job_type": "microsoft_365", "sort": "duration"},
        {"module": "exchange_online,sharepoint_online", "sort": "start_time"},
    ],
)
async def test_filters_and_sort_narrow_the_export_as_they_do_the_listing(
    api: httpx.AsyncClient, params: dict[str, Any]
) -> None:
    everything = await export_rows(api)
    rows = await export_rows(api, params)
    items = await all_items(api, {**params, "limit": 500})
    assert rows == [flattened(i) for i in items]
    assert 0 < len(rows) < len(everything)
    for key in ("status", "job_type", "module"):
        if key in params:
            values = params[key] if isinstance(params[key], list) else [params[key]]
            assert {r[key] for r in rows} <= {v for value in values for v in value.split(",")}
    sort = params["sort"]
    field = {"duration": "duration_seconds"}.get(sort.lstrip("-"), sort.lstrip("-"))
    as_key = int if field == "duration_seconds" else str
    keys = [as_key(r[field]) for r in rows if r[field]]
    assert keys == sorted(keys, reverse=sort.startswith("-"))


async def test_customer_time_and_name_filters(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock
) -> None:
    first, second = sim.customer_ids()[:2]
    rows = await export_rows(api, {"customer_id": f"{first},{second}"})
    assert {r["customer_id"] for r in rows} == {first, second}
    after = (clock.now - timedelta(days=2)).isoformat()
    before = (clock.now - timedelta(days=1)).isoformat()
    params = {"start_after": after, "start_before": before}
    rows = await export_rows(api, params)
    assert rows
    assert [r["id"] for r in rows] == [i["id"] for i in await all_items(api, params)]
    named = [r for r in await export_rows(api) if r["name"]]
    word = named[0]["name"].split()[0]
    rows = await export_rows(api, {"q": word.upper()})
    assert rows and all(word.lower() in r["name"].lower() for r in rows)


async def test_every_job_once_and_in_order_across_many_batches(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "BATCH_SIZE", 7)
    limits: list[int] = []
    query_jobs = repo.query_jobs

    async def counted(session: Any, query: repo.JobQuery) -> list[repo.JobRow]:
        limits.append(query.limit)
        return await query_jobs(session, query)

    monkeypatch.setattr(repo, "query_jobs", counted)
    # Durations repeat and running jobs have none: the keyset's ties are crossed too.
    for sort in ("-start_time", "duration", "-last_modified"):
        items = await all_items(api, {"sort": sort, "limit": 500})
        limits.clear()
        rows = await export_rows(api, {"sort": sort})
        ids = [r["id"] for r in rows]
        assert len(ids) == len(set(ids)), "no job twice"
        assert ids == [i["id"] for i in items], sort
        assert limits == [7] * -(-len(ids) // 7), "one query a batch, none after the last"


async def test_a_database_failure_mid_stream_cuts_the_download_short(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "BATCH_SIZE", 7)
    query_jobs = repo.query_jobs
    calls = 0

    async def failing_later(session: Any, query: repo.JobQuery) -> list[repo.JobRow]:
        nonlocal calls
        calls += 1
        if calls > 2:
            raise OSError("the database went away")
        return await query_jobs(session, query)

    monkeypatch.setattr(repo, "query_jobs", failing_later)
    # The status line has gone out: the client must not get what looks like a whole file
    # (a server closes the connection before the last chunk; in process, the error surfaces,
    # wrapped by Starlette once the outage handler finds the response already started).
    with pytest.raises((OSError, RuntimeError)) as cut:
        await api.get("/jobs.csv")
    assert "went away" in repr(cut.value) + repr(cut.value.__cause__)
    # When the first batch fails, nothing has been sent yet: the error envelope.
    app = api._transport.app  # type: ignore[attr-defined]
    quiet = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=quiet, base_url="http://gateway.test", headers=api.headers
    ) as client:
        failed = await client.get("/jobs.csv")
    assert failed.status_code == 500
    assert failed.json()["error"] == "internal"


async def test_an_empty_export_is_its_header_row(api: httpx.AsyncClient) -> None:
    response = await api.get("/jobs.csv", params={"q": "no job is named like this"})
    assert parse(response) == [COLUMNS]
    assert response.content == (",".join(COLUMNS) + "\r\n").encode()


async def test_a_customer_without_good_data_is_left_out_as_in_the_listing(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock
) -> None:
    bad = sim.customer_ids()[0]
    assert bad in {r["customer_id"] for r in await export_rows(api)}
    # It fails from now on, for longer than its last good jobs may be served.
    sim.config = dataclasses.replace(sim.config, failing_customers=frozenset({bad}))
    clock.advance(86400 + 600)
    response = await api.get("/jobs.csv")
    assert "detail=partial" in response.headers["cache-status"]
    rows = [r[0] for r in parse(response)[1:]]
    assert rows
    assert bad not in {r.split(":")[0] for r in rows}
    assert rows == [i["id"] for i in await all_items(api, {"limit": 500})]
    assert await export_rows(api, {"customer_id": bad}) == []


async def test_max_age_zero_refreshes_first(api: httpx.AsyncClient, sim: Simulator) -> None:
    await api.get("/jobs.csv")
    assert set(sim.stats.walks.values()) == {1}
    await api.get("/jobs.csv")
    assert set(sim.stats.walks.values()) == {1}, "a second export inside the TTL asks nothing"
    await api.get("/jobs.csv", params={"max_age": 0})
    assert set(sim.stats.walks.values()) == {2}


@pytest.mark.parametrize(
    "params",
    [
        {"status": "broken"},
        {"module": "exchange_online,nope"},
        {"sort": "sideways"},
        {"start_after": "yesterday"},
        {"max_age": "-1"},
        {"customer_id": "not-a-customer"},
        {"q": "a\x00b"},
    ],
)
async def test_bad_parameters_get_the_listings_422(
    api: httpx.AsyncClient, params: dict[str, Any]
) -> None:
    response = await api.get("/jobs.csv", params=params)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == "invalid_parameter"
    assert next(iter(params)) in body["detail"]
    assert body == (await api.get("/jobs", params=params)).json()


async def test_an_unknown_status_lists_the_allowed_names(api: httpx.AsyncClient) -> None:
    body = (await api.get("/jobs.csv", params={"status": "broken"})).json()
    assert "broken" in body["detail"] and "failed" in body["detail"]


async def test_a_key_is_required(api: httpx.AsyncClient) -> None:
    wrong = await api.get("/jobs.csv", headers={"X-API-Key": "wrong"})
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "unauthorized"
    anonymous = httpx.AsyncClient(transport=api._transport, base_url="http://gateway.test")
    async with anonymous:
        refused = await anonymous.get("/jobs.csv")
    assert refused.status_code == 401
    assert refused.json()["error"] == "unauthorized"
    assert refused.headers["www-authenticate"] == "Bearer"


async def test_head_answers_the_headers_only(api: httpx.AsyncClient) -> None:
    response = await api.head("/jobs.csv")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.content == b""


async def test_formulas_from_the_upstream_are_not_formulas_in_the_file(
    gateway: Gateway, sim: Simulator
) -> None:
    cid = sim.customer_ids()[0]
    real_rows = sim.rows
    names = [
        '=HYPERLINK("http://evil.test","click")',
        "+1+1",
        "-2+3",
        "@SUM(A1:A9)",
        "\t=1+1",  # the upstream's leading space is stripped: still a formula
        "a=b, + and - inside",
    ]

    def rows(customer_id: str, now: datetime | None = None) -> list[dict[str, Any]]:
        out = [dict(r) for r in real_rows(customer_id, now)]
        if customer_id == cid:
            model = next(r for r in out if r["jobId"] != "N/A")
            out += [dict(model, jobId=f"EVIL{i}", name=n) for i, n in enumerate(names)]
            out.append(dict(model, jobId="=1+2", name=None))
        return out

    sim.rows = rows  # type: ignore[method-assign]
    async with gateway() as api:
        exported = {r["job_id"]: r for r in await export_rows(api, {"customer_id": cid})}
        listed = {i["job_id"]: i for i in await all_items(api, {"customer_id": cid})}
    assert [exported[f"EVIL{i}"]["name"] for i in range(len(names))] == [
        """'=HYPERLINK("http://evil.test","click")""",
        "'+1+1",
        "'-2+3",
        "'@SUM(A1:A9)",
        "'=1+1",
        "a=b, + and - inside",
    ]
    assert exported["'=1+2"]["id"] == f"{cid}:=1+2", "starts with the customer id: no formula"
    # The JSON listing serves the names as they are.
    assert listed["EVIL0"]["name"] == names[0]
    assert listed["=1+2"]["job_id"] == "=1+2"
    for job_id, row in exported.items():
        assert row == flattened(listed[job_id.removeprefix("'")])


async def test_odd_text_from_the_upstream_is_exported(gateway: Gateway, sim: Simulator) -> None:
    odd = sim.customer_ids()[0]
    sim.config = dataclasses.replace(sim.config, odd_text_customers=frozenset({odd}))
    async with gateway() as api:
        response = await api.get("/jobs.csv", params={"customer_id": odd})
        items = await all_items(api, {"customer_id": odd, "limit": 500})
    text = response.content.decode("utf-8")
    assert "\ufffd" in text and "\U0001f4be" in text and "\u05d2" in text
    header, *rows = parse(response)
    assert [dict(zip(header, r, strict=True)) for r in rows] == [flattened(i) for i in items]


async def test_a_lone_surrogate_does_not_break_the_stream(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store never holds one (normalize replaces them); a customer's name comes from
    # memory, so this is where one could still slip in.
    monkeypatch.setattr(Refresher, "name_of", lambda self, cid: "=Con\ud800toso")
    rows = await export_rows(api)
    assert rows
    assert {r["customer_name"] for r in rows} == {"'=Con\ufffdtoso"}


@pytest.mark.parametrize(
    ("text", "cell"),
    [
        ("=1+1", "'=1+1"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@A1", "'@A1"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("Nightly = backup", "Nightly = backup"),
        (" =1", " =1"),
        ("'=1", "'=1"),
        ("", ""),
        (None, None),
    ],
)
def test_cells_that_would_start_a_formula_are_quoted(text: str | None, cell: str | None) -> None:
    assert export.cell(text) == cell


def test_encoding_replaces_lone_surrogates() -> None:
    assert export.encode("Contoso") == b"Contoso"
    assert export.encode("a\ud800b") == "a\ufffdb".encode()
    assert export.encode("x\udcbe") == "x\ufffd".encode()
    assert export.encode("\ud83d\udcbe") == "\U0001f4be".encode(), "a pair is its character"
    assert export.encode("\u05d2\U0001f4be") == "\u05d2\U0001f4be".encode()


async def test_the_openapi_document_says_csv(api: httpx.AsyncClient) -> None:
    operation = (await api.get("/openapi.json")).json()["paths"]["/jobs.csv"]["get"]
    assert operation["operationId"] == "export_jobs_csv"
    assert operation["tags"] == ["jobs"]
    responses = operation["responses"]
    assert list(responses["200"]["content"]) == ["text/csv"]
    assert responses["200"]["content"]["text/csv"]["example"].startswith(",".join(COLUMNS))
    for status in ("401", "422", "503"):
        assert list(responses[status]["content"]) == ["application/json"]
    listing = (await api.get("/openapi.json")).json()["paths"]["/jobs"]["get"]
    names = {p["name"] for p in operation["parameters"]}
    assert names == {p["name"] for p in listing["parameters"]} - {"limit", "cursor"}
